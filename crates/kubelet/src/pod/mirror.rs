//! Mirror pods (the kubelet's `pod/mirror_client.go`): a connected node's static pods appear in
//! the API as pods it creates itself, so `kubectl get/describe/logs` see them.
//!
//! A mirror pod has the static pod's name, namespace, labels and spec, the annotation
//! `kubernetes.io/config.mirror` = the static pod's hash (its UID here), and the Node as owner.
//! The API gives it a UID of its own; statuses of the static pod are patched onto it
//! ([`MirrorUids`]). A mirror pod deleted in the API, or one of an old version of the file, is
//! deleted (grace 0) and created again from the current file; removing the file deletes it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use tokio::sync::watch;

use crate::pod::static_pods::{CONFIG_HASH, CONFIG_SOURCE};
use crate::pod::status::{MirrorUids, PodKey, StatusManager};

/// `kubernetes.io/config.mirror`: marks a mirror pod; its value is the static pod's hash.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// How long a created mirror pod may take to show up in the watch before it is created again.
const CREATE_RETRY: Duration = Duration::from_secs(5);

/// Whether `pod` is a mirror pod (the node runs its static pod, not the mirror).
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR))
}

/// The mirror pod of `pod` on the node `node_name` (UID `node_uid`, for the owner reference).
pub fn mirror_of(pod: &Pod, node_name: &str, node_uid: Option<&str>) -> Pod {
    let hash = pod.metadata.uid.clone().unwrap_or_default();
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(CONFIG_MIRROR.into(), hash.clone());
    annotations.insert(CONFIG_HASH.into(), hash);
    annotations.insert(CONFIG_SOURCE.into(), "file".into());
    let owner = node_uid.map(|uid| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node_name.into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }]
    });
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: owner,
            ..Default::default()
        },
        spec: pod.spec.clone(),
        status: None,
    }
}

/// A mirror pod as the watch last showed it.
struct Seen {
    uid: String,
    hash: String,
    deleting: bool,
}

/// Keeps one mirror pod per static pod.
pub struct MirrorPods {
    clients: watch::Receiver<kube::Client>,
    node_name: String,
    node_uid: watch::Receiver<Option<String>>,
    uids: MirrorUids,
    status: StatusManager,
    seen: BTreeMap<(String, String), Seen>,
    created: HashMap<String, Instant>,
}

impl MirrorPods {
    /// Mirrors for the node `node_name`; statuses are redirected through `uids`.
    pub fn new(
        clients: watch::Receiver<kube::Client>,
        node_name: &str,
        node_uid: watch::Receiver<Option<String>>,
        uids: MirrorUids,
        status: StatusManager,
    ) -> Self {
        Self {
            clients,
            node_name: node_name.into(),
            node_uid,
            uids,
            status,
            seen: BTreeMap::new(),
            created: HashMap::new(),
        }
    }

    /// A mirror pod appeared or changed in the watch.
    pub fn observe(&mut self, pod: &Pod) {
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let hash = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIG_MIRROR))
            .cloned()
            .unwrap_or_default();
        self.seen.insert(
            key,
            Seen {
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                hash,
                deleting: pod.metadata.deletion_timestamp.is_some(),
            },
        );
    }

    /// A mirror pod is gone from the API.
    pub fn forget(&mut self, pod: &Pod) {
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        if let Some(seen) = self.seen.get(&key)
            && Some(&seen.uid) == pod.metadata.uid.as_ref()
        {
            self.uids.remove_mirror(&seen.uid);
            self.seen.remove(&key);
        }
    }

    /// Deletes mirrors of no current static pod (or being deleted by a user), creates missing
    /// ones, and points statuses at the mirrors that match.
    pub async fn reconcile(&mut self, statics: &[Arc<Pod>]) {
        let client = self.clients.borrow().clone();
        let by_name: HashMap<(String, String), &Arc<Pod>> = statics
            .iter()
            .map(|p| {
                (
                    (
                        p.metadata.namespace.clone().unwrap_or_default(),
                        p.metadata.name.clone().unwrap_or_default(),
                    ),
                    p,
                )
            })
            .collect();
        let mut stale = Vec::new();
        for (key, seen) in &self.seen {
            let current = by_name
                .get(key)
                .filter(|p| p.metadata.uid.as_deref() == Some(seen.hash.as_str()));
            match current {
                Some(pod) if !seen.deleting => {
                    let static_uid = pod.metadata.uid.clone().unwrap_or_default();
                    if self.uids.set(&static_uid, &seen.uid) {
                        // The status so far went nowhere (no mirror yet): send it again.
                        self.status.resend(&PodKey::of(pod));
                    }
                }
                _ => stale.push((key.clone(), seen.uid.clone())),
            }
        }
        for ((namespace, name), uid) in stale {
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => tracing::info!(pod = %format!("{namespace}/{name}"), "deleted mirror pod"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(error) => {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), %error, "deleting mirror pod failed; retrying");
                    continue;
                }
            }
            self.uids.remove_mirror(&uid);
            self.seen.remove(&(namespace, name));
        }
        let node_uid = self.node_uid.borrow().clone();
        for (key, pod) in by_name {
            let static_uid = pod.metadata.uid.clone().unwrap_or_default();
            if self.seen.contains_key(&key)
                || self
                    .created
                    .get(&static_uid)
                    .is_some_and(|t| t.elapsed() < CREATE_RETRY)
            {
                continue;
            }
            self.created.insert(static_uid, Instant::now());
            let mirror = mirror_of(pod, &self.node_name, node_uid.as_deref());
            let api: Api<Pod> = Api::namespaced(client.clone(), &key.0);
            match api.create(&PostParams::default(), &mirror).await {
                Ok(_) => {
                    tracing::info!(pod = %format!("{}/{}", key.0, key.1), "created mirror pod")
                }
                // An old mirror of the same name: the watch shows it, and it is replaced.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(error) => {
                    tracing::warn!(pod = %format!("{}/{}", key.0, key.1), %error, "creating mirror pod failed; retrying")
                }
            }
        }
        let current: std::collections::HashSet<String> = statics
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        self.created.retain(|uid, _| current.contains(uid));
    }
}
