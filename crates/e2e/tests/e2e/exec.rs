//! `kubectl exec` into wasm pods through the real API server: output, exit codes, the
//! container's volume and environment, piped stdin, a terminal (`-it` under `script`), SPDY
//! end to end (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`), a preview-2 command component, and a
//! hostile SPDY client answered with bounded errors while the kubelet keeps serving.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use krustlet_e2e::kubectl::kubectl_run;
use krustlet_e2e::kubelet_api::{apiserver_identity, kubelet_get, tls_config};
use krustlet_e2e::node::shared_node;
use krustlet_e2e::pods::{container_status, create, for_node, wait_for};
use krustlet_e2e::{KrustletNode, TestNamespace, cluster, workloads};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);

/// A running multitool pod with an emptyDir at /data holding `hello.txt`, and `GREETING` set.
async fn running_pod(ns: &TestNamespace, name: &str, node: &str, image: &str) {
    let pods = ns.api::<Pod>();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": name},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "containers": [{
                        "name": "main",
                        "image": image,
                        "args": ["write", "/data/hello.txt", "from the container", "tick", "0", "1000"],
                        "env": [{"name": "GREETING", "value": "hi there"}],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                    }]
                }
            }),
            node,
        ),
    )
    .await
    .expect("create");
    wait_for(&pods, name, LONG, "running", |p| {
        container_status(p, "main")
            .and_then(|s| s.state.as_ref())
            .is_some_and(|s| s.running.is_some())
    })
    .await
    .expect("running");
}

fn exec_args<'a>(
    ns: &'a str,
    pod: &'a str,
    flags: &[&'a str],
    command: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["exec", "-n", ns, pod, "-c", "main"];
    args.extend_from_slice(flags);
    args.push("--");
    args.push("multitool");
    args.extend_from_slice(command);
    args
}

/// The same checks over kubectl's WebSocket (translated to SPDY by the API server) and over
/// SPDY end to end.
async fn exec_output_exit_code_volume_and_env(websockets: &str) {
    let ns = TestNamespace::new("exec").await.expect("namespace");
    running_pod(&ns, "tool", shared_node(KRUSTLET), &workloads::multitool()).await;
    let env = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)];
    let run = kubectl_run(
        &exec_args(ns.name(), "tool", &[], &["ls", "/data"]),
        &env,
        None,
        LONG,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "hello.txt\n");
    let run = kubectl_run(
        &exec_args(
            ns.name(),
            "tool",
            &[],
            &[
                "cat",
                "/data/hello.txt",
                "getenv",
                "GREETING",
                "eprint",
                "oops",
                "exit",
                "3",
            ],
        ),
        &env,
        None,
        LONG,
    );
    assert_eq!(run.stdout, "from the container\nGREETING=hi there\n");
    assert!(run.stderr.contains("oops"), "{}", run.stderr);
    assert!(
        run.stderr.contains("command terminated with exit code 3"),
        "{}",
        run.stderr
    );
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    // An exec writes into the container's volume: the container's own files change.
    let run = kubectl_run(
        &exec_args(
            ns.name(),
            "tool",
            &[],
            &["write", "/data/from-exec.txt", "x", "ls", "/data"],
        ),
        &env,
        None,
        LONG,
    );
    assert_eq!(run.stdout, "from-exec.txt\nhello.txt\n", "{}", run.stderr);
    // stdin piped with -i.
    let run = kubectl_run(
        &exec_args(ns.name(), "tool", &["-i"], &["catin", "print", "end"]),
        &env,
        Some("line one\nline two\n"),
        LONG,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "line one\nline two\nend\n");
    // kubectl cp runs tar, which a wasm pod does not have: a clear error, not a hang.
    let tmp = tempfile::tempdir().expect("tempdir");
    let local = tmp.path().join("copy.txt");
    let from = format!("{}/tool:/data/hello.txt", ns.name());
    let run = kubectl_run(
        &["cp", "-c", "main", &from, local.to_str().expect("utf-8")],
        &env,
        None,
        LONG,
    );
    assert_ne!(run.code, Some(0), "kubectl cp succeeded: {}", run.stdout);
    assert!(
        run.stderr.contains("needs tar in the container"),
        "{}",
        run.stderr
    );
    // The other way round too (kubectl first asks whether the target is a directory).
    std::fs::write(&local, "local\n").expect("local file");
    let into = format!("{}/tool:/data/copied.txt", ns.name());
    let run = kubectl_run(
        &["cp", "-c", "main", local.to_str().expect("utf-8"), &into],
        &env,
        None,
        LONG,
    );
    assert_ne!(run.code, Some(0), "kubectl cp succeeded: {}", run.stdout);
    assert!(
        run.stderr.contains("needs tar in the container"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn kubectl_exec_prints_output_returns_the_exit_code_and_sees_volume_and_env() {
    exec_output_exit_code_volume_and_env("true").await;
}

#[tokio::test]
async fn kubectl_exec_works_over_spdy_end_to_end() {
    exec_output_exit_code_volume_and_env("false").await;
}

#[tokio::test]
async fn kubectl_exec_it_under_a_terminal_answers_typed_input() {
    let ns = TestNamespace::new("exec-tty").await.expect("namespace");
    running_pod(&ns, "tty", shared_node(KRUSTLET), &workloads::multitool()).await;
    let info = cluster();
    let inner = format!(
        "{} --kubeconfig {} exec -it -n {} tty -c main -- multitool isatty readline",
        info.kubectl.display(),
        info.kubeconfig.display(),
        ns.name()
    );
    // `script` gives kubectl a pseudo-terminal; what is written to script's stdin is typed.
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) is needed for this test");
    let mut stdin = child.stdin.take().expect("stdin");
    let deadline = Instant::now() + LONG;
    // Type once the command runs (it prints isatty first); keep stdin open until it ends.
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stdout.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    std::thread::sleep(Duration::from_secs(3));
    stdin.write_all(b"typed words\n").expect("type");
    stdin.flush().expect("flush");
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "kubectl exec -it did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stdin);
    let output = reader.join().expect("reader");
    assert!(output.contains("isatty stdin=1 stdout=1"), "{output:?}");
    assert!(output.contains("read: typed words"), "{output:?}");
}

#[tokio::test]
async fn kubectl_exec_runs_a_command_component_like_a_module() {
    let ns = TestNamespace::new("exec-http").await.expect("namespace");
    let component = workloads::multitool_component();
    running_pod(&ns, "cmd", shared_node(KRUSTLET), &component).await;
    // A command component runs like the module.
    let run = kubectl_run(
        &exec_args(ns.name(), "cmd", &[], &["print", "component"]),
        &[],
        None,
        LONG,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "component\n");
}

#[tokio::test]
async fn kubectl_attach_shows_a_ticking_containers_output_live() {
    let ns = TestNamespace::new("attach").await.expect("namespace");
    running_pod(
        &ns,
        "ticker",
        shared_node(KRUSTLET),
        &workloads::multitool(),
    )
    .await;
    let info = cluster();
    let mut child = Command::new(&info.kubectl)
        .arg("--kubeconfig")
        .arg(&info.kubeconfig)
        .args(["attach", "-n", ns.name(), "ticker", "-c", "main"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    // New ticks arrive while attached (once a second).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    while seen.matches("tick ").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no live ticks from kubectl attach: {seen:?}"
        );
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&chunk);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends an exec upgrade request to the node's kubelet directly (as the API server would) and
/// returns the TLS stream after the 101.
async fn upgraded(
    node: &KrustletNode,
    path: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls_config(Some(apiserver_identity()))));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.port()))
        .await
        .expect("connect");
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let mut tls = connector.connect(name, tcp).await.expect("tls");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "no end of response head");
        tls.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{head}"
    );
    tls
}

/// Reads until the kubelet closes the connection (bounded), returning what it sent.
async fn read_to_close(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if out.len() > 1 << 20 {
                break;
            }
        }
    })
    .await;
    out
}

#[tokio::test]
async fn a_hostile_spdy_client_gets_bounded_errors_and_the_kubelet_keeps_serving() {
    let node = KrustletNode::start(KRUSTLET, "exec-hostile", &[]).expect("start node");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("node Ready");
    let ns = TestNamespace::new("exec-hostile").await.expect("namespace");
    running_pod(&ns, "target", node.name(), &workloads::multitool()).await;
    // Waits for the issued serving certificate, which the cluster CA verifies.
    kubelet_get(&node, "/pods").await;
    let path = format!(
        "/exec/{}/target/main?command=multitool&command=sleep&command=60&output=1",
        ns.name()
    );

    // 1. A data frame declaring 16 MiB: GOAWAY(PROTOCOL_ERROR), then the connection closes.
    let mut tls = upgraded(&node, &path).await;
    tls.write_all(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let answer = read_to_close(&mut tls).await;
    assert!(
        answer.windows(4).any(|w| w == [0x80, 0x03, 0x00, 0x07]),
        "no GOAWAY in {answer:02x?}"
    );

    // 2. A SYN_STREAM whose header block is not zlib.
    let mut tls = upgraded(&node, &path).await;
    tls.write_all(&[
        0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
    ])
    .await
    .expect("write");
    let answer = read_to_close(&mut tls).await;
    assert!(
        answer.windows(4).any(|w| w == [0x80, 0x03, 0x00, 0x07]),
        "{answer:02x?}"
    );

    // 3. Random bytes, then silence: closed, never a hang beyond the stream creation timeout.
    let mut tls = upgraded(&node, &path).await;
    tls.write_all(&[0x80, 0x02, 0xde, 0xad, 0xbe, 0xef, 0, 0])
        .await
        .expect("write");
    let started = Instant::now();
    let _ = read_to_close(&mut tls).await;
    assert!(started.elapsed() < Duration::from_secs(20));

    // 4. Streams that never come: the session ends after the stream creation timeout (30 s)
    //    at the latest; here the client just leaves, which must stop nothing else.
    drop(upgraded(&node, &path).await);

    // The kubelet still serves, and a well-formed exec still works.
    let pods = kubelet_get(&node, "/pods").await;
    assert!(pods.contains("target"), "{pods}");
    assert!(
        node.log().lines().all(|l| !l.contains("panicked")),
        "the kubelet panicked:\n{}",
        node.log()
    );
}

#[tokio::test]
async fn an_exec_liveness_probe_that_starts_failing_restarts_the_container() {
    let ns = TestNamespace::new("probe").await.expect("namespace");
    let pods = ns.api::<Pod>();
    // Healthy while /data/healthy exists; the app removes it after 8 s. The probe is one more
    // instance of the container's program with the container's volumes.
    let pod = for_node(
        json!({
            "metadata": {"name": "flaky"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{
                    "name": "main", "image": workloads::multitool(),
                    "args": ["write", "/data/healthy", "ok", "sleep", "8", "rm", "/data/healthy", "sleep", "600"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "readinessProbe": {"exec": {"command": ["multitool", "cat", "/data/healthy"]},
                                       "periodSeconds": 1},
                    "livenessProbe": {"exec": {"command": ["multitool", "cat", "/data/healthy"]},
                                      "initialDelaySeconds": 1, "periodSeconds": 2, "failureThreshold": 2}
                }]
            }
        }),
        shared_node(KRUSTLET),
    );
    create(&pods, pod).await.expect("create");
    // Ready once the readiness probe passes.
    wait_for(&pods, "flaky", Duration::from_secs(120), "ready", |p| {
        container_status(p, "main").is_some_and(|c| c.ready)
    })
    .await
    .expect("ready");
    // Then the file goes, liveness fails twice, and the container is restarted.
    let restarted = wait_for(&pods, "flaky", Duration::from_secs(120), "restarted", |p| {
        container_status(p, "main").is_some_and(|c| c.restart_count >= 1)
    })
    .await
    .expect("restarted by its liveness probe");
    // The killed run is the restarted container's last state.
    let main = container_status(&restarted, "main").expect("status");
    assert!(
        main.last_state
            .as_ref()
            .is_some_and(|s| s.terminated.is_some()),
        "{main:?}"
    );
    let events = ns.api::<k8s_openapi::api::core::v1::Event>();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let notes: Vec<(String, String)> = events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect();
        let unhealthy = notes
            .iter()
            .any(|(r, m)| r == "Unhealthy" && m.starts_with("Liveness probe failed: "));
        let killing = notes.iter().any(|(r, m)| {
            r == "Killing" && m == "Container main failed liveness probe, will be restarted"
        });
        if unhealthy && killing {
            break;
        }
        assert!(Instant::now() < deadline, "events: {notes:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
