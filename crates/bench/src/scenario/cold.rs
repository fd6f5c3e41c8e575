//! Cold start: the first pod of a new image (pull + compile, with Winch unless the node runs
//! with `--first-start-compiler=cranelift`) against a cached one, the first pod after a
//! Krustlet restart (in-memory caches gone; Cranelift's code on disk remains), and
//! what signature verification adds to a cached start (issue 17: at most 20 ms).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use k8s_openapi::api::core::v1::Pod;
use krustlet_e2e::{TestNamespace, workloads};
use kube::api::Api;
use serde::Serialize;

use crate::harness::{Observer, create, pod, start_node};
use crate::report::print_table;

/// The cold-start result, create returned → Succeeded observed, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Cold {
    /// The image's size in bytes.
    pub image_bytes: usize,
    /// First pod of a new image: pull, verify, compile (Winch), run.
    pub first_ms: f64,
    /// The same on a node with `--first-start-compiler=cranelift`.
    pub first_cranelift_ms: f64,
    /// Second pod of the same image on the same node.
    pub cached_ms: f64,
    /// First pod after the node restarted (same data dir).
    pub after_restart_ms: f64,
    /// What a signature policy adds to a cached start.
    pub verification: Verification,
}

/// Cached starts of one image on a node without a policy and on a node whose policy requires
/// the image's signature (after the first start there, a verified-digest cache hit).
#[derive(Debug, Serialize)]
pub struct Verification {
    /// How many cached starts each median is of.
    pub samples: usize,
    /// Median cached start, no policy.
    pub unverified_ms: f64,
    /// Median cached start, `require` rule with the digest verified earlier.
    pub verified_ms: f64,
    /// `verified_ms - unverified_ms` (noise can make it negative).
    pub added_ms: f64,
    /// The cache-hit policy check alone, in process, in microseconds.
    pub check_us: f64,
}

/// Cached starts per node for the verification medians.
const VERIFY_SAMPLES: usize = 7;

/// Runs the scenario.
pub async fn run() -> anyhow::Result<Cold> {
    let mut node = start_node("bench-cold", &[]).await?;
    let ns = TestNamespace::new("bench-cold").await?;
    let api = ns.api::<Pod>();
    let observer = Observer::start(api.clone());
    // A new digest every run: the multitool plus a custom section holding a nonce.
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let bytes = krustlet_e2e::registry::padded(
        std::fs::read(krustlet_test_workloads::multitool()?)?,
        &format!("krustlet-bench-{nonce}"),
        0,
    );
    let image_bytes = bytes.len();
    let digest = krustlet_e2e::registry::sha256(&bytes);
    let image = workloads::publish(&format!("cold-{}-{nonce}", std::process::id()), move || {
        bytes
    });

    let first = run_one(&api, &observer, "first", node.name(), &image).await?;
    let cached = run_one(&api, &observer, "cached", node.name(), &image).await?;
    // The first start ran Winch's code; the restart is to load Cranelift's from the disk cache,
    // which the node writes in the background.
    node.wait_log(
        &["compiled", &digest, "with Cranelift"],
        1,
        Duration::from_secs(120),
    )
    .await?;
    restart(&mut node).await?;
    let restarted = run_one(&api, &observer, "restarted", node.name(), &image).await?;
    // The same image is new to another node: its first start compiled with Cranelift.
    let cranelift = start_node("bench-cold-cl", &["--first-start-compiler=cranelift"]).await?;
    let first_cranelift = run_one(&api, &observer, "first-cl", cranelift.name(), &image).await?;
    drop(cranelift);
    let verification = verification(&api, &observer, node.name(), &image, nonce).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let result = Cold {
        image_bytes,
        first_ms: ms(first),
        first_cranelift_ms: ms(first_cranelift),
        cached_ms: ms(cached),
        after_restart_ms: ms(restarted),
        verification,
    };
    print_table(
        &format!(
            "cold start: a new {} KiB image, create → Succeeded",
            image_bytes / 1024
        ),
        &[
            (
                "first pod (pull + compile with Winch)".into(),
                format!("{:.1} ms", result.first_ms),
            ),
            (
                "first pod, --first-start-compiler=cranelift".into(),
                format!("{:.1} ms", result.first_cranelift_ms),
            ),
            (
                "second pod (cached)".into(),
                format!("{:.1} ms", result.cached_ms),
            ),
            (
                "after a Krustlet restart".into(),
                format!("{:.1} ms", result.after_restart_ms),
            ),
        ],
    );
    let v = &result.verification;
    print_table(
        &format!(
            "signature verification on a cached start (median of {})",
            v.samples
        ),
        &[
            ("no policy".into(), format!("{:.1} ms", v.unverified_ms)),
            (
                "require rule, verified digest cached".into(),
                format!("{:.1} ms", v.verified_ms),
            ),
            (
                "added by verification (goal <= 20 ms)".into(),
                format!("{:.1} ms", v.added_ms),
            ),
            (
                "cache-hit policy check alone".into(),
                format!("{:.1} us", v.check_us),
            ),
        ],
    );
    Ok(result)
}

/// Restarts `node` and waits until the new process is up: it has renewed the node's Lease,
/// which it does at start, right before it watches its pods. (The Node stays Ready through a
/// quick restart, so waiting for Ready alone would time the restart into the next pod.)
async fn restart(node: &mut krustlet_e2e::KrustletNode) -> anyhow::Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> =
        Api::namespaced(krustlet_e2e::cluster::client().await?, "kube-node-lease");
    let renewed = |lease: Option<Lease>| lease.and_then(|l| l.spec).and_then(|s| s.renew_time);
    let before = renewed(leases.get_opt(node.name()).await?);
    node.restart()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while renewed(leases.get_opt(node.name()).await?) == before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {} did not renew its Lease within 120 s of a restart",
            node.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.wait_ready("True", Duration::from_secs(120)).await?;
    Ok(())
}

/// Signs `image` with a fresh key, starts a second node whose policy requires that key, and
/// compares cached starts there with cached starts on `plain_node` (no policy), interleaved.
async fn verification(
    api: &Api<Pod>,
    observer: &Observer,
    plain_node: &str,
    image: &str,
    nonce: u128,
) -> anyhow::Result<Verification> {
    use kubelet::image::signature::policy::Policy;
    use kubelet::image::signature::sign::{SigningKey, sign_and_push};
    use kubelet::image::signature::{Allowed, Signatures};

    let digest = kubelet::image::resolve_digest(image, None, &[]).await?;
    let key = SigningKey::generate()?;
    sign_and_push(image, &digest, &key, None).await?;
    let repository = image.rsplit_once(':').map_or(image, |(r, _)| r);
    let dir = std::env::temp_dir().join(format!(
        "krustlet-bench-policy-{}-{nonce}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("policy.yaml");
    let pem = key.public_pem().replace('\n', "\n          ");
    std::fs::write(
        &path,
        format!(
            "default: allow\nrules:\n  - name: bench\n    images: [\"{repository}\"]\n    action: require\n    keys:\n      - name: bench\n        pem: |\n          {pem}\n"
        ),
    )?;

    // The policy check alone: one verification, then cache hits.
    let signatures = Signatures::fixed(Policy::load(&path)?, Vec::new());
    let checked = signatures.check(image, &digest, "default", None).await?;
    anyhow::ensure!(
        matches!(checked, Allowed::Verified { .. }),
        "the benchmark image did not verify: {checked}"
    );
    const CHECKS: u32 = 1000;
    let started = Instant::now();
    for _ in 0..CHECKS {
        signatures
            .check_cached(image, &digest, "default", None)
            .await?;
    }
    let check_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(CHECKS);

    let path_arg = path.to_str().context("temp dir path is not UTF-8")?;
    let verifying = start_node("bench-cold-verify", &["--image-policy-file", path_arg]).await?;
    // The first start there pulls, verifies and compiles; the rest are cache hits.
    run_one(api, observer, "verify-first", verifying.name(), image).await?;
    let (mut plain, mut verified) = (Vec::new(), Vec::new());
    for i in 0..VERIFY_SAMPLES {
        plain.push(run_one(api, observer, &format!("plain-{i}"), plain_node, image).await?);
        verified.push(
            run_one(
                api,
                observer,
                &format!("verified-{i}"),
                verifying.name(),
                image,
            )
            .await?,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let (unverified_ms, verified_ms) = (median(plain), median(verified));
    Ok(Verification {
        samples: VERIFY_SAMPLES,
        unverified_ms,
        verified_ms,
        added_ms: verified_ms - unverified_ms,
        check_us,
    })
}

async fn run_one(
    api: &Api<Pod>,
    observer: &Observer,
    name: &str,
    node: &str,
    image: &str,
) -> anyhow::Result<Duration> {
    let manifest = pod(name, node, image, &["hello"], "Never")?;
    let created = create(api, &manifest).await?;
    observer
        .wait_all(
            &[name.to_string()],
            Duration::from_secs(180),
            "Succeeded",
            |s| s.succeeded.is_some(),
        )
        .await?;
    Ok(observer
        .get(name)
        .succeeded
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(created))
}
