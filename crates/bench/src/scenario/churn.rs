//! Churn: create → complete → delete at a ramp of target rates, on a node of any kind, with
//! the node's API writes per pod. A cycle ends at the kind's [`Kind::done_phase`]: Succeeded,
//! or Running on the hollow node, whose fake runtime never ends a container (so its cycles are
//! shorter than the others').

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::on_kind;
use crate::api_writes::Writes;
use crate::harness::{Kind, Observer, Warm, Work, bench_pod, create};
use crate::report::{Figure, Figures, Latency, latency_cell, print_table};

/// How long pods created in the window may take to finish before the run ends.
const DRAIN: Duration = Duration::from_secs(60);
/// Creates and deletes in flight at once.
const CONCURRENCY: usize = 64;

/// A rate step is sustained when its p99 create → done is under this (issue 18).
pub const SUSTAINED_P99: Duration = Duration::from_secs(5);

/// The churn result: a ramp of rate steps on one node.
#[derive(Debug, Serialize)]
pub struct Churn {
    /// How long each step created pods.
    pub seconds: u64,
    /// The phase that completes a cycle on this kind of node (`Running` on the hollow node).
    pub completion: &'static str,
    /// Each target rate, in the order run; the ramp stops after the first step that was not
    /// sustained (a backlog would only spoil the steps after it).
    pub steps: Vec<Step>,
    /// The highest target rate at which every pod completed with p99 create → done under
    /// [`SUSTAINED_P99`]; `None` if none did.
    pub highest_sustained_rate: Option<u32>,
    /// The first step's [`Step::writes_per_pod`].
    pub writes_per_pod: f64,
}

/// One rate of the ramp.
#[derive(Debug, Serialize)]
pub struct Step {
    /// The target rate, pods per second.
    pub target_rate: u32,
    /// Pods created.
    pub created: usize,
    /// Pods that completed, over the step including its drain.
    pub completed: usize,
    /// Completed pods per second of the step (creation window plus drain).
    pub achieved_rate: f64,
    /// Pods completed within the creation window, per second of it.
    pub sustained_rate: f64,
    /// Create returned → [`Churn::completion`] observed.
    pub to_done: Latency,
    /// The node's writes to the API server from the step's start to the end of its drain
    /// (with the Lease and node status, which go on whatever the rate).
    pub writes: Writes,
    /// [`Self::writes`] per pod created.
    pub writes_per_pod: f64,
}

impl Step {
    /// Whether every pod completed, with p99 under [`SUSTAINED_P99`].
    fn sustained(&self) -> bool {
        self.created > 0
            && self.completed == self.created
            && self.to_done.p99_ms < SUSTAINED_P99.as_secs_f64() * 1000.0
    }
}

impl Figures for Churn {
    fn figures(&self) -> Vec<Figure> {
        let mut figures = vec![
            Figure::maybe_rate(
                "highest rate sustained (p99 < 5 s)",
                "pods/s",
                self.highest_sustained_rate.map(f64::from),
            ),
            Figure::of("API writes per pod", "writes", self.writes_per_pod),
        ];
        for step in &self.steps {
            let at = step.target_rate;
            figures.push(Figure::rate(
                format!("at {at}/s: completed in the window"),
                "pods/s",
                step.sustained_rate,
            ));
            figures.push(Figure::of(
                format!("at {at}/s: create → done p50"),
                "ms",
                step.to_done.p50_ms,
            ));
            figures.push(Figure::of(
                format!("at {at}/s: create → done p99"),
                "ms",
                step.to_done.p99_ms,
            ));
        }
        figures
    }
}

/// Runs the ramp `rates` (each for `seconds`, then drained) on one node of `kind`.
pub async fn run(rates: &[u32], seconds: u64, kind: Kind) -> anyhow::Result<Churn> {
    let warm = Warm::start(kind, "bench-churn", 5000, &[]).await?;
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let deleter = tokio::spawn(delete_completed(
        warm.api.clone(),
        warm.observer.clone(),
        permits.clone(),
        kind,
    ));
    let mut steps: Vec<Step> = Vec::with_capacity(rates.len());
    for rate in rates {
        let step = step(&warm, &permits, *rate, seconds, kind).await?;
        let sustained = step.sustained();
        steps.push(step);
        if !sustained {
            break;
        }
    }
    deleter.abort();
    warm.node.health()?;
    let result = Churn {
        seconds,
        completion: kind.done_phase(),
        highest_sustained_rate: steps
            .iter()
            .filter(|s| s.sustained())
            .map(|s| s.target_rate)
            .max(),
        writes_per_pod: steps.first().map_or(0.0, |s| s.writes_per_pod),
        steps,
    };
    let mut rows = vec![(
        "highest rate sustained (p99 < 5 s)".into(),
        result
            .highest_sustained_rate
            .map_or("none".to_string(), |r| format!("{r} pods/s")),
    )];
    for step in &result.steps {
        rows.push((
            format!("at {}/s: API writes per pod", step.target_rate),
            format!(
                "{:.2} ({} in all: {})",
                step.writes_per_pod,
                step.writes.total,
                step.writes
                    .by_request
                    .iter()
                    .map(|(request, n)| format!("{request} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
        rows.push((
            format!("at {}/s: created / completed", step.target_rate),
            format!(
                "{} / {}, {:.1} pods/s in the window, {:.1} overall",
                step.created, step.completed, step.sustained_rate, step.achieved_rate
            ),
        ));
        rows.push((
            format!("at {}/s: create → {}", step.target_rate, result.completion),
            latency_cell(&step.to_done),
        ));
    }
    print_table(
        &format!(
            "churn: create → complete → delete, {seconds} s at each of {rates:?} pods/s{}",
            on_kind(kind)
        ),
        &rows,
    );
    Ok(result)
}

/// Creates pods at `rate` for `seconds`, then waits up to [`DRAIN`] for them to complete (the
/// deleter removes each as it does).
async fn step(
    warm: &Warm,
    permits: &Arc<Semaphore>,
    rate: u32,
    seconds: u64,
    kind: Kind,
) -> anyhow::Result<Step> {
    let mark = warm.node.mark_writes()?;
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut creates = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        let name = format!("churn-{rate}-{n}");
        n += 1;
        let manifest = bench_pod(&name, warm.node.name(), &warm.image, Work::Exit)?;
        let (api, permits) = (warm.api.clone(), permits.clone());
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
    let drained = warm
        .observer
        .wait_all(&names, DRAIN, kind.done_phase(), |s| kind.done(s))
        .await;
    if let Err(error) = drained {
        println!("(drain at {rate}/s incomplete: {error})");
    }
    let elapsed = started.elapsed();
    let done_at = |name: &str| {
        let seen = warm.observer.get(name);
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
    let latencies: Vec<Duration> = created
        .iter()
        .filter_map(|(name, t)| Some(done_at(name)?.saturating_duration_since(*t)))
        .collect();
    // The last deletions reach the node before its writes are counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = warm.node.writes_since(&mark)?;
    Ok(Step {
        target_rate: rate,
        created: created.len(),
        completed: latencies.len(),
        achieved_rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        sustained_rate: in_window as f64 / window_end.duration_since(started).as_secs_f64(),
        to_done: Latency::of(&latencies),
        writes_per_pod: writes.per_pod(created.len()),
        writes,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(created: usize, completed: usize, p99_ms: f64) -> Step {
        Step {
            target_rate: 50,
            created,
            completed,
            achieved_rate: 0.0,
            sustained_rate: 0.0,
            to_done: Latency {
                count: completed,
                p99_ms,
                ..Latency::default()
            },
            writes: Writes::default(),
            writes_per_pod: 0.0,
        }
    }

    #[test]
    fn a_step_is_sustained_when_every_pod_completed_under_five_seconds_at_p99() {
        assert!(step(100, 100, 4999.0).sustained());
        assert!(!step(100, 100, 5000.0).sustained(), "p99 at the bound");
        assert!(!step(100, 99, 100.0).sustained(), "a pod never completed");
        assert!(!step(0, 0, 0.0).sustained(), "nothing created");
    }
}
