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
        let events = events(&ns, name).await;
        assert!(
            events
                .iter()
                .any(|(r, m)| r == "SignatureVerificationFailed" && m.contains("signed-apps")),
            "{name}: {events:?}"
        );
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
