//! The kubelet HTTPS API: `kubectl logs` (tail, timestamps, containers, previous, follow)
//! through the real API server, authentication and authorization of direct requests, and
//! `kubectl exec` refused promptly.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::Pod;
use krustlet_e2e::{KrustletNode, TestNamespace, cluster, kubectl};
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
    let info = cluster();
    let mut child = Command::new(&info.kubectl)
        .arg("--kubeconfig")
        .arg(&info.kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "kubectl {} did not return within {timeout:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
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
async fn kubectl_exec_fails_fast_with_a_clear_message() {
    let f = Fixture::new("exec").await;
    let started = Instant::now();
    let (ok, _, stderr) = kubectl_within(
        &["exec", "-n", f.ns.name(), &f.pod, "-c", "main", "--", "ls"],
        Duration::from_secs(30),
    );
    assert!(!ok, "kubectl exec succeeded");
    eprintln!("kubectl exec said: {}", stderr.trim());
    assert!(
        stderr.contains("exec is not supported for WebAssembly pods"),
        "{stderr}"
    );
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
        !ok && stderr.contains("attach is not supported"),
        "{stderr}"
    );
}

/// A TLS client that trusts the cluster CA (so only the issued serving certificate passes) and
/// presents `identity`, if any.
fn https_client(
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&cluster().ca_file).expect("ca file") {
        roots.add(ca.expect("ca")).expect("add ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let tls = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

fn identity_from_files(
    cert: &Path,
    key: &Path,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    (chain, PrivateKeyDer::from_pem_file(key).expect("key"))
}

/// A client certificate for `user` (no RBAC at all), issued by the cluster's
/// kube-apiserver-client signer.
async fn user_certificate(user: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
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
    let response = apiserver
        .post(f.url(&format!("/exec/{}/{}/main?command=ls", f.ns.name(), f.pod)))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("exec is not supported for WebAssembly pods")
    );
}
