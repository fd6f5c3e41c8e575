//! Startup: N pods created in a burst with the image already cached.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::Pod;
use krustlet_e2e::{TestNamespace, workloads};
use serde::Serialize;

use crate::harness::{Observer, create, pod, pod_start_metric, start_node};
use crate::report::{Latency, latency_cell, print_table};

/// The startup result.
#[derive(Debug, Serialize)]
pub struct Startup {
    /// Pods in the burst.
    pub pods: usize,
    /// Create returned → Running observed through a watch.
    pub to_running: Latency,
    /// Create returned → Succeeded observed (each pod sleeps 1 s).
    pub to_succeeded: Latency,
    /// Pods per second from the burst's start to the last Running.
    pub pods_per_second: f64,
    /// Krustlet's own mean `kubelet_pod_start_duration_seconds` (pod seen → containers started).
    pub kubelet_mean_ms: f64,
}

/// Runs the scenario.
pub async fn run(pods: usize) -> anyhow::Result<Startup> {
    let max_pods = format!("--max-pods={}", pods + 10);
    let node = start_node("bench-startup", &[&max_pods]).await?;
    let ns = TestNamespace::new("bench-startup").await?;
    let api = ns.api::<Pod>();
    let observer = Observer::start(api.clone());
    let image = workloads::multitool();
    // Warm-up: pull and compile once.
    create(
        &api,
        &pod("warmup", node.name(), &image, &["hello"], "Never")?,
    )
    .await?;
    observer
        .wait_all(
            &["warmup".to_string()],
            Duration::from_secs(180),
            "Succeeded",
            |s| s.succeeded.is_some(),
        )
        .await?;
    let (sum_before, count_before) = pod_start_metric(&node).await;

    let names: Vec<String> = (0..pods).map(|i| format!("start-{i}")).collect();
    let manifests = names
        .iter()
        .map(|n| pod(n, node.name(), &image, &["sleep", "1"], "Never"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let burst = Instant::now();
    let created = try_join_all(manifests.iter().map(|p| create(&api, p))).await?;
    let timeout = Duration::from_secs(120 + pods as u64);
    observer
        .wait_all(&names, timeout, "Running", |s| s.running.is_some())
        .await?;
    observer
        .wait_all(&names, timeout, "Succeeded", |s| s.succeeded.is_some())
        .await?;

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
    let (sum_after, count_after) = pod_start_metric(&node).await;
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
        &format!("startup: {pods} pods in a burst, image cached"),
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
                "Krustlet's share (mean)".into(),
                format!("{:.1} ms", result.kubelet_mean_ms),
            ),
        ],
    );
    Ok(result)
}
