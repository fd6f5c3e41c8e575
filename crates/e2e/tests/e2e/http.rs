//! HTTP components (`wasi:http/incoming-handler`) on the node's network (no CNI yet): a pod
//! answers on `podIP:containerPort` (its IP is the node's), a second pod on the same port
//! gets a clear conflict, httpGet/tcpSocket probes flip Ready and restart the container (a
//! startup probe holding both back until it passes),
//! grpc probes speak the gRPC health protocol to it over HTTP/2, deleting a pod drains its
//! in-flight requests and an idle pod stops at once, and real
//! `kubectl port-forward` through the API server (WebSocket tunnel and SPDY) carries 100
//! sequential and 20 concurrent requests, and port-forward over WebSocket straight to the
//! kubelet carries a request. Each test uses its own ports on the shared node (the direct
//! WebSocket one has a node of its own, whose kubelet port it knows).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use krustlet_e2e::kubelet_api::https_client_with_timeout;
use krustlet_e2e::node::{free_port, shared_node};
use krustlet_e2e::pods::{
    container_status, create, for_node, wait_for, wait_for_event, wait_gone, waiting,
};
use krustlet_e2e::{TestNamespace, cluster, workloads};
use kube::api::DeleteParams;
use serde_json::{Value, json};

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);

/// A pod running the http component on `port`, with `POD_NAME` from the Downward API;
/// `extra` is merged into the container.
fn http_pod(name: &str, port: u16, grace: i64, extra: Value) -> Value {
    http_pod_on(shared_node(KRUSTLET), name, port, grace, extra)
}

/// [`http_pod`] on the node named `node`.
fn http_pod_on(node: &str, name: &str, port: u16, grace: i64, extra: Value) -> Value {
    let mut container = json!({
        "name": "web",
        "image": workloads::http_component(),
        "ports": [{"containerPort": port}],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    });
    if let (Some(into), Value::Object(from)) = (container.as_object_mut(), extra) {
        for (key, value) in from {
            if key == "env" {
                if let (Some(env), Value::Array(more)) = (into["env"].as_array_mut(), value) {
                    env.extend(more);
                }
            } else {
                into.insert(key, value);
            }
        }
    }
    for_node(
        json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": grace, "containers": [container]}
        }),
        node,
    )
}

fn running(p: &Pod) -> bool {
    container_status(p, "web")
        .and_then(|s| s.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn ready(p: &Pod) -> bool {
    container_status(p, "web").is_some_and(|c| c.ready)
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("podIP")
}

fn client() -> reqwest::Client {
    https_client_with_timeout(None, Duration::from_secs(60))
}

/// Waits until an event of `reason` whose message contains `text` is recorded in `ns`.
async fn wait_event(ns: &TestNamespace, reason: &str, text: &str) {
    wait_for_event(&ns.api::<Event>(), reason, text, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn an_http_component_serves_on_its_port_and_a_second_pod_on_that_port_conflicts() {
    let ns = TestNamespace::new("http-serve").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let port = free_port();
    let mut pod = http_pod(
        "web-a",
        port,
        2,
        json!({"readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1}}),
    );
    pod["metadata"]["annotations"] = json!({"krustlet.dev/http-max-request-body": "64Ki"});
    create(&pods, pod).await.expect("create");
    let pod = wait_for(&pods, "web-a", LONG, "ready", ready)
        .await
        .expect("ready through its tcpSocket probe");
    let status = pod.status.as_ref().expect("status");
    // No CNI: the pod's IP is the node's.
    assert_eq!(status.pod_ip, status.host_ip);
    let base = format!("http://{}:{port}", pod_ip(&pod));
    let http = client();
    let hello = http.get(format!("{base}/")).send().await.expect("GET /");
    assert_eq!(hello.status(), 200);
    assert_eq!(hello.text().await.expect("body"), "hello from web-a\n");
    // A body is echoed; one over the pod's annotation is refused.
    let body: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let echoed = http
        .post(format!("{base}/echo"))
        .body(body.clone())
        .send()
        .await
        .expect("POST /echo");
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.bytes().await.expect("body").to_vec(), body);
    let too_big = http
        .post(format!("{base}/echo"))
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .expect("POST too big");
    assert_eq!(too_big.status(), 413);
    // A trapping request is a 500; the server keeps serving.
    let trapped = http.get(format!("{base}/trap")).send().await.expect("trap");
    assert_eq!(trapped.status(), 500);
    let again = http
        .get(format!("{base}/"))
        .send()
        .await
        .expect("GET again");
    assert_eq!(again.status(), 200);
    let missing = http.get(format!("{base}/nope")).send().await.expect("404");
    assert_eq!(missing.status(), 404);

    // A second pod on the same port of the same node: a clear waiting reason and event.
    create(&pods, http_pod("web-b", port, 2, json!({})))
        .await
        .expect("create web-b");
    let conflicted = wait_for(&pods, "web-b", LONG, "refused its port", |p| {
        waiting(p, "web").is_some_and(|w| w.reason.as_deref() == Some("PortInUse"))
    })
    .await
    .expect("PortInUse");
    let message = waiting(&conflicted, "web")
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(&format!("port {port}/TCP is already in use")),
        "{message}"
    );
    wait_event(&ns, "Failed", "already in use").await;
    // The first pod still answers.
    let still = http.get(format!("{base}/")).send().await.expect("GET a");
    assert_eq!(still.text().await.expect("body"), "hello from web-a\n");
}

#[tokio::test]
async fn http_probes_flip_ready_and_a_failing_liveness_probe_restarts() {
    let ns = TestNamespace::new("http-probe").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let now = jiff::Timestamp::now().as_second();
    // Healthy for 45 s (start-up included), then /healthz answers 500: Ready goes True, then False.
    let flips = free_port();
    create(
        &pods,
        http_pod(
            "flips",
            flips,
            2,
            json!({
                "env": [{"name": "HEALTHZ_FAIL_AFTER", "value": (now + 45).to_string()}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": flips},
                                   "periodSeconds": 1, "failureThreshold": 1}
            }),
        ),
    )
    .await
    .expect("create flips");
    // Never healthy: the liveness probe restarts it.
    let sick = free_port();
    create(
        &pods,
        http_pod(
            "sick",
            sick,
            2,
            json!({
                "env": [{"name": "HEALTHZ_FAIL_AFTER", "value": "0"}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": sick},
                                  "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 2}
            }),
        ),
    )
    .await
    .expect("create sick");
    wait_for(&pods, "flips", LONG, "ready", ready)
        .await
        .expect("ready while /healthz answers 200");
    wait_for(&pods, "flips", LONG, "not ready", |p| {
        running(p) && !ready(p)
    })
    .await
    .expect("not ready once /healthz answers 500");
    let restarted = wait_for(&pods, "sick", LONG, "restarted", |p| {
        container_status(p, "web").is_some_and(|c| c.restart_count >= 1)
    })
    .await
    .expect("restarted by its liveness probe");
    let web = container_status(&restarted, "web").expect("status");
    assert!(
        web.last_state
            .as_ref()
            .is_some_and(|s| s.terminated.is_some()),
        "{web:?}"
    );
    wait_event(
        &ns,
        "Unhealthy",
        "Liveness probe failed: HTTP probe failed with statuscode: 500",
    )
    .await;
    wait_event(
        &ns,
        "Unhealthy",
        "Readiness probe failed: HTTP probe failed",
    )
    .await;
    wait_event(
        &ns,
        "Killing",
        "Container web failed liveness probe, will be restarted",
    )
    .await;
}

#[tokio::test]
async fn grpc_probes_make_a_pod_ready_and_restart_it_once_it_reports_not_serving() {
    let ns = TestNamespace::new("grpc-probe").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let now = jiff::Timestamp::now().as_second();
    // The component answers the gRPC health check (over HTTP/2) SERVING for 30 s, then
    // NOT_SERVING: Ready through the grpc readiness probe, then restarted by the liveness one.
    let port = free_port();
    create(
        &pods,
        http_pod(
            "grpc",
            port,
            2,
            json!({
                "env": [{"name": "HEALTHZ_FAIL_AFTER", "value": (now + 30).to_string()}],
                "readinessProbe": {"grpc": {"port": port}, "periodSeconds": 1},
                "livenessProbe": {"grpc": {"port": port, "service": "web"},
                                  "periodSeconds": 1, "failureThreshold": 2}
            }),
        ),
    )
    .await
    .expect("create");
    wait_for(&pods, "grpc", LONG, "ready", ready)
        .await
        .expect("ready through its grpc probe");
    wait_for(&pods, "grpc", LONG, "restarted", |p| {
        container_status(p, "web").is_some_and(|c| c.restart_count >= 1)
    })
    .await
    .expect("restarted by its grpc liveness probe");
    wait_event(
        &ns,
        "Unhealthy",
        "Liveness probe failed: service unhealthy (responded with \"NOT_SERVING\")",
    )
    .await;
}

#[tokio::test]
async fn deleting_an_http_pod_drains_in_flight_requests_and_an_idle_one_stops_at_once() {
    let ns = TestNamespace::new("http-drain").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let (busy_port, idle_port) = (free_port(), free_port());
    create(&pods, http_pod("busy", busy_port, 30, json!({})))
        .await
        .expect("create busy");
    create(&pods, http_pod("idle", idle_port, 30, json!({})))
        .await
        .expect("create idle");
    let busy = wait_for(&pods, "busy", LONG, "running", running)
        .await
        .expect("busy running");
    wait_for(&pods, "idle", LONG, "running", running)
        .await
        .expect("idle running");
    let http = client();
    // Both answer before anything is deleted.
    let ip = pod_ip(&busy);
    for port in [busy_port, idle_port] {
        let answer = http
            .get(format!("http://{ip}:{port}/"))
            .send()
            .await
            .expect("GET /");
        assert_eq!(answer.status(), 200);
    }

    // An idle server stops as soon as it is asked: well within its 30 s grace period.
    pods.delete("idle", &DeleteParams::default())
        .await
        .expect("delete idle");
    let took = wait_gone(&pods, "idle", LONG).await.expect("idle gone");
    assert!(
        took < Duration::from_secs(15),
        "idle pod took {took:?} to go"
    );

    // A request in flight when the pod is deleted completes; then the pod goes.
    let in_flight = tokio::spawn({
        let (http, url) = (
            http.clone(),
            format!("http://{ip}:{busy_port}/sleep?ms=6000"),
        );
        async move {
            let response = http.get(url).send().await.expect("in-flight request");
            (response.status(), response.text().await.unwrap_or_default())
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    pods.delete("busy", &DeleteParams::default())
        .await
        .expect("delete busy");
    let (status, body) = tokio::time::timeout(LONG, in_flight)
        .await
        .expect("the in-flight request ends")
        .expect("request task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "slept 6000 ms\n");
    wait_gone(&pods, "busy", LONG).await.expect("busy gone");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the busy pod took {:?} to go",
        started.elapsed()
    );
    // Its listener is closed: the port takes no new connections.
    let refused = http.get(format!("http://{ip}:{busy_port}/")).send().await;
    assert!(refused.is_err(), "the drained pod still answers");
}

/// `kubectl port-forward` as a child process, killed when dropped.
struct PortForward(Child);

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port_forward(ns: &str, pod: &str, local: u16, remote: u16, env: &[(&str, &str)]) -> PortForward {
    let info = cluster();
    let mut command = Command::new(&info.kubectl);
    command
        .arg("--kubeconfig")
        .arg(&info.kubeconfig)
        .args([
            "port-forward",
            "-n",
            ns,
            &format!("pod/{pod}"),
            &format!("{local}:{remote}"),
            "--address=127.0.0.1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    PortForward(command.spawn().expect("kubectl port-forward"))
}

async fn port_forward_carries_sequential_and_concurrent_requests(websockets: &str) {
    let ns = TestNamespace::new("http-pf").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let port = free_port();
    create(&pods, http_pod("web", port, 2, json!({})))
        .await
        .expect("create");
    wait_for(&pods, "web", LONG, "running", running)
        .await
        .expect("running");
    let local = free_port();
    let _forward = port_forward(
        ns.name(),
        "web",
        local,
        port,
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)],
    );
    // A new connection per request: each is its own pair of streams through the tunnel.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .tls_backend_preconfigured(krustlet_e2e::kubelet_api::tls_config(None))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{local}/");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http.get(&url).send().await {
            Ok(response) if response.status() == 200 => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "port-forward never answered: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    for n in 0..100 {
        let response = http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("sequential request {n}: {e}"));
        assert_eq!(response.status(), 200, "request {n}");
        assert_eq!(
            response.text().await.expect("body"),
            "hello from web\n",
            "request {n}"
        );
    }
    let concurrent = (0..20).map(|n| {
        let (http, url) = (
            http.clone(),
            format!("http://127.0.0.1:{local}/sleep?ms=300"),
        );
        async move {
            let response = http
                .get(url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("concurrent request {n}: {e}"));
            assert_eq!(response.status(), 200, "request {n}");
            response.text().await.expect("body")
        }
    });
    let bodies = tokio::time::timeout(LONG, futures::future::join_all(concurrent))
        .await
        .expect("20 concurrent requests within the bound");
    assert!(bodies.iter().all(|b| b == "slept 300 ms\n"), "{bodies:?}");
}

#[tokio::test]
async fn kubectl_port_forward_over_the_websocket_tunnel() {
    port_forward_carries_sequential_and_concurrent_requests("true").await;
}

#[tokio::test]
async fn kubectl_port_forward_over_spdy() {
    port_forward_carries_sequential_and_concurrent_requests("false").await;
}

/// Port-forward over WebSocket straight to the kubelet (upstream
/// `pkg/kubelet/cri/streaming/portforward/websocket.go`), with the API server's kubelet
/// client certificate: the port prefix on the data and error channels, then an HTTP request
/// on the data channel and its response back on it; the kubelet closes the WebSocket once the
/// pod closed the connection (`Connection: close`).
#[tokio::test]
async fn port_forward_straight_to_the_kubelet_over_websocket() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let node = krustlet_e2e::KrustletNode::start(KRUSTLET, "pf-ws", &[]).expect("start node");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("node Ready");
    let ns = TestNamespace::new("http-pf-ws").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let port = free_port();
    create(&pods, http_pod_on(node.name(), "web", port, 2, json!({})))
        .await
        .expect("create");
    wait_for(&pods, "web", LONG, "running", running)
        .await
        .expect("running");
    // Waits for the issued serving certificate, which the cluster CA verifies.
    krustlet_e2e::kubelet_api::kubelet_get(&node, "/pods").await;

    let path = format!("/portForward/{}/web?port={port}", ns.name());
    // The component may still be binding its port: a refused connection is reported on the
    // error channel and the kubelet closes; try again until a response comes back.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (mut socket, chosen) = crate::websocket::open(&node, &path, "v4.channel.k8s.io")
            .await
            .expect("upgrade");
        assert_eq!(chosen, "v4.channel.k8s.io");
        let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        // Fails only if the kubelet already closed (a refused connection): tried again below.
        let mut frame = vec![0u8];
        frame.extend_from_slice(request);
        let _ = socket.send(Message::binary(frame)).await;
        let (mut data, mut error) = (Vec::new(), Vec::new());
        let mut prefixes = Vec::new();
        let read = async {
            while let Some(message) = socket.next().await {
                match message {
                    Ok(Message::Binary(bytes)) => match bytes.split_first() {
                        // The first message on each channel is the port, little-endian.
                        Some((&channel, rest)) if prefixes.len() < 2 => {
                            prefixes.push((channel, rest.to_vec()));
                        }
                        Some((0, rest)) => data.extend_from_slice(rest),
                        Some((1, rest)) => error.extend_from_slice(rest),
                        other => panic!("unexpected message {other:?}"),
                    },
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
                assert!(data.len() < 1 << 20, "runaway response");
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the kubelet closes the WebSocket once the pod closed the connection");
        let le = port.to_le_bytes().to_vec();
        assert_eq!(prefixes, vec![(0, le.clone()), (1, le)]);
        let response = String::from_utf8_lossy(&data).into_owned();
        let error = String::from_utf8_lossy(&error).into_owned();
        if response.is_empty() && Instant::now() < deadline {
            assert!(error.contains("error forwarding port"), "{error}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "response: {response:?}, error channel: {error:?}"
        );
        // The body may come chunked: its text is in there either way.
        assert!(response.contains("hello from web\n"), "{response:?}");
        assert!(error.is_empty(), "{error}");
        break;
    }
    // Without the port parameter: 400 before any upgrade.
    let refused = crate::websocket::open(
        &node,
        &format!("/portForward/{}/web", ns.name()),
        "v4.channel.k8s.io",
    )
    .await
    .err();
    assert_eq!(refused, Some(400));
    assert!(
        node.log().lines().all(|l| !l.contains("panicked")),
        "the kubelet panicked:\n{}",
        node.log()
    );
}

#[tokio::test]
async fn a_startup_probe_holds_back_readiness_and_liveness_until_it_succeeds() {
    let ns = TestNamespace::new("http-startup").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let port = free_port();
    // The startup probe passes only after its initial delay; until then the container is not
    // started, readiness does not run (not Ready) and liveness does not run (no restart),
    // although /healthz always fails. Then liveness restarts it.
    create(
        &pods,
        http_pod(
            "slow",
            port,
            2,
            json!({
                "env": [{"name": "HEALTHZ_FAIL_AFTER", "value": "0"}],
                "startupProbe": {"httpGet": {"path": "/", "port": port},
                                 "initialDelaySeconds": 15, "periodSeconds": 1},
                "readinessProbe": {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": port},
                                  "periodSeconds": 1, "failureThreshold": 1}
            }),
        ),
    )
    .await
    .expect("create");
    let running_pod = wait_for(&pods, "slow", LONG, "running", running)
        .await
        .expect("running");
    let started_at = container_status(&running_pod, "web")
        .and_then(|s| s.state.as_ref()?.running.as_ref()?.started_at.clone())
        .expect("startedAt")
        .0;
    // Watch it for the startup probe's delay (less a margin): never started, ready or restarted.
    loop {
        let elapsed = jiff::Timestamp::now().duration_since(started_at);
        if elapsed > jiff::SignedDuration::from_secs(12) {
            break;
        }
        let pod = pods.get("slow").await.expect("get");
        let web = container_status(&pod, "web").expect("status").clone();
        assert_eq!(
            web.started,
            Some(false),
            "started during the startup delay: {web:?}"
        );
        assert!(!web.ready, "ready during the startup delay: {web:?}");
        assert_eq!(
            web.restart_count, 0,
            "restarted during the startup delay: {web:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Then it starts, and liveness (which always fails) restarts it.
    wait_for(&pods, "slow", LONG, "restarted by liveness", |p| {
        container_status(p, "web").is_some_and(|c| c.restart_count >= 1)
    })
    .await
    .expect("restarted once started");
    wait_event(&ns, "Unhealthy", "Liveness probe failed").await;
}
