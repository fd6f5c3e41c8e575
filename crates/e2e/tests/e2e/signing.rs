//! Signed modules (issue 17): a node with `--image-policy-file` runs only images whose exact
//! manifest digest a trusted key signed with real cosign (built by `test/cluster/build.sh`
//! into `.bin/cosign`), in both cosign layouts, refuses the rest before anything is compiled,
//! and reports running pods a policy edit distrusts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use krustlet_e2e::cluster::bin_dir;
use krustlet_e2e::kubelet_api::kubelet_get;
use krustlet_e2e::pods::{create, for_node, wait_for, wait_for_phase, waiting};
use krustlet_e2e::{KrustletNode, TestNamespace, cluster, registry};
use kube::api::ListParams;
use oci_client::secrets::RegistryAuth;
use serde_json::json;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(180);

fn cosign_bin() -> PathBuf {
    let path = bin_dir().join("cosign");
    assert!(
        path.exists(),
        "prerequisite missing: {} (cosign from its Go module); build it with `test/cluster/build.sh`",
        path.display()
    );
    path
}

/// Runs cosign offline (no Rekor, no Fulcio) in `dir` with an empty key password.
fn cosign(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(cosign_bin())
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", "")
        .env("HOME", dir)
        .envs(env.iter().copied())
        .output()
        .expect("run cosign");
    assert!(
        output.status.success(),
        "cosign {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Signs `image` (`repo@digest`) with `key` in the tag layout, or as an OCI 1.1 referrer.
fn sign(dir: &Path, key: &str, image: &str, referrers: bool) {
    let mut args = vec![
        "sign",
        "--key",
        key,
        "--tlog-upload=false",
        "--yes",
        "--allow-insecure-registry",
        "--allow-http-registry",
    ];
    let mut env = Vec::new();
    if referrers {
        args.push("--registry-referrers-mode=oci-1-1");
        env.push(("COSIGN_EXPERIMENTAL", "1"));
    }
    args.push(image);
    cosign(dir, &args, &env);
}

fn multitool() -> Vec<u8> {
    let path = krustlet_test_workloads::multitool().unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(path).expect("read multitool")
}

/// The multitool under a digest no node has seen.
fn distinct(tag: &str) -> Vec<u8> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{tag}-{}-{}-{:?}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        Instant::now()
    );
    registry::padded(multitool(), &name, 64)
}

/// Pushes a fresh program to `reference`; returns `repo@digest`.
async fn push(reference: &str, tag: &str) -> String {
    let digest = registry::push_wasm(reference, distinct(tag), &RegistryAuth::Anonymous)
        .await
        .unwrap_or_else(|e| panic!("pushing {reference}: {e:#}"));
    let repo = reference.rsplit_once(':').map_or(reference, |(r, _)| r);
    format!("{repo}@{digest}")
}

fn pod(name: &str, image: &str, node: &str, args: &[&str]) -> serde_json::Value {
    for_node(
        json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": image, "args": args}]
            }
        }),
        node,
    )
}

async fn events(ns: &TestNamespace, pod: &str) -> Vec<(String, String)> {
    let list = ns
        .api::<Event>()
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
        .await
        .expect("events");
    list.items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// Waits up to a minute for an event about `pod` with `reason` whose message has `text`
/// (events are published in the background, after the status says so); panics with the
/// events there are.
async fn wait_event(ns: &TestNamespace, pod: &str, reason: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = events(ns, pod).await;
        if events.iter().any(|(r, m)| r == reason && m.contains(text)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pod}: no {reason} event with {text:?}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for `name` to be refused by the policy; returns the waiting message.
async fn refused(ns: &TestNamespace, name: &str) -> String {
    let pods = ns.api::<Pod>();
    let found = wait_for(&pods, name, LONG, "SignatureVerificationFailed", |p| {
        waiting(p, "main")
            .is_some_and(|w| w.reason.as_deref() == Some("SignatureVerificationFailed"))
    })
    .await;
    let p = match found {
        Ok(p) => p,
        Err(e) => panic!("{name}: {e:#}\nevents: {:?}", events(ns, name).await),
    };
    waiting(&p, "main")
        .and_then(|w| w.message.clone())
        .unwrap_or_default()
}

async fn compiles(node: &KrustletNode) -> f64 {
    let text = kubelet_get(node, "/metrics").await;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == "krustlet_wasm_compile_duration_seconds_count")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn write_policy(path: &Path, repo_glob: &str, key: &Path) {
    let policy = format!(
        "default: allow\nrules:\n  - name: signed-apps\n    images: [\"{repo_glob}\"]\n    action: require\n    keys:\n      - name: release\n        path: {}\n",
        key.display()
    );
    // Written whole and renamed, so the node never reads half a policy.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, policy).expect("write policy");
    std::fs::rename(&tmp, path).expect("rename policy");
}

#[tokio::test]
async fn only_images_signed_by_a_trusted_key_run_and_a_policy_edit_reports_running_ones() {
    let info = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    cosign(
        d,
        &["generate-key-pair", "--output-key-prefix", "trusted"],
        &[],
    );
    cosign(
        d,
        &["generate-key-pair", "--output-key-prefix", "other"],
        &[],
    );
    let base = format!("{}/signed-{}", info.registry, std::process::id());

    let tag_signed = push(&format!("{base}/tag-signed:v1"), "tag").await;
    sign(d, "trusted.key", &tag_signed, false);
    let ref_signed = push(&format!("{base}/ref-signed:v1"), "ref").await;
    sign(d, "trusted.key", &ref_signed, true);
    let unsigned = push(&format!("{base}/unsigned:v1"), "unsigned").await;
    let wrong_key = push(&format!("{base}/wrong-key:v1"), "wrong").await;
    sign(d, "other.key", &wrong_key, false);
    // Signed, then the tag moved to new content: the running digest is not the signed one.
    let moved_ref = format!("{base}/moved:v1");
    let first = push(&moved_ref, "moved-a").await;
    sign(d, "trusted.key", &first, false);
    push(&moved_ref, "moved-b").await;
    let neighbour = push(
        &format!("{}/neighbours-{}/app:v1", info.registry, std::process::id()),
        "neighbour",
    )
    .await;

    let policy = d.join("policy.yaml");
    write_policy(&policy, &format!("{base}/**"), &d.join("trusted.pub"));
    let node = KrustletNode::start(
        KRUSTLET,
        "signing",
        &["--image-policy-file", policy.to_str().expect("utf-8 path")],
    )
    .expect("start krustlet");
    node.wait_ready("True", LONG).await.expect("node Ready");
    let ns = TestNamespace::new("signing").await.expect("namespace");
    let pods = ns.api::<Pod>();

    // Both layouts verify; the neighbour (no rule, default allow) is unaffected.
    for (name, image) in [
        ("tag-signed", &tag_signed),
        ("ref-signed", &ref_signed),
        ("neighbour", &neighbour),
    ] {
        create(&pods, pod(name, image, node.name(), &["sleep", "3600"]))
            .await
            .expect("create");
    }
    for name in ["tag-signed", "ref-signed", "neighbour"] {
        if let Err(e) = wait_for_phase(&pods, name, "Running", LONG).await {
            panic!(
                "{name}: {e:#}\nevents: {:?}\nlog: {}",
                events(&ns, name).await,
                node.log()
            );
        }
    }

    // Refused before compiling: the compile count does not move.
    let before = compiles(&node).await;
    for (name, image, expect) in [
        ("unsigned", &unsigned, "no cosign signature"),
        ("wrong-key", &wrong_key, "not from a trusted key"),
        ("moved", &moved_ref, "signed-apps"),
    ] {
        create(&pods, pod(name, image, node.name(), &["print", "ran"]))
            .await
            .expect("create");
        let message = refused(&ns, name).await;
        assert!(
            message.contains(expect) && message.contains("signed-apps"),
            "{name}: {message}"
        );
        wait_event(&ns, name, "SignatureVerificationFailed", "signed-apps").await;
    }
    assert_eq!(
        compiles(&node).await,
        before,
        "a refused image was compiled"
    );

    // `krustlet verify` explains the same decisions.
    let verify = |image: &str| {
        let out = Command::new(KRUSTLET)
            .args([
                "verify",
                image,
                "--policy",
                policy.to_str().expect("utf-8 path"),
            ])
            .output()
            .expect("run krustlet verify");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = verify(&ref_signed);
    assert!(
        ok && text.contains("key \"release\"") && text.contains("referrer"),
        "{text}"
    );
    let (ok, text) = verify(&unsigned);
    assert!(
        !ok && text.contains("no cosign signature") && text.contains("signed-apps"),
        "{text}"
    );

    // Distrust the key: new pods of the signed image are refused, running ones warned.
    write_policy(&policy, &format!("{base}/**"), &d.join("other.pub"));
    let deadline = Instant::now() + LONG;
    loop {
        let warned = events(&ns, "tag-signed")
            .await
            .iter()
            .any(|(r, m)| r == "SignaturePolicyViolation" && m.contains("keeps running"));
        if warned {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Warning event after the policy edit\nlog: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    create(
        &pods,
        pod(
            "tag-signed-again",
            &tag_signed,
            node.name(),
            &["print", "ran"],
        ),
    )
    .await
    .expect("create");
    let message = refused(&ns, "tag-signed-again").await;
    assert!(message.contains("not from a trusted key"), "{message}");
    for name in ["tag-signed", "ref-signed", "neighbour"] {
        let p = pods.get(name).await.expect("get");
        assert_eq!(
            krustlet_e2e::pods::phase(&p),
            "Running",
            "{name} must keep running"
        );
    }
}

/// A test sigstore: a Fulcio-like CA and a Rekor-like log key made by the test, as
/// docs/signing.md ("A test trusted root") describes. Nothing is fetched.
mod test_sigstore {
    use base64::Engine as _;
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
        SigningKey,
    };
    use serde_json::json;
    use sha2::{Digest, Sha256};

    pub fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A self-signed CA standing in for Fulcio.
    pub struct Ca {
        params: CertificateParams,
        key: KeyPair,
        pub der: Vec<u8>,
        pub pem: String,
    }

    impl Ca {
        pub fn new(name: &str) -> Self {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("ca key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).expect("ca cert");
            Self {
                der: cert.der().to_vec(),
                pem: cert.pem(),
                params,
                key,
            }
        }
    }

    /// A log key standing in for Rekor's.
    pub struct Log {
        key: KeyPair,
    }

    impl Log {
        pub fn new() -> Self {
            Self {
                key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("log key"),
            }
        }

        fn spki(&self) -> Vec<u8> {
            self.key.subject_public_key_info()
        }

        fn id(&self) -> Vec<u8> {
            Sha256::digest(self.spki()).to_vec()
        }
    }

    /// A sigstore `trusted_root.json` trusting `ca` and `log`.
    pub fn trusted_root(ca: &Ca, log: &Log) -> String {
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://rekor.invalid",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": b64(&log.spki()),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": "2000-01-01T00:00:00Z"}
                },
                "logId": {"keyId": b64(&log.id())}
            }],
            "certificateAuthorities": [{
                "subject": {"organization": "krustlet-e2e", "commonName": "test fulcio"},
                "uri": "https://fulcio.invalid",
                "certChain": {"certificates": [{"rawBytes": b64(&ca.der)}]},
                "validFor": {"start": "2000-01-01T00:00:00Z"}
            }],
            "ctlogs": [],
            "timestampAuthorities": []
        })
        .to_string()
    }

    /// The files `cosign attach signature` takes for one keyless signature.
    pub struct Signed {
        pub payload: Vec<u8>,
        /// Base64, as cosign stores it.
        pub signature: String,
        pub certificate: String,
        pub chain: String,
        /// cosign's `LocalSignedPayload` JSON with the Rekor bundle (`--rekor-response`).
        pub rekor_response: serde_json::Value,
    }

    /// cosign's simple-signing payload for `repo@digest` (the same one `krustlet push --sign`
    /// signs; real `cosign verify` checks it in the keyless test).
    pub use kubelet::image::signature::sign::payload;

    /// Signs `payload` as `subject` from OIDC `issuer` with a ten-minute certificate from
    /// `ca`, logged by `log` now, a minute after the certificate's start (what Fulcio and
    /// Rekor would have done).
    pub fn sign(ca: &Ca, log: &Log, issuer: &str, subject: &str, payload: Vec<u8>) -> Signed {
        let now = jiff::Timestamp::now().as_second();
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::Rfc822Name(subject.try_into().expect("ia5"))];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.not_before = time::OffsetDateTime::from_unix_timestamp(now - 60).expect("time");
        params.not_after = time::OffsetDateTime::from_unix_timestamp(now + 540).expect("time");
        // Fulcio's issuer extensions: .1.1 the raw string, .1.8 a DER UTF8String.
        let mut utf8 = vec![0x0c, u8::try_from(issuer.len()).expect("short issuer")];
        utf8.extend_from_slice(issuer.as_bytes());
        params.custom_extensions = vec![
            CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 1], issuer.into()),
            CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 57264, 1, 8], utf8),
        ];
        let leaf = params
            .signed_by(&leaf_key, &Issuer::from_params(&ca.params, &ca.key))
            .expect("leaf");
        let certificate = leaf.pem();
        let signature = leaf_key.sign(&payload).expect("sign");
        // The hashedrekord entry Rekor would have logged, and its signed entry timestamp
        // over the canonical JSON of {body, integratedTime, logID, logIndex}.
        let body = json!({
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hex(&Sha256::digest(&payload))}},
                "signature": {
                    "content": b64(&signature),
                    "publicKey": {"content": b64(certificate.as_bytes())}
                }
            }
        });
        let body = b64(body.to_string().as_bytes());
        let log_id = hex(&log.id());
        let canonical = format!(
            r#"{{"body":"{body}","integratedTime":{now},"logID":"{log_id}","logIndex":42}}"#
        );
        let set = log.key.sign(canonical.as_bytes()).expect("set");
        Signed {
            signature: b64(&signature),
            rekor_response: json!({
                "base64Signature": b64(&signature),
                "cert": certificate,
                "rekorBundle": {
                    "SignedEntryTimestamp": b64(&set),
                    "Payload": {"body": body, "integratedTime": now, "logIndex": 42, "logID": log_id}
                }
            }),
            payload,
            certificate,
            chain: ca.pem.clone(),
        }
    }
}

/// Attaches a keyless signature to `image` (`repo@digest`) with real cosign, so the layout
/// (annotations, bundle JSON) is cosign's own.
fn attach(dir: &Path, name: &str, image: &str, signed: &test_sigstore::Signed) {
    let file = |suffix: &str, bytes: &[u8]| {
        let path = dir.join(format!("{name}.{suffix}"));
        std::fs::write(&path, bytes).expect("write");
        path.to_str().expect("utf-8 path").to_string()
    };
    let payload = file("payload.json", &signed.payload);
    let signature = file("sig", signed.signature.as_bytes());
    let certificate = file("crt", signed.certificate.as_bytes());
    let chain = file("chain.pem", signed.chain.as_bytes());
    let rekor = file("rekor.json", signed.rekor_response.to_string().as_bytes());
    cosign(
        dir,
        &[
            "attach",
            "signature",
            "--payload",
            payload.as_str(),
            "--signature",
            signature.as_str(),
            "--certificate",
            certificate.as_str(),
            "--certificate-chain",
            chain.as_str(),
            "--rekor-response",
            rekor.as_str(),
            "--allow-insecure-registry",
            "--allow-http-registry",
            image,
        ],
        &[],
    );
}

#[tokio::test]
async fn keyless_signatures_run_only_for_the_trusted_identity_issuer_ca_and_log() {
    use test_sigstore::{Ca, Log, payload, sign, trusted_root};
    const ISSUER: &str = "https://issuer.e2e.invalid";
    const SUBJECT: &str = "release@ci.e2e.invalid";
    let info = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (fulcio, other_ca, rekor) = (Ca::new("test fulcio"), Ca::new("another CA"), Log::new());
    std::fs::write(d.join("trusted_root.json"), trusted_root(&fulcio, &rekor)).expect("root");
    let base = format!("{}/keyless-{}", info.registry, std::process::id());

    // (name, issuer, subject, CA, what the refusal must name)
    let cases: [(&str, &str, &str, &Ca, &str); 5] = [
        ("good", ISSUER, SUBJECT, &fulcio, ""),
        (
            "wrong-subject",
            ISSUER,
            "mallory@ci.e2e.invalid",
            &fulcio,
            "subject \"mallory@ci.e2e.invalid\" does not match",
        ),
        (
            "wrong-issuer",
            "https://other.e2e.invalid",
            SUBJECT,
            &fulcio,
            "OIDC issuer is \"https://other.e2e.invalid\"",
        ),
        (
            "other-ca",
            ISSUER,
            SUBJECT,
            &other_ca,
            "not issued by a Fulcio CA",
        ),
        (
            "tampered",
            ISSUER,
            SUBJECT,
            &fulcio,
            "signed entry timestamp does not verify",
        ),
    ];
    let mut images = Vec::new();
    for (name, issuer, subject, ca, _) in &cases {
        let image = push(&format!("{base}/{name}:v1"), name).await;
        let (repository, digest) = image.split_once('@').expect("repo@digest");
        let mut signed = sign(ca, &rekor, issuer, subject, payload(repository, digest));
        if *name == "tampered" {
            // The bundle claims another log index than the log signed.
            signed.rekor_response["rekorBundle"]["Payload"]["logIndex"] = json!(43);
        }
        attach(d, name, &image, &signed);
        images.push(image);
    }

    let policy = d.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "default: allow\ntrustedRoot: trusted_root.json\nrules:\n  - name: keyless-apps\n    images: [\"{base}/**\"]\n    action: require\n    keyless:\n      - name: release-ci\n        issuer: {ISSUER}\n        subject: 'release@ci\\.e2e\\.invalid'\n"
        ),
    )
    .expect("policy");
    let node = KrustletNode::start(
        KRUSTLET,
        "keyless",
        &["--image-policy-file", policy.to_str().expect("utf-8 path")],
    )
    .expect("start krustlet");
    node.wait_ready("True", LONG).await.expect("node Ready");
    let ns = TestNamespace::new("keyless").await.expect("namespace");
    let pods = ns.api::<Pod>();
    for ((name, ..), image) in cases.iter().zip(&images) {
        create(&pods, pod(name, image, node.name(), &["sleep", "3600"]))
            .await
            .expect("create");
    }
    if let Err(e) = wait_for_phase(&pods, "good", "Running", LONG).await {
        panic!(
            "good: {e:#}\nevents: {:?}\nlog: {}",
            events(&ns, "good").await,
            node.log()
        );
    }
    for (name, _, _, _, expect) in cases.iter().skip(1) {
        let message = refused(&ns, name).await;
        assert!(
            message.contains(expect) && message.contains("keyless-apps"),
            "{name}: {message}"
        );
        wait_event(&ns, name, "SignatureVerificationFailed", expect).await;
    }

    // `krustlet verify` names the identity; real cosign agrees the signature is valid for it.
    let out = Command::new(KRUSTLET)
        .args([
            "verify",
            images[0].as_str(),
            "--policy",
            policy.to_str().expect("utf-8 path"),
        ])
        .output()
        .expect("run krustlet verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("keyless identity \"release-ci\"")
            && text.contains(SUBJECT),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The test material is what cosign itself accepts offline with this trusted root (no
    // SCT: the test CA runs no certificate transparency log).
    let root = d.join("trusted_root.json");
    cosign(
        d,
        &[
            "verify",
            "--trusted-root",
            root.to_str().expect("utf-8 path"),
            "--certificate-identity",
            SUBJECT,
            "--certificate-oidc-issuer",
            ISSUER,
            "--insecure-ignore-sct",
            "--offline",
            "--allow-insecure-registry",
            "--allow-http-registry",
            images[0].as_str(),
        ],
        &[],
    );
}

#[tokio::test]
async fn an_image_pushed_with_krustlet_push_sign_runs_under_a_require_policy_and_cosign_verifies_it()
 {
    let info = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    const PASSWORD: &str = "push-sign-password";
    cosign(
        d,
        &["generate-key-pair", "--output-key-prefix", "release"],
        &[("COSIGN_PASSWORD", PASSWORD)],
    );
    let wasm = d.join("app.wasm");
    std::fs::write(&wasm, distinct("push-sign")).expect("write wasm");
    let base = format!("{}/push-sign-{}", info.registry, std::process::id());
    let reference = format!("{base}/app:v1");
    let push_signed = |password: &str| {
        Command::new(KRUSTLET)
            .args([
                "push",
                wasm.to_str().expect("utf-8 path"),
                &reference,
                "--sign",
                d.join("release.key").to_str().expect("utf-8 path"),
            ])
            .env("COSIGN_PASSWORD", password)
            .output()
            .expect("run krustlet push")
    };

    // A wrong password is refused before anything is pushed.
    let out = push_signed("not-the-password");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("COSIGN_PASSWORD"),
        "{stderr}"
    );

    let out = push_signed(PASSWORD);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "krustlet push --sign failed: {stderr}"
    );
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}\n{stderr}");
    let image = format!("{base}/app@{digest}");

    // Real cosign accepts the signature (no transparency log: signed offline).
    cosign(
        d,
        &[
            "verify",
            "--key",
            "release.pub",
            "--insecure-ignore-tlog=true",
            "--allow-insecure-registry",
            "--allow-http-registry",
            image.as_str(),
        ],
        &[],
    );

    // And a node that requires the key runs it.
    let policy = d.join("policy.yaml");
    write_policy(&policy, &format!("{base}/**"), &d.join("release.pub"));
    let node = KrustletNode::start(
        KRUSTLET,
        "push-sign",
        &["--image-policy-file", policy.to_str().expect("utf-8 path")],
    )
    .expect("start krustlet");
    node.wait_ready("True", LONG).await.expect("node Ready");
    let ns = TestNamespace::new("push-sign").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        pod("pushed", &reference, node.name(), &["sleep", "3600"]),
    )
    .await
    .expect("create");
    if let Err(e) = wait_for_phase(&pods, "pushed", "Running", LONG).await {
        panic!(
            "pushed: {e:#}\nevents: {:?}\nlog: {}",
            events(&ns, "pushed").await,
            node.log()
        );
    }
}
