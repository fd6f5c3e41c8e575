//! The container runtime interface: what the kubelet asks of a runtime, modelled on CRI.
//!
//! The kubelet resolves everything Kubernetes-specific (argv, env, volumes as host paths, the
//! log file) into a [`ContainerSpec`]; the runtime runs it and reports how it ended. Graceful
//! stop, restarts and status are the kubelet's; the runtime only starts and force-stops.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::log::writer::CriLogWriter;

#[cfg(test)]
pub mod fake;

/// A host directory mounted into a container.
///
/// The kubelet resolves the directory safely and hands over the open descriptor: a runtime
/// must open [`Mount::open_path`] (the descriptor's `/proc/self/fd/N`), never `host_path`, whose
/// components a guest sharing the volume may have swapped for symlinks since.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The directory, held open until the run ends (drop the last clone only after the runtime
    /// has opened it).
    pub dir: Arc<OwnedFd>,
    /// Where the directory was found on the host; for messages only.
    pub host_path: PathBuf,
    /// Where the container sees it.
    pub container_path: String,
    /// Whether writes are refused.
    pub read_only: bool,
}

impl Mount {
    /// The name that opens exactly [`Mount::dir`]: `/proc/self/fd/N`.
    pub fn open_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))
    }
}

/// Resource limits a runtime enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most memory in bytes (`limits.memory`, else the node's allocatable memory).
    pub memory_bytes: Option<u64>,
    /// CPU share in millicores (`limits.cpu`).
    pub cpu_millis: Option<u64>,
    /// CPU request in millicores (`requests.cpu`): the guest's weight on a contended node.
    pub cpu_request_millis: Option<u64>,
}

/// Everything a runtime needs to start one container run.
pub struct ContainerSpec {
    /// A unique ID for this run, reported as `wasi://<id>`.
    pub id: String,
    /// The program file (a wasm module or component) on the host.
    pub program: PathBuf,
    /// The program's content digest (`sha256:...`), a key for compiled-code caches.
    pub program_digest: String,
    /// argv, argv\[0\] included.
    pub args: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Volume mounts.
    pub mounts: Vec<Mount>,
    /// Resource limits.
    pub limits: Limits,
    /// Where stdout and stderr go.
    pub log: CriLogWriter,
}

/// How a container run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// The program exited with this code.
    Exited(i32),
    /// The program trapped; `message` is the runtime's description.
    Trapped {
        /// The exit code reported for it.
        exit_code: i32,
        /// What happened.
        message: String,
    },
    /// Exceeded its memory limit; `message` says by how much.
    OomKilled {
        /// What happened.
        message: String,
    },
    /// Force-stopped through [`RunningContainer::kill`].
    Killed,
    /// The runtime could not start the program (instantiation failed): upstream's
    /// `StartError`, exit code 128.
    StartFailed {
        /// Why.
        message: String,
    },
}

impl Termination {
    /// The exit code a container status reports.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Exited(code) => *code,
            Self::Trapped { exit_code, .. } => *exit_code,
            Self::OomKilled { .. } | Self::Killed => 137,
            Self::StartFailed { .. } => 128,
        }
    }

    /// The `reason` of the terminated state: `Completed`, `Error`, `OOMKilled` or `StartError`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Exited(0) => "Completed",
            Self::OomKilled { .. } => "OOMKilled",
            Self::StartFailed { .. } => "StartError",
            _ => "Error",
        }
    }

    /// The terminated state's message, if any.
    pub fn message(&self) -> Option<String> {
        match self {
            Self::Trapped { message, .. }
            | Self::OomKilled { message }
            | Self::StartFailed { message } => Some(message.clone()),
            _ => None,
        }
    }
}

/// Live resource usage of one container run, kept current by the runtime while it runs.
#[derive(Debug, Default)]
pub struct Usage {
    memory_bytes: AtomicU64,
    cpu_nanos: AtomicU64,
    cfs_periods: AtomicU64,
    throttled_periods: AtomicU64,
    throttled_nanos: AtomicU64,
}

impl Usage {
    /// Memory in use now: the guest's linear memories and tables plus host-side overhead.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    /// CPU time used since the run started, in nanoseconds.
    pub fn cpu_nanos(&self) -> u64 {
        self.cpu_nanos.load(Ordering::Relaxed)
    }

    /// Records the memory in use now.
    pub fn set_memory_bytes(&self, bytes: u64) {
        self.memory_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Adds CPU time used.
    pub fn add_cpu_nanos(&self, nanos: u64) {
        self.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// `limits.cpu` enforcement periods in which the run was runnable (the kernel's
    /// `cpu.stat` `nr_periods`); 0 without a CPU limit.
    pub fn cfs_periods(&self) -> u64 {
        self.cfs_periods.load(Ordering::Relaxed)
    }

    /// Periods in which the run was held back by its CPU limit (`nr_throttled`).
    pub fn throttled_periods(&self) -> u64 {
        self.throttled_periods.load(Ordering::Relaxed)
    }

    /// Time the run spent held back by its CPU limit, in nanoseconds (`throttled_usec`).
    pub fn throttled_nanos(&self) -> u64 {
        self.throttled_nanos.load(Ordering::Relaxed)
    }

    /// Records `periods` more enforcement periods, `throttled` of them throttled for
    /// `throttled_nanos` in all.
    pub fn add_cfs(&self, periods: u64, throttled: u64, throttled_nanos: u64) {
        self.cfs_periods.fetch_add(periods, Ordering::Relaxed);
        self.throttled_periods
            .fetch_add(throttled, Ordering::Relaxed);
        self.throttled_nanos
            .fetch_add(throttled_nanos, Ordering::Relaxed);
    }
}

/// A started container: await its end, kill it, or read its usage.
pub struct RunningContainer {
    /// Resolves once when the run ends.
    pub exit: oneshot::Receiver<Termination>,
    /// Send to force-stop at once.
    pub kill: oneshot::Sender<()>,
    /// Resource usage, updated by the runtime until the run ends.
    pub usage: Arc<Usage>,
}

/// Why a container could not be started; becomes a waiting state with `reason`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    /// The waiting reason, e.g. `CreateContainerError`.
    pub reason: &'static str,
    /// What went wrong, for the container status and the Failed event.
    pub message: String,
}

/// A container runtime.
pub trait Runtime: Send + Sync + 'static {
    /// `<name>://<version>`, for the Node's `containerRuntimeVersion`.
    fn version(&self) -> String;

    /// Creates and starts a container run. Errors mean it never started.
    fn start(&self, spec: ContainerSpec) -> BoxFuture<'_, Result<RunningContainer, RuntimeError>>;

    /// Adds the runtime's own metrics (compile times, caches, instances) to the kubelet's
    /// `/metrics`; called once at start. The default has none.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// Drops what the runtime derived from these programs (compiled code, in memory and on
    /// disk): image GC removed them. Blocking; the default keeps nothing, so does nothing.
    fn forget_programs(&self, _digests: &[String]) {}

    /// Drops what the runtime derived from any program not in `keep`, the program digests the
    /// image store still holds (called once at start, for images removed while it was not
    /// running). Blocking; the default does nothing.
    fn retain_programs(&self, _keep: &std::collections::HashSet<String>) {}
}
