//! The container runtime interface: what the kubelet asks of a runtime, modelled on CRI.
//!
//! The kubelet resolves everything Kubernetes-specific (argv, env, volumes as host paths, the
//! log file) into a [`ContainerSpec`]; the runtime runs it and reports how it ended. Graceful
//! stop, restarts and status are the kubelet's; the runtime only starts and force-stops.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

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
    /// The directory, held open until the runtime has opened it for the instance (preopened):
    /// a runtime drops it then, so that a sleeping container does not hold the directory
    /// twice. More instances of the container (exec) open it again through a
    /// [`crate::volume::reopen::ClosedMount`].
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

/// The TCP ports a container declares (`containerPort`s) and the pod network they are opened
/// on. A runtime opens them only for a program that serves (an HTTP component); a command
/// program reaches the network through its own sockets, if any.
#[derive(Clone, Default)]
pub struct ContainerPorts {
    /// The declared TCP `containerPort`s, in spec order, without duplicates.
    pub tcp: Vec<u16>,
    /// The pod's network; `None` (tests) opens nothing.
    pub network: Option<std::sync::Arc<dyn crate::network::PodNetwork>>,
}

impl ContainerPorts {
    /// Opens a listener on every declared TCP port.
    ///
    /// # Errors
    /// The first port that cannot be opened (a conflict names the port).
    pub fn listen(&self) -> Result<Vec<(u16, std::net::TcpListener)>, RuntimeError> {
        let Some(network) = &self.network else {
            return Ok(Vec::new());
        };
        self.tcp
            .iter()
            .map(|port| {
                network
                    .listen_tcp(*port)
                    .map(|listener| (*port, listener))
                    .map_err(|error| RuntimeError {
                        reason: error.reason(),
                        message: error.to_string(),
                    })
            })
            .collect()
    }
}

impl std::fmt::Debug for ContainerPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerPorts")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

/// What an HTTP program's requests may take, from the pod's annotations (docs/pod-spec.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most bytes of a request body; more is answered 413.
    pub max_request_body_bytes: u64,
    /// Most time one request may take, from its head to the end of the guest's handler; past
    /// it the instance is stopped (a 504 if no response was started).
    pub request_timeout: std::time::Duration,
    /// Most requests handled at once; more wait for a slot.
    pub max_concurrent_requests: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 10 << 20,
            request_timeout: std::time::Duration::from_secs(60),
            max_concurrent_requests: 100,
        }
    }
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
    /// The declared ports, opened for a program that serves.
    pub ports: ContainerPorts,
    /// What the program's own sockets (`wasi:sockets`) get: the pod's namespace and outbound
    /// grants; `None` (tests) gives them nothing.
    pub guest_network: Option<crate::network::outbound::GuestNetwork>,
    /// Request limits for a program that serves HTTP.
    pub http: HttpLimits,
    /// Its stdin, when the container asks for one (`stdin: true`; `kubectl attach -i` feeds
    /// it); `None` reads as empty.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Whether stdin reports itself as a terminal (`tty: true`).
    pub tty: bool,
}

/// The stdio of an exec'd instance: where its output goes and where its input comes from.
///
/// Output channels are bounded: a client that does not read stalls the guest's writes, never
/// the kubelet's memory. The instance drops its senders when it ends, so a reader sees every
/// byte before the channel closes.
#[derive(Default)]
pub struct ExecIo {
    /// Its stdin; `None` reads as empty.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Its stdout; `None` discards it.
    pub stdout: Option<mpsc::Sender<Bytes>>,
    /// Its stderr; `None` discards it.
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Whether stdin and stdout report themselves as a terminal.
    pub tty: bool,
}

/// One more instance of a running container's program (`kubectl exec`): its program, env,
/// mounts and limits, with other argv and its stdio streamed.
pub struct ExecSpec {
    /// A unique ID, for logs.
    pub id: String,
    /// The container's program file.
    pub program: PathBuf,
    /// The program's content digest (the compiled-code cache key).
    pub program_digest: String,
    /// argv, argv\[0\] included: the exec command.
    pub args: Vec<String>,
    /// The container's environment.
    pub env: Vec<(String, String)>,
    /// The container's mounts, with their read-only flags.
    pub mounts: Vec<Mount>,
    /// The container's limits, applied to this instance on its own.
    pub limits: Limits,
    /// Its stdio.
    pub io: ExecIo,
    /// What its own sockets get: the container's guest network (`None`: no sockets).
    pub guest_network: Option<crate::network::outbound::GuestNetwork>,
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

/// The limits in force for one container run. The runtime reads them while the guest runs
/// (at each memory growth and CPU epoch), so the kubelet can change them in place (an in-place
/// pod resize). Zero means none.
#[derive(Debug, Default)]
pub struct LiveLimits {
    memory_bytes: AtomicU64,
    cpu_millis: AtomicU64,
    cpu_request_millis: AtomicU64,
}

impl LiveLimits {
    fn store(cell: &AtomicU64, value: Option<u64>) {
        cell.store(value.unwrap_or(0), Ordering::Relaxed);
    }

    fn load(cell: &AtomicU64) -> Option<u64> {
        Some(cell.load(Ordering::Relaxed)).filter(|v| *v != 0)
    }

    /// The limits now.
    pub fn get(&self) -> Limits {
        Limits {
            memory_bytes: Self::load(&self.memory_bytes),
            cpu_millis: Self::load(&self.cpu_millis),
            cpu_request_millis: Self::load(&self.cpu_request_millis),
        }
    }

    /// Replaces the limits (the guest sees them at its next growth or epoch).
    pub fn set(&self, limits: Limits) {
        Self::store(&self.memory_bytes, limits.memory_bytes);
        Self::store(&self.cpu_millis, limits.cpu_millis);
        Self::store(&self.cpu_request_millis, limits.cpu_request_millis);
    }
}

/// Live resource usage of one container run, kept current by the runtime while it runs, and
/// the limits in force for it.
#[derive(Debug, Default)]
pub struct Usage {
    /// The limits in force; the runtime sets the run's initial ones before the run starts.
    pub limits: LiveLimits,
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

    /// Changes the memory in use by `f(current)`, atomically, unless `f` returns `None`; for
    /// runs of several instances (an HTTP server) that share one limit. `Err` holds the
    /// current value when `f` refused.
    pub fn update_memory_bytes(&self, f: impl FnMut(u64) -> Option<u64>) -> Result<u64, u64> {
        self.memory_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, f)
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
    /// Send to ask for a graceful stop, where the program has one: an HTTP server closes its
    /// listeners and ends when its last request is done. `None`: a guest has no signal to
    /// catch, so a graceful stop is waiting for it to end by itself.
    pub stop: Option<oneshot::Sender<()>>,
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

    /// Starts one more instance of a container's program with its own argv and stdio
    /// (`kubectl exec`, exec probes). Errors mean it never started. The default refuses.
    fn exec(&self, spec: ExecSpec) -> BoxFuture<'_, Result<RunningContainer, RuntimeError>> {
        let _ = spec;
        Box::pin(async {
            Err(RuntimeError {
                reason: "ExecNotSupported",
                message: "this container runtime cannot run commands in containers".into(),
            })
        })
    }

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

    /// Makes now, while the node starts, what a first pod would otherwise wait for (a
    /// compiler's one-time set-up). Blocking; the default does nothing.
    fn warm_up(&self) {}
}
