//! The node agent: registration, lease heartbeat, status and graceful shutdown.

pub mod allocatable;
pub mod conditions;
pub mod events;
pub mod host;
pub mod lease;
pub mod reachability;
pub mod registration;
pub mod shutdown;
pub mod status;
