//! Pod updates: what the pod sources (the API watch, the static pod directory) tell the pod
//! workers, over one bounded channel (the kubelet's `PodUpdate` from `pkg/kubelet/config`).
//!
//! Sources only send; the dispatcher ([`crate::pod::workers::PodWorkers::run`]) owns the
//! workers. Data flows one way, sources -> desired state -> worker, and a slow dispatcher slows
//! the sources (back-pressure) instead of growing a queue.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

/// Updates waiting for the dispatcher beyond this make the sources wait.
pub const QUEUE: usize = 256;

/// One change from a pod source.
#[derive(Debug)]
pub enum PodUpdate {
    /// The newest spec of a pod bound to this node (new, changed or being deleted).
    Apply(Arc<Pod>),
    /// The pod with this UID is gone from its source.
    Remove(String),
    /// A full relist ended: pods whose UIDs are not in the set are gone (deleted while the
    /// watch was down).
    Relisted(HashSet<String>),
}

/// The sending end, cheap to clone: one per source.
#[derive(Clone)]
pub struct PodUpdates(mpsc::Sender<PodUpdate>);

impl PodUpdates {
    /// A bounded channel of [`QUEUE`] updates.
    pub fn channel() -> (Self, mpsc::Receiver<PodUpdate>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self(tx), rx)
    }

    /// Sends `update`, waiting while the queue is full; false once the dispatcher is gone
    /// (the node is stopping), so the source can stop too.
    pub async fn send(&self, update: PodUpdate) -> bool {
        self.0.send(update).await.is_ok()
    }

    /// [`PodUpdate::Apply`].
    pub async fn apply(&self, pod: Arc<Pod>) -> bool {
        self.send(PodUpdate::Apply(pod)).await
    }

    /// [`PodUpdate::Remove`].
    pub async fn remove(&self, uid: String) -> bool {
        self.send(PodUpdate::Remove(uid)).await
    }
}
