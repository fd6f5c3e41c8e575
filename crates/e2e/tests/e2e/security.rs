//! Hostile input against the node (issue 15, findings 7 and 8): crowds of idle TLS connections
//! and bogus bearer tokens on the kubelet API, HEAD requests, oversized headers and idle
//! connections, a malformed image pull secret, log file permissions and a huge log read
//! through the API, and the files of pods deleted while the node was down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use krustlet_e2e::kubelet_api::{
    Identity, apiserver_identity, https_client, https_client_with_timeout, kubelet_get, tls_config,
};
use krustlet_e2e::pods::{container_status, create, for_node, wait_for_phase};
use krustlet_e2e::{KrustletNode, TestNamespace, kubectl, workloads};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(180);

async fn ready_node(prefix: &str, args: &[&str]) -> KrustletNode {
    let node = KrustletNode::start(KRUSTLET, prefix, args).expect("start node");
    node.wait_ready("True", Duration::from_secs(120))
        .await
        .expect("node Ready");
    // Waits for the issued serving certificate, the only one the cluster CA verifies.
    kubelet_get(&node, "/healthz").await;
    node
}

/// A multitool pod on `node` running `args`.
fn multitool_pod(name: &str, node: &str, args: &[&str], restart: &str) -> serde_json::Value {
    for_node(
        serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": restart,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "main", "image": workloads::multitool(), "args": args}]
            }
        }),
        node,
    )
}

/// A TLS connection to the node's kubelet API, handshake done, nothing sent.
async fn tls_connect(
    port: u16,
    identity: Option<Identity>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(identity)));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    connector.connect(name, tcp).await
}

/// The API server's count of TokenReview requests (all codes), from its own /metrics.
fn tokenreviews_total() -> f64 {
    let text = kubectl(&["get", "--raw", "/metrics"]).expect("apiserver metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{") && l.contains("resource=\"tokenreviews\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The node lease's renew time.
async fn lease_renewed(node: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(
        krustlet_e2e::cluster::client().await.expect("client"),
        "kube-node-lease",
    );
    let lease = leases.get_opt(node).await.ok()??;
    Some(format!("{:?}", lease.spec?.renew_time?))
}

#[tokio::test]
async fn idle_crowds_and_bogus_tokens_leave_the_node_ready_and_cost_one_review_per_token() {
    const CROWD: usize = 2000;
    const CAP: usize = 1000;
    let node = ready_node("abuse", &[&format!("--api-max-connections={CAP}")]).await;
    let ns = TestNamespace::new("abuse").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        multitool_pod("ticker", node.name(), &["tick", "0", "500"], "Always"),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "ticker", "Running", LONG)
        .await
        .expect("Running");

    // 2000 TLS connections that complete the handshake and then say nothing, 100 at a time.
    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..CROWD / 100 {
        let batch = futures::future::join_all((0..100).map(|_| {
            tokio::time::timeout(Duration::from_secs(20), tls_connect(node.port(), None))
        }))
        .await;
        for connection in batch {
            match connection {
                Ok(Ok(stream)) => held.push(stream),
                _ => refused += 1,
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the crowd took too long"
        );
    }
    eprintln!(
        "{} idle connections held, {refused} refused at the cap, in {:?}",
        held.len(),
        started.elapsed()
    );
    assert!(
        held.len() <= CAP,
        "{} connections held past the cap",
        held.len()
    );
    assert!(refused >= CROWD - CAP, "only {refused} refused");

    // While the crowd holds the API: the lease is renewed, the node Ready, the pod running.
    let renewed = lease_renewed(node.name()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while lease_renewed(node.name()).await == renewed {
        assert!(
            Instant::now() < deadline,
            "lease not renewed during the crowd; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    node.wait_ready("True", Duration::from_secs(10))
        .await
        .expect("Ready during the crowd");
    let pod = pods.get("ticker").await.expect("pod");
    let status = container_status(&pod, "main").expect("status");
    assert!(
        status
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .is_some(),
        "{status:?}"
    );
    assert_eq!(status.restart_count, 0);
    drop(held);

    // The API answers again once the crowd has gone (kubelet_get retries for a minute).
    assert!(kubelet_get(&node, "/pods").await.contains("ticker"));

    // 1000 requests with 10 distinct bogus tokens, 50 at a time.
    let reviews_logged = || node.log().matches("bearer token rejected").count();
    let (node_before, api_before) = (reviews_logged(), tokenreviews_total());
    let client = https_client(None);
    let url = format!("https://127.0.0.1:{}/pods", node.port());
    let statuses: Vec<u16> = futures::stream::iter(0..1000)
        .map(|i| {
            let request =
                client
                    .get(&url)
                    .bearer_auth(format!("bogus-{}-{}", i % 10, std::process::id()));
            async move {
                request
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let by_node = reviews_logged() - node_before;
    let by_api = tokenreviews_total() - api_before;
    eprintln!(
        "1000 bogus-token requests: {by_node} TokenReviews by the node, {by_api} seen by the API server"
    );
    assert!(
        by_node <= 10,
        "{by_node} TokenReviews for 10 distinct tokens"
    );
    // Other tests running alongside may review a few tokens of their own.
    assert!(by_api <= 40.0, "the API server saw {by_api} TokenReviews");
    node.wait_ready("True", Duration::from_secs(10))
        .await
        .expect("still Ready");
    assert_eq!(
        krustlet_e2e::pods::phase(&pods.get("ticker").await.expect("pod")),
        "Running"
    );
}

/// A cluster role and binding for a user, removed on drop (they outlive namespaces).
struct Grant(String);

impl Grant {
    fn new(user: &str, verb: &str, resource: &str) -> Self {
        let name = format!("{user}-{}", std::process::id());
        kubectl(&[
            "create",
            "clusterrole",
            &name,
            &format!("--verb={verb}"),
            &format!("--resource={resource}"),
        ])
        .expect("clusterrole");
        kubectl(&[
            "create",
            "clusterrolebinding",
            &name,
            &format!("--clusterrole={name}"),
            &format!("--user={user}"),
        ])
        .expect("clusterrolebinding");
        Self(name)
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "clusterrolebinding,clusterrole",
            &self.0,
            "--ignore-not-found",
        ]);
    }
}

#[tokio::test]
async fn head_has_no_verb_big_headers_are_refused_and_idle_connections_close() {
    let node = ready_node("limits", &["--api-idle-timeout=3s"]).await;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", node.port());

    // A user allowed exactly `get` on nodes/proxy may GET /pods but not HEAD it: upstream's
    // kubelet maps only POST, GET, PUT, PATCH and DELETE to verbs.
    let user = "e2e-proxy-getter";
    let _grant = Grant::new(user, "get", "nodes/proxy");
    let getter = https_client(Some(crate::api::user_certificate(user).await));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = getter.get(url("/pods")).send().await.expect("GET").status();
        if status == 200 {
            break;
        }
        // A denial is cached for 10 s, and RBAC takes a moment to apply.
        assert!(Instant::now() < deadline, "GET /pods stayed {status}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let head = getter.head(url("/pods")).send().await.expect("HEAD");
    assert_eq!(head.status(), 403, "HEAD is not `get`");

    // A request head over 1 MiB is refused with 431; half of it is fine.
    let anonymous = https_client(None);
    let big = "a".repeat((1 << 20) + 64 * 1024);
    let response = anonymous
        .get(url("/healthz"))
        .header("x-padding", &big)
        .send()
        .await
        .expect("big header");
    assert_eq!(response.status(), 431);
    let response = anonymous
        .get(url("/healthz"))
        .header("x-padding", &big[..512 * 1024])
        .send()
        .await
        .expect("half the header");
    assert_eq!(response.status(), 200);

    // A connection that sends nothing is closed after the idle timeout...
    let mut silent = tls_connect(node.port(), None).await.expect("connect");
    let opened = Instant::now();
    let mut buffer = [0; 1024];
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buffer))
        .await
        .expect("closed within a minute");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "closed after {:?}",
        opened.elapsed()
    );
    // ...and so is a keep-alive connection once its request is answered.
    let mut kept = tls_connect(node.port(), None).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    let ended =
        tokio::time::timeout(Duration::from_secs(60), kept.read_to_end(&mut response)).await;
    assert!(ended.is_ok(), "keep-alive connection not closed");
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));

    // A log stream that lasts longer than the idle timeout is a request in progress: not cut.
    let ns = TestNamespace::new("limits").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        multitool_pod("ticker", node.name(), &["tick", "0", "500"], "Always"),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "ticker", "Running", LONG)
        .await
        .expect("Running");
    let follower = https_client(Some(apiserver_identity()));
    let response = follower
        .get(url(&format!(
            "/containerLogs/{}/ticker/main?follow=true",
            ns.name()
        )))
        .send()
        .await
        .expect("follow");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let following = Instant::now();
    let mut late_chunks = 0;
    while following.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(5), body.next()).await {
            Ok(Some(Ok(_))) if following.elapsed() > Duration::from_secs(6) => late_chunks += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "the log stream ended after {:?}: {other:?}",
                following.elapsed()
            ),
        }
    }
    assert!(late_chunks > 0, "nothing streamed after the idle timeout");
}

#[tokio::test]
async fn a_malformed_pull_secret_is_named_in_an_event_without_its_content() {
    let node = KrustletNode::start(KRUSTLET, "pullsecret", &[]).expect("start node");
    node.wait_ready("True", Duration::from_secs(120))
        .await
        .expect("Ready");
    let ns = TestNamespace::new("pullsecret").await.expect("namespace");
    let payload = format!("hunter2-PAYLOAD-{}", std::process::id());
    // Valid JSON (the API server checks that much), but not a docker config: serde's message
    // would quote the offending value.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "broken"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": format!(r#"{{"auths":"{payload}"}}"#)}
    }))
    .expect("secret");
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let mut pod = multitool_pod("puller", node.name(), &["hello"], "Never");
    pod["spec"]["imagePullSecrets"] = serde_json::json!([{"name": "broken"}]);
    pod["spec"]["containers"][0]["imagePullPolicy"] = serde_json::json!("Always");
    let pods = ns.api::<Pod>();
    create(&pods, pod).await.expect("create");
    // The image is public: the pull goes on without the secret.
    wait_for_phase(&pods, "puller", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    let events: Api<Event> = ns.api();
    let deadline = Instant::now() + Duration::from_secs(60);
    let warning = loop {
        let list = events.list(&ListParams::default()).await.expect("events");
        if let Some(event) = list
            .items
            .iter()
            .find(|e| e.reason.as_deref() == Some("FailedToRetrieveImagePullSecret"))
        {
            for event in &list.items {
                let text = format!("{:?}", event);
                assert!(
                    !text.contains(&payload),
                    "an event holds the secret: {text}"
                );
            }
            break event.message.clone().unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "no FailedToRetrieveImagePullSecret event"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(warning.contains("\"broken\""), "{warning}");
    assert!(
        warning.contains(".dockerconfigjson is JSON but not a docker config"),
        "{warning}"
    );
    let log = node.log();
    assert!(
        log.contains("image pull secret"),
        "the node log says nothing"
    );
    assert!(!log.contains(&payload), "the node log holds the secret");
    // `kubectl describe` shows the same event.
    let described = kubectl(&["describe", "pod", "puller", "-n", ns.name()]).expect("describe");
    assert!(
        described.contains("FailedToRetrieveImagePullSecret"),
        "{described}"
    );
    assert!(!described.contains(&payload));
}

/// The node process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn log_files_are_0640_and_a_200_mib_log_streams_in_a_few_mib() {
    let node = ready_node("biglog", &[]).await;
    let ns = TestNamespace::new("biglog").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let created = create(
        &pods,
        multitool_pod("printer", node.name(), &["hello"], "Never"),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "printer", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    let uid = created.metadata.uid.expect("uid");
    let current: PathBuf = node
        .data_dir()
        .join("logs/pods")
        .join(format!("{}_printer_{uid}", ns.name()))
        .join("main/0.log");
    // containerd's mode for container logs: not readable by other users of the host.
    assert_eq!(mode(&current), 0o640, "{}", current.display());

    // 200 MiB in five rotated files before the current one.
    let line = format!("{}\n", "x".repeat(99));
    let entry = format!("2026-01-01T00:00:00.000000000Z stdout F {line}");
    let per_file = (40 << 20) / entry.len();
    for n in 0..5 {
        let stamp: jiff::Timestamp = format!("2026-01-01T00:00:0{n}Z").parse().expect("stamp");
        let path = kubelet::log::rotation::rotated_path(&current, stamp);
        std::fs::write(&path, entry.repeat(per_file)).expect("write rotated file");
    }
    // What the API returns: each entry's content and a newline.
    let current_text = std::fs::read_to_string(&current).expect("current log");
    let current_output: String = current_text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(|content| format!("{content}\n"))
        .collect();
    let expected = 5 * per_file * line.len() + current_output.len();

    let pid = node.pid().expect("pid");
    let before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let client = https_client_with_timeout(Some(apiserver_identity()), Duration::from_secs(900));
    let url = format!(
        "https://127.0.0.1:{}/containerLogs/{}/printer/main",
        node.port(),
        ns.name()
    );
    let started = Instant::now();
    let response = client.get(&url).send().await.expect("logs");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let (mut received, mut tail) = (0usize, Vec::new());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        received += chunk.len();
        tail.extend_from_slice(&chunk);
        let keep = tail.len().saturating_sub(4096);
        tail.drain(..keep);
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let growth_kib = peak.load(Ordering::Relaxed).saturating_sub(before);
    eprintln!(
        "streamed {received} bytes in {:?}; node RSS {before} KiB before, peak growth {growth_kib} KiB",
        started.elapsed()
    );
    assert_eq!(received, expected);
    assert!(String::from_utf8_lossy(&tail).ends_with(&current_output));
    assert!(
        growth_kib < 16 * 1024,
        "node RSS grew by {growth_kib} KiB reading the log"
    );
}

#[tokio::test]
async fn files_of_a_pod_deleted_while_the_node_was_down_are_removed_after_restart() {
    let mut node = KrustletNode::start(KRUSTLET, "orphans", &[]).expect("start");
    node.wait_ready("True", Duration::from_secs(120))
        .await
        .expect("Ready");
    let ns = TestNamespace::new("orphans").await.expect("namespace");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "creds"},
        "stringData": {"password": "s3cret"}
    }))
    .expect("secret");
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let mut pod = multitool_pod("holder", node.name(), &["tick", "0", "500"], "Always");
    // The service account token volume is injected by admission; add a secret volume.
    pod["spec"]["volumes"] =
        serde_json::json!([{"name": "creds", "secret": {"secretName": "creds"}}]);
    pod["spec"]["containers"][0]["volumeMounts"] =
        serde_json::json!([{"name": "creds", "mountPath": "/creds"}]);
    let pods = ns.api::<Pod>();
    let created = create(&pods, pod).await.expect("create");
    wait_for_phase(&pods, "holder", "Running", LONG)
        .await
        .expect("Running");
    let uid = created.metadata.uid.expect("uid");
    let stayer = create(
        &pods,
        multitool_pod("stayer", node.name(), &["tick", "0", "500"], "Always"),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "stayer", "Running", LONG)
        .await
        .expect("Running");
    let kept_volumes = node
        .data_dir()
        .join("pods")
        .join(stayer.metadata.uid.expect("uid"));
    let volumes = node.data_dir().join("pods").join(&uid);
    let logs = node
        .data_dir()
        .join("logs/pods")
        .join(format!("{}_holder_{uid}", ns.name()));
    let secret_file = std::fs::read_dir(volumes.join("volumes"))
        .expect("volumes dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect::<Vec<_>>();
    assert!(
        !secret_file.is_empty(),
        "no volumes under {}",
        volumes.display()
    );
    assert!(logs.exists(), "no logs at {}", logs.display());

    // Down: the pod is force-deleted, so the API forgets it at once and the node never hears.
    node.signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    node.wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    pods.delete(
        "holder",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("force delete");
    krustlet_e2e::pods::wait_gone(&pods, "holder", Duration::from_secs(30))
        .await
        .expect("gone from the API");
    assert!(
        volumes.exists() && logs.exists(),
        "removed while the node was down?"
    );

    node.restart().expect("restart");
    let deadline = Instant::now() + Duration::from_secs(90);
    while volumes.exists() || logs.exists() {
        assert!(
            Instant::now() < deadline,
            "orphaned files left after restart: volumes {} logs {}; log:\n{}",
            volumes.exists(),
            logs.exists(),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(node.log().contains("removed an orphaned pod directory"));
    // The pod that still exists keeps its files.
    assert!(kept_volumes.exists(), "{} removed", kept_volumes.display());
    wait_for_phase(&pods, "stayer", "Running", LONG)
        .await
        .expect("the other pod runs again");
}

#[tokio::test]
async fn csr_expiration_seconds_asks_for_short_lived_certificates() {
    let node = ready_node("shortcert", &["--csr-expiration-seconds=600"]).await;
    let now = std::time::SystemTime::now();
    for file in ["kubelet-client-current.pem", "kubelet-server-current.pem"] {
        let path = node.data_dir().join("pki").join(file);
        let bundle = kubelet::bootstrap::certs::CertBundle::load(&path)
            .expect("load")
            .unwrap_or_else(|| panic!("{} missing", path.display()));
        let left = bundle.not_after.duration_since(now).unwrap_or_default();
        // The signer gives exactly what was asked for short certificates (no backdating of
        // the end), so at most 600 s are left.
        assert!(
            left <= Duration::from_secs(600) && left > Duration::from_secs(300),
            "{file} expires in {left:?}"
        );
    }
    let log = node.log();
    assert!(
        log.contains("client certificate rotation scheduled"),
        "{log}"
    );
}
