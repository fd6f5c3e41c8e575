//! Startup: N pods created in a burst with the image already cached, then M created one at a
//! time (each once the one before is Running), on a node of any kind.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use serde::Serialize;

use super::{node_label, on_kind};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::harness::{BenchNode, Kind, Observer, Warm, Work, bench_pod, create};
use crate::report::{Figure, Figures, Latency, latency_cell, print_table};

/// The startup result.
#[derive(Debug, Serialize)]
pub struct Startup {
    /// Pods in the burst.
    pub pods: usize,
    /// Pods created one after another, each once the one before was seen Running.
    pub serial_pods: usize,
    /// Serial pods: create returned → Running observed through a watch.
    pub serial_to_running: Latency,
    /// Create returned → Running observed through a watch.
    pub to_running: Latency,
    /// Create returned → bound to the node observed: the scheduler's part, the same for
    /// every kind of node.
    pub to_bound: Latency,
    /// Bound observed → Running observed: the node's part (watch delivery, its own work,
    /// the status patch).
    pub bound_to_running: Latency,
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
            Figure::of("burst create → Running p50", "ms", self.to_running.p50_ms),
            Figure::of("burst create → Running p99", "ms", self.to_running.p99_ms),
            Figure::of("burst create → bound p50", "ms", self.to_bound.p50_ms),
            Figure::of(
                "burst bound → Running p50",
                "ms",
                self.bound_to_running.p50_ms,
            ),
            Figure::maybe(
                "serial create → Running p50",
                "ms",
                (self.serial_pods > 0).then_some(self.serial_to_running.p50_ms),
            ),
            Figure::maybe(
                "serial create → Running p99",
                "ms",
                (self.serial_pods > 0).then_some(self.serial_to_running.p99_ms),
            ),
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
pub async fn run(pods: usize, serial: usize, kind: Kind) -> anyhow::Result<Startup> {
    let Warm {
        node,
        ns: _ns,
        api,
        observer,
        image,
    } = Warm::start(kind, "bench-startup", pods + serial + 10, &[]).await?;
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
    let (mut bound, mut bound_to_running) = (Vec::new(), Vec::new());
    for (name, created) in names.iter().zip(&created) {
        let seen = observer.get(name);
        if let Some(at) = seen.bound {
            bound.push(at.saturating_duration_since(*created));
            if let Some(t) = seen.running {
                bound_to_running.push(t.saturating_duration_since(at));
            }
        }
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
    let serial_to_running = serial_starts(&node, &api, &observer, &image, serial).await?;
    let result = Startup {
        pods,
        serial_pods: serial,
        serial_to_running,
        to_running: Latency::of(&running),
        to_bound: Latency::of(&bound),
        bound_to_running: Latency::of(&bound_to_running),
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
            ("  create → bound".into(), latency_cell(&result.to_bound)),
            (
                "  bound → Running".into(),
                latency_cell(&result.bound_to_running),
            ),
            (
                format!("{serial} serial: create → Running"),
                latency_cell(&result.serial_to_running),
            ),
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

/// Creates `count` pods one at a time, each once the one before was seen Running; their
/// create → Running latencies.
async fn serial_starts(
    node: &BenchNode,
    api: &Api<Pod>,
    observer: &Observer,
    image: &str,
    count: usize,
) -> anyhow::Result<Latency> {
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("serial-{i}");
        let created = create(api, &bench_pod(&name, node.name(), image, Work::Sleep(1))?).await?;
        observer
            .wait_all(
                std::slice::from_ref(&name),
                Duration::from_secs(60),
                "Running",
                |s| s.running.is_some(),
            )
            .await?;
        if let Some(running) = observer.get(&name).running {
            latencies.push(running.saturating_duration_since(created));
        }
    }
    node.health()?;
    Ok(Latency::of(&latencies))
}
