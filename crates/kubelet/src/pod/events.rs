//! Pod events with the kubelet's reasons (`pkg/kubelet/events`), so `kubectl describe pod` reads
//! as it does for containers.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::pod::api::ApiLink;

/// Publishes events for pods as `kubelet` on this node (to the log only in standalone mode).
#[derive(Clone)]
pub struct PodEvents {
    api: ApiLink,
    reporter: Reporter,
}

impl PodEvents {
    /// A publisher reporting as the kubelet of `node_name`.
    pub fn new(api: ApiLink, node_name: &str) -> Self {
        Self {
            api,
            reporter: Reporter {
                controller: "kubelet".into(),
                instance: Some(node_name.into()),
            },
        }
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
        let ApiLink::Connected(clients) = &self.api else {
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
        let recorder = Recorder::new(clients.borrow().clone(), self.reporter.clone());
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        // Events are best effort and asynchronous, as the kubelet's broadcaster: a slow or lost
        // event never delays or stops a pod (awaiting them cost a pod start two round trips).
        let reason = reason.to_string();
        tokio::spawn(async move {
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::debug!(%error, reason, "event not recorded");
            }
        });
    }
}

/// The field path of a container in events: `spec.containers{name}`.
pub fn container_field(init: bool, name: &str) -> Option<String> {
    Some(format!(
        "spec.{}{{{name}}}",
        if init { "initContainers" } else { "containers" }
    ))
}
