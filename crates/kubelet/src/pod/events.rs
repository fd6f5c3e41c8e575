//! Pod events with the kubelet's reasons (`pkg/kubelet/events`), so `kubectl describe pod` reads
//! as it does for containers.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};

use crate::pod::api::ApiLink;

/// Events waiting for the publisher beyond this are dropped, as upstream's broadcaster drops
/// them (`maxQueuedEvents = 1000`, client-go `tools/record/event.go`): a node that cannot reach
/// the API server, or pods that churn out events, must not grow memory without bound.
pub const MAX_QUEUED_EVENTS: usize = 1000;

/// Publishes events for pods as `kubelet` on this node (to the log only in standalone mode).
///
/// Events go through a queue to one background publisher, as the kubelet's event broadcaster
/// does: a pod start never waits on an event's round trip, and events keep their order.
#[derive(Clone)]
pub struct PodEvents {
    queue: Option<mpsc::Sender<(Event, ObjectReference)>>,
    /// Events dropped because the queue was full.
    dropped: Arc<AtomicU64>,
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
                let (tx, rx) = mpsc::channel(MAX_QUEUED_EVENTS);
                tokio::spawn(publish_all(clients.clone(), reporter, rx));
                Some(tx)
            }
            ApiLink::Standalone => None,
        };
        Self {
            queue,
            dropped: Arc::default(),
        }
    }

    /// A publisher whose queue is `queue` (tests: nobody reads it).
    #[cfg(test)]
    fn with_queue(queue: mpsc::Sender<(Event, ObjectReference)>) -> Self {
        Self {
            queue: Some(queue),
            dropped: Arc::default(),
        }
    }

    /// How many events were dropped because [`MAX_QUEUED_EVENTS`] were waiting.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
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
        if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send((event, reference)) {
            // Counted, and said once per thousand so the log is not flooded in turn.
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed);
            if dropped.is_multiple_of(1000) {
                tracing::warn!(
                    dropped = dropped + 1,
                    "event queue full ({MAX_QUEUED_EVENTS} waiting); dropping events"
                );
            }
        }
    }
}

/// Publishes queued events one at a time, in order, with the newest API client. Events are best
/// effort, as in the kubelet: a lost event never stops a pod.
async fn publish_all(
    clients: watch::Receiver<kube::Client>,
    reporter: Reporter,
    mut queue: mpsc::Receiver<(Event, ObjectReference)>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_queue_holds_at_most_a_thousand_events_and_drops_the_rest() {
        let (tx, mut rx) = mpsc::channel(MAX_QUEUED_EVENTS);
        let events = PodEvents::with_queue(tx);
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        // Nobody publishes: a node cut off from the API server, with chatty pods.
        for i in 0..1500 {
            events
                .normal(&pod, None, "Started", format!("event {i}"))
                .await;
        }
        assert_eq!(events.dropped(), 500);
        let mut queued = 0;
        while let Ok((event, _)) = rx.try_recv() {
            // The oldest are kept, in order, as upstream's broadcaster keeps them.
            assert_eq!(
                event.note.as_deref(),
                Some(format!("event {queued}").as_str())
            );
            queued += 1;
        }
        assert_eq!(queued, MAX_QUEUED_EVENTS);
    }
}
