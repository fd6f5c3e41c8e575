//! Certificate rotation under load: a node whose certificates live 600 s (the API server's
//! minimum `expirationSeconds`) keeps starting and deleting pods for `minutes`, across the
//! rotations of its client certificate. Without the watch following the rotated client, pods
//! stop starting once the first certificate expires, while the lease keeps the node Ready.

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde::Serialize;

use crate::harness::{Kind, Warm, create, pod};
use crate::report::{Latency, latency_cell, print_table};

/// The certificate lifetime the node asks for.
const EXPIRATION_SECONDS: u32 = 600;
/// One cycle (create → Succeeded → delete → gone) starts this often.
const CYCLE_EVERY: Duration = Duration::from_secs(30);
/// A cycle's step that takes longer than this counts as a failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// The rotation result.
#[derive(Debug, Serialize)]
pub struct Rotation {
    /// How long the scenario ran, in seconds.
    pub seconds: u64,
    /// Cycles run.
    pub cycles: usize,
    /// Cycles that failed, with when (seconds from start) and why.
    pub failures: Vec<String>,
    /// Distinct client certificates the node used (the first one plus each rotation).
    pub client_certificates: usize,
    /// The first certificate's lifetime as issued (not after − not before), in seconds.
    pub first_lifetime_seconds: u64,
    /// Each new certificate's expiry, seconds from start.
    pub expiries: Vec<u64>,
    /// `client certificate rotated` lines in the node's log.
    pub rotations_logged: usize,
    /// Create → Succeeded, per cycle.
    pub succeeded: Latency,
    /// Delete → gone from the API, per cycle.
    pub deleted: Latency,
}

/// Runs the scenario for `minutes`.
pub async fn run(minutes: u64) -> anyhow::Result<Rotation> {
    let expiration = format!("--csr-expiration-seconds={EXPIRATION_SECONDS}");
    let mut warm = Warm::start(Kind::Krustlet, "bench-rotation", 110, &[&expiration]).await?;
    let cert_path = warm
        .node
        .krustlet_mut()?
        .data_dir()
        .join("pki/kubelet-client-current.pem");
    let started = Instant::now();
    let start_wall = SystemTime::now();
    let mut certificates: Vec<SystemTime> = Vec::new();
    let mut first_lifetime = Duration::ZERO;
    let mut failures = Vec::new();
    let (mut succeeded, mut deleted) = (Vec::new(), Vec::new());
    let mut cycle = 0;
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        let cycle_start = Instant::now();
        if let Some(bundle) = kubelet::bootstrap::certs::CertBundle::load(&cert_path)?
            && certificates.last() != Some(&bundle.not_after)
        {
            if certificates.is_empty() {
                first_lifetime = bundle
                    .not_after
                    .duration_since(bundle.not_before)
                    .unwrap_or_default();
            }
            certificates.push(bundle.not_after);
            eprintln!(
                "[{:>5}s] client certificate #{} valid until +{}s",
                started.elapsed().as_secs(),
                certificates.len(),
                bundle
                    .not_after
                    .duration_since(start_wall)
                    .unwrap_or_default()
                    .as_secs()
            );
        }
        let name = format!("cycle-{cycle}");
        match one_cycle(&warm, &name).await {
            Ok((up, gone)) => {
                succeeded.push(up);
                deleted.push(gone);
            }
            Err(error) => {
                let at = started.elapsed().as_secs();
                eprintln!("[{at:>5}s] {name} FAILED: {error:#}");
                failures.push(format!("{at}s {name}: {error:#}"));
            }
        }
        cycle += 1;
        if warm
            .node
            .krustlet_mut()?
            .wait_exit(Duration::from_millis(1))
            .await
            .is_ok()
        {
            failures.push(format!(
                "{}s: the node process exited",
                started.elapsed().as_secs()
            ));
            break;
        }
        tokio::time::sleep(CYCLE_EVERY.saturating_sub(cycle_start.elapsed())).await;
    }
    let rotations_logged = warm
        .node
        .log()
        .matches("client certificate rotated")
        .count();
    let result = Rotation {
        seconds: started.elapsed().as_secs(),
        cycles: cycle,
        failures,
        client_certificates: certificates.len(),
        first_lifetime_seconds: first_lifetime.as_secs(),
        expiries: certificates
            .iter()
            .map(|t| t.duration_since(start_wall).unwrap_or_default().as_secs())
            .collect(),
        rotations_logged,
        succeeded: Latency::of(&succeeded),
        deleted: Latency::of(&deleted),
    };
    print_table(
        &format!(
            "rotation: {}s, certificates of {EXPIRATION_SECONDS}s requested",
            result.seconds
        ),
        &[
            ("cycles".into(), result.cycles.to_string()),
            ("failed cycles".into(), result.failures.len().to_string()),
            (
                "client certificates used".into(),
                result.client_certificates.to_string(),
            ),
            (
                "first certificate lifetime".into(),
                format!("{}s", result.first_lifetime_seconds),
            ),
            (
                "rotations logged".into(),
                result.rotations_logged.to_string(),
            ),
            ("create → Succeeded".into(), latency_cell(&result.succeeded)),
            ("delete → gone".into(), latency_cell(&result.deleted)),
        ],
    );
    if !result.failures.is_empty() {
        anyhow::bail!(
            "{} cycles failed: {:?}",
            result.failures.len(),
            result.failures
        );
    }
    // Two rotations: three certificates, the last two issued while pods kept cycling.
    if minutes >= 20 && result.client_certificates < 3 {
        anyhow::bail!(
            "only {} client certificates in {} minutes; expected at least two rotations",
            result.client_certificates,
            minutes
        );
    }
    Ok(result)
}

/// Creates a pod, waits for Succeeded, deletes it and waits until it is gone.
async fn one_cycle(warm: &Warm, name: &str) -> anyhow::Result<(Duration, Duration)> {
    let manifest = pod(name, warm.node.name(), &warm.image, &["hello"], "Never")?;
    let created = create(&warm.api, &manifest).await?;
    warm.observer
        .wait_all(&[name.to_string()], STEP_TIMEOUT, "Succeeded", |s| {
            s.succeeded.is_some()
        })
        .await?;
    let up = created.elapsed();
    let deleting = Instant::now();
    warm.api.delete(name, &DeleteParams::default()).await?;
    wait_gone(&warm.api, name).await?;
    Ok((up, deleting.elapsed()))
}

/// Waits until the node confirmed the deletion (the pod is gone from the API).
async fn wait_gone(api: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while api.get_opt(name).await?.is_some() {
        if Instant::now() > deadline {
            anyhow::bail!("pod {name} not gone within {STEP_TIMEOUT:?} of its deletion");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
