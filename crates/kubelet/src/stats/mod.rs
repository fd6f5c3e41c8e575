//! Live resource usage of what runs on this node, for `/stats/summary`, `/metrics/resource`
//! and the kubelet's own metrics.
//!
//! Container runners register each running container's [`Usage`] (kept current by the
//! runtime) under its pod and name, and the registration goes away when the run ends. A sampler
//! reads cumulative CPU time every [`SAMPLE_PERIOD`] and keeps the previous sample, so that CPU
//! rates (`usageNanoCores`) are the change between the last two samples, as cAdvisor's are.

pub mod cadvisor;
pub mod node;
pub mod resource;
pub mod summary;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::runtime::Usage;

/// How often CPU time is sampled for rates.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(10);

/// The pod a container belongs to, as the summary names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct PodRef {
    /// The pod's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its UID.
    pub uid: String,
}

/// A CPU rate computed from two samples of cumulative CPU time.
#[derive(Debug, Default)]
pub struct CpuRate {
    last: Mutex<Option<(Instant, u64)>>,
    nano_cores: AtomicU64,
}

impl CpuRate {
    /// Records cumulative CPU time `cpu_nanos` at `now`; the rate becomes the change since the
    /// previous sample.
    pub fn sample(&self, now: Instant, cpu_nanos: u64) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((then, before)) = *last {
            let elapsed = now.saturating_duration_since(then).as_nanos();
            let used = u128::from(cpu_nanos.saturating_sub(before)) * 1_000_000_000;
            if let Some(rate) = used.checked_div(elapsed) {
                self.nano_cores
                    .store(u64::try_from(rate).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
        }
        *last = Some((now, cpu_nanos));
    }

    /// CPU use in billionths of a core over the last sample period.
    pub fn nano_cores(&self) -> u64 {
        self.nano_cores.load(Ordering::Relaxed)
    }
}

/// What a running container was started as, for the per-container series of
/// `/metrics/cadvisor`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunInfo {
    /// The run's ID (the container status' `containerID` without `wasi://`).
    pub id: String,
    /// The image as the pod spec names it.
    pub image: String,
    /// The memory limit the runtime enforces, in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// `limits.cpu` in millicores.
    pub cpu_limit_millis: Option<u64>,
}

/// One running container.
#[derive(Debug)]
pub struct RunningEntry {
    /// Its pod.
    pub pod: PodRef,
    /// Its name.
    pub container: String,
    /// What it was started as.
    pub info: RunInfo,
    /// When this run started.
    pub started: Timestamp,
    /// Live usage, from the runtime.
    pub usage: Arc<Usage>,
    /// CPU rate from samples of `usage`.
    pub cpu: CpuRate,
    /// The container's log directory (its files count as the pod's ephemeral storage).
    pub log_dir: PathBuf,
}

type Key = (String, String);

/// The registry of running containers; cheap to clone.
#[derive(Clone, Default)]
pub struct Stats {
    running: Arc<Mutex<HashMap<Key, Arc<RunningEntry>>>>,
    node_cpu: Arc<CpuRate>,
}

/// Keeps a container registered until dropped (the run ended).
pub struct Registration {
    stats: Stats,
    key: Key,
    entry: Arc<RunningEntry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut running = self.stats.lock();
        // A newer run of the same container may have registered already.
        if running
            .get(&self.key)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            running.remove(&self.key);
        }
    }
}

impl Stats {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<RunningEntry>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a container run that has just started.
    pub fn register(
        &self,
        pod: PodRef,
        container: &str,
        info: RunInfo,
        usage: Arc<Usage>,
        log_dir: PathBuf,
    ) -> Registration {
        let key = (pod.uid.clone(), container.to_string());
        let entry = Arc::new(RunningEntry {
            pod,
            container: container.into(),
            info,
            started: Timestamp::now(),
            cpu: CpuRate::default(),
            usage,
            log_dir,
        });
        entry.cpu.sample(Instant::now(), entry.usage.cpu_nanos());
        self.lock().insert(key.clone(), entry.clone());
        Registration {
            stats: self.clone(),
            key,
            entry,
        }
    }

    /// The running containers, ordered by pod and name.
    pub fn running(&self) -> Vec<Arc<RunningEntry>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| {
            (&a.pod.namespace, &a.pod.name, &a.container).cmp(&(
                &b.pod.namespace,
                &b.pod.name,
                &b.container,
            ))
        });
        all
    }

    /// The node's CPU rate.
    pub fn node_cpu(&self) -> &CpuRate {
        &self.node_cpu
    }

    /// Takes one sample of every container's and the node's CPU time.
    pub fn sample(&self) {
        let now = Instant::now();
        for entry in self.running() {
            entry.cpu.sample(now, entry.usage.cpu_nanos());
        }
        if let Ok(cpu) = node::CpuTimes::read() {
            self.node_cpu.sample(now, cpu.busy_nanos);
        }
    }

    /// Samples every [`SAMPLE_PERIOD`] until `stop` is cancelled.
    pub async fn run_sampler(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(SAMPLE_PERIOD);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => self.sample(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_listed_while_registered_with_cpu_rates() {
        let stats = Stats::new();
        let pod = PodRef {
            name: "p".into(),
            namespace: "ns".into(),
            uid: "u".into(),
        };
        let usage = Arc::new(Usage::default());
        let registration = stats.register(
            pod.clone(),
            "c",
            RunInfo::default(),
            usage.clone(),
            PathBuf::new(),
        );
        assert_eq!(stats.running().len(), 1);
        // A newer run of the same container replaces it; the old registration's drop keeps it.
        let newer = stats.register(pod, "c", RunInfo::default(), usage.clone(), PathBuf::new());
        drop(registration);
        assert_eq!(stats.running().len(), 1);
        drop(newer);
        assert!(stats.running().is_empty());

        let rate = CpuRate::default();
        let start = Instant::now();
        rate.sample(start, 0);
        rate.sample(start + Duration::from_secs(2), 1_000_000_000);
        assert_eq!(rate.nano_cores(), 500_000_000, "half a core");
    }
}
