//! Outbound grants: what a guest's own sockets (`wasi:sockets`) may reach. Deny by default, in
//! the spirit of Spin's `allowed_outbound_hosts`: a pod lists what it may connect to in the
//! annotation [`GRANTS_ANNOTATION`], and the node's `--wasm-outbound-deny` CIDRs win over any
//! grant (the cloud metadata address by default).
//!
//! Grants, separated by commas or whitespace:
//! - `tcp://HOST:PORT`, `udp://HOST:PORT`: that protocol;
//! - `http://HOST[:PORT]`, `https://HOST[:PORT]`: TCP to that port (default 80 and 443);
//! - `HOST[:PORT]` alone: both protocols.
//!
//! `HOST` is an IPv4 or IPv6 address (IPv6 in brackets with a port), a CIDR (`10.0.0.0/8`,
//! `[fd00::/8]:443`), `*` (any address), a host name (`web.shop.svc.cluster.local`) or
//! `*.DOMAIN` (any name under it); `PORT` is a number or `*` (any port; also when it is left
//! out, except after `http`/`https`). A name covers the addresses the guest resolved it to
//! through its pod DNS ([`super::resolver`]), as asked or as found on the search list, so
//! connecting to an address first needs a lookup of a granted name.
//!
//! Traffic that never leaves the pod is not outbound: in a pod's own network namespace its
//! loopback is its own, and listening and accepting are always allowed there. On the node's
//! network (no CNI) a guest may neither listen (it would hold the node's ports) nor reach
//! loopback (the node's own services), grant or not.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// The pod annotation that grants outbound destinations.
pub const GRANTS_ANNOTATION: &str = "krustlet.dev/allowed-outbound";

/// Destinations a pod is told about in events; more denials are only logged.
pub const MAX_REPORTED_DENIALS: usize = 64;

/// A transport protocol of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// What a guest does with an address (wasmtime-wasi's `SocketAddrUse`, without its types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Binds or listens on a local address.
    Listen(Protocol),
    /// Accepts a connection from a peer.
    Accept,
    /// Receives a datagram from a peer (who may then be answered: [`Use::Reply`]).
    Receive,
    /// Sends a datagram back to a peer it came from, as a stateful firewall lets a reply
    /// through; only the node's deny list applies.
    Reply,
    /// Connects or sends to a remote address.
    Connect(Protocol),
}

/// An address range: a CIDR (a single address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(bits) => bits
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { network, bits })
    }
}

/// As its text (`/configz` shows the node's deny list).
impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.bits)
    }
}

/// The hosts a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hosts {
    /// `*`: any address.
    Any,
    /// An address or range.
    Cidr(Cidr),
    /// A name (lowercase, no trailing dot): the addresses the guest resolved it to.
    Name(String),
    /// `*.SUFFIX`: the addresses of any name under `.SUFFIX` the guest resolved.
    Under(String),
}

impl Hosts {
    fn covers(&self, ip: IpAddr, names: &[String]) -> bool {
        match self {
            Self::Any => true,
            Self::Cidr(cidr) => cidr.contains(ip),
            Self::Name(name) => names.iter().any(|n| n == name),
            Self::Under(suffix) => names.iter().any(|n| n.ends_with(suffix.as_str())),
        }
    }
}

/// One granted destination.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// `None`: both protocols.
    protocol: Option<Protocol>,
    hosts: Hosts,
    /// `None`: any port.
    port: Option<u16>,
}

impl Grant {
    fn allows(&self, protocol: Protocol, addr: SocketAddr, names: &[String]) -> bool {
        self.protocol.is_none_or(|p| p == protocol)
            && self.hosts.covers(addr.ip().to_canonical(), names)
            && self.port.is_none_or(|p| p == addr.port())
    }
}

/// A host name as grants spell it: letters, digits, `-` and dots, lowercased, without a
/// trailing dot.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    valid.then_some(host)
}

fn parse_grant(entry: &str) -> Result<Grant, String> {
    let (scheme, rest) = match entry.split_once("://") {
        Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
        None => (None, entry),
    };
    let (protocol, default_port) = match scheme.as_deref() {
        None => (None, None),
        Some("tcp") => (Some(Protocol::Tcp), None),
        Some("udp") => (Some(Protocol::Udp), None),
        Some("http") => (Some(Protocol::Tcp), Some(80)),
        Some("https") => (Some(Protocol::Tcp), Some(443)),
        Some(other) => {
            return Err(format!(
                "{entry:?}: unknown scheme {other:?} (tcp, udp, http or https)"
            ));
        }
    };
    let rest = rest.trim_end_matches('/');
    // `[v6]:port`, `[v6/bits]:port`, `[v6]`, `host:port`, `host`.
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{entry:?}: unclosed '['"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("{entry:?}: expected ':PORT' after ']'")),
        }
    } else if rest.matches(':').count() > 1 {
        // A bare IPv6 address or CIDR, without a port.
        (rest, None)
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let hosts = match host {
        "*" => Hosts::Any,
        "" => return Err(format!("{entry:?}: no host")),
        host => match host.parse::<Cidr>() {
            Ok(cidr) => Hosts::Cidr(cidr),
            // Digits, dots and slashes only: a bad address, not a name.
            Err(bad)
                if host
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == '/') =>
            {
                return Err(bad);
            }
            Err(_) => match host.strip_prefix("*.").map(host_name) {
                Some(Some(suffix)) => Hosts::Under(format!(".{suffix}")),
                Some(None) => return Err(format!("{entry:?}: {host:?} is not a host name")),
                None => Hosts::Name(
                    host_name(host)
                        .ok_or_else(|| format!("{entry:?}: {host:?} is not a host name"))?,
                ),
            },
        },
    };
    let port = match port {
        None => default_port,
        Some("*") => None,
        Some(port) => Some(
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{entry:?}: port {port:?} is not 1-65535 or *"))?,
        ),
    };
    Ok(Grant {
        protocol,
        hosts,
        port,
    })
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The pod grants nothing that covers it.
    NotGranted,
    /// The node's deny list covers it, whatever the pod grants.
    NodeDenied(Cidr),
    /// Loopback on the node's network: the node's own services.
    NodeLoopback,
    /// Listening on the node's network (no CNI): the node's ports.
    NodeListen,
}

/// Whether a guest's socket may do something, and why not.
pub type Verdict = Result<(), Denial>;

/// A pod's outbound policy: its grants, the node's deny list and whether it has a network
/// namespace of its own.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    grants: Vec<Grant>,
    node_deny: Vec<Cidr>,
    own_namespace: bool,
    node_ips: Vec<IpAddr>,
}

impl OutboundPolicy {
    /// The policy of a pod with `annotations`, on a node denying `node_deny`; `own_namespace`
    /// when the pod has a network namespace of its own (CNI).
    ///
    /// # Errors
    /// A message naming the annotation and the bad entry.
    pub fn for_pod(
        annotations: Option<&std::collections::BTreeMap<String, String>>,
        node_deny: &[Cidr],
        own_namespace: bool,
    ) -> Result<Self, String> {
        let grants = annotations
            .and_then(|a| a.get(GRANTS_ANNOTATION))
            .map(|value| {
                value
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|e| !e.is_empty())
                    .map(parse_grant)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("annotation {GRANTS_ANNOTATION}: {e}"))
            })
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            grants,
            node_deny: node_deny.to_vec(),
            own_namespace,
            node_ips: Vec::new(),
        })
    }

    /// The node's own addresses: on the node's network they are the node's services, as
    /// loopback is, and refused whatever the pod grants.
    pub fn with_node_addresses(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.node_ips = ips.into_iter().map(|ip| ip.to_canonical()).collect();
        self
    }

    /// Whether the pod's guests may use `addr` for `what`; `names` are the names the guest
    /// resolved to `addr`'s address (for grants by name).
    pub fn check(&self, addr: SocketAddr, what: Use, names: &[String]) -> Verdict {
        match what {
            Use::Accept | Use::Receive => Ok(()),
            Use::Reply => match self.node_deny.iter().find(|c| c.contains(addr.ip())) {
                Some(cidr) => Err(Denial::NodeDenied(*cidr)),
                None => Ok(()),
            },
            Use::Listen(_) if self.own_namespace => Ok(()),
            Use::Listen(_) => Err(Denial::NodeListen),
            Use::Connect(protocol) => {
                let ip = addr.ip().to_canonical();
                if ip.is_loopback() || (!self.own_namespace && self.node_ips.contains(&ip)) {
                    return if self.own_namespace {
                        Ok(())
                    } else {
                        Err(Denial::NodeLoopback)
                    };
                }
                if let Some(cidr) = self.node_deny.iter().find(|c| c.contains(ip)) {
                    return Err(Denial::NodeDenied(*cidr));
                }
                if self.grants.iter().any(|g| g.allows(protocol, addr, names)) {
                    Ok(())
                } else {
                    Err(Denial::NotGranted)
                }
            }
        }
    }
}

/// The node's default `--wasm-outbound-deny`: the cloud metadata services (AWS, GCP and Azure
/// at 169.254.169.254, AWS's IPv6 one).
pub fn default_node_deny() -> Vec<Cidr> {
    ["169.254.169.254/32", "fd00:ec2::254/128"]
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Reports each destination a pod was denied once (at most [`MAX_REPORTED_DENIALS`]): the
/// kubelet turns a report into a Warning event on the pod.
#[derive(Clone)]
pub struct DenialReporter {
    seen: Arc<Mutex<HashSet<(Protocol, SocketAddr)>>>,
    report: Arc<dyn Fn(String) + Send + Sync>,
}

impl DenialReporter {
    /// Reports through `report` (the event's message).
    pub fn new(report: impl Fn(String) + Send + Sync + 'static) -> Self {
        Self {
            seen: Arc::default(),
            report: Arc::new(report),
        }
    }

    /// Reports nothing (tests, exec instances).
    pub fn silent() -> Self {
        Self::new(|_| {})
    }

    /// Reports a denied connection to `addr`, if it is the first to that destination.
    pub fn denied(&self, protocol: Protocol, addr: SocketAddr, why: &Denial) {
        let first = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.len() < MAX_REPORTED_DENIALS && seen.insert((protocol, addr))
        };
        let message = denial_message(protocol, addr, why);
        if first {
            (self.report)(message);
        } else {
            tracing::debug!("{message}");
        }
    }
}

impl std::fmt::Debug for DenialReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenialReporter").finish_non_exhaustive()
    }
}

/// The event message for a denied connection: what, why, and what to change.
pub fn denial_message(protocol: Protocol, addr: SocketAddr, why: &Denial) -> String {
    match why {
        Denial::NotGranted => format!(
            "outbound {protocol} connection to {addr} denied: the pod does not grant it; add \
             {protocol}://{addr} (or a CIDR covering it) to the pod's {GRANTS_ANNOTATION} \
             annotation"
        ),
        Denial::NodeDenied(cidr) => format!(
            "outbound {protocol} connection to {addr} denied by the node's \
             --wasm-outbound-deny {cidr}, whatever the pod grants"
        ),
        Denial::NodeLoopback => format!(
            "outbound {protocol} connection to {addr} denied: the pod shares the node's \
             network (no CNI), where loopback and the node's own addresses are the node's own \
             services"
        ),
        Denial::NodeListen => format!(
            "listening on {protocol} {addr} denied: the pod shares the node's network (no \
             CNI); declare a containerPort for an HTTP component instead"
        ),
    }
}

/// UDP peers a run remembers having heard from (for [`Use::Reply`]); the oldest are forgotten.
pub const MAX_UDP_PEERS: usize = 4096;

/// Addresses a run remembers the resolved names of (for grants by name); the oldest are
/// forgotten, and a connection to them then needs a new lookup.
pub const MAX_RESOLVED_ADDRESSES: usize = 4096;

/// The names the guest resolved, by address, bounded by [`MAX_RESOLVED_ADDRESSES`].
#[derive(Debug, Default)]
struct Names {
    by_ip: std::collections::HashMap<IpAddr, Vec<String>>,
    order: std::collections::VecDeque<IpAddr>,
}

impl Names {
    fn remember(&mut self, ip: IpAddr, name: &str) {
        let names = self.by_ip.entry(ip).or_insert_with(|| {
            self.order.push_back(ip);
            Vec::new()
        });
        if !names.iter().any(|n| n == name) && names.len() < 8 {
            names.push(name.to_string());
        }
        if self.order.len() > MAX_RESOLVED_ADDRESSES
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_ip.remove(&oldest);
        }
    }
}

/// The UDP peers a guest has received from, most recent last, bounded by [`MAX_UDP_PEERS`].
#[derive(Debug, Default)]
struct Peers {
    set: HashSet<SocketAddr>,
    order: std::collections::VecDeque<SocketAddr>,
}

impl Peers {
    fn remember(&mut self, addr: SocketAddr) {
        if self.set.insert(addr) {
            self.order.push_back(addr);
            if self.order.len() > MAX_UDP_PEERS
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }
}

/// What to do once, later (publish notes).
type Once = Box<dyn FnOnce() + Send>;

/// A guest's DNS: the pod's configuration, and what to tell the pod about it (once, at the
/// first lookup).
#[derive(Clone)]
pub struct GuestDns {
    /// The resolver configuration.
    pub config: super::dns::PodDns,
    notes: Arc<Mutex<Option<Once>>>,
}

impl GuestDns {
    /// `config`, with `notes` to run at the first lookup.
    pub fn new(config: super::dns::PodDns, notes: impl FnOnce() + Send + 'static) -> Self {
        Self {
            config,
            notes: Arc::new(Mutex::new(Some(Box::new(notes)))),
        }
    }

    /// Called at each lookup: publishes the notes the first time.
    pub fn used(&self) {
        let notes = self.notes.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(notes) = notes {
            notes();
        }
    }
}

impl std::fmt::Debug for GuestDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestDns")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a guest's own sockets get: the pod's namespace (if it has one), its policy and where
/// denials go.
#[derive(Clone)]
pub struct GuestNetwork {
    /// The pod's network namespace file; `None` on the node's network.
    pub namespace: Option<std::path::PathBuf>,
    /// What the guest may reach.
    pub policy: Arc<OutboundPolicy>,
    /// Where denials are reported.
    pub denials: DenialReporter,
    /// The pod's DNS configuration, for the guest's name lookups; `None`: none.
    pub dns: Option<GuestDns>,
    /// UDP peers heard from, which may be answered.
    peers: Arc<Mutex<Peers>>,
    /// Names the guest resolved, for grants by name.
    names: Arc<Mutex<Names>>,
}

impl GuestNetwork {
    /// A guest network in `namespace` under `policy`, reporting to `denials`.
    pub fn new(
        namespace: Option<std::path::PathBuf>,
        policy: OutboundPolicy,
        denials: DenialReporter,
        dns: Option<GuestDns>,
    ) -> Self {
        Self {
            namespace,
            policy: Arc::new(policy),
            denials,
            dns,
            peers: Arc::default(),
            names: Arc::default(),
        }
    }

    /// Remembers that the guest resolved `names` (as asked, and as found) to `ips`.
    pub fn resolved(&self, names: &[&str], ips: &[IpAddr]) {
        let mut known = self.names.lock().unwrap_or_else(|e| e.into_inner());
        for ip in ips {
            for name in names {
                known.remember(
                    ip.to_canonical(),
                    &name.trim_end_matches('.').to_ascii_lowercase(),
                );
            }
        }
    }

    /// Checks `addr` for `what`, reporting a denied connection. A datagram received from a
    /// peer makes a datagram to it a reply.
    pub fn check(&self, addr: SocketAddr, what: Use) -> bool {
        let what = {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            match what {
                Use::Receive => {
                    peers.remember(addr);
                    what
                }
                Use::Connect(Protocol::Udp) if peers.set.contains(&addr) => Use::Reply,
                _ => what,
            }
        };
        let names = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_ip
            .get(&addr.ip().to_canonical())
            .cloned()
            .unwrap_or_default();
        match self.policy.check(addr, what, &names) {
            Ok(()) => true,
            Err(why) => {
                let protocol = match what {
                    Use::Listen(p) | Use::Connect(p) => p,
                    Use::Accept => Protocol::Tcp,
                    Use::Receive | Use::Reply => Protocol::Udp,
                };
                self.denials.denied(protocol, addr, &why);
                false
            }
        }
    }
}

impl std::fmt::Debug for GuestNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestNetwork")
            .field("namespace", &self.namespace)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn policy(grants: &str, own_namespace: bool) -> OutboundPolicy {
        let annotations = BTreeMap::from([(GRANTS_ANNOTATION.to_string(), grants.to_string())]);
        OutboundPolicy::for_pod(Some(&annotations), &default_node_deny(), own_namespace)
            .expect("grants parse")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let none = OutboundPolicy::for_pod(None, &default_node_deny(), true).expect("policy");
        assert_eq!(
            none.check(addr("10.0.0.1:80"), Use::Connect(Protocol::Tcp), &[]),
            Err(Denial::NotGranted)
        );
        // The pod's own loopback and listening in its own namespace are not outbound.
        assert_eq!(
            none.check(addr("127.0.0.1:80"), Use::Connect(Protocol::Tcp), &[]),
            Ok(())
        );
        assert_eq!(
            none.check(addr("0.0.0.0:7"), Use::Listen(Protocol::Udp), &[]),
            Ok(())
        );
        assert_eq!(none.check(addr("10.1.1.1:5"), Use::Accept, &[]), Ok(()));
    }

    #[test]
    fn grants_match_protocol_address_and_port() {
        let p = policy(
            "tcp://10.244.0.0/16:8080, udp://10.0.0.10:53 https://[fd00::/8] 192.168.1.5",
            true,
        );
        let tcp = Use::Connect(Protocol::Tcp);
        let udp = Use::Connect(Protocol::Udp);
        assert_eq!(p.check(addr("10.244.3.4:8080"), tcp, &[]), Ok(()));
        assert_eq!(
            p.check(addr("10.244.3.4:8081"), tcp, &[]),
            Err(Denial::NotGranted)
        );
        assert_eq!(
            p.check(addr("10.244.3.4:8080"), udp, &[]),
            Err(Denial::NotGranted)
        );
        assert_eq!(p.check(addr("10.0.0.10:53"), udp, &[]), Ok(()));
        assert_eq!(
            p.check(addr("10.0.0.10:53"), tcp, &[]),
            Err(Denial::NotGranted)
        );
        assert_eq!(p.check(addr("[fd00::1]:443"), tcp, &[]), Ok(()));
        assert_eq!(
            p.check(addr("[fd00::1]:80"), tcp, &[]),
            Err(Denial::NotGranted)
        );
        // No scheme and no port: both protocols, any port.
        assert_eq!(p.check(addr("192.168.1.5:1"), udp, &[]), Ok(()));
        assert_eq!(p.check(addr("192.168.1.5:65535"), tcp, &[]), Ok(()));
        // An IPv4-mapped IPv6 address is its IPv4 one.
        assert_eq!(p.check(addr("[::ffff:10.244.0.9]:8080"), tcp, &[]), Ok(()));
    }

    #[test]
    fn grants_by_name_cover_the_addresses_the_guest_resolved_them_to() {
        let guest = GuestNetwork::new(
            None,
            policy(
                "tcp://web.shop.svc.cluster.local:80, https://*.example.com",
                true,
            ),
            DenialReporter::silent(),
            None,
        );
        let web = addr("10.0.0.7:80");
        let tcp = Use::Connect(Protocol::Tcp);
        assert!(!guest.check(web, tcp), "not resolved yet");
        guest.resolved(&["web", "web.shop.svc.cluster.local."], &[web.ip()]);
        assert!(guest.check(web, tcp));
        assert!(!guest.check(addr("10.0.0.7:81"), tcp), "another port");
        let api = addr("[2001:db8::5]:443");
        guest.resolved(&["API.Example.com"], &[api.ip()]);
        assert!(guest.check(api, tcp));
        guest.resolved(&["example.com"], &[addr("192.0.2.9:443").ip()]);
        assert!(
            !guest.check(addr("192.0.2.9:443"), tcp),
            "*.example.com is not example.com"
        );
    }

    #[test]
    fn the_node_deny_list_wins_over_any_grant() {
        let p = policy("*, tcp://169.254.169.254:80", true);
        assert_eq!(
            p.check(addr("169.254.169.254:80"), Use::Connect(Protocol::Tcp), &[]),
            Err(Denial::NodeDenied(
                "169.254.169.254/32".parse().expect("cidr")
            ))
        );
        assert_eq!(
            p.check(
                addr("[::ffff:169.254.169.254]:80"),
                Use::Connect(Protocol::Tcp),
                &[]
            ),
            Err(Denial::NodeDenied(
                "169.254.169.254/32".parse().expect("cidr")
            ))
        );
        assert_eq!(
            p.check(addr("8.8.8.8:53"), Use::Connect(Protocol::Udp), &[]),
            Ok(())
        );
    }

    #[test]
    fn on_the_node_network_loopback_the_node_and_listening_are_refused() {
        let p = policy("*", false).with_node_addresses(["10.1.0.5".parse().expect("ip")]);
        assert_eq!(
            p.check(addr("10.1.0.5:10250"), Use::Connect(Protocol::Tcp), &[]),
            Err(Denial::NodeLoopback)
        );
        // With its own namespace the node is just another host.
        let own = policy("*", true).with_node_addresses(["10.1.0.5".parse().expect("ip")]);
        assert_eq!(
            own.check(addr("10.1.0.5:53"), Use::Connect(Protocol::Udp), &[]),
            Ok(())
        );
        assert_eq!(
            p.check(addr("127.0.0.1:10250"), Use::Connect(Protocol::Tcp), &[]),
            Err(Denial::NodeLoopback)
        );
        assert_eq!(
            p.check(addr("[::1]:10250"), Use::Connect(Protocol::Tcp), &[]),
            Err(Denial::NodeLoopback)
        );
        assert_eq!(
            p.check(addr("0.0.0.0:8080"), Use::Listen(Protocol::Tcp), &[]),
            Err(Denial::NodeListen)
        );
    }

    #[test]
    fn bad_grants_are_refused_with_the_entry() {
        let annotations = |v: &str| BTreeMap::from([(GRANTS_ANNOTATION.to_string(), v.into())]);
        for (value, says) in [
            ("ftp://1.2.3.4:21", "unknown scheme"),
            ("tcp://exa$mple.com:80", "is not a host name"),
            ("tcp://*.:80", "is not a host name"),
            ("tcp://10.0.0.300:80", "is not an IP address"),
            ("tcp://10.0.0.0/33:80", "prefix length"),
            ("tcp://10.0.0.1:0", "not 1-65535"),
            ("tcp://10.0.0.1:http", "not 1-65535"),
            ("tcp://[::1:80", "unclosed"),
            ("tcp://:80", "no host"),
        ] {
            let error =
                OutboundPolicy::for_pod(Some(&annotations(value)), &[], true).expect_err(value);
            assert!(error.contains(GRANTS_ANNOTATION), "{error}");
            assert!(error.contains(says), "{value}: {error}");
        }
    }

    #[test]
    fn a_udp_peer_heard_from_may_be_answered_unless_the_node_denies_it() {
        let guest = GuestNetwork::new(
            None,
            OutboundPolicy::for_pod(None, &default_node_deny(), true).expect("policy"),
            DenialReporter::silent(),
            None,
        );
        let client = addr("10.244.1.9:40000");
        let udp = Use::Connect(Protocol::Udp);
        assert!(!guest.check(client, udp), "not granted before it was heard");
        assert!(guest.check(client, Use::Receive));
        assert!(guest.check(client, udp), "a reply");
        assert!(
            !guest.check(client, Use::Connect(Protocol::Tcp)),
            "TCP is no reply"
        );
        let metadata = addr("169.254.169.254:53");
        assert!(guest.check(metadata, Use::Receive));
        assert!(!guest.check(metadata, udp), "the deny list wins");
        // The memory is bounded: the first peer is forgotten after MAX_UDP_PEERS others.
        for i in 0..MAX_UDP_PEERS {
            let port = u16::try_from(i % 60000).expect("port") + 1;
            let ip = [10, 1, (i / 60000) as u8, 1];
            assert!(guest.check(SocketAddr::new(ip.into(), port), Use::Receive));
        }
        assert!(!guest.check(client, udp));
    }

    #[test]
    fn each_destination_is_reported_once_and_reports_are_bounded() {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = reports.clone();
        let reporter = DenialReporter::new(move |m| sink.lock().expect("lock").push(m));
        for _ in 0..3 {
            reporter.denied(Protocol::Tcp, addr("10.0.0.1:80"), &Denial::NotGranted);
        }
        reporter.denied(Protocol::Udp, addr("10.0.0.1:80"), &Denial::NotGranted);
        assert_eq!(reports.lock().expect("lock").len(), 2);
        for port in 1..200 {
            reporter.denied(
                Protocol::Tcp,
                SocketAddr::new([10, 0, 0, 2].into(), port),
                &Denial::NotGranted,
            );
        }
        assert_eq!(reports.lock().expect("lock").len(), MAX_REPORTED_DENIALS);
        let first = reports.lock().expect("lock")[0].clone();
        assert!(first.contains("tcp://10.0.0.1:80"), "{first}");
        assert!(first.contains(GRANTS_ANNOTATION), "{first}");
    }
}
