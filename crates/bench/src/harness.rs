//! What every scenario needs: nodes of this binary, a namespace, pod manifests, and a watch
//! that records when each pod was first seen Running and Succeeded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use krustlet_e2e::KrustletNode;
use krustlet_e2e::pods::for_node;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;

use crate::RUN_AS_NODE;

/// Starts a Krustlet node (this binary, as `krustlet`) and waits until pods can land on it.
pub async fn start_node(prefix: &str, extra_args: &[&str]) -> anyhow::Result<KrustletNode> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let exe = exe.to_str().context("binary path is not UTF-8")?;
    let node = KrustletNode::start_with_env(exe, prefix, extra_args, &[(RUN_AS_NODE, "1")])?;
    node.wait_ready("True", Duration::from_secs(120)).await?;
    // The not-ready taint goes a moment after Ready.
    let nodes: Api<Node> = Api::all(krustlet_e2e::cluster::client().await?);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = nodes.get(node.name()).await?;
        let extra_taints = current
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .iter()
            .any(|t| t.key != "kubernetes.io/arch");
        if !extra_taints {
            return Ok(node);
        }
        if Instant::now() > deadline {
            bail!("node {} kept taints besides the wasm ones", node.name());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A multitool pod on `node` running `args`.
pub fn pod(
    name: &str,
    node: &str,
    image: &str,
    args: &[&str],
    restart: &str,
) -> anyhow::Result<Pod> {
    let manifest = for_node(
        serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": restart,
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "containers": [{"name": "main", "image": image, "args": args,
                                "imagePullPolicy": "IfNotPresent"}]
            }
        }),
        node,
    );
    Ok(serde_json::from_value(manifest)?)
}

/// Creates `pod` and returns when the create call returned.
pub async fn create(api: &Api<Pod>, pod: &Pod) -> anyhow::Result<Instant> {
    api.create(&PostParams::default(), pod).await?;
    Ok(Instant::now())
}

/// When a pod was first seen in each state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    /// Running (or already Succeeded: a short pod may skip a visible Running).
    pub running: Option<Instant>,
    /// Succeeded.
    pub succeeded: Option<Instant>,
    /// Failed (a benchmark pod must not fail).
    pub failed: Option<Instant>,
}

/// Records pod states in a namespace through a watch, as a user's `kubectl get -w` would.
#[derive(Clone, Default)]
pub struct Observer {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

impl Observer {
    /// Starts watching `api`'s namespace.
    pub fn start(api: Api<Pod>) -> Self {
        let observer = Self::default();
        let seen = observer.seen.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let pod = match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
                    _ => continue,
                };
                let now = Instant::now();
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                let name = pod.metadata.name.unwrap_or_default();
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let entry = seen.entry(name).or_default();
                match phase.as_str() {
                    "Running" => {
                        entry.running.get_or_insert(now);
                    }
                    "Succeeded" => {
                        entry.running.get_or_insert(now);
                        entry.succeeded.get_or_insert(now);
                    }
                    "Failed" => {
                        entry.failed.get_or_insert(now);
                    }
                    _ => {}
                }
            }
        });
        observer
    }

    /// What was seen of `name`.
    pub fn get(&self, name: &str) -> Seen {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
            .unwrap_or_default()
    }

    /// Pods seen Succeeded.
    pub fn succeeded_names(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, s)| s.succeeded.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Waits until `done` holds for every pod in `names`, or fails after `timeout`.
    pub async fn wait_all(
        &self,
        names: &[String],
        timeout: Duration,
        what: &str,
        done: impl Fn(&Seen) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (pending, failed): (Vec<_>, Vec<_>) = {
                let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                let pending = names
                    .iter()
                    .filter(|n| !seen.get(*n).is_some_and(&done))
                    .cloned()
                    .collect();
                let failed = names
                    .iter()
                    .filter(|n| seen.get(*n).is_some_and(|s| s.failed.is_some()))
                    .cloned()
                    .collect();
                (pending, failed)
            };
            if !failed.is_empty() {
                bail!("pods failed: {failed:?}");
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} pods not {what} within {timeout:?}, e.g. {:?}",
                    pending.len(),
                    &pending[..pending.len().min(5)]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The node process's resident memory in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The node process's CPU time in seconds (user + system).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    (ticks(11) + ticks(12)) / 100.0
}

/// `kubelet_pod_start_duration_seconds` (sum, count) from the node's `/metrics`.
pub async fn pod_start_metric(node: &KrustletNode) -> (f64, f64) {
    let text = krustlet_e2e::kubelet_api::kubelet_get(node, "/metrics").await;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("kubelet_pod_start_duration_seconds_sum"),
        value("kubelet_pod_start_duration_seconds_count"),
    )
}
