//! Density: ramp to N long-running pods on one node of any kind. Memory and CPU are the node
//! process's; the floor runs inside the benchmark and has none of its own to measure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde::Serialize;

use super::{node_label, on_kind};
use crate::harness::{Kind, Warm, Work, bench_pod, cpu_seconds, create, rss_bytes};
use crate::report::{Figure, Figures, print_table};

/// Creates in flight at once during the ramp.
const CONCURRENCY: usize = 50;

/// The density result.
#[derive(Debug, Serialize)]
pub struct Density {
    /// Pods running at the end.
    pub pods: usize,
    /// First create → all Running observed.
    pub seconds_to_all_running: f64,
    /// Krustlet's RSS with no pods (after one warm-up pod).
    pub rss_idle_bytes: u64,
    /// Krustlet's RSS with every pod running.
    pub rss_full_bytes: u64,
    /// (full − idle) / pods.
    pub rss_per_pod_bytes: u64,
    /// Krustlet's CPU use over 10 s with every pod running (sleeping), in cores.
    pub cpu_cores_at_rest: f64,
    /// Whether the node reported Ready at every check (every second) throughout.
    pub ready_throughout: bool,
    /// The longest gap between lease renewals seen (renewed every 10 s when healthy).
    pub max_lease_gap_seconds: f64,
    /// Whether the memory and CPU figures are the node's own (the floor has no process).
    pub has_process: bool,
}

impl Figures for Density {
    fn figures(&self) -> Vec<Figure> {
        let own = |value: f64| self.has_process.then_some(value);
        vec![
            Figure::of("create → all Running", "s", self.seconds_to_all_running),
            Figure::rate(
                "pods/s during the fill",
                "pods/s",
                self.pods as f64 / self.seconds_to_all_running.max(1e-3),
            ),
            Figure::maybe(
                "RSS per pod",
                "KiB",
                own(self.rss_per_pod_bytes as f64 / 1024.0),
            ),
            Figure::maybe("RSS full", "MiB", own(mib(self.rss_full_bytes))),
            Figure::maybe(
                "CPU at rest",
                "millicores",
                own(self.cpu_cores_at_rest * 1000.0),
            ),
            Figure::of("longest lease renewal gap", "s", self.max_lease_gap_seconds),
        ]
    }
}

/// Runs the scenario on a node of `kind`.
pub async fn run(pods: usize, kind: Kind) -> anyhow::Result<Density> {
    let Warm {
        node,
        ns,
        api,
        observer,
        image,
    } = Warm::start(kind, "bench-density", pods + 10, &[]).await?;
    let pid = node.pid();
    let rss = |pid: Option<u32>| pid.map_or(0, rss_bytes);
    let cpu = |pid: Option<u32>| pid.map_or(0.0, cpu_seconds);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss(pid);

    // Watch the node's health while the pods ramp up.
    let healthy = Arc::new(AtomicBool::new(true));
    let max_gap_ms = Arc::new(AtomicU64::new(0));
    let monitor = tokio::spawn(monitor(
        ns.client(),
        node.name().to_string(),
        healthy.clone(),
        max_gap_ms.clone(),
    ));

    let names: Vec<String> = (0..pods).map(|i| format!("dense-{i}")).collect();
    let started = Instant::now();
    futures::stream::iter(
        names
            .iter()
            .map(|n| bench_pod(n, node.name(), &image, Work::Forever)),
    )
    .map(|manifest| {
        let api = api.clone();
        async move { create(&api, &manifest?).await }
    })
    .buffer_unordered(CONCURRENCY)
    .try_collect::<Vec<_>>()
    .await?;
    let timeout = Duration::from_secs(300 + pods as u64 / 5);
    observer
        .wait_all(&names, timeout, "Running", |s| s.running.is_some())
        .await?;
    let to_all_running = started.elapsed();

    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_full = rss(pid);
    let cpu_before = cpu(pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu_at_rest = (cpu(pid) - cpu_before) / window.elapsed().as_secs_f64();
    monitor.abort();
    node.health()?;

    let result = Density {
        pods,
        seconds_to_all_running: to_all_running.as_secs_f64(),
        rss_idle_bytes: rss_idle,
        rss_full_bytes: rss_full,
        rss_per_pod_bytes: rss_full.saturating_sub(rss_idle) / pods.max(1) as u64,
        cpu_cores_at_rest: cpu_at_rest,
        ready_throughout: healthy.load(Ordering::Relaxed),
        max_lease_gap_seconds: max_gap_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        has_process: pid.is_some(),
    };
    print_table(
        &format!("density: {pods} sleeping pods on one node{}", on_kind(kind)),
        &[
            (
                "create → all Running".into(),
                format!("{:.1} s", result.seconds_to_all_running),
            ),
            (
                format!("{} RSS idle / full", node_label(kind)),
                format!("{:.1} MiB / {:.1} MiB", mib(rss_idle), mib(rss_full)),
            ),
            (
                "RSS per pod".into(),
                format!("{:.1} KiB", result.rss_per_pod_bytes as f64 / 1024.0),
            ),
            (
                "CPU at rest".into(),
                format!(
                    "{:.3} cores ({:.2} millicores per pod)",
                    cpu_at_rest,
                    cpu_at_rest * 1000.0 / pods.max(1) as f64
                ),
            ),
            (
                "node Ready throughout".into(),
                result.ready_throughout.to_string(),
            ),
            (
                "longest lease renewal gap".into(),
                format!("{:.1} s", result.max_lease_gap_seconds),
            ),
        ],
    );
    Ok(result)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Every second: is the node Ready, and how long since the lease was last renewed.
async fn monitor(
    client: kube::Client,
    node: String,
    healthy: Arc<AtomicBool>,
    max_gap_ms: Arc<AtomicU64>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut last_renew: Option<(String, Instant)> = None;
    loop {
        if let Ok(current) = nodes.get(&node).await {
            let ready = current
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready {
                healthy.store(false, Ordering::Relaxed);
            }
        }
        if let Ok(lease) = leases.get(&node).await {
            let renew = lease
                .spec
                .and_then(|s| s.renew_time)
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            let now = Instant::now();
            match &last_renew {
                Some((seen, since)) if *seen == renew => {
                    let gap = now.duration_since(*since).as_millis() as u64;
                    max_gap_ms.fetch_max(gap, Ordering::Relaxed);
                }
                _ => last_renew = Some((renew, now)),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
