//! What the eviction manager shares with the rest of the kubelet: evictions delivered to pod
//! workers (each subscribes under its pod's UID while it runs), and the pressure last seen, for
//! admission.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::node::conditions::{Pressure, SharedPressure};

/// An eviction: the worker stops the pod within `grace` and reports it `Evicted` with
/// `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// Upstream's text, e.g. "The node was low on resource: memory. ...".
    pub message: String,
    /// Zero for a hard threshold or an emptyDir over its limit; for a soft threshold, the pod's
    /// grace bounded by `--eviction-max-pod-grace-period`.
    pub grace: std::time::Duration,
}

type Subscribers = Arc<Mutex<HashMap<String, watch::Sender<Option<Eviction>>>>>;

/// The workers that can be evicted, by pod UID; cheap to clone.
#[derive(Clone, Default)]
pub struct Evictions {
    subscribers: Subscribers,
    pressure: SharedPressure,
}

/// A worker's subscription; unsubscribes when dropped.
pub struct Subscription {
    subscribers: Subscribers,
    uid: String,
    /// Becomes `Some` when the pod is evicted.
    pub receiver: watch::Receiver<Option<Eviction>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.uid);
    }
}

impl Evictions {
    /// Subscribes the worker of pod `uid`.
    pub fn subscribe(&self, uid: &str) -> Subscription {
        let (tx, receiver) = watch::channel(None);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_string(), tx);
        Subscription {
            subscribers: self.subscribers.clone(),
            uid: uid.to_string(),
            receiver,
        }
    }

    /// Records the pressure conditions decided last.
    pub fn set_pressure(&self, pressure: Pressure) {
        self.pressure.set(pressure);
    }

    /// The pressure conditions decided last.
    pub fn pressure(&self) -> Pressure {
        self.pressure.get()
    }

    /// The pressure conditions, shared (node status reports them).
    pub fn shared_pressure(&self) -> SharedPressure {
        self.pressure.clone()
    }

    /// Evicts pod `uid`; false if it has no worker or was evicted already.
    pub fn evict(&self, uid: &str, eviction: Eviction) -> bool {
        let subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.get(uid).is_some_and(|tx| {
            tx.send_if_modified(|current| {
                if current.is_some() {
                    return false;
                }
                *current = Some(eviction);
                true
            })
        })
    }
}
