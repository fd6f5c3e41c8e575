//! Pod events with the kubelet's reasons (`pkg/kubelet/events`), so `kubectl describe pod` reads
//! as it does for containers.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Resource;
use kube::runtime::events::EventType;

use crate::events::EventPublisher;

/// Publishes events for pods as `kubelet` on this node, through the node's one broadcaster
/// ([`EventPublisher`]): a pod start never waits on an event's round trip, and events keep their
/// order.
#[derive(Clone)]
pub struct PodEvents {
    publisher: EventPublisher,
}

impl PodEvents {
    /// Pod events through `publisher`.
    pub fn new(publisher: EventPublisher) -> Self {
        Self { publisher }
    }

    /// A Normal event about `pod` (or one of its containers, via `field_path`).
    pub async fn normal(&self, pod: &Pod, field_path: Option<String>, reason: &str, note: String) {
        self.publish(pod, field_path, EventType::Normal, reason, note)
    }

    /// A Warning event.
    pub async fn warning(&self, pod: &Pod, field_path: Option<String>, reason: &str, note: String) {
        self.publish(pod, field_path, EventType::Warning, reason, note)
    }

    /// A reporter of Warning events (reason, note) about `pod` (or a container of it), for
    /// code that reports from outside the worker, such as a guest's denied connections.
    pub fn warnings(
        &self,
        pod: &Pod,
        field_path: Option<String>,
    ) -> impl Fn(&'static str, String) + Send + Sync + 'static {
        let reference = ObjectReference {
            field_path,
            ..pod.object_ref(&())
        };
        let publisher = self.publisher.clone();
        move |reason, note| publisher.publish(EventType::Warning, reason, note, reference.clone())
    }

    fn publish(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let reference = ObjectReference {
            field_path,
            ..pod.object_ref(&())
        };
        self.publisher.publish(type_, reason, note, reference);
    }
}

/// The field path of a container in events: `spec.containers{name}`.
pub fn container_field(init: bool, name: &str) -> Option<String> {
    Some(format!(
        "spec.{}{{{name}}}",
        if init { "initContainers" } else { "containers" }
    ))
}

/// The field path of an ephemeral container in events: `spec.ephemeralContainers{name}`.
pub fn ephemeral_field(name: &str) -> Option<String> {
    Some(format!("spec.ephemeralContainers{{{name}}}"))
}
