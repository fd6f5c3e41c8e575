//! The eviction manager (upstream `pkg/kubelet/eviction`): every [`MONITORING_INTERVAL`] it
//! measures the node against `--eviction-hard` and each pod's emptyDir volumes against their
//! `sizeLimit`, and evicts (soft thresholds, `--eviction-soft`, once met for their grace
//! period; pressure conditions held for the transition period: [`thresholds`]):
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
pub mod thresholds;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;

use crate::config::{KubeletConfig, Signal, Threshold};
use crate::node::conditions::{Measurements, Pressure, is_met};
use crate::node::status::measure;
use crate::pod::admission::Rejection;
use crate::pod::known::KnownPods;
use crate::pod::phase::qos_class;
use crate::quantity;
use crate::stats::Stats;

pub use signal::{Eviction, Evictions};
use thresholds::{Met, ThresholdTracker};

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
        let mut tracker = ThresholdTracker::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => self.synchronize(&mut tracker),
            }
        }
    }

    /// The hard and soft thresholds met by `measured`.
    fn met(&self, measured: &Measurements) -> Vec<Met> {
        let hard = self
            .config
            .eviction_hard
            .iter()
            .map(|t| (t, true, Duration::ZERO));
        let soft = self
            .config
            .eviction_soft
            .iter()
            .map(|(t, grace)| (t, false, *grace));
        hard.chain(soft)
            .filter(|(t, _, _)| is_met(t, measured))
            .map(|(t, hard, grace)| Met {
                signal: t.signal,
                hard,
                grace,
            })
            .collect()
    }

    /// One round: sizeLimit checks, then at most one pressure eviction.
    fn synchronize(&self, tracker: &mut ThresholdTracker) {
        let active: Vec<_> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| is_active(p))
            .collect();
        for pod in &active {
            if let Some(message) = self.empty_dir_over_limit(pod) {
                self.evict(pod, message, Duration::ZERO);
            }
        }
        let Ok(measured) = measure(&self.config) else {
            return;
        };
        let decision = tracker.observe(
            tokio::time::Instant::now().into_std(),
            &self.met(&measured),
            self.config.eviction_pressure_transition_period,
        );
        self.evictions.set_pressure(decision.conditions);
        // Memory before disk, hard before soft (upstream ranks signals, then thresholds).
        let due = |signal: Signal| {
            let mut due = decision.evict_for.iter().filter(|m| m.signal == signal);
            let first = due.next()?;
            Some(first.hard || due.any(|m| m.hard))
        };
        let (signal, resource, hard) = if let Some(hard) = due(Signal::MemoryAvailable) {
            (Signal::MemoryAvailable, rank::Resource::Memory, hard)
        } else if let Some(hard) = due(Signal::NodefsAvailable) {
            (
                Signal::NodefsAvailable,
                rank::Resource::EphemeralStorage,
                hard,
            )
        } else {
            return;
        };
        let usage = rank::usage_by_pod(&self.stats, &active, &self.pods_dir);
        let Some((pod, message)) = rank::victim(&active, &usage, resource) else {
            return;
        };
        let (total, available) = match signal {
            Signal::MemoryAvailable => {
                (measured.memory.total_bytes, measured.memory.available_bytes)
            }
            _ => (measured.nodefs.total_bytes, measured.nodefs.available_bytes),
        };
        let thresholds: Vec<&Threshold> = if hard {
            self.config.eviction_hard.iter().collect()
        } else {
            self.config.eviction_soft.iter().map(|(t, _)| t).collect()
        };
        let message = format!(
            "The node was low on resource: {}. Threshold quantity: {}, available: {}Ki. {message}",
            resource.name(),
            threshold_quantity(&thresholds, signal, total),
            available / 1024,
        );
        let grace = if hard {
            Duration::ZERO
        } else {
            soft_eviction_grace(&pod, self.config.eviction_max_pod_grace_period)
        };
        self.evict(&pod, message, grace);
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

    fn evict(&self, pod: &Pod, message: String, grace: Duration) {
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
                grace,
            },
        );
        if delivered {
            tracing::warn!(pod = ?pod.metadata.name, %message, "evicting pod");
        }
    }
}

/// The largest of `thresholds` for `signal`, in upstream's message form (`100Mi` as `102400Ki`).
fn threshold_quantity(thresholds: &[&Threshold], signal: Signal, total: u64) -> String {
    thresholds
        .iter()
        .filter(|t| t.signal == signal)
        .map(|t| t.quantity.of(total))
        .max()
        .map(|bytes| format!("{}Ki", bytes / 1024))
        .unwrap_or_default()
}

/// The grace a pod evicted for a soft threshold gets (upstream's `evictPod` with
/// `MaxPodGracePeriodSeconds`): the pod's own, bounded by `max_seconds` unless that is negative.
fn soft_eviction_grace(pod: &Pod, max_seconds: i64) -> Duration {
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0);
    let seconds = if max_seconds < 0 {
        own
    } else {
        own.min(max_seconds)
    };
    Duration::from_secs(seconds.unsigned_abs())
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
