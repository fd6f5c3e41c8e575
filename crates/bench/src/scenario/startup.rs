//! Startup: N pods created in a burst with the image already cached, on a node of any kind.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use serde::Serialize;

use super::{node_label, on_kind};
use crate::harness::{Kind, Warm, Work, bench_pod, create};
use crate::report::{Figure, Figures, Latency, latency_cell, print_table};

/// The startup result.
#[derive(Debug, Serialize)]
pub struct Startup {
    /// Pods in the burst.
    pub pods: usize,
    /// Create returned → Running observed through a watch.
    pub to_running: Latency,
    /// Create returned → Succeeded observed (each pod sleeps 1 s); empty on a kind whose pods
    /// never complete (the hollow node).
    pub to_succeeded: Latency,
    /// Pods per second from the burst's start to the last Running.
    pub pods_per_second: f64,
    /// The node's own mean `kubelet_pod_start_duration_seconds` (pod seen → containers
    /// started); 0 where the node has no such metric (the floor).
    pub kubelet_mean_ms: f64,
}

impl Figures for Startup {
    fn figures(&self) -> Vec<Figure> {
        vec![
            Figure::of("create → Running p50", "ms", self.to_running.p50_ms),
            Figure::of("create → Running p99", "ms", self.to_running.p99_ms),
            Figure::maybe(
                "create → Succeeded p50 (sleep 1)",
                "ms",
                (self.to_succeeded.count > 0).then_some(self.to_succeeded.p50_ms),
            ),
            Figure::rate("throughput", "pods/s", self.pods_per_second),
            Figure::maybe(
                "node's own share (mean)",
                "ms",
                (self.kubelet_mean_ms > 0.0).then_some(self.kubelet_mean_ms),
            ),
        ]
    }
}

/// Runs the scenario on a node of `kind`.
pub async fn run(pods: usize, kind: Kind) -> anyhow::Result<Startup> {
    let Warm {
        node,
        ns: _ns,
        api,
        observer,
        image,
    } = Warm::start(kind, "bench-startup", pods + 10, &[]).await?;
    let (sum_before, count_before) = node.pod_start_metric().await.unwrap_or_default();

    let names: Vec<String> = (0..pods).map(|i| format!("start-{i}")).collect();
    let manifests = names
        .iter()
        .map(|n| bench_pod(n, node.name(), &image, Work::Sleep(1)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let burst = Instant::now();
    let created = try_join_all(manifests.iter().map(|p| create(&api, p))).await?;
    let timeout = Duration::from_secs(120 + pods as u64);
    observer
        .wait_all(&names, timeout, "Running", |s| s.running.is_some())
        .await?;
    if kind.completes() {
        observer
            .wait_all(&names, timeout, "Succeeded", |s| s.succeeded.is_some())
            .await?;
    }
    node.health()?;

    let (mut running, mut succeeded, mut last_running) = (Vec::new(), Vec::new(), burst);
    for (name, created) in names.iter().zip(&created) {
        let seen = observer.get(name);
        if let Some(t) = seen.running {
            running.push(t.saturating_duration_since(*created));
            last_running = last_running.max(t);
        }
        if let Some(t) = seen.succeeded {
            succeeded.push(t.saturating_duration_since(*created));
        }
    }
    let (sum_after, count_after) = node.pod_start_metric().await.unwrap_or_default();
    let started = count_after - count_before;
    let result = Startup {
        pods,
        to_running: Latency::of(&running),
        to_succeeded: Latency::of(&succeeded),
        pods_per_second: pods as f64 / last_running.duration_since(burst).as_secs_f64().max(1e-3),
        kubelet_mean_ms: if started > 0.0 {
            (sum_after - sum_before) / started * 1000.0
        } else {
            0.0
        },
    };
    print_table(
        &format!(
            "startup: {pods} pods in a burst, image cached{}",
            on_kind(kind)
        ),
        &[
            ("create → Running".into(), latency_cell(&result.to_running)),
            (
                "create → Succeeded (sleep 1)".into(),
                latency_cell(&result.to_succeeded),
            ),
            (
                "throughput".into(),
                format!("{:.1} pods/s", result.pods_per_second),
            ),
            (
                format!("{}'s share (mean)", node_label(kind)),
                format!("{:.1} ms", result.kubelet_mean_ms),
            ),
        ],
    );
    Ok(result)
}
