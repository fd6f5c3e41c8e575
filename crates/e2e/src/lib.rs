//! Krustlet's end-to-end harness: a real Kubernetes control plane and real OCI registries on
//! loopback, and helpers for tests against them.
//!
//! The control plane is upstream's own kube-apiserver, kube-controller-manager, kube-scheduler and
//! etcd, built from source by `test/cluster/build.sh` and started by its `devcluster` launcher.
//! One cluster serves a whole test process ([`cluster()`]); each test gets its own namespace
//! ([`TestNamespace`]), deleted when the test ends, passed or failed.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let ns = krustlet_e2e::TestNamespace::new("demo").await?;
//! let out = krustlet_e2e::kubectl(&["get", "ns", ns.name()])?;
//! # Ok(()) }
//! ```

pub mod address;
pub mod audit;
pub mod cluster;
pub mod kubectl;
pub mod kubelet_api;
pub mod namespace;
pub mod node;
pub mod pods;
pub mod registry;
pub mod standalone;
pub mod testhost;
pub mod workloads;

pub use cluster::{ClusterInfo, cluster};
pub use kubectl::kubectl;
pub use namespace::TestNamespace;
pub use node::KrustletNode;
