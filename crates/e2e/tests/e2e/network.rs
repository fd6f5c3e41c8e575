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

/// Waits up to `timeout` until exactly `want` pods are labelled `app` and `want` of them are
/// `what` (`holds`) with a pod IP: (name, IP).
async fn pods_that(
    ns: &TestNamespace,
    app: &str,
    want: usize,
    timeout: Duration,
    what: &str,
    holds: impl Fn(&Pod) -> bool,
) -> Vec<(String, Ipv4Addr)> {
    let pods = ns.api::<Pod>();
    let deadline = Instant::now() + timeout;
    loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .expect("list pods");
        let found: Vec<(String, Ipv4Addr)> = list
            .items
            .iter()
            .filter(|p| holds(p))
            .filter_map(|p| {
                Some((
                    p.metadata.name.clone()?,
                    p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?,
                ))
            })
            .collect();
        if found.len() == want && list.items.len() == want {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{want} {what} pods of {app} not there within {timeout:?}: {:#?}",
            list.items
                .iter()
                .map(|p| (&p.metadata.name, &p.status))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The deployment's pods once `want` of them are Ready: name -> pod IP.
async fn ready_pods(ns: &TestNamespace, app: &str, want: usize) -> Vec<(String, Ipv4Addr)> {
    pods_that(ns, app, want, LONG, "ready", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await
}

/// Waits until `want` pods labelled `app` run with a pod IP: (name, IP).
async fn wait_running(ns: &TestNamespace, app: &str, want: usize) -> Vec<(String, Ipv4Addr)> {
    pods_that(ns, app, want, Duration::from_secs(300), "running", |p| {
        krustlet_e2e::pods::phase(p) == "Running"
    })
    .await
}

/// Two networked nodes, each in a test host of its own: `(server, client)`.
async fn two_networked_nodes(prefix: &str) -> (KrustletNode, KrustletNode) {
    let server = KrustletNode::start_networked(KRUSTLET, &format!("{prefix}-a"), &[])
        .await
        .expect("networked node");
    let client = KrustletNode::start_networked(KRUSTLET, &format!("{prefix}-b"), &[])
        .await
        .expect("second networked node");
    (server, client)
}

#[tokio::test]
async fn three_http_replicas_get_pod_ips_and_answer_by_pod_ip_cluster_ip_and_dns_name() {
    let ns = TestNamespace::new("net-web").await.expect("namespace");
    let (server, client) = two_networked_nodes("net-web").await;
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
        assert!(
            pod_cidr
                .parse::<kubelet::network::outbound::Cidr>()
                .is_ok_and(|cidr| cidr.contains((*ip).into())),
            "{ip} not in {pod_cidr}"
        );
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

/// A pod of `labels` running the http component on :8080 on `node`; `extra` is merged into
/// its container (probes, env).
fn web_pod(name: &str, node: &str, labels: serde_json::Value, extra: serde_json::Value) -> Pod {
    let mut container = json!({
        "name": "web",
        "image": workloads::http_component(),
        "ports": [{"containerPort": 8080}],
        "env": [{"name": "POD_NAME", "value": name}]
    });
    if let (Some(into), serde_json::Value::Object(from)) = (container.as_object_mut(), extra) {
        into.extend(from);
    }
    serde_json::from_value(for_node(
        json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"terminationGracePeriodSeconds": 2, "containers": [container]}
        }),
        node,
    ))
    .expect("pod")
}

#[tokio::test]
async fn a_failing_readiness_probe_takes_a_pod_out_of_its_service_and_liveness_restarts_it() {
    let ns = TestNamespace::new("net-probe").await.expect("namespace");
    let (server, client) = two_networked_nodes("net-probe").await;
    let client_host = client.host().expect("test host");
    let pods = ns.api::<Pod>();
    let probe = json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1});
    pods.create(
        &PostParams::default(),
        &web_pod(
            "steady",
            server.name(),
            json!({"app": "backend"}),
            json!({"readinessProbe": probe}),
        ),
    )
    .await
    .expect("create steady");
    // Healthy for 25 s from now, then /healthz fails: readiness drops it at the first
    // failure, liveness restarts it after three.
    let fail_after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 25;
    let mut liveness = probe.clone();
    liveness["failureThreshold"] = json!(3);
    let mut readiness = probe.clone();
    readiness["failureThreshold"] = json!(1);
    pods.create(
        &PostParams::default(),
        &web_pod(
            "flaky",
            server.name(),
            json!({"app": "backend"}),
            json!({
                "env": [{"name": "POD_NAME", "value": "flaky"},
                        {"name": "HEALTHZ_FAIL_AFTER", "value": fail_after.to_string()}],
                "readinessProbe": readiness,
                "livenessProbe": liveness
            }),
        ),
    )
    .await
    .expect("create flaky");
    ns.api::<Service>()
        .create(&PostParams::default(), &service("backend"))
        .await
        .expect("create service");
    let ready = ready_pods(&ns, "backend", 2).await;
    let ip_of = |name: &str| {
        ready
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ip)| ip.to_string())
            .expect("pod ip")
    };
    let both: BTreeSet<String> = [ip_of("steady"), ip_of("flaky")].into();
    let deadline = Instant::now() + LONG;
    while endpoint_addresses(ns.name(), "backend") != both {
        assert!(
            Instant::now() < deadline,
            "both pods never in the EndpointSlice"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Once flaky's /healthz fails, only steady is behind the Service.
    let steady: BTreeSet<String> = [ip_of("steady")].into();
    let deadline = Instant::now() + LONG;
    while endpoint_addresses(ns.name(), "backend") != steady {
        assert!(
            Instant::now() < deadline,
            "flaky never left the EndpointSlice: {:?}",
            endpoint_addresses(ns.name(), "backend")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // kube-proxy on the client's host applies the EndpointSlice a moment after the API shows
    // it: wait for 20 answers in a row from steady (with flaky still in rotation, the odds of
    // that are 2^-20).
    let service = format!("http://backend.{}.svc.cluster.local/", ns.name());
    let deadline = Instant::now() + LONG;
    let mut in_a_row = 0;
    while in_a_row < 20 {
        let answer = curl_from(client_host, &service, LONG).await;
        in_a_row = if answer == "hello from steady\n" {
            in_a_row + 1
        } else {
            0
        };
        assert!(
            Instant::now() < deadline,
            "the Service still sends requests to flaky: {answer:?}"
        );
    }

    // Liveness restarts it, with the kubelet's events.
    let restarted = krustlet_e2e::pods::wait_for(&pods, "flaky", LONG, "a restart", |p| {
        krustlet_e2e::pods::container_status(p, "web").is_some_and(|c| c.restart_count >= 1)
    })
    .await;
    restarted.expect("flaky restarted by its liveness probe");
    let events = kubectl(&[
        "get",
        "events",
        "-n",
        ns.name(),
        "--field-selector",
        "involvedObject.name=flaky",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ])
    .expect("events");
    assert!(events.contains("Unhealthy"), "{events}");
    assert!(events.contains("Killing"), "{events}");
}

/// What a node's pods hold on its host: pod namespaces, veths, and host-local allocations.
#[derive(Debug, Default, PartialEq)]
struct Held {
    namespaces: Vec<String>,
    veths: Vec<String>,
    addresses: Vec<String>,
}

fn held(node: &KrustletNode) -> Held {
    let names = |dir: std::path::PathBuf| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let host = node.host().expect("test host");
    let links = std::process::Command::new("ip")
        .args(["-n", host.netns(), "-o", "link", "show", "type", "veth"])
        .output()
        .expect("ip link");
    let veths = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name != "eth0")
        .collect();
    Held {
        namespaces: names(node.data_dir().join("netns")),
        veths,
        // host-local keeps one file per allocated address, beside its lock and cursor files.
        addresses: names(node.data_dir().join("ipam/krustlet-e2e"))
            .into_iter()
            .filter(|n| n.parse::<Ipv4Addr>().is_ok())
            .collect(),
    }
}

fn sleeper(name: &str, node: &str) -> Pod {
    serde_json::from_value(for_node(
        json!({
            "metadata": {"name": name, "labels": {"app": "sleeper"}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": workloads::multitool(),
                                "args": ["sleep", "3600"]}]
            }
        }),
        node,
    ))
    .expect("pod")
}

/// Waits until the node's pods hold exactly `count` of each resource.
async fn wait_held(node: &KrustletNode, count: usize) -> Held {
    let deadline = Instant::now() + LONG;
    loop {
        let now = held(node);
        if now.namespaces.len() == count && now.veths.len() == count && now.addresses.len() == count
        {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "want {count} of each, the host holds {now:#?}; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn networked_pods_leave_no_namespace_veth_or_address_behind_even_after_kill_9() {
    let ns = TestNamespace::new("net-leak").await.expect("namespace");
    let mut node = KrustletNode::start_networked(KRUSTLET, "net-leak", &["--max-pods=150"])
        .await
        .expect("networked node");
    let pods = ns.api::<Pod>();

    // 100 pods, each with its own address, and all gone without a trace once deleted.
    for i in 0..100 {
        pods.create(
            &PostParams::default(),
            &sleeper(&format!("s{i}"), node.name()),
        )
        .await
        .expect("create");
    }
    let running = wait_running(&ns, "sleeper", 100).await;
    let ips: BTreeSet<Ipv4Addr> = running.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(ips.len(), 100, "pod IPs not distinct");
    wait_held(&node, 100).await;
    kubectl(&[
        "delete",
        "pods",
        "--all",
        "-n",
        ns.name(),
        "--wait=true",
        "--timeout=120s",
    ])
    .expect("delete 100 pods");
    assert_eq!(wait_held(&node, 0).await, Held::default());

    // kill -9 with ten pods up; five are force-deleted while the node is down. The restarted
    // node keeps the five (their addresses included) and frees the rest.
    for i in 0..10 {
        pods.create(
            &PostParams::default(),
            &sleeper(&format!("k{i}"), node.name()),
        )
        .await
        .expect("create");
    }
    wait_running(&ns, "sleeper", 10).await;
    wait_held(&node, 10).await;
    node.signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9");
    node.wait_exit(Duration::from_secs(30))
        .await
        .expect("killed");
    for i in 0..5 {
        kubectl(&[
            "delete",
            "pod",
            &format!("k{i}"),
            "-n",
            ns.name(),
            "--grace-period=0",
            "--force",
        ])
        .expect("force delete");
    }
    node.restart().expect("restart");
    wait_held(&node, 5).await;
    wait_running(&ns, "sleeper", 5).await;
    kubectl(&[
        "delete",
        "pods",
        "--all",
        "-n",
        ns.name(),
        "--wait=true",
        "--timeout=120s",
    ])
    .expect("delete the rest");
    assert_eq!(wait_held(&node, 0).await, Held::default());
}

/// Serves inside `host` until `deadline`: a TCP server on `tcp_port` answering each connection
/// with an HTTP response naming `who`, and a UDP echo on `udp_port`. Bounded in time; the
/// thread ends by itself.
fn serve_in(host: &TestHost, who: &'static str, tcp_port: u16, udp_port: u16, deadline: Instant) {
    use std::io::{Read, Write};
    let ns = kubelet::network::netns::NetNs::open(&host.netns_path()).expect("host namespace");
    let (tcp, udp) = ns
        .run(|| {
            let tcp = std::net::TcpListener::bind(("0.0.0.0", tcp_port)).expect("tcp bind");
            let udp = std::net::UdpSocket::bind(("0.0.0.0", udp_port)).expect("udp bind");
            (tcp, udp)
        })
        .expect("enter host");
    tcp.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while Instant::now() < deadline {
            match tcp.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf);
                    let body = format!("hello from {who}\n");
                    let _ = write!(
                        conn,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        }
    });
}

/// A pod of one `sockets` container per `(name, args)`, never restarted.
fn sockets_pod(
    name: &str,
    node: &str,
    grants: Option<&str>,
    containers: &[(&str, &[&str])],
) -> Pod {
    let containers: Vec<serde_json::Value> = containers
        .iter()
        .map(|(c, args)| json!({"name": c, "image": workloads::sockets_component(), "args": args}))
        .collect();
    let mut pod = json!({
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": containers}
    });
    if let Some(grants) = grants {
        pod["metadata"]["annotations"] = json!({"krustlet.dev/allowed-outbound": grants});
    }
    serde_json::from_value(for_node(pod, node)).expect("pod")
}

/// `kubectl logs` of a container, once the pod has ended.
async fn ended_logs(ns: &TestNamespace, pod: &str, container: &str) -> String {
    krustlet_e2e::pods::wait_for(&ns.api::<Pod>(), pod, LONG, "the end", |p| {
        matches!(krustlet_e2e::pods::phase(p), "Succeeded" | "Failed")
    })
    .await
    .expect("pod ended");
    kubectl(&["logs", "-n", ns.name(), pod, "-c", container]).expect("logs")
}

#[tokio::test]
async fn a_wasi_sockets_component_serves_tcp_and_udp_echo_on_its_pod_ip() {
    use std::io::{Read, Write};
    let ns = TestNamespace::new("net-echo").await.expect("namespace");
    let node = KrustletNode::start_networked(KRUSTLET, "net-echo", &[])
        .await
        .expect("networked node");
    let client = TestHost::create().expect("client host");
    let pods = ns.api::<Pod>();
    pods.create(
        &PostParams::default(),
        &sockets_pod(
            "echo",
            node.name(),
            None,
            &[
                ("tcp", &["tcp-echo", "7000"]),
                ("udp", &["udp-echo", "7001"]),
            ],
        ),
    )
    .await
    .expect("create");
    let pod = krustlet_e2e::pods::wait_for(&pods, "echo", LONG, "running with an IP", |p| {
        krustlet_e2e::pods::phase(p) == "Running"
            && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
    })
    .await
    .expect("running");
    let ip: Ipv4Addr = pod
        .status
        .and_then(|s| s.pod_ip)
        .and_then(|ip| ip.parse().ok())
        .expect("pod ip");
    let deadline = Instant::now() + LONG;
    for container in ["tcp", "udp"] {
        while !kubectl(&["logs", "-n", ns.name(), "echo", "-c", container])
            .unwrap_or_default()
            .contains("listening")
        {
            assert!(Instant::now() < deadline, "{container} echo never listened");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    // From another host, as any client on the cluster network.
    let ns_file = kubelet::network::netns::NetNs::open(&client.netns_path()).expect("client ns");
    let (tcp_reply, udp_reply) = ns_file
        .run(|| {
            let mut conn =
                std::net::TcpStream::connect_timeout(&(ip, 7000).into(), Duration::from_secs(10))
                    .expect("connect to the echo server");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            conn.write_all(b"hello over tcp\n").expect("send");
            conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut tcp_reply = String::new();
            conn.read_to_string(&mut tcp_reply).expect("echo");
            let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
            udp.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut buf = [0u8; 1500];
            let mut udp_reply = String::new();
            // UDP may lose a datagram: a few tries, bounded.
            for _ in 0..5 {
                udp.send_to(b"hello over udp", (ip, 7001)).expect("send");
                if let Ok((n, _)) = udp.recv_from(&mut buf) {
                    udp_reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                    break;
                }
            }
            (tcp_reply, udp_reply)
        })
        .expect("client");
    assert_eq!(tcp_reply, "hello over tcp\n");
    assert_eq!(udp_reply, "hello over udp");
    let log = kubectl(&["logs", "-n", ns.name(), "echo", "-c", "tcp"]).expect("logs");
    assert!(log.contains(&format!("accepted {}", client.ip())), "{log}");
    // `kubectl exec` runs another instance with the container's sockets: inside the pod's
    // namespace, where the pod's loopback is its own (no grant needed).
    let out = kubectl(&[
        "exec",
        "-n",
        ns.name(),
        "echo",
        "-c",
        "udp",
        "--",
        "sockets",
        "tcp-send",
        "127.0.0.1",
        "7000",
        "hello from exec\n",
    ])
    .expect("kubectl exec tcp-send");
    assert_eq!(out, "hello from exec\n");
}

#[tokio::test]
async fn outbound_connections_need_a_grant_and_the_node_deny_list_wins() {
    let ns = TestNamespace::new("net-grant").await.expect("namespace");
    let allowed = TestHost::create().expect("host");
    let forbidden = TestHost::create().expect("host");
    let deny = format!(
        "--wasm-outbound-deny=169.254.169.254/32,{}/32",
        forbidden.ip()
    );
    let node = KrustletNode::start_networked(KRUSTLET, "net-grant", &[&deny])
        .await
        .expect("networked node");
    let until = Instant::now() + Duration::from_secs(300);
    serve_in(&allowed, "allowed", 8080, 7001, until);
    serve_in(&forbidden, "forbidden", 8080, 7001, until);
    let pods = ns.api::<Pod>();
    let (a, f) = (allowed.ip().to_string(), forbidden.ip().to_string());
    let get = "GET / HTTP/1.0\r\n\r\n";
    let to_allowed = ["tcp-send", a.as_str(), "8080", get];
    let to_forbidden = ["tcp-send", f.as_str(), "8080", get];
    let udp_to_allowed = ["udp-send", a.as_str(), "7001", "ping over udp"];
    let create = |pod: Pod| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("create")
        }
    };
    // No grant: refused in the guest, with one event naming the destination.
    create(sockets_pod(
        "ungranted",
        node.name(),
        None,
        &[("c", &to_allowed)],
    ))
    .await;
    // Granted: the HTTP server answers, and UDP goes there and back.
    let grants = format!("tcp://{a}/32:8080, udp://{a}:7001");
    create(sockets_pod(
        "granted",
        node.name(),
        Some(&grants),
        &[("http", &to_allowed), ("udp", &udp_to_allowed)],
    ))
    .await;
    // Everything granted, but the node denies that host.
    create(sockets_pod(
        "node-denied",
        node.name(),
        Some("*"),
        &[("c", &to_forbidden)],
    ))
    .await;

    let log = ended_logs(&ns, "ungranted", "c").await;
    assert!(
        log.contains(&format!("tcp-send {a}:8080: connect: access-denied")),
        "{log}"
    );
    let events = ns.api::<k8s_openapi::api::core::v1::Event>();
    krustlet_e2e::pods::wait_for_event(
        &events,
        "OutboundDenied",
        &format!("outbound tcp connection to {a}:8080 denied: the pod does not grant it"),
        LONG,
    )
    .await
    .expect("OutboundDenied event");

    let log = ended_logs(&ns, "granted", "http").await;
    assert!(log.contains("HTTP/1.0 200 OK"), "{log}");
    assert!(log.contains("hello from allowed"), "{log}");
    let log = ended_logs(&ns, "granted", "udp").await;
    assert!(log.contains("ping over udp"), "{log}");

    let log = ended_logs(&ns, "node-denied", "c").await;
    assert!(log.contains("connect: access-denied"), "{log}");
    krustlet_e2e::pods::wait_for_event(
        &events,
        "OutboundDenied",
        &format!("to {f}:8080 denied by the node's --wasm-outbound-deny {f}/32"),
        LONG,
    )
    .await
    .expect("node deny event");
    // One event per destination, however often the guest tries.
    let reasons = krustlet_e2e::pods::event_reasons(&events, "ungranted")
        .await
        .expect("events");
    assert_eq!(
        reasons.iter().filter(|r| *r == "OutboundDenied").count(),
        1,
        "{reasons:?}"
    );
}

#[tokio::test]
async fn pods_on_two_nodes_reach_each_other_by_pod_ip_and_by_service_ip_and_name() {
    let ns = TestNamespace::new("net-two").await.expect("namespace");
    let (a, b) = two_networked_nodes("net-two").await;
    let pods = ns.api::<Pod>();
    // An echo server on each node, labelled for a Service.
    for (name, node) in [("echo-a", a.name()), ("echo-b", b.name())] {
        let mut pod = sockets_pod(name, node, None, &[("tcp", &["tcp-echo", "7000"])]);
        pod.metadata.labels = Some([("app".to_string(), "echo".to_string())].into());
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create echo");
    }
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 7000, "protocol": "TCP"}]}
    }))
    .expect("service");
    ns.api::<Service>()
        .create(&PostParams::default(), &service)
        .await
        .expect("create service");
    let ip_of = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
    let mut ips = Vec::new();
    for name in ["echo-a", "echo-b"] {
        let pod = krustlet_e2e::pods::wait_for(&pods, name, LONG, "running", |p| {
            krustlet_e2e::pods::phase(p) == "Running" && ip_of(p).is_some()
        })
        .await
        .expect("running");
        ips.push(ip_of(&pod).expect("ip"));
    }
    let cluster_ip = kubectl(&[
        "get",
        "service",
        "echo",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
    .expect("clusterIP");
    // Each node's client reaches the other node's pod by its IP, and a pod behind the
    // Service's ClusterIP (kube-proxy in the client's node), granted by CIDR.
    // By name, the guest looks the Service up through the cluster DNS (its pod's
    // ClusterFirst search list), and the grant names the Service.
    let grants = format!(
        "tcp://10.244.0.0/16:7000, tcp://10.0.0.0/24:7000, tcp://echo.{}.svc.cluster.local:7000",
        ns.name()
    );
    let cases = [
        ("a-to-b", a.name(), ips[1].clone()),
        ("b-to-a", b.name(), ips[0].clone()),
        ("a-to-service", a.name(), cluster_ip.clone()),
        ("b-to-service", b.name(), cluster_ip.clone()),
        ("a-by-name", a.name(), "echo".to_string()),
        (
            "b-by-fqdn",
            b.name(),
            format!("echo.{}.svc.cluster.local", ns.name()),
        ),
    ];
    for (name, node, target) in &cases {
        let message = format!("hello from {name}\n");
        // Retried: the echo may not listen yet, kube-proxy may not have the Service yet.
        let args = [
            "tcp-send",
            target.as_str(),
            "7000",
            message.as_str(),
            "--repeat",
            "20",
            "--interval-ms",
            "500",
        ];
        pods.create(
            &PostParams::default(),
            &sockets_pod(name, node, Some(&grants), &[("c", &args)]),
        )
        .await
        .expect("create client");
    }
    for (name, _, target) in &cases {
        let log = ended_logs(&ns, name, "c").await;
        assert!(
            log.contains(&format!("hello from {name}\n")),
            "{name} got no echo from {target}: {log}"
        );
    }
}

#[tokio::test]
async fn on_the_node_network_a_guest_can_neither_listen_nor_reach_the_node_whatever_it_grants() {
    let ns = TestNamespace::new("net-node").await.expect("namespace");
    // No CNI: the pod shares the node's network (and its non-loopback address).
    let node = KrustletNode::start_addressed(KRUSTLET, "net-node", &[]).expect("node");
    node.wait_ready("True", LONG).await.expect("ready");
    let node_ip = node.ip().to_string();
    let port = node.port().to_string();
    ns.api::<Pod>()
        .create(
            &PostParams::default(),
            &sockets_pod(
                "hostile",
                node.name(),
                Some("*"),
                &[
                    (
                        "loopback",
                        &["tcp-send", "127.0.0.1", &port, "GET / HTTP/1.0\r\n\r\n"],
                    ),
                    (
                        "node",
                        &["tcp-send", &node_ip, &port, "GET / HTTP/1.0\r\n\r\n"],
                    ),
                    ("listen", &["tcp-echo", "7000"]),
                ],
            ),
        )
        .await
        .expect("create");
    for container in ["loopback", "node", "listen"] {
        let log = ended_logs(&ns, "hostile", container).await;
        assert!(log.contains("access-denied"), "{container}: {log}");
    }
    let events = ns.api::<k8s_openapi::api::core::v1::Event>();
    for text in [
        format!("connection to 127.0.0.1:{port} denied: the pod shares the node's network"),
        format!("connection to {node_ip}:{port} denied: the pod shares the node's network"),
        "listening on tcp 0.0.0.0:7000 denied".to_string(),
    ] {
        krustlet_e2e::pods::wait_for_event(&events, "OutboundDenied", &text, LONG)
            .await
            .expect("an OutboundDenied event");
    }
}

#[tokio::test]
async fn an_http_components_outgoing_requests_follow_its_grants_and_its_pods_dns() {
    let ns = TestNamespace::new("net-fetch").await.expect("namespace");
    let backend = TestHost::create().expect("host");
    let node = KrustletNode::start_networked(KRUSTLET, "net-fetch", &[])
        .await
        .expect("networked node");
    let host = node.host().expect("test host");
    serve_in(
        &backend,
        "backend",
        8080,
        7002,
        Instant::now() + Duration::from_secs(300),
    );
    let b = backend.ip().to_string();
    let pods = ns.api::<Pod>();
    let dns = format!("web.{}.svc.cluster.local", ns.name());
    let mut fetcher = web_pod("fetcher", node.name(), json!({"app": "fetcher"}), json!({}));
    fetcher.metadata.annotations = Some(
        [(
            "krustlet.dev/allowed-outbound".to_string(),
            format!("http://{b}:8080, http://{dns}"),
        )]
        .into(),
    );
    for pod in [
        web_pod("web", node.name(), json!({"app": "web"}), json!({})),
        fetcher,
        web_pod("closed", node.name(), json!({"app": "closed"}), json!({})),
    ] {
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create");
    }
    ns.api::<Service>()
        .create(&PostParams::default(), &service("web"))
        .await
        .expect("create service");
    let fetcher_ip = wait_running(&ns, "fetcher", 1).await[0].1;
    let closed_ip = wait_running(&ns, "closed", 1).await[0].1;
    wait_running(&ns, "web", 1).await;
    let fetch = |ip: Ipv4Addr, url: &str| format!("http://{ip}:8080/fetch?url={url}");

    // Granted: a host outside the cluster by address, a Service by its DNS name (the pod's
    // DNS, CoreDNS), and by its short name through the pod's search list.
    let body = curl_from(host, &fetch(fetcher_ip, &format!("http://{b}:8080/")), LONG).await;
    assert_eq!(body, "fetched 200: hello from backend\n");
    for url in [format!("http://{dns}/"), "http://web/".to_string()] {
        let body = curl_from(host, &fetch(fetcher_ip, &url), LONG).await;
        assert_eq!(body, "fetched 200: hello from web\n", "{url}");
    }

    // Not granted: the guest gets HTTP-request-denied and the pod one event.
    let denied = |url: String| {
        let out = host
            .command("curl")
            .args(["-sS", "--max-time", "20", &url])
            .output()
            .expect("prerequisite missing: curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        denied(fetch(closed_ip, &format!("http://{b}:8080/"))),
        "fetch failed: HTTP-request-denied\n"
    );
    // A granted pod's request to a port it was not granted is denied too.
    assert_eq!(
        denied(fetch(fetcher_ip, &format!("http://{b}:7002/"))),
        "fetch failed: HTTP-request-denied\n"
    );
    let events = ns.api::<k8s_openapi::api::core::v1::Event>();
    krustlet_e2e::pods::wait_for_event(
        &events,
        "OutboundDenied",
        &format!("outbound tcp connection to {b}:8080 denied"),
        LONG,
    )
    .await
    .expect("OutboundDenied event");
}
