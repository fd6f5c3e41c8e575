//! The pods bound to this node as the pod source last saw them, for the kubelet API's `/pods`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;

/// The pods this node runs, by UID; cheap to clone.
#[derive(Clone, Default)]
pub struct KnownPods {
    pods: Arc<RwLock<BTreeMap<String, Arc<Pod>>>>,
}

impl KnownPods {
    /// Records the newest version of a pod.
    pub fn set(&self, pod: Arc<Pod>) {
        if let Some(uid) = pod.metadata.uid.clone() {
            self.pods
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, pod);
        }
    }

    /// Forgets a pod (gone from the API server).
    pub fn remove(&self, uid: &str) {
        self.pods
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// All of them.
    pub fn list(&self) -> Vec<Arc<Pod>> {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
