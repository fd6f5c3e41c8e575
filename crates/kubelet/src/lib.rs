//! A runtime-agnostic Kubernetes kubelet library.
//!
//! Krustlet's kubelet: node registration and heartbeat, TLS bootstrap, the pod watch and
//! per-pod workers, status, volumes, images and the kubelet API. It drives a container runtime
//! through a small trait, the way the upstream kubelet drives CRI; see `docs/architecture.md`.
//!
//! - [`blocking`]: file-system work from async code without stalling the runtime.
//! - [`config`]: flags, environment and config file merged into a [`config::KubeletConfig`].
//! - [`bootstrap`]: client credentials through CSRs, rotation, the serving certificate.
//! - [`node`]: registration, lease, status, conditions, shutdown.
//! - [`pod`]: the pod watch, workers, status manager, phase, events.
//! - [`container`]: argv, env, and the runner of one container through its restarts.
//! - [`image`]: pulling wasm from OCI registries into a verified store.
//! - [`network`]: pod networking: the seam (a pod's IP, its listeners, the way to its ports),
//!   the node's network, and CNI sandboxes (network namespaces, CNI ADD/CHECK/DEL).
//! - [`runtime`]: the [`runtime::Runtime`] trait runtimes implement.
//! - [`log`]: CRI-format container logs, rotated and rate-bounded.
//! - [`stats`]: live usage of running containers and the node; the stats summary.
//! - [`metrics`]: the kubelet's Prometheus metrics.
//! - [`server`]: the kubelet HTTPS API (health, logs, pods, metrics, stats), authenticated and
//!   authorized.
//! - [`kubelet`]: [`Kubelet`], which runs all of the above.
//! - [`standalone`]: static pods from a manifest directory without an API server.

pub mod blocking;
pub mod bootstrap;
pub mod config;
pub mod container;
pub mod events;
pub mod eviction;
pub mod image;
pub mod kubelet;
pub mod log;
pub mod metrics;
pub mod network;
pub mod node;
pub mod pod;
pub mod quantity;
pub mod runtime;
pub mod server;
pub mod standalone;
pub mod stats;
pub mod volume;

pub use kubelet::{Kubelet, KubeletError};
