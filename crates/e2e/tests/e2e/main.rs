//! End-to-end tests against the real control plane and registries (see `krustlet_e2e`).
//!
//! One test binary, so one cluster serves every test; each test has its own namespace and the
//! tests run in parallel. Modules are named for the feature they verify.

mod api;
mod config;
mod debug;
mod exec;
mod fleet;
mod foundation;
mod http;
mod image_security;
mod images;
mod lifecycle;
mod monitoring;
mod network;
mod newcomer;
mod node;
mod node_events;
mod pods;
mod resources;
mod security;
mod signing;
mod snippets;
mod standalone;
mod volumes;
mod websocket;

/// The krustlet command under test, built from this workspace.
pub const KRUSTLET: &str = env!("CARGO_BIN_EXE_krustlet-e2e-node");
