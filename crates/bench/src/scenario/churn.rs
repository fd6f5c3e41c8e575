//! Churn: create → complete → delete at a target rate, on a node of any kind. A cycle ends at
//! the kind's [`Kind::done_phase`]: Succeeded, or Running on the hollow node, whose fake runtime
//! never ends a container (so its cycles are shorter than the others').

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::on_kind;
use crate::harness::{Kind, Observer, Warm, Work, bench_pod, create};
use crate::report::{Figure, Figures, Latency, latency_cell, print_table};

/// How long pods created in the window may take to finish before the run ends.
const DRAIN: Duration = Duration::from_secs(60);
/// Creates and deletes in flight at once.
const CONCURRENCY: usize = 64;

/// The churn result.
#[derive(Debug, Serialize)]
pub struct Churn {
    /// The target rate, pods per second.
    pub target_rate: u32,
    /// How long pods were created.
    pub seconds: u64,
    /// Pods created.
    pub created: usize,
    /// Pods that completed, over the whole run including the drain.
    pub completed: usize,
    /// Completed pods per second of the run (creation window plus drain).
    pub achieved_rate: f64,
    /// Pods completed within the creation window, per second of it.
    pub sustained_rate: f64,
    /// The phase that completes a cycle on this kind of node (`Running` on the hollow node).
    pub completion: &'static str,
    /// Create returned → [`Self::completion`] observed.
    pub to_succeeded: Latency,
}

impl Figures for Churn {
    fn figures(&self) -> Vec<Figure> {
        vec![
            Figure::rate("completed in the window", "pods/s", self.sustained_rate),
            Figure::rate("completed overall", "pods/s", self.achieved_rate),
            Figure::of("create → done p50", "ms", self.to_succeeded.p50_ms),
            Figure::of("create → done p99", "ms", self.to_succeeded.p99_ms),
        ]
    }
}

/// Runs the scenario on a node of `kind`.
pub async fn run(rate: u32, seconds: u64, kind: Kind) -> anyhow::Result<Churn> {
    let Warm {
        node,
        ns: _ns,
        api,
        observer,
        image,
    } = Warm::start(kind, "bench-churn", 5000, &[]).await?;

    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let deleter = tokio::spawn(delete_completed(
        api.clone(),
        observer.clone(),
        permits.clone(),
        kind,
    ));
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut creates = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        let name = format!("churn-{n}");
        n += 1;
        let manifest = bench_pod(&name, node.name(), &image, Work::Exit)?;
        let (api, permits) = (api.clone(), permits.clone());
        creates.spawn(async move {
            let _permit = permits.acquire_owned().await;
            create(&api, &manifest).await.map(|t| (name, t))
        });
    }
    let mut created = Vec::new();
    while let Some(done) = creates.join_next().await {
        created.push(done??);
    }
    let window_end = Instant::now();
    let names: Vec<String> = created.iter().map(|(n, _)| n.clone()).collect();
    // Drain: what the node cannot finish within a minute of the window is reported, not waited for.
    let drained = observer
        .wait_all(&names, DRAIN, kind.done_phase(), |s| kind.done(s))
        .await;
    if let Err(error) = drained {
        println!("(drain incomplete: {error})");
    }
    let elapsed = started.elapsed();
    let done_at = |name: &str| {
        let seen = observer.get(name);
        if kind.completes() {
            seen.succeeded
        } else {
            seen.running
        }
    };
    let in_window = created
        .iter()
        .filter(|(name, _)| done_at(name).is_some_and(|t| t <= window_end))
        .count();
    deleter.abort();
    node.health()?;
    let latencies: Vec<Duration> = created
        .iter()
        .filter_map(|(name, t)| Some(done_at(name)?.saturating_duration_since(*t)))
        .collect();
    let result = Churn {
        target_rate: rate,
        seconds,
        created: created.len(),
        completed: latencies.len(),
        achieved_rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        sustained_rate: in_window as f64 / window_end.duration_since(started).as_secs_f64(),
        completion: kind.done_phase(),
        to_succeeded: Latency::of(&latencies),
    };
    print_table(
        &format!(
            "churn: create → complete → delete at {rate}/s for {seconds} s{}",
            on_kind(kind)
        ),
        &[
            (
                "created / completed".into(),
                format!("{} / {}", result.created, result.completed),
            ),
            (
                "completed in the window".into(),
                format!("{:.1} pods/s", result.sustained_rate),
            ),
            (
                "completed overall (with drain)".into(),
                format!("{:.1} pods/s", result.achieved_rate),
            ),
            (
                format!("create → {}", result.completion),
                latency_cell(&result.to_succeeded),
            ),
        ],
    );
    Ok(result)
}

/// Deletes each pod once it is seen done ([`Kind::done_phase`]).
async fn delete_completed(api: Api<Pod>, observer: Observer, permits: Arc<Semaphore>, kind: Kind) {
    let mut deleted = HashSet::new();
    loop {
        for name in observer.done_names(kind) {
            if deleted.insert(name.clone()) {
                let (api, permits) = (api.clone(), permits.clone());
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let _ = api
                        .delete(&name, &DeleteParams::default().grace_period(0))
                        .await;
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
