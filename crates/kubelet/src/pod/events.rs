//! Pod events with the kubelet's reasons (`pkg/kubelet/events`), so `kubectl describe pod` reads
//! as it does for containers.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use tokio::sync::{mpsc, watch};

use crate::pod::api::ApiLink;

/// Publishes events for pods as `kubelet` on this node (to the log only in standalone mode).
///
/// Events go through a queue to one background publisher, as the kubelet's event broadcaster
/// does: a pod start never waits on an event's round trip, and events keep their order.
#[derive(Clone)]
pub struct PodEvents {
    queue: Option<mpsc::UnboundedSender<(Event, ObjectReference)>>,
}

impl PodEvents {
    /// A publisher reporting as the kubelet of `node_name`; with an API server, starts the
    /// background publisher (call within the async runtime).
    pub fn new(api: ApiLink, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: "kubelet".into(),
            instance: Some(node_name.into()),
        };
        let queue = match &api {
            ApiLink::Connected(clients) => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(publish_all(clients.clone(), reporter, rx));
                Some(tx)
            }
            ApiLink::Standalone => None,
        };
        Self { queue }
    }

    /// A Normal event about `pod` (or one of its containers, via `field_path`).
    pub async fn normal(&self, pod: &Pod, field_path: Option<String>, reason: &str, note: String) {
        self.publish(pod, field_path, EventType::Normal, reason, note)
            .await
    }

    /// A Warning event.
    pub async fn warning(&self, pod: &Pod, field_path: Option<String>, reason: &str, note: String) {
        self.publish(pod, field_path, EventType::Warning, reason, note)
            .await
    }

    async fn publish(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let Some(queue) = &self.queue else {
            // No API server: the log is where a standalone user looks.
            let pod = pod.metadata.name.as_deref().unwrap_or_default();
            let object = field_path.as_deref().unwrap_or_default();
            match type_ {
                EventType::Normal => tracing::info!(pod, object, reason, "{note}"),
                EventType::Warning => tracing::warn!(pod, object, reason, "{note}"),
            }
            return;
        };
        let reference = ObjectReference {
            field_path,
            ..pod.object_ref(&())
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        let _ = queue.send((event, reference));
    }
}

/// Publishes queued events one at a time, in order, with the newest API client. Events are best
/// effort, as in the kubelet: a lost event never stops a pod.
async fn publish_all(
    clients: watch::Receiver<kube::Client>,
    reporter: Reporter,
    mut queue: mpsc::UnboundedReceiver<(Event, ObjectReference)>,
) {
    while let Some((event, reference)) = queue.recv().await {
        let recorder = Recorder::new(clients.borrow().clone(), reporter.clone());
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::debug!(%error, reason = %event.reason, "event not recorded");
        }
    }
}

/// The field path of a container in events: `spec.containers{name}`.
pub fn container_field(init: bool, name: &str) -> Option<String> {
    Some(format!(
        "spec.{}{{{name}}}",
        if init { "initContainers" } else { "containers" }
    ))
}
