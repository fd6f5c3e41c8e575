//! What every scenario needs: a node of any kind ([`crate::node`]), a namespace, pod manifests,
//! and a watch that records when each pod was first seen Running and Succeeded.

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
pub use crate::node::{BenchNode, Kind};

/// Waits until Node `name` is Ready and carries no taints but the wasm ones (the not-ready
/// taint goes a moment after Ready); `context` describes the node for the error.
pub async fn wait_schedulable(
    name: &str,
    timeout: Duration,
    context: impl Fn() -> String,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(krustlet_e2e::cluster::client().await?);
    let deadline = Instant::now() + timeout;
    let mut last_seen = "not registered".to_string();
    loop {
        if let Some(current) = nodes.get_opt(name).await? {
            let ready = krustlet_e2e::node::ready_status(&current).as_deref() == Some("True");
            let extra_taints: Vec<String> = current
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .filter(|t| t.key != "kubernetes.io/arch")
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect();
            if ready && extra_taints.is_empty() {
                return Ok(());
            }
            last_seen = describe(&current, &extra_taints);
        }
        if Instant::now() > deadline {
            bail!(
                "node {name} not Ready without extra taints within {timeout:?} (last seen: \
                 {last_seen}): {}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node's conditions and `taints` in one line, for an error that says why it was not
/// schedulable (e.g. DiskPressure on a nearly full disk).
fn describe(node: &Node, taints: &[String]) -> String {
    let conditions: Vec<String> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            let message = c.message.as_deref().unwrap_or_default();
            format!("{}={} ({message})", c.type_, c.status)
        })
        .collect();
    format!(
        "conditions [{}], taints [{}]",
        conditions.join(", "),
        taints.join(", ")
    )
}

/// Deletes a Node object without waiting (drop cannot await; kubectl as the e2e harness does).
pub fn delete_node(name: &str) {
    let info = krustlet_e2e::cluster();
    let _ = std::process::Command::new(&info.kubectl)
        .arg("--kubeconfig")
        .arg(&info.kubeconfig)
        .args(["delete", "node", name, "--wait=false", "--ignore-not-found"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Starts a Krustlet node (this binary, as `krustlet`) and waits until pods can land on it.
pub async fn start_node(prefix: &str, extra_args: &[&str]) -> anyhow::Result<KrustletNode> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let exe = exe.to_str().context("binary path is not UTF-8")?;
    let node = KrustletNode::start_with_env(exe, prefix, extra_args, &[(RUN_AS_NODE, "1")])?;
    wait_schedulable(node.name(), Duration::from_secs(120), || {
        format!("log:\n{}", node.log())
    })
    .await?;
    Ok(node)
}

/// A node, a namespace with a pod watch, and the multitool image already pulled and compiled
/// on the node (one warm-up pod ran): where every cached-image scenario starts. Peers get the
/// same manifests (the hollow node's fake image service takes any image name; the floor reads
/// none).
pub struct Warm {
    /// The node.
    pub node: BenchNode,
    /// The namespace (deleted on drop).
    pub ns: krustlet_e2e::TestNamespace,
    /// Pods in the namespace.
    pub api: Api<Pod>,
    /// The watch on them.
    pub observer: Observer,
    /// The multitool image reference.
    pub image: String,
}

impl Warm {
    /// Starts a node of `kind` with room for `max_pods` pods (a Krustlet node with
    /// `krustlet_args` too) and runs the warm-up pod to its kind's end ([`Kind::done_phase`]).
    pub async fn start(
        kind: Kind,
        prefix: &str,
        max_pods: usize,
        krustlet_args: &[&str],
    ) -> anyhow::Result<Self> {
        let node = BenchNode::start(kind, prefix, max_pods, krustlet_args).await?;
        let ns = krustlet_e2e::TestNamespace::new(prefix).await?;
        let api = ns.api::<Pod>();
        let observer = Observer::start(api.clone());
        let image = krustlet_e2e::workloads::multitool();
        create(&api, &bench_pod("warmup", node.name(), &image, Work::Exit)?).await?;
        observer
            .wait_all(
                &["warmup".to_string()],
                Duration::from_secs(180),
                kind.done_phase(),
                |s| kind.done(s),
            )
            .await?;
        Ok(Self {
            node,
            ns,
            api,
            observer,
            image,
        })
    }
}

/// What a benchmark pod's program does.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    /// Prints and exits 0 (`hello`).
    Exit,
    /// Sleeps this many seconds, then exits 0.
    Sleep(u64),
    /// Sleeps for good (until deleted).
    Forever,
}

/// A multitool pod on `node` doing `work`, restart policy Never, annotated with how long it
/// runs for the floor node ([`crate::floor::RUNS_FOR_MS`]).
pub fn bench_pod(name: &str, node: &str, image: &str, work: Work) -> anyhow::Result<Pod> {
    let (args, runs_for_ms): (Vec<String>, Option<u64>) = match work {
        Work::Exit => (vec!["hello".into()], Some(0)),
        Work::Sleep(s) => (vec!["sleep".into(), s.to_string()], Some(s * 1000)),
        Work::Forever => (vec!["sleep".into(), "100000".into()], None),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut pod = pod(name, node, image, &args, "Never")?;
    if let Some(ms) = runs_for_ms {
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert(crate::floor::RUNS_FOR_MS.to_string(), ms.to_string());
    }
    Ok(pod)
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
    /// Bound to a node (`spec.nodeName` set by the scheduler).
    pub bound: Option<Instant>,
    /// Running (or already Succeeded: a short pod may skip a visible Running).
    pub running: Option<Instant>,
    /// Succeeded.
    pub succeeded: Option<Instant>,
    /// Failed (a benchmark pod must not fail).
    pub failed: Option<Instant>,
}

/// A failed pod's reason and message, and each container's terminated reason and message.
fn failure_of(status: Option<&k8s_openapi::api::core::v1::PodStatus>) -> String {
    let Some(status) = status else {
        return String::new();
    };
    let mut parts = vec![format!(
        "{} {}",
        status.reason.as_deref().unwrap_or_default(),
        status.message.as_deref().unwrap_or_default()
    )];
    for container in status.container_statuses.iter().flatten() {
        if let Some(ended) = container.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            parts.push(format!(
                "{}: exit {} {} {}",
                container.name,
                ended.exit_code,
                ended.reason.as_deref().unwrap_or_default(),
                ended.message.as_deref().unwrap_or_default()
            ));
        }
    }
    parts.join("; ")
}

/// Records pod states in a namespace through a watch, as a user's `kubectl get -w` would.
#[derive(Clone, Default)]
pub struct Observer {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    /// Why each failed pod failed ([`failure_of`]).
    failures: Arc<Mutex<HashMap<String, String>>>,
}

impl Observer {
    /// Starts watching `api`'s namespace.
    pub fn start(api: Api<Pod>) -> Self {
        let observer = Self::default();
        let seen = observer.seen.clone();
        let failures = observer.failures.clone();
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
                let name = pod.metadata.name.clone().unwrap_or_default();
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let entry = seen.entry(name.clone()).or_default();
                if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                    entry.bound.get_or_insert(now);
                }
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
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(name)
                            .or_insert_with(|| failure_of(pod.status.as_ref()));
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

    /// Pods seen done on a node of `kind` ([`Kind::done`]).
    pub fn done_names(&self, kind: Kind) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, s)| kind.done(s))
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
                let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                let why: Vec<String> = failed
                    .iter()
                    .map(|n| format!("{n}: {}", failures.get(n).cloned().unwrap_or_default()))
                    .collect();
                bail!("pods failed: {why:?}");
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
    krustlet::heap::resident_bytes(Some(pid))
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
    pod_start_from_metrics(&text)
}

/// `kubelet_pod_start_duration_seconds` (sum, count) from a Prometheus text exposition; zeros
/// when absent.
pub fn pod_start_from_metrics(text: &str) -> (f64, f64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_start_metric_reads_sum_and_count() {
        let text = "# HELP x\nkubelet_pod_start_duration_seconds_sum 1.5\n\
                    kubelet_pod_start_duration_seconds_count{} 3\n";
        assert_eq!(pod_start_from_metrics(text), (1.5, 3.0));
        assert_eq!(pod_start_from_metrics(""), (0.0, 0.0));
    }

    #[test]
    fn only_the_hollow_node_never_completes() {
        let seen = Seen {
            running: Some(Instant::now()),
            ..Default::default()
        };
        assert!(Kind::Hollow.done(&seen));
        assert!(!Kind::Krustlet.done(&seen));
        assert!(!Kind::Floor.done(&seen));
    }

    #[test]
    fn bench_pods_tell_the_floor_how_long_they_run() {
        let runs_for = |work| {
            bench_pod("p", "n", "img", work)
                .expect("pod")
                .metadata
                .annotations
                .and_then(|a| a.get(crate::floor::RUNS_FOR_MS).cloned())
        };
        assert_eq!(runs_for(Work::Exit).as_deref(), Some("0"));
        assert_eq!(runs_for(Work::Sleep(1)).as_deref(), Some("1000"));
        assert_eq!(runs_for(Work::Forever), None);
    }
}
