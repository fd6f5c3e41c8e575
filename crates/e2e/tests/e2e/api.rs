//! The kubelet HTTPS API: `kubectl logs` (tail, timestamps, containers, previous, since,
//! follow) through the real API server, log rotation and the write-rate bound, `/metrics`,
//! `/metrics/resource`, `/stats/summary`, `/pods` and `/configz` through the API server's node
//! proxy, authentication and authorization of direct requests, and `kubectl exec` refused
//! promptly.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::Pod;
use krustlet_e2e::kubelet_api::{https_client, identity_from_files, kubelet_get};
use krustlet_e2e::node::shared_node;
use krustlet_e2e::pods::{
    container_status, create, for_node, terminated, wait_for, wait_for_phase, wait_gone,
};
use krustlet_e2e::{KrustletNode, TestNamespace, cluster, kubectl, workloads};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::KRUSTLET;

/// A Ready node and a pod bound to it (nothing runs it: only its logs are written by hand).
struct Fixture {
    node: KrustletNode,
    ns: TestNamespace,
    pod: String,
    uid: String,
}

impl Fixture {
    async fn new(prefix: &str) -> Self {
        let node = KrustletNode::start(KRUSTLET, "api", &[]).expect("start node");
        node.wait_ready("True", Duration::from_secs(90))
            .await
            .expect("node Ready");
        let ns = TestNamespace::new(prefix).await.expect("namespace");
        let toleration = |effect: &str| {
            serde_json::json!({"key": "kubernetes.io/arch", "operator": "Equal",
                               "value": "wasm32-wasi", "effect": effect})
        };
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "logs"},
            "spec": {
                "nodeName": node.name(),
                "tolerations": [toleration("NoExecute"), toleration("NoSchedule")],
                "containers": [
                    {"name": "main", "image": "example.com/main:v1"},
                    {"name": "side", "image": "example.com/side:v1"}
                ]
            }
        }))
        .expect("pod");
        let created = ns
            .api::<Pod>()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
        let uid = created.metadata.uid.expect("uid");
        Self {
            node,
            ns,
            pod: "logs".into(),
            uid,
        }
    }

    /// `<data-dir>/logs/pods/<ns>_<pod>_<uid>/<container>/<run>.log`, as the kubelet lays it out.
    fn log_path(&self, container: &str, run: u32) -> PathBuf {
        self.node
            .data_dir()
            .join("logs/pods")
            .join(format!("{}_{}_{}", self.ns.name(), self.pod, self.uid))
            .join(container)
            .join(format!("{run}.log"))
    }

    fn write_log(&self, container: &str, run: u32, entries: &[(&str, &str)]) -> PathBuf {
        let path = self.log_path(container, run);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open log");
        for (stamp, content) in entries {
            writeln!(file, "{stamp} stdout F {content}").expect("append");
        }
        path
    }

    fn logs(&self, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["logs", "-n", self.ns.name(), &self.pod];
        args.extend_from_slice(extra);
        kubectl(&args)
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.node.port())
    }
}

/// Runs the cluster's kubectl with a deadline; returns (success, stdout, stderr).
fn kubectl_within(args: &[&str], timeout: Duration) -> (bool, String, String) {
    let run = krustlet_e2e::kubectl::kubectl_run(args, &[], None, timeout);
    (run.code == Some(0), run.stdout, run.stderr)
}

#[tokio::test]
async fn kubectl_logs_tail_timestamps_containers_and_previous() {
    let f = Fixture::new("logs").await;
    f.write_log(
        "main",
        0,
        &[
            ("2026-01-01T00:00:01.000000000Z", "first run"),
            ("2026-01-01T00:00:02.000000000Z", "first run ends"),
        ],
    );
    f.write_log(
        "main",
        1,
        &[
            ("2026-01-01T00:01:01.000000000Z", "hello"),
            ("2026-01-01T00:01:02.000000000Z", "world"),
        ],
    );
    f.write_log("side", 0, &[("2026-01-01T00:02:00.5Z", "from the side")]);

    let out = f.logs(&["-c", "main"]).expect("kubectl logs");
    assert_eq!(out, "hello\nworld\n");
    assert_eq!(
        f.logs(&["-c", "main", "--tail=1"]).expect("tail"),
        "world\n"
    );
    assert_eq!(
        f.logs(&["-c", "main", "--timestamps"]).expect("timestamps"),
        "2026-01-01T00:01:01.000000000Z hello\n2026-01-01T00:01:02.000000000Z world\n"
    );
    assert_eq!(
        f.logs(&["-c", "main", "--previous"]).expect("previous"),
        "first run\nfirst run ends\n"
    );
    assert_eq!(f.logs(&["-c", "side"]).expect("side"), "from the side\n");
    assert_eq!(
        f.logs(&["-c", "main", "--limit-bytes=3"]).expect("limit"),
        "hel"
    );

    let error = f
        .logs(&["-c", "side", "--previous"])
        .expect_err("no previous run")
        .to_string();
    assert!(
        error.contains("previous terminated container \"side\""),
        "{error}"
    );
    // A container that never wrote a log.
    std::fs::remove_dir_all(f.log_path("side", 0).parent().expect("dir")).expect("rm");
    let error = f.logs(&["-c", "side"]).expect_err("no log").to_string();
    assert!(
        error.contains("container \"side\" in pod \"logs\" has no logs"),
        "{error}"
    );
}

#[tokio::test]
async fn kubectl_logs_follow_streams_until_the_run_is_done() {
    let f = Fixture::new("follow").await;
    let path = f.write_log("main", 0, &[("2026-01-01T00:00:01Z", "one")]);
    let info = cluster();
    let mut child = Command::new(&info.kubectl)
        .arg("--kubeconfig")
        .arg(&info.kubeconfig)
        .args(["logs", "-f", "-n", f.ns.name(), &f.pod, "-c", "main"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no {what} line from kubectl logs -f"))
    };
    assert_eq!(next("first"), "one");
    f.write_log("main", 0, &[("2026-01-01T00:00:02Z", "two")]);
    assert_eq!(next("appended"), "two");
    f.write_log("main", 0, &[("2026-01-01T00:00:03Z", "three")]);
    assert_eq!(next("second appended"), "three");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "kubectl logs -f ended before the run did"
    );

    // The run ends: the pod worker creates the marker.
    let mut done = path.into_os_string();
    done.push(".done");
    std::fs::write(&done, "").expect("done marker");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl logs -f still runs after the run ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "kubectl logs -f exited {status}");
}

#[tokio::test]
async fn kubectl_exec_and_attach_to_a_container_that_does_not_run_fail_fast() {
    let f = Fixture::new("exec").await;
    let started = Instant::now();
    let (ok, _, stderr) = kubectl_within(
        &["exec", "-n", f.ns.name(), &f.pod, "-c", "main", "--", "ls"],
        Duration::from_secs(30),
    );
    assert!(!ok, "kubectl exec succeeded");
    eprintln!("kubectl exec said: {}", stderr.trim());
    assert!(stderr.contains("is not running on this node"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let (ok, _, stderr) = kubectl_within(
        &["attach", "-n", f.ns.name(), &f.pod, "-c", "main"],
        Duration::from_secs(30),
    );
    assert!(
        !ok && stderr.contains("is not running on this node"),
        "{stderr}"
    );
}

/// A TLS client that trusts the cluster CA (so only the issued serving certificate passes) and
/// presents `identity`, if any.
/// A client certificate for `user` (no RBAC at all), issued by the cluster's
/// kube-apiserver-client signer.
pub(crate) async fn user_certificate(
    user: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "e2e-nobodies");
    let request = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let csrs: Api<CertificateSigningRequest> =
        Api::all(krustlet_e2e::cluster::client().await.expect("client"));
    let name = format!("{user}-{}", std::process::id());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: "kubernetes.io/kube-apiserver-client".into(),
            usages: Some(vec!["client auth".into()]),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    csrs.create(&PostParams::default(), &csr)
        .await
        .expect("create csr");
    let approval = serde_json::json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "E2E", "message": "test user"
    }]}});
    csrs.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approval))
        .await
        .expect("approve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let pem = loop {
        let issued = csrs.get(&name).await.expect("get csr");
        if let Some(cert) = issued.status.and_then(|s| s.certificate) {
            break cert.0;
        }
        assert!(Instant::now() < deadline, "CSR {name} not issued");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = csrs.delete(&name, &DeleteParams::default()).await;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("issued cert");
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
    (chain, key)
}

#[tokio::test]
async fn api_authenticates_and_authorizes_direct_requests() {
    let f = Fixture::new("auth").await;
    f.write_log("main", 0, &[("2026-01-01T00:00:01Z", "secret")]);
    let logs = f.url(&format!("/containerLogs/{}/{}/main", f.ns.name(), f.pod));

    // Only the issued serving certificate verifies against the cluster CA: wait for it, which
    // also shows it is picked up without a restart.
    let anonymous = https_client(None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let response = loop {
        match anonymous.get(&logs).send().await {
            Ok(response) => break response,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "the issued serving certificate is not served: {error:?}; log:\n{}",
                    f.node.log()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(response.status(), 401, "no credentials");
    let health = anonymous
        .get(f.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.expect("body"), "ok");

    let bad_token = anonymous
        .get(&logs)
        .bearer_auth("not-a-token")
        .send()
        .await
        .expect("request");
    assert_eq!(bad_token.status(), 401, "invalid token");

    let nobody = https_client(Some(user_certificate("e2e-nobody").await));
    let response = nobody.get(&logs).send().await.expect("request");
    assert_eq!(response.status(), 403);
    let body = response.text().await.expect("body");
    assert!(
        body.contains("Forbidden (user=e2e-nobody, verb=get, resource=nodes, subresource=proxy)"),
        "{body}"
    );

    // A service account token, by TokenReview; it has no RBAC on nodes either.
    let token = kubectl(&["create", "token", "default", "-n", f.ns.name()]).expect("token");
    let response = anonymous
        .get(&logs)
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403);
    let body = response.text().await.expect("body");
    let sa = format!("user=system:serviceaccount:{}:default", f.ns.name());
    assert!(body.contains(&sa), "{body}");

    let info = cluster();
    let apiserver = https_client(Some(identity_from_files(
        &info.kubelet_client_cert_file,
        &info.kubelet_client_key_file,
    )));
    let response = apiserver.get(&logs).send().await.expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "secret\n");
    let response = apiserver
        .get(f.url(&format!("/containerLogs/{}/nope/main", f.ns.name())))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    let body = response.text().await.expect("body");
    assert!(body.contains("pod \"nope\""), "{body}");
    let exec = f.url(&format!(
        "/exec/{}/{}/main?command=ls&output=1",
        f.ns.name(),
        f.pod
    ));
    // Authorized, but not an upgrade request: a clear 400 before anything runs.
    let response = apiserver.post(&exec).send().await.expect("request");
    assert_eq!(response.status(), 400);
    let body = response.text().await.expect("body");
    assert!(body.contains("missing upgrade headers"), "{body}");
    // Exec is `create` on nodes/proxy: a token without it is refused before anything else.
    let response = anonymous
        .post(&exec)
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403);
    let body = response.text().await.expect("body");
    assert!(
        body.contains("verb=create, resource=nodes, subresource=proxy"),
        "{body}"
    );
}

/// A one-container multitool pod on `node`.
fn multitool_pod(name: &str, node: &str, args: &[&str], restart_policy: &str) -> serde_json::Value {
    for_node(
        serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": restart_policy,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": workloads::multitool(), "args": args}]
            }
        }),
        node,
    )
}

/// Waits until the scheduler may place pods on `node`: Ready, and no taints left but the wasm
/// ones (the not-ready taint goes a moment after Ready).
pub(crate) async fn wait_schedulable(node: &KrustletNode) {
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("node Ready");
    let nodes: Api<k8s_openapi::api::core::v1::Node> =
        Api::all(krustlet_e2e::cluster::client().await.expect("client"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = nodes.get(node.name()).await.expect("get node");
        let taints = current.spec.and_then(|s| s.taints).unwrap_or_default();
        if taints.iter().all(|t| t.key == "kubernetes.io/arch") {
            return;
        }
        assert!(Instant::now() < deadline, "node keeps taints {taints:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Parses Prometheus text strictly: every line must be a comment the format knows, or a sample.
pub(crate) fn parse_prometheus(text: &str) -> prometheus_parse::Scrape {
    for line in text.lines() {
        let known_comment = ["# HELP ", "# TYPE ", "# UNIT ", "# EOF"]
            .iter()
            .any(|p| line.starts_with(p));
        let parsed = prometheus_parse::LineInfo::parse(line);
        assert!(
            known_comment || matches!(parsed, prometheus_parse::LineInfo::Sample { .. }),
            "not Prometheus text: {line:?}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse")
}

pub(crate) fn sample_value(
    scrape: &prometheus_parse::Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[tokio::test]
async fn a_pod_printing_100000_lines_is_rotated_within_the_bound_and_throttled() {
    const MAX_SIZE: u64 = 64 * 1024;
    const MAX_FILES: u64 = 3;
    let node = KrustletNode::start(
        KRUSTLET,
        "rotate",
        &[
            "--container-log-max-size=64Ki",
            "--container-log-max-files=3",
            "--container-log-max-rate=128Ki",
        ],
    )
    .expect("start node");
    wait_schedulable(&node).await;
    let ns = TestNamespace::new("rotate").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let created = create(
        &pods,
        multitool_pod("lines", node.name(), &["lines", "100000"], "Never"),
    )
    .await
    .expect("create");
    let pod = wait_for_phase(&pods, "lines", "Succeeded", Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e}; node log:\n{}", node.log()));

    let last = kubectl(&["logs", "-n", ns.name(), "lines", "--tail=1"]).expect("kubectl logs");
    assert_eq!(last, "line 100000\n");

    // Everything kept, read across the rotated files: consecutive lines up to the last.
    let all = kubectl(&["logs", "-n", ns.name(), "lines"]).expect("kubectl logs");
    let numbers: Vec<u64> = all
        .lines()
        .map(|l| {
            l.strip_prefix("line ")
                .and_then(|n| n.parse().ok())
                .expect("a numbered line")
        })
        .collect();
    assert_eq!(numbers.last(), Some(&100_000));
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "lines missing across files"
    );
    // An entry is about 47 bytes: more than one file's worth proves the rotated files are read.
    assert!(
        numbers.len() as u64 > MAX_SIZE / 47,
        "only {} lines",
        numbers.len()
    );

    let dir = node
        .data_dir()
        .join("logs/pods")
        .join(format!(
            "{}_lines_{}",
            ns.name(),
            created.metadata.uid.expect("uid")
        ))
        .join("main");
    let mut total = 0;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("log dir") {
        let entry = entry.expect("entry");
        let size = entry.metadata().expect("metadata").len();
        assert!(size <= MAX_SIZE, "{:?} is {size} bytes", entry.file_name());
        total += size;
        names.push(entry.file_name().into_string().expect("utf8"));
    }
    names.sort();
    eprintln!("log dir after 100000 lines: {names:?}, {total} bytes");
    assert!(total <= MAX_SIZE * MAX_FILES, "{total} bytes in {names:?}");
    let rotated = names.iter().filter(|n| n.starts_with("0.log.20")).count();
    assert_eq!(rotated as u64, MAX_FILES - 1, "{names:?}");

    // About 1.09 MB of output at 128 KiB/s, after a one-second burst: at least 7 s.
    let terminated = terminated(&pod, "main").expect("terminated");
    let (started, finished) = (
        terminated.started_at.as_ref().expect("startedAt").0,
        terminated.finished_at.as_ref().expect("finishedAt").0,
    );
    let seconds = finished.as_second() - started.as_second();
    eprintln!("100000 lines at --container-log-max-rate=128Ki took {seconds} s");
    assert!(
        seconds >= 6,
        "the write-rate bound did not hold: {seconds} s"
    );
}

#[tokio::test]
async fn kubectl_logs_of_a_ticking_pod_follow_since_and_previous_after_a_restart() {
    let ns = TestNamespace::new("ticking").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let node = shared_node(KRUSTLET);
    create(
        &pods,
        multitool_pod(
            "ticker",
            node,
            &["tick", "8", "1000", "exit", "1"],
            "OnFailure",
        ),
    )
    .await
    .expect("create");
    wait_for(&pods, "ticker", Duration::from_secs(120), "running", |p| {
        container_status(p, "main")
            .is_some_and(|s| s.state.as_ref().is_some_and(|s| s.running.is_some()))
    })
    .await
    .expect("running");

    // Follow: lines arrive while the run goes on, and the command returns when it ends.
    let info = cluster();
    let started = Instant::now();
    let mut child = Command::new(&info.kubectl)
        .arg("--kubeconfig")
        .arg(&info.kubeconfig)
        .args(["logs", "-f", "-n", ns.name(), "ticker"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send((line.unwrap_or_default(), Instant::now())).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok((line, at)) = rx.recv_timeout(Duration::from_secs(30)) {
        lines.push((line, at));
    }
    // Its output closed; the process itself may take a moment more to exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kubectl logs -f did not return after the run ended; got {lines:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "kubectl logs -f exited {status}");
    let ticks: Vec<String> = (1..=8).map(|n| format!("tick {n}")).collect();
    let texts: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(texts, ticks);
    // Streamed, not delivered at the end: the last line came seconds after the first.
    let spread = lines[7].1 - lines[0].1;
    assert!(
        spread >= Duration::from_secs(2),
        "lines arrived within {spread:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(40));

    // The restart (after the 10 s back-off) makes the first run the previous one.
    wait_for(
        &pods,
        "ticker",
        Duration::from_secs(120),
        "restarted and ticking",
        |p| {
            container_status(p, "main").is_some_and(|s| {
                s.restart_count >= 1 && s.state.as_ref().is_some_and(|s| s.running.is_some())
            })
        },
    )
    .await
    .expect("restarted");
    let previous = kubectl(&[
        "logs",
        "-n",
        ns.name(),
        "ticker",
        "--previous",
        "--timestamps",
    ])
    .expect("--previous");
    let stamped: Vec<(&str, &str)> = previous
        .lines()
        .map(|l| l.split_once(' ').expect("stamp and text"))
        .collect();
    let texts: Vec<&str> = stamped.iter().map(|(_, t)| *t).collect();
    assert_eq!(texts, ticks);

    // --since-time goes to the API server in whole seconds; ticks are a second apart, so the
    // second of "tick 4" starts after "tick 3".
    let since = kubectl(&[
        "logs",
        "-n",
        ns.name(),
        "ticker",
        "--previous",
        &format!("--since-time={}", stamped[3].0),
    ])
    .expect("--since-time");
    assert_eq!(since, "tick 4\ntick 5\ntick 6\ntick 7\ntick 8\n");
    let recent = kubectl(&[
        "logs",
        "-n",
        ns.name(),
        "ticker",
        "--previous",
        "--since=1h",
    ])
    .expect("--since");
    assert_eq!(recent.lines().count(), 8, "{recent}");
    // The previous run has ended; two seconds on, nothing of it is a second old, however slow
    // the machine was to restart it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let none = kubectl(&[
        "logs",
        "-n",
        ns.name(),
        "ticker",
        "--previous",
        "--since=1s",
    ])
    .expect("--since=1s");
    assert_eq!(none, "");
}

#[tokio::test]
async fn metrics_stats_pods_and_configz_match_what_runs() {
    let node = KrustletNode::start(KRUSTLET, "metrics", &["--container-log-max-files=4"])
        .expect("start node");
    wait_schedulable(&node).await;
    let name = node.name().to_string();
    let ns = TestNamespace::new("metrics").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        multitool_pod("one", &name, &["alloc", "4", "tick", "0", "1000"], "Always"),
    )
    .await
    .expect("create");
    let two = for_node(
        serde_json::json!({
            "metadata": {"name": "two"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "a", "image": workloads::multitool(), "args": ["tick", "0", "1000"]},
                    {"name": "b", "image": workloads::multitool(), "args": ["spin", "0"]}
                ]
            }
        }),
        &name,
    );
    create(&pods, two).await.expect("create");
    for pod in ["one", "two"] {
        wait_for_phase(&pods, pod, "Running", Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{e}; node log:\n{}", node.log()));
    }

    let scrape = parse_prometheus(&kubelet_get(&node, "/metrics").await);
    assert_eq!(
        sample_value(&scrape, "kubelet_running_pods", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample_value(
            &scrape,
            "kubelet_running_containers",
            &[("container_state", "running")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample_value(&scrape, "kubelet_started_pods_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample_value(
            &scrape,
            "kubelet_started_containers_total",
            &[("container_type", "container")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample_value(&scrape, "kubelet_node_name", &[("node", &name)]),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&scrape, "krustlet_wasm_running_instances", &[]),
        Some(3.0)
    );
    // Three starts of one program: each one is a compile or a cache hit (concurrent first
    // starts may all compile).
    let hits = sample_value(
        &scrape,
        "krustlet_wasm_compile_cache_hits_total",
        &[("source", "memory")],
    );
    let compiles = sample_value(&scrape, "krustlet_wasm_compile_duration_seconds_count", &[]);
    assert_eq!(
        hits.unwrap_or(0.0) + compiles.unwrap_or(0.0),
        3.0,
        "hits {hits:?}, compiles {compiles:?}"
    );
    for histogram in [
        "kubelet_pod_start_duration_seconds",
        "kubelet_pod_worker_duration_seconds",
        "krustlet_wasm_compile_duration_seconds",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == histogram
                && matches!(&s.value, prometheus_parse::Value::Histogram(b) if !b.is_empty())),
            "no {histogram} histogram"
        );
    }

    let summary: serde_json::Value =
        serde_json::from_str(&kubelet_get(&node, "/stats/summary").await).expect("summary JSON");
    assert_eq!(summary["node"]["nodeName"], name.as_str());
    assert!(
        summary["node"]["memory"]["workingSetBytes"].as_u64() > Some(0),
        "{summary}"
    );
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
        "{summary}"
    );
    assert!(
        summary["node"]["fs"]["capacityBytes"].as_u64() > Some(0),
        "{summary}"
    );
    let listed = summary["pods"].as_array().expect("pods");
    assert_eq!(listed.len(), 2, "{summary}");
    for pod in listed {
        assert_eq!(pod["podRef"]["namespace"], ns.name());
        assert!(pod["podRef"]["uid"].is_string() && pod["startTime"].is_string());
        let memory = pod["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
        assert!(
            memory > 0,
            "pod {} reports no memory (the runtime must keep RunningContainer::usage \
             current: the wasi runtime's usage accounting): {pod}",
            pod["podRef"]["name"]
        );
        for container in pod["containers"].as_array().expect("containers") {
            assert!(
                container["memory"]["workingSetBytes"].as_u64() > Some(0),
                "{container}"
            );
            assert!(
                container["cpu"]["usageCoreNanoSeconds"].is_u64(),
                "{container}"
            );
            assert!(container["cpu"]["usageNanoCores"].is_u64(), "{container}");
        }
    }
    let two = listed
        .iter()
        .find(|p| p["podRef"]["name"] == "two")
        .expect("pod two");
    assert_eq!(two["containers"].as_array().map(Vec::len), Some(2));

    let resource = parse_prometheus(&kubelet_get(&node, "/metrics/resource").await);
    for container in ["a", "b"] {
        let labels = [
            ("container", container),
            ("namespace", ns.name()),
            ("pod", "two"),
        ];
        assert!(sample_value(&resource, "container_memory_working_set_bytes", &labels) > Some(0.0));
        assert!(sample_value(&resource, "container_cpu_usage_seconds_total", &labels).is_some());
        assert!(sample_value(&resource, "container_start_time_seconds", &labels) > Some(0.0));
    }
    assert!(sample_value(&resource, "pod_memory_working_set_bytes", &[("pod", "one")]) > Some(0.0));
    assert!(sample_value(&resource, "node_memory_working_set_bytes", &[]) > Some(0.0));
    assert!(sample_value(&resource, "node_cpu_usage_seconds_total", &[]) > Some(0.0));
    assert_eq!(
        sample_value(&resource, "resource_scrape_error", &[]),
        Some(0.0)
    );

    let list: serde_json::Value =
        serde_json::from_str(&kubelet_get(&node, "/pods").await).expect("PodList JSON");
    assert_eq!(list["kind"], "PodList");
    let mut names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["one", "two"]);
    assert!(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|p| p["status"]["phase"] == "Running")
    );

    let configz: serde_json::Value =
        serde_json::from_str(&kubelet_get(&node, "/configz").await).expect("configz JSON");
    let config = &configz["kubeletconfig"];
    assert_eq!(config["nodeName"], name.as_str());
    assert_eq!(config["containerLogMaxFiles"], 4);
    assert_eq!(config["containerLogMaxSize"], 10 << 20);
    assert_eq!(config["kind"], "KubeletConfiguration");

    // One pod gone: the gauge follows.
    pods.delete("one", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&pods, "one", Duration::from_secs(60))
        .await
        .expect("gone");
    let scrape = parse_prometheus(&kubelet_get(&node, "/metrics").await);
    assert_eq!(
        sample_value(&scrape, "kubelet_running_pods", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&scrape, "krustlet_wasm_running_instances", &[]),
        Some(2.0)
    );
}
