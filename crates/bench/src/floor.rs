//! The floor node: the least a node can do and still run pods, so a benchmark can tell what
//! part of a figure is the control plane's (issue 18).
//!
//! A [`FloorNode`] registers a Node object (Ready, with room for `max_pods` pods), renews its
//! Lease in `kube-node-lease` every 10 s (with Krustlet's own [`LeaseRenewer`], so both nodes
//! heartbeat alike), watches the pods bound to it (`spec.nodeName=<name>`) and, the moment it
//! sees a new one, patches its status Running with every container running and ready. A pod
//! annotated [`RUNS_FOR_MS`] is patched Succeeded that long after it was patched Running (what
//! the program would take on a real node); any other pod runs until it is deleted. It deletes
//! nothing (the benchmark does), pulls nothing, runs nothing, writes no events.
//!
//! # Tasks and queues
//! Three tasks run under one supervisor, which stops the rest when one ends (the watch and the
//! lease never end on their own) and records why; [`FloorNode::health`] reports it:
//! - the lease renewer;
//! - the watcher, which hands each new pod to the patcher over a queue of [`QUEUE`] pods; when
//!   the queue is full the watcher waits (the API server holds the watch's events meanwhile);
//! - the patcher, one small task per pod, at most [`CONCURRENT_WRITES`] status writes in flight.
//!   Its tasks are bounded by the pods bound to the node, which the scheduler bounds by the
//!   node's `pods` capacity.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Pod, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kubelet::node::lease::LeaseRenewer;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api_writes::Writes;

/// A pod annotation: how long, in milliseconds, its program runs before it exits 0. The floor
/// patches such a pod Succeeded that long after Running; without it a pod runs until deleted.
pub const RUNS_FOR_MS: &str = "krustlet-bench/runs-for-ms";
/// Pods seen but not yet handed to the patcher.
pub const QUEUE: usize = 1024;
/// Status writes in flight at once.
pub const CONCURRENT_WRITES: usize = 32;
/// The Lease's duration, as the kubelet's default (`nodeLeaseDurationSeconds`): renewed every
/// quarter of it, 10 s.
const LEASE_SECONDS: u32 = 40;

/// Errors of the floor node.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// The Node object could not be created.
    #[error("registering floor node {node}: {source}")]
    Register {
        /// The node.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A task of the node ended, so it no longer acts on its pods.
    #[error("floor node {node} stopped: {reason}")]
    Stopped {
        /// The node.
        node: String,
        /// Which task ended and why.
        reason: String,
    },
    /// A status write failed (other than for a pod already deleted).
    #[error("floor node {node} could not patch pod {pod}: {message}")]
    Patch {
        /// The node.
        node: String,
        /// `namespace/name`.
        pod: String,
        /// The API error.
        message: String,
    },
}

/// A running floor node; its tasks stop on drop (the benchmark deletes the Node object).
pub struct FloorNode {
    name: String,
    stop: CancellationToken,
    /// The first failure: a task that ended or a write that failed.
    failure: Arc<Mutex<Option<FloorError>>>,
    /// Its pod status writes so far (the Lease's are not counted).
    writes: Arc<Mutex<Writes>>,
}

impl FloorNode {
    /// Registers `name` with room for `max_pods` pods and the taints Krustlet registers with
    /// by default (so the same pod manifests land on every kind of node), then starts its tasks.
    ///
    /// # Errors
    /// [`FloorError::Register`] when the Node cannot be created.
    pub async fn start(
        client: kube::Client,
        name: &str,
        max_pods: usize,
    ) -> Result<Self, FloorError> {
        let nodes: Api<Node> = Api::all(client.clone());
        let node = nodes
            .create(&PostParams::default(), &node_object(name, max_pods))
            .await
            .map_err(|source| FloorError::Register {
                node: name.to_string(),
                source,
            })?;
        let stop = CancellationToken::new();
        let failure = Arc::new(Mutex::new(None));
        let writes = Arc::new(Mutex::new(Writes::default()));
        tokio::spawn(supervise(
            client,
            name.to_string(),
            node.metadata.uid,
            stop.clone(),
            (failure.clone(), writes.clone()),
        ));
        Ok(Self {
            name: name.to_string(),
            stop,
            failure,
            writes,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pod status writes so far.
    pub fn writes(&self) -> Writes {
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the node still acts on its pods.
    ///
    /// # Errors
    /// The first failure: a task that ended or a status write that failed.
    pub fn health(&self) -> Result<(), FloorError> {
        match self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for FloorNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Records `error` unless an earlier failure is recorded.
fn record(failure: &Mutex<Option<FloorError>>, error: FloorError) {
    failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert(error);
}

/// Runs the lease, the watcher and the patcher until `stop`, or until one of them ends.
async fn supervise(
    client: kube::Client,
    name: String,
    uid: Option<String>,
    stop: CancellationToken,
    (failure, writes): (Arc<Mutex<Option<FloorError>>>, Arc<Mutex<Writes>>),
) {
    let (pods_tx, pods_rx) = mpsc::channel(QUEUE);
    let mut tasks = JoinSet::new();
    {
        // The renewer follows a client channel (Krustlet rotates certificates); ours never changes.
        let (_clients_tx, clients) = watch::channel(client.clone());
        let (_uid_tx, node_uid) = watch::channel(uid);
        let renewer = LeaseRenewer::new(clients, name.clone(), LEASE_SECONDS);
        let stop = stop.clone();
        tasks.spawn(async move {
            // The sender halves live as long as the renewer runs.
            let _keep = (_clients_tx, _uid_tx);
            renewer.run(node_uid, stop).await;
            "lease renewer ended"
        });
    }
    tasks.spawn(watch_pods(client.clone(), name.clone(), pods_tx));
    tasks.spawn(patch_pods(
        client,
        name.clone(),
        pods_rx,
        (failure.clone(), writes),
        stop.clone(),
    ));
    tokio::select! {
        () = stop.cancelled() => {}
        ended = tasks.join_next() => {
            let reason = match ended {
                Some(Ok(reason)) => reason.to_string(),
                Some(Err(error)) => format!("a task panicked or was cancelled: {error}"),
                None => "no tasks".to_string(),
            };
            if !stop.is_cancelled() {
                record(&failure, FloorError::Stopped { node: name, reason });
            }
        }
    }
    stop.cancel();
    tasks.shutdown().await;
}

/// Hands every new pod bound to `node` to the patcher, once per pod (by UID).
async fn watch_pods(client: kube::Client, node: String, pods: mpsc::Sender<Pod>) -> &'static str {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut handed: HashSet<String> = HashSet::new();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Ok(watcher::Event::Delete(pod)) => {
                // Forget it, so the set stays as small as the node's pods.
                if let Some(uid) = &pod.metadata.uid {
                    handed.remove(uid);
                }
                continue;
            }
            // Errors are retried with backoff by the stream itself.
            Ok(_) | Err(_) => continue,
        };
        let pending = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_none_or(|p| p == "Pending");
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() || !pending || handed.contains(&uid) {
            continue;
        }
        handed.insert(uid);
        if pods.send(pod).await.is_err() {
            return "the patcher is gone";
        }
    }
    "the pod watch ended"
}

/// Patches each pod Running, then, if it says how long it runs, Succeeded after that long.
async fn patch_pods(
    client: kube::Client,
    node: String,
    mut pods: mpsc::Receiver<Pod>,
    (failure, counted): (Arc<Mutex<Option<FloorError>>>, Arc<Mutex<Writes>>),
    stop: CancellationToken,
) -> &'static str {
    let writes = Arc::new(Semaphore::new(CONCURRENT_WRITES));
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return "stopped",
            pod = pods.recv() => {
                let Some(pod) = pod else { return "the watcher is gone" };
                let (client, node, writes, failure, counted) =
                    (client.clone(), node.clone(), writes.clone(), failure.clone(), counted.clone());
                running.spawn(async move {
                    if let Err(error) = act(client, &pod, &writes, &counted).await {
                        record(&failure, FloorError::Patch {
                            node,
                            pod: format!(
                                "{}/{}",
                                pod.metadata.namespace.as_deref().unwrap_or_default(),
                                pod.metadata.name.as_deref().unwrap_or_default()
                            ),
                            message: error.to_string(),
                        });
                    }
                });
            }
            // Reap finished pod tasks so the set holds only live ones.
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
}

/// What the floor does for one pod.
async fn act(
    client: kube::Client,
    pod: &Pod,
    writes: &Semaphore,
    counted: &Mutex<Writes>,
) -> Result<(), kube::Error> {
    let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
        return Ok(());
    };
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let started = Time(jiff::Timestamp::now());
    {
        let _write = writes.acquire().await;
        patch_status(&api, name, &running_status(pod, &started)).await?;
        count_patch(counted);
    }
    let runs_for = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RUNS_FOR_MS))
        .and_then(|ms| ms.parse::<u64>().ok());
    if let Some(ms) = runs_for {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let _write = writes.acquire().await;
        patch_status(&api, name, &succeeded_status(pod, &started)).await?;
        count_patch(counted);
    }
    Ok(())
}

/// Counts one status patch, as the audit log names it for the other nodes.
fn count_patch(counted: &Mutex<Writes>) {
    counted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add("patch pods/status", 1);
}

/// A strategic merge patch of the status subresource (conditions merge by type, so the
/// scheduler's PodScheduled stays). A pod deleted meanwhile is not an error.
async fn patch_status(
    api: &Api<Pod>,
    name: &str,
    status: &serde_json::Value,
) -> Result<(), kube::Error> {
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

fn container_names(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect()
}

fn conditions(status: &str, reason: Option<&str>, now: &Time) -> serde_json::Value {
    serde_json::json!(
        [
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "Ready"
        ]
        .iter()
        .map(|t| {
            // Initialized and PodReadyToStartContainers stay True once the pod completes,
            // as the kubelet reports them (generateAPIPodStatus).
            let value = if matches!(*t, "Initialized" | "PodReadyToStartContainers") {
                "True"
            } else {
                status
            };
            let mut c = serde_json::json!({"type": t, "status": value, "lastTransitionTime": now});
            if let (Some(reason), "False") = (reason, value) {
                c["reason"] = reason.into();
            }
            c
        })
        .collect::<Vec<_>>()
    )
}

/// Running, every container running and ready.
fn running_status(pod: &Pod, now: &Time) -> serde_json::Value {
    let containers: Vec<_> = container_names(pod)
        .into_iter()
        .map(|(name, image)| {
            serde_json::json!({
                "name": name, "image": image, "imageID": "", "ready": true, "started": true,
                "restartCount": 0, "state": {"running": {"startedAt": now}}
            })
        })
        .collect();
    serde_json::json!({"status": {
        "phase": "Running",
        "startTime": now,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "conditions": conditions("True", None, now),
        "containerStatuses": containers,
    }})
}

/// Succeeded, every container terminated with exit code 0.
fn succeeded_status(pod: &Pod, started: &Time) -> serde_json::Value {
    let now = Time(jiff::Timestamp::now());
    let containers: Vec<_> = container_names(pod)
        .into_iter()
        .map(|(name, image)| {
            serde_json::json!({
                "name": name, "image": image, "imageID": "", "ready": false, "started": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                         "startedAt": started, "finishedAt": now}}
            })
        })
        .collect();
    serde_json::json!({"status": {
        "phase": "Succeeded",
        "conditions": conditions("False", Some("PodCompleted"), &now),
        "containerStatuses": containers,
    }})
}

/// The Node to register: Ready, large capacity, Krustlet's default taints.
fn node_object(name: &str, max_pods: usize) -> Node {
    let now = Time(jiff::Timestamp::now());
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity("64".into())),
        ("memory".to_string(), Quantity("256Gi".into())),
        ("pods".to_string(), Quantity(max_pods.to_string())),
    ]);
    let taint = |effect: &str| Taint {
        key: "kubernetes.io/arch".into(),
        value: Some("wasm32-wasi".into()),
        effect: effect.into(),
        time_added: None,
    };
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("type".to_string(), "krustlet-bench-floor".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(vec![taint("NoExecute"), taint("NoSchedule")]),
            ..Default::default()
        }),
        // Nodes may carry their status on create (the kubelet registers this way).
        status: Some(NodeStatus {
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "127.0.0.1".into(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.to_string(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("FloorReady".into()),
                message: Some("krustlet-bench floor node".into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [{"name": "main", "image": "img"}]}
        }))
        .expect("pod")
    }

    #[test]
    fn running_status_has_every_container_running_and_ready() {
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let status = running_status(&pod(), &now);
        assert_eq!(status["status"]["phase"], "Running");
        assert_eq!(status["status"]["containerStatuses"][0]["name"], "main");
        assert_eq!(status["status"]["containerStatuses"][0]["ready"], true);
        let ready: Vec<_> = status["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .filter(|c| c["status"] == "True")
            .collect();
        assert_eq!(ready.len(), 4, "{status}");
    }

    #[test]
    fn succeeded_status_ends_readiness_with_pod_completed() {
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let status = succeeded_status(&pod(), &now);
        assert_eq!(status["status"]["phase"], "Succeeded");
        let terminated = &status["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(terminated["exitCode"], 0);
        let ready = status["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .expect("Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("PodCompleted"))
        );
    }

    #[test]
    fn node_object_is_ready_with_room_for_max_pods() {
        let node = node_object("floor-1", 250);
        let status = node.status.expect("status");
        assert_eq!(
            status.allocatable.expect("allocatable")["pods"],
            Quantity("250".into())
        );
        assert_eq!(status.conditions.expect("conditions")[0].status, "True");
    }
}
