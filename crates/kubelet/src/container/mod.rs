//! From a pod spec's container to what the runtime runs: argv, environment, and the loop that
//! runs one container through its restarts.

pub mod argv;
pub mod config_watch;
pub mod downward;
pub mod env;
pub mod ephemeral;
pub mod exec_targets;
pub mod grpc_probe;
pub mod probe;
pub mod resize;
pub mod runner;
pub mod service_env;
pub mod termination_message;
