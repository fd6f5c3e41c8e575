//! Pod networking through CNI on test hosts (`krustlet_e2e::testhost`): each networked node
//! runs in a network namespace of its own with the CNI reference plugins, kube-proxy and the
//! cluster DNS, and clients are commands run in another node's host, as a user on another
//! machine of the cluster would run them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use krustlet_e2e::node::KrustletNode;
use krustlet_e2e::pods::for_node;
use krustlet_e2e::testhost::TestHost;
use krustlet_e2e::{TestNamespace, kubectl, workloads};
use kube::api::{ListParams, PostParams};
use serde_json::json;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);

/// Whether `ip` is in `cidr` (`a.b.c.d/n`).
fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<Ipv4Addr>(), bits.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// `curl -sS` of `url` from inside `host`, retried until it answers 2xx or `timeout` passes
/// (kube-proxy and CoreDNS pick up new Services within a few seconds); the body.
async fn curl_from(host: &TestHost, url: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = host
            .command("curl")
            .args(["-sS", "--fail", "--max-time", "5", url])
            .output()
            .expect("prerequisite missing: curl");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "curl {url} from {} failed for {timeout:?}: {}",
            host.netns(),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The addresses of the ready endpoints of Service `name`'s EndpointSlices, as kubectl shows
/// them.
fn endpoint_addresses(ns: &str, name: &str) -> BTreeSet<String> {
    let out = kubectl(&[
        "get",
        "endpointslices",
        "-n",
        ns,
        "-l",
        &format!("kubernetes.io/service-name={name}"),
        "-o",
        "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{\"\\n\"}{end}",
    ])
    .expect("kubectl get endpointslices");
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A Deployment of `replicas` http components on `node`, listening on 8080, with `app: name`.
fn web_deployment(name: &str, node: &str, replicas: i32) -> Deployment {
    let pod = for_node(
        json!({
            "metadata": {"labels": {"app": name}},
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "web",
                    "image": workloads::http_component(),
                    "ports": [{"containerPort": 8080}],
                    "env": [{"name": "POD_NAME",
                             "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
                }]
            }
        }),
        node,
    );
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod
        }
    }))
    .expect("deployment")
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .expect("service")
}

/// The deployment's pods once `want` of them are Ready: name -> pod IP.
async fn ready_pods(ns: &TestNamespace, app: &str, want: usize) -> Vec<(String, Ipv4Addr)> {
    let pods = ns.api::<Pod>();
    let deadline = Instant::now() + LONG;
    loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .expect("list pods");
        let ready: Vec<(String, Ipv4Addr)> = list
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|p| {
                Some((
                    p.metadata.name.clone()?,
                    p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?,
                ))
            })
            .collect();
        if ready.len() == want {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "{want} ready pods of {app} not there within {LONG:?}: {:#?}",
            list.items
                .iter()
                .map(|p| (&p.metadata.name, &p.status))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn three_http_replicas_get_pod_ips_and_answer_by_pod_ip_cluster_ip_and_dns_name() {
    let ns = TestNamespace::new("net-web").await.expect("namespace");
    let server = KrustletNode::start_networked(KRUSTLET, "net-srv", &[])
        .await
        .expect("networked node");
    let client = KrustletNode::start_networked(KRUSTLET, "net-cli", &[])
        .await
        .expect("networked client node");
    let client_host = client.host().expect("test host");
    let pod_cidr = kubectl(&[
        "get",
        "node",
        server.name(),
        "-o",
        "jsonpath={.spec.podCIDR}",
    ])
    .expect("podCIDR");
    ns.api::<Deployment>()
        .create(
            &PostParams::default(),
            &web_deployment("web", server.name(), 3),
        )
        .await
        .expect("create deployment");
    ns.api::<Service>()
        .create(&PostParams::default(), &service("web"))
        .await
        .expect("create service");

    // Three distinct addresses from the node's podCIDR, none of them the node's.
    let pods = ready_pods(&ns, "web", 3).await;
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(ips.len(), 3, "pod IPs not distinct: {pods:?}");
    for ip in &ips {
        assert!(in_cidr(*ip, &pod_cidr), "{ip} not in {pod_cidr}");
        assert_ne!(std::net::IpAddr::from(*ip), server.ip());
    }

    // Each answers on :8080 at its own IP, from the other host.
    for (name, ip) in &pods {
        let body = curl_from(client_host, &format!("http://{ip}:8080/"), LONG).await;
        assert_eq!(body, format!("hello from {name}\n"));
    }

    // The EndpointSlice lists all three.
    let deadline = Instant::now() + LONG;
    let want: BTreeSet<String> = ips.iter().map(|ip| ip.to_string()).collect();
    loop {
        let got = endpoint_addresses(ns.name(), "web");
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "EndpointSlice of web: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Through the ClusterIP (kube-proxy) and by DNS name (CoreDNS), every replica answers.
    let cluster_ip = kubectl(&[
        "get",
        "service",
        "web",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
    .expect("clusterIP");
    let dns = format!("web.{}.svc.cluster.local", ns.name());
    for base in [format!("http://{cluster_ip}/"), format!("http://{dns}/")] {
        let mut seen = BTreeSet::new();
        for _ in 0..60 {
            seen.insert(curl_from(client_host, &base, LONG).await);
            if seen.len() == 3 {
                break;
            }
        }
        let want: BTreeSet<String> = pods
            .iter()
            .map(|(name, _)| format!("hello from {name}\n"))
            .collect();
        assert_eq!(seen, want, "replicas answering at {base}");
    }
}
