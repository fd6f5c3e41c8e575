//! A pod's DNS configuration, as the kubelet gives it to a container runtime (upstream
//! `pkg/kubelet/network/dns`, `Configurer.GetPodDNS`): nameservers, search list and options
//! from the pod's `dnsPolicy` and `dnsConfig`, the node's `--cluster-dns`/`--cluster-domain`
//! and its `--resolv-conf`. Guests have no `/etc/resolv.conf`: the runtime's resolver
//! ([`super::resolver`]) follows this configuration for their `wasi:sockets` name lookups.

use std::net::IpAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;

/// Most nameservers a pod gets (upstream `validation.MaxDNSNameservers`).
pub const MAX_NAMESERVERS: usize = 3;
/// Most search domains (upstream `MaxDNSSearchPaths`).
pub const MAX_SEARCH_PATHS: usize = 32;
/// Most characters of the search list, spaces between domains included
/// (upstream `MaxDNSSearchListChars`).
pub const MAX_SEARCH_CHARS: usize = 2048;

/// The node's DNS settings (`--cluster-dns`, `--cluster-domain`, `--resolv-conf`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DnsSettings {
    /// The cluster DNS Service's addresses, for `ClusterFirst` pods.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's domain (`cluster.local`); empty: no cluster search domains.
    pub cluster_domain: String,
    /// The resolver configuration `Default` pods inherit; `None` (`--resolv-conf=""`):
    /// lookups go to the node's own loopback, as upstream's.
    pub resolv_conf: Option<PathBuf>,
}

/// A resolver configuration: what `/etc/resolv.conf` would say in a container of the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDns {
    /// Nameservers, in order (at most [`MAX_NAMESERVERS`]).
    pub nameservers: Vec<IpAddr>,
    /// Search domains, in order, without trailing dots.
    pub searches: Vec<String>,
    /// Options: `name` or `name:value`, e.g. `ndots:5`.
    pub options: Vec<String>,
}

impl PodDns {
    /// The `ndots` option (resolv.conf's default 1, at most 15).
    pub fn ndots(&self) -> usize {
        self.option("ndots").map_or(1, |n| n.min(15))
    }

    /// The `timeout` option in seconds (default 5, at most 30).
    pub fn timeout_secs(&self) -> u64 {
        self.option("timeout").map_or(5, |n| n.clamp(1, 30) as u64)
    }

    /// The `attempts` option (default 2, at most 5).
    pub fn attempts(&self) -> usize {
        self.option("attempts").map_or(2, |n| n.clamp(1, 5))
    }

    fn option(&self, name: &str) -> Option<usize> {
        self.options
            .iter()
            .rev()
            .find_map(|o| o.strip_prefix(name)?.strip_prefix(':')?.parse().ok())
    }

    /// The fully qualified names to try for `name`, in order, as glibc's resolver does: an
    /// absolute name (trailing dot) alone; a name with at least `ndots` dots as given first,
    /// then with each search domain; a shorter one with each search domain first.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self
            .searches
            .iter()
            .filter(|s| !s.is_empty() && *s != ".")
            .map(|s| format!("{name}.{s}"));
        if name.matches('.').count() >= self.ndots() {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }

    /// The configuration as resolv.conf text (for messages and tests).
    pub fn to_resolv_conf(&self) -> String {
        let mut text = String::new();
        for server in &self.nameservers {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if !self.searches.is_empty() {
            text.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            text.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        text
    }
}

/// Parses resolv.conf text: `nameserver`, `search` (`domain` too, as a one-entry search list
/// when no `search` line follows), `options`; comments and unknown lines ignored
/// (upstream `parseResolvConf`).
pub fn parse_resolv_conf(text: &str) -> PodDns {
    let mut dns = PodDns::default();
    let mut domain = None;
    let mut search_seen = false;
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => {
                if let Some(ip) = fields.next().and_then(|f| f.parse().ok()) {
                    dns.nameservers.push(ip);
                }
            }
            Some("search") => {
                search_seen = true;
                dns.searches = fields
                    .map(|f| f.trim_end_matches('.').to_string())
                    .collect();
            }
            Some("domain") => domain = fields.next().map(|f| f.trim_end_matches('.').to_string()),
            Some("options") => dns.options.extend(fields.map(str::to_string)),
            _ => {}
        }
    }
    if !search_seen && let Some(domain) = domain {
        dns.searches = vec![domain];
    }
    dns
}

/// What [`for_pod`] had to tell the user (upstream's events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsNote {
    /// `ClusterFirst` without `--cluster-dns`: the pod got the node's resolver instead
    /// (upstream's `MissingClusterDNS` Warning).
    MissingClusterDns,
    /// Limits cut the configuration (upstream's `DNSConfigForming` Warning).
    Trimmed(String),
}

impl DnsNote {
    /// The event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingClusterDns => "MissingClusterDNS",
            Self::Trimmed(_) => "DNSConfigForming",
        }
    }

    /// The event message, in upstream's words.
    pub fn message(&self) -> String {
        match self {
            Self::MissingClusterDns => "kubelet does not have ClusterDNS IP configured and cannot \
                                        create Pod using \"ClusterFirst\" policy. Falling back to \
                                        \"Default\" policy."
                .into(),
            Self::Trimmed(what) => what.clone(),
        }
    }
}

/// The pod's resolver configuration (upstream `GetPodDNS`), with what the user should be
/// told. `host` is the node's resolv.conf as read (`None` when `--resolv-conf` is empty).
pub fn for_pod(pod: &Pod, settings: &DnsSettings, host: Option<&PodDns>) -> (PodDns, Vec<DnsNote>) {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mut notes = Vec::new();
    // getPodDNSType: ClusterFirst on the host network is Default.
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let cluster = match policy {
        "None" => None,
        "ClusterFirstWithHostNet" => Some(true),
        "ClusterFirst" if !host_network => Some(true),
        _ => Some(false),
    };
    let node_resolver = || match host {
        Some(host) => host.clone(),
        // An empty --resolv-conf: the node's own loopback, searching nothing.
        None => PodDns {
            nameservers: vec![IpAddr::from([127, 0, 0, 1])],
            searches: Vec::new(),
            options: Vec::new(),
        },
    };
    let mut dns = match cluster {
        None => PodDns::default(),
        Some(true) if !settings.cluster_dns.is_empty() => {
            let host = host.cloned().unwrap_or_default();
            let mut searches = Vec::new();
            if !settings.cluster_domain.is_empty() {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
                let domain = &settings.cluster_domain;
                searches = vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.clone(),
                ];
            }
            searches.extend(host.searches);
            PodDns {
                nameservers: settings.cluster_dns.clone(),
                searches: dedup(searches),
                options: vec!["ndots:5".into()],
            }
        }
        Some(true) => {
            notes.push(DnsNote::MissingClusterDns);
            node_resolver()
        }
        Some(false) => node_resolver(),
    };
    // appendDNSConfig: dnsConfig's entries after the policy's, duplicates merged, options
    // overriding by name.
    if let Some(config) = spec.and_then(|s| s.dns_config.as_ref()) {
        dns.nameservers.extend(
            config
                .nameservers
                .iter()
                .flatten()
                .filter_map(|n| n.parse::<IpAddr>().ok()),
        );
        dns.nameservers = dedup(std::mem::take(&mut dns.nameservers));
        dns.searches.extend(
            config
                .searches
                .iter()
                .flatten()
                .map(|s| s.trim_end_matches('.').to_string()),
        );
        dns.searches = dedup(std::mem::take(&mut dns.searches));
        for option in config.options.iter().flatten() {
            let name = option.name.clone().unwrap_or_default();
            dns.options
                .retain(|o| o.split(':').next() != Some(name.as_str()));
            dns.options.push(match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name,
            });
        }
    }
    // formDNSConfigFitsLimits.
    if dns.nameservers.len() > MAX_NAMESERVERS {
        dns.nameservers.truncate(MAX_NAMESERVERS);
        notes.push(DnsNote::Trimmed(format!(
            "Nameserver limits were exceeded, some nameservers have been omitted, the applied \
             nameserver line is: {}",
            join(&dns.nameservers)
        )));
    }
    let before = dns.searches.len();
    dns.searches.truncate(MAX_SEARCH_PATHS);
    while dns.searches.iter().map(|s| s.len() + 1).sum::<usize>() > MAX_SEARCH_CHARS + 1 {
        dns.searches.pop();
    }
    if dns.searches.len() < before {
        notes.push(DnsNote::Trimmed(format!(
            "Search Line limits were exceeded, some search paths have been omitted, the applied \
             search line is: {}",
            dns.searches.join(" ")
        )));
    }
    (dns, notes)
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": spec
        }))
        .expect("pod")
    }

    fn settings() -> DnsSettings {
        DnsSettings {
            cluster_dns: vec!["10.0.0.10".parse().expect("ip")],
            cluster_domain: "cluster.local".into(),
            resolv_conf: Some("/etc/resolv.conf".into()),
        }
    }

    fn host() -> PodDns {
        parse_resolv_conf(
            "# the node's\nnameserver 192.0.2.53\nnameserver 192.0.2.54 ; second\n\
             search corp.example. example.org\noptions edns0 timeout:2\n",
        )
    }

    #[test]
    fn resolv_conf_is_read_as_the_kubelet_reads_it() {
        let host = host();
        assert_eq!(host.nameservers.len(), 2);
        assert_eq!(host.searches, ["corp.example", "example.org"]);
        assert_eq!(host.options, ["edns0", "timeout:2"]);
        assert_eq!(host.timeout_secs(), 2);
        assert_eq!(host.ndots(), 1);
        let domain = parse_resolv_conf("domain lab.example\nnameserver ::1\n");
        assert_eq!(domain.searches, ["lab.example"]);
        assert_eq!(
            domain.nameservers,
            [IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])]
        );
    }

    #[test]
    fn cluster_first_searches_the_namespace_then_the_cluster_then_the_node() {
        let (dns, notes) = for_pod(
            &pod(serde_json::json!({"containers": []})),
            &settings(),
            Some(&host()),
        );
        assert!(notes.is_empty());
        assert_eq!(
            dns.to_resolv_conf(),
            "nameserver 10.0.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local \
             corp.example example.org\noptions ndots:5\n"
        );
        // On the host network ClusterFirst is Default; ClusterFirstWithHostNet is not.
        let host_net = for_pod(
            &pod(serde_json::json!({"containers": [], "hostNetwork": true})),
            &settings(),
            Some(&host()),
        );
        assert_eq!(host_net.0, host());
        let with_host_net = for_pod(
            &pod(serde_json::json!({"containers": [], "hostNetwork": true,
                                    "dnsPolicy": "ClusterFirstWithHostNet"})),
            &settings(),
            Some(&host()),
        );
        assert_eq!(with_host_net.0.nameservers, settings().cluster_dns);
    }

    #[test]
    fn cluster_first_without_cluster_dns_falls_back_with_a_warning() {
        let mut node = settings();
        node.cluster_dns.clear();
        let (dns, notes) = for_pod(
            &pod(serde_json::json!({"containers": []})),
            &node,
            Some(&host()),
        );
        assert_eq!(dns, host());
        assert_eq!(notes, [DnsNote::MissingClusterDns]);
        assert_eq!(notes[0].reason(), "MissingClusterDNS");
        // An empty --resolv-conf: the node's loopback.
        let (dns, _) = for_pod(
            &pod(serde_json::json!({"containers": [], "dnsPolicy": "Default"})),
            &node,
            None,
        );
        assert_eq!(dns.to_resolv_conf(), "nameserver 127.0.0.1\n");
    }

    #[test]
    fn dns_config_is_appended_and_options_override_by_name() {
        let spec = serde_json::json!({
            "containers": [],
            "dnsConfig": {
                "nameservers": ["10.0.0.10", "1.1.1.1"],
                "searches": ["extra.example.", "svc.cluster.local"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]
            }
        });
        let (dns, _) = for_pod(&pod(spec), &settings(), Some(&host()));
        assert_eq!(
            dns.to_resolv_conf(),
            "nameserver 10.0.0.10\nnameserver 1.1.1.1\nsearch shop.svc.cluster.local \
             svc.cluster.local cluster.local corp.example example.org extra.example\noptions \
             ndots:2 rotate\n"
        );
        assert_eq!(dns.ndots(), 2);
        // None: only dnsConfig.
        let none = serde_json::json!({"containers": [], "dnsPolicy": "None",
                                       "dnsConfig": {"nameservers": ["192.0.2.1"]}});
        let (dns, _) = for_pod(&pod(none), &settings(), Some(&host()));
        assert_eq!(dns.to_resolv_conf(), "nameserver 192.0.2.1\n");
    }

    #[test]
    fn limits_trim_nameservers_and_search_paths_with_a_note() {
        let searches: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let spec = serde_json::json!({
            "containers": [], "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"],
                          "searches": searches}
        });
        let (dns, notes) = for_pod(&pod(spec), &settings(), Some(&host()));
        assert_eq!(dns.nameservers.len(), MAX_NAMESERVERS);
        assert_eq!(dns.searches.len(), MAX_SEARCH_PATHS);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes.iter().all(|n| n.reason() == "DNSConfigForming"));
    }

    #[test]
    fn candidates_follow_ndots_and_the_search_list() {
        let dns = PodDns {
            nameservers: vec![],
            searches: vec!["shop.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            dns.candidates("web"),
            ["web.shop.svc.cluster.local", "web.svc.cluster.local", "web"]
        );
        assert_eq!(
            dns.candidates("web.shop.svc.cluster.local."),
            ["web.shop.svc.cluster.local"]
        );
        let few = PodDns {
            options: vec!["ndots:1".into()],
            ..dns
        };
        assert_eq!(
            few.candidates("example.com"),
            [
                "example.com",
                "example.com.shop.svc.cluster.local",
                "example.com.svc.cluster.local"
            ]
        );
    }
}
