//! Pods: the watch, per-pod workers, status, phase, events and back-off.

pub mod admission;
pub mod api;
pub mod backoff;
pub mod events;
pub mod known;
pub mod lifecycle;
pub mod mirror;
pub mod orphans;
pub mod phase;
pub mod restart;
pub mod runtime_class;
pub mod source;
pub mod static_pods;
pub mod status;
pub mod unsupported;
pub mod update;
pub mod worker;
pub mod workers;
