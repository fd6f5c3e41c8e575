//! The eviction manager (upstream `pkg/kubelet/eviction`): every [`MONITORING_INTERVAL`] it
//! measures the node against `--eviction-hard` and each pod's emptyDir volumes against their
//! `sizeLimit`, and evicts:
//!
//! - a pod whose emptyDir outgrew its `sizeLimit`, at once;
//! - under memory pressure, one pod per interval, ranked as upstream's `rankMemoryPressure`:
//!   pods using more than they request first (so BestEffort before Burstable), then lower
//!   priority, then the larger excess over the request;
//! - under disk pressure, likewise by ephemeral storage (logs and emptyDirs).
//!
//! While under pressure, admission turns pods away as upstream's eviction admit handler does:
//! BestEffort pods under memory pressure, every pod under disk pressure ([`admit`]).
//!
//! An evicted pod's worker stops its containers at once and reports phase Failed, reason
//! `Evicted` and upstream's message; the pod stays in the API for its owner to replace.

pub mod rank;
pub mod signal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;

use crate::config::{KubeletConfig, Signal};
use crate::node::conditions::Pressure;
use crate::node::status::measure;
use crate::pod::admission::Rejection;
use crate::pod::known::KnownPods;
use crate::pod::phase::qos_class;
use crate::quantity;
use crate::stats::Stats;

pub use signal::{Eviction, Evictions};

/// How often the manager looks (upstream's default housekeeping interval).
pub const MONITORING_INTERVAL: Duration = Duration::from_secs(10);

/// The eviction manager's inputs.
pub struct EvictionManager {
    /// The configuration (thresholds, data dir).
    pub config: KubeletConfig,
    /// The pods bound to this node.
    pub pods: KnownPods,
    /// Running containers' usage.
    pub stats: Stats,
    /// Where evictions are delivered to pod workers.
    pub evictions: Evictions,
    /// `<data-dir>/pods`.
    pub pods_dir: PathBuf,
}

impl EvictionManager {
    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(MONITORING_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => self.synchronize(),
            }
        }
    }

    /// One round: sizeLimit checks, then at most one pressure eviction.
    fn synchronize(&self) {
        let active: Vec<_> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| is_active(p))
            .collect();
        for pod in &active {
            if let Some(message) = self.empty_dir_over_limit(pod) {
                self.evict(pod, message);
            }
        }
        let Ok(measured) = measure(&self.config) else {
            return;
        };
        let pressure = Pressure::evaluate(&self.config.eviction_hard, &measured);
        self.evictions.set_pressure(pressure);
        let usage = rank::usage_by_pod(&self.stats, &active, &self.pods_dir);
        let (signal, resource) = if pressure.memory {
            (Signal::MemoryAvailable, rank::Resource::Memory)
        } else if pressure.disk {
            (Signal::NodefsAvailable, rank::Resource::EphemeralStorage)
        } else {
            return;
        };
        let Some((pod, message)) = rank::victim(&active, &usage, resource) else {
            return;
        };
        let (threshold, available) = match signal {
            Signal::MemoryAvailable => (
                self.threshold(signal, measured.memory.total_bytes),
                measured.memory.available_bytes,
            ),
            _ => (
                self.threshold(signal, measured.nodefs.total_bytes),
                measured.nodefs.available_bytes,
            ),
        };
        let message = format!(
            "The node was low on resource: {}. Threshold quantity: {}, available: {}Ki. {message}",
            resource.name(),
            threshold,
            available / 1024,
        );
        self.evict(&pod, message);
    }

    fn threshold(&self, signal: Signal, total: u64) -> String {
        self.config
            .eviction_hard
            .iter()
            .filter(|t| t.signal == signal)
            .map(|t| t.quantity.of(total))
            .max()
            .map(|bytes| format!("{}Ki", bytes / 1024))
            .unwrap_or_default()
    }

    /// Upstream's message for the first emptyDir over its `sizeLimit`, if any.
    fn empty_dir_over_limit(&self, pod: &Pod) -> Option<String> {
        let uid = pod.metadata.uid.as_deref()?;
        let volumes = pod.spec.as_ref()?.volumes.as_ref()?;
        volumes.iter().find_map(|volume| {
            let limit_text = volume.empty_dir.as_ref()?.size_limit.as_ref()?;
            let limit = quantity::parse_count(&limit_text.0).ok()?;
            let dir = self
                .pods_dir
                .join(uid)
                .join("volumes/kubernetes.io~empty-dir")
                .join(&volume.name);
            (disk_usage(&dir) > limit).then(|| {
                format!(
                    "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                    volume.name, limit_text.0
                )
            })
        })
    }

    fn evict(&self, pod: &Pod, message: String) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        // eviction_manager.go evictPod: "cannot evict a critical pod".
        if rank::is_critical(pod) {
            tracing::warn!(pod = ?pod.metadata.name, %message, "not evicting a critical (static, mirror or system-critical) pod");
            return;
        }
        let delivered = self.evictions.evict(
            uid,
            Eviction {
                message: message.clone(),
            },
        );
        if delivered {
            tracing::warn!(pod = ?pod.metadata.name, %message, "evicting pod");
        }
    }
}

/// Whether a new pod may start under the current `pressure` (upstream's eviction `Admit`):
/// memory pressure turns away BestEffort pods, disk pressure every pod.
pub fn admit(pod: &Pod, pressure: Pressure) -> Result<(), Rejection> {
    let mut conditions = Vec::new();
    if pressure.memory {
        conditions.push("MemoryPressure");
    }
    if pressure.disk {
        conditions.push("DiskPressure");
    }
    let best_effort = qos_class(pod) == "BestEffort";
    if pressure.disk || (pressure.memory && best_effort) {
        return Err(Rejection {
            reason: "Evicted".into(),
            message: format!("The node had condition: [{}]. ", conditions.join(", ")),
        });
    }
    Ok(())
}

/// Not finished and not being deleted.
fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Bytes used by the files under `dir` (blocks, as `du` counts them).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&entry.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
