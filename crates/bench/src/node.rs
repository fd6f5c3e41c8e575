//! The nodes a scenario runs on: a Krustlet node, or one of the peers `--against` names (a
//! kubemark hollow node, [`crate::hollow`], or the floor, [`crate::floor`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use krustlet_e2e::KrustletNode;

use crate::RUN_AS_NODE;
use crate::api_writes::{AuditMark, Writes};
use crate::floor::FloorNode;
use crate::harness::{Seen, delete_node, pod_start_metric, wait_schedulable};
use crate::hollow::HollowNode;

/// The API client limits of every node the bench starts (Krustlet's and kubemark's flags of
/// the kubelet's names, `--kube-api-qps` and `--kube-api-burst`); the floor has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Requests per second.
    pub qps: u32,
    /// Requests at once before the pace applies.
    pub burst: u32,
}

impl Default for ClientLimits {
    /// The kubelet's defaults (`kubeAPIQPS` 50, `kubeAPIBurst` 100).
    fn default() -> Self {
        Self {
            qps: 50,
            burst: 100,
        }
    }
}

static CLIENT_LIMITS: OnceLock<ClientLimits> = OnceLock::new();

/// Sets the limits of every node started from now on (once, from the command line).
pub fn set_client_limits(limits: ClientLimits) {
    let _ = CLIENT_LIMITS.set(limits);
}

/// The limits nodes start with: as set, else the kubelet's defaults.
pub fn client_limits() -> ClientLimits {
    CLIENT_LIMITS.get().copied().unwrap_or_default()
}

/// A kind of node a scenario runs on (`--against` names the peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Kind {
    /// A Krustlet node: this binary, re-run as `krustlet`.
    Krustlet,
    /// kubemark's hollow node: upstream's kubelet with a fake runtime ([`crate::hollow`]).
    Hollow,
    /// The floor: a client that only patches pod status ([`crate::floor`]).
    Floor,
}

impl Kind {
    /// The kind's name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Krustlet => "krustlet",
            Self::Hollow => "hollow",
            Self::Floor => "floor",
        }
    }

    /// Whether pods on this kind ever complete: the hollow node's fake runtime starts every
    /// container Running and never ends one (`FakeRuntimeService.StartContainer`).
    pub fn completes(self) -> bool {
        !matches!(self, Self::Hollow)
    }

    /// The phase that ends a pod's run on this kind: Succeeded, or Running where pods never
    /// complete.
    pub fn done_phase(self) -> &'static str {
        if self.completes() {
            "Succeeded"
        } else {
            "Running"
        }
    }

    /// Whether `seen` reached [`Self::done_phase`].
    pub fn done(self, seen: &Seen) -> bool {
        if self.completes() {
            seen.succeeded.is_some()
        } else {
            seen.running.is_some()
        }
    }
}

/// A running node of any [`Kind`]; stopped, and its Node object deleted, on drop.
pub enum BenchNode {
    /// A Krustlet node (boxed: it is much larger than the others).
    Krustlet(Box<KrustletNode>),
    /// A hollow node.
    Hollow(HollowNode),
    /// A floor node.
    Floor(FloorNode),
}

impl BenchNode {
    /// Starts a node of `kind` with room for `max_pods` pods (a Krustlet node with
    /// `krustlet_args` too) and waits until pods can land on it (Ready, and no taints but the
    /// wasm ones that every kind registers with).
    ///
    /// # Errors
    /// When the node cannot be started (for the hollow node, when kubemark is missing) or does
    /// not become schedulable.
    pub async fn start(
        kind: Kind,
        prefix: &str,
        max_pods: usize,
        krustlet_args: &[&str],
    ) -> anyhow::Result<Self> {
        let node = match kind {
            Kind::Krustlet => {
                let exe = std::env::current_exe().context("locating this binary")?;
                let exe = exe.to_str().context("binary path is not UTF-8")?;
                let limits = client_limits();
                let own = [
                    format!("--max-pods={max_pods}"),
                    format!("--kube-api-qps={}", limits.qps),
                    format!("--kube-api-burst={}", limits.burst),
                ];
                let args: Vec<&str> = own
                    .iter()
                    .map(String::as_str)
                    .chain(krustlet_args.iter().copied())
                    .collect();
                Self::Krustlet(Box::new(KrustletNode::start_with_env(
                    exe,
                    prefix,
                    &args,
                    &[(RUN_AS_NODE, "1")],
                )?))
            }
            Kind::Hollow => Self::Hollow(HollowNode::start(&unique_name(prefix), max_pods)?),
            Kind::Floor => {
                let client = krustlet_e2e::cluster::client().await?;
                Self::Floor(FloorNode::start(client, &unique_name(prefix), max_pods).await?)
            }
        };
        node.wait_schedulable(Duration::from_secs(120)).await?;
        Ok(node)
    }

    /// The node's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Krustlet(_) => Kind::Krustlet,
            Self::Hollow(_) => Kind::Hollow,
            Self::Floor(_) => Kind::Floor,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Krustlet(node) => node.name(),
            Self::Hollow(node) => node.name(),
            Self::Floor(node) => node.name(),
        }
    }

    /// The Krustlet node, for what only it has (data dir, restarts).
    ///
    /// # Errors
    /// When the node is of another kind.
    pub fn krustlet_mut(&mut self) -> anyhow::Result<&mut KrustletNode> {
        match self {
            Self::Krustlet(node) => Ok(node),
            other => bail!("a {} node is not a Krustlet node", other.kind().name()),
        }
    }

    /// The node's own process, if it has one (the floor runs inside the benchmark).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Krustlet(node) => node.pid(),
            Self::Hollow(node) => Some(node.pid()),
            Self::Floor(_) => None,
        }
    }

    /// `kubelet_pod_start_duration_seconds` (sum, count), where the node has it.
    pub async fn pod_start_metric(&self) -> Option<(f64, f64)> {
        match self {
            Self::Krustlet(node) => Some(pod_start_metric(node).await),
            Self::Hollow(node) => Some(node.pod_start_metric().await),
            Self::Floor(_) => None,
        }
    }

    /// A mark from which [`Self::writes_since`] counts the node's API writes.
    ///
    /// # Errors
    /// When the control plane keeps no audit log (built before it did).
    pub fn mark_writes(&self) -> anyhow::Result<WritesMark> {
        Ok(match self {
            Self::Floor(node) => WritesMark::Floor(node.writes()),
            Self::Krustlet(_) | Self::Hollow(_) => WritesMark::Audit(AuditMark::now()?),
        })
    }

    /// The node's writes to the API server since `mark`: from the audit log for the nodes
    /// that authenticate as nodes; the floor (which writes with the benchmark's own client)
    /// counts its own.
    ///
    /// # Errors
    /// When the audit log cannot be read.
    pub fn writes_since(&self, mark: &WritesMark) -> anyhow::Result<Writes> {
        match (self, mark) {
            (Self::Floor(node), WritesMark::Floor(before)) => Ok(node.writes().since(before)),
            (_, WritesMark::Audit(mark)) => mark.writes_since(self.name()),
            (_, WritesMark::Floor(_)) => bail!("a floor mark is for the floor node only"),
        }
    }

    /// Fails when the node stopped acting on its pods (the floor's tasks; a process that
    /// exited).
    pub fn health(&self) -> anyhow::Result<()> {
        match self {
            Self::Floor(node) => Ok(node.health()?),
            Self::Krustlet(_) | Self::Hollow(_) => Ok(()),
        }
    }

    /// The node's log, for failure messages (the floor has none).
    pub fn log(&self) -> String {
        match self {
            Self::Krustlet(node) => node.log(),
            Self::Hollow(node) => node.log(),
            Self::Floor(_) => String::new(),
        }
    }

    async fn wait_schedulable(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_schedulable(self.name(), timeout, || {
            format!("{} node; log:\n{}", self.kind().name(), self.log())
        })
        .await
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        // A Krustlet or hollow node deletes its Node object itself.
        if let Self::Floor(node) = self {
            delete_node(node.name());
        }
    }
}

/// Where counting a node's API writes starts ([`BenchNode::mark_writes`]).
pub enum WritesMark {
    /// An offset in the audit log.
    Audit(AuditMark),
    /// The floor's own count then.
    Floor(Writes),
}

/// `<prefix>-<pid>-<n>`, unique in this process and across processes, as Krustlet nodes are.
fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-p{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
