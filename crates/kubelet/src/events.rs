//! The node's event broadcaster (client-go's `tools/record` as the kubelet uses it): one bounded
//! queue and one background publisher with one kube-runtime [`Recorder`] for every event the
//! node writes, about pods and about itself.
//!
//! One recorder means its cache works: the same event (same object, reason, action, type)
//! repeated within kube-runtime's cache TTL becomes one `events.k8s.io` Event with a growing
//! `series.count` (a patch), not a new object each time, as upstream's `EventCorrelator`
//! aggregates a crash-looping container's `BackOff` events. The recorder's key has no note,
//! while upstream's dedupe key has the message (`getEventKey`, client-go
//! `tools/record/events_cache.go`): so the action carries the reason and a digest of the note,
//! and a liveness `Unhealthy` is never folded into an earlier readiness one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::{mpsc, watch};

/// Events waiting for the publisher beyond this are dropped, as upstream's broadcaster drops
/// them (`maxQueuedEvents = 1000`, client-go `tools/record/event.go`): a node that cannot reach
/// the API server, or pods that churn out events, must not grow memory without bound.
pub const MAX_QUEUED_EVENTS: usize = 1000;

/// Queues events for the publisher; cheap to clone. Without an API server (standalone mode)
/// events go to the log, where a standalone user looks.
#[derive(Clone)]
pub struct EventPublisher {
    queue: Option<mpsc::Sender<(Event, ObjectReference)>>,
    /// Events dropped because the queue was full.
    dropped: Arc<AtomicU64>,
}

impl EventPublisher {
    /// Publishes as `kubelet` on `node_name` with the newest client from `clients`; starts the
    /// background publisher (call within the async runtime).
    pub fn connected(clients: watch::Receiver<kube::Client>, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: "kubelet".into(),
            instance: Some(node_name.into()),
        };
        let (tx, rx) = mpsc::channel(MAX_QUEUED_EVENTS);
        tokio::spawn(publish_all(clients, reporter, rx));
        Self::with_queue(Some(tx))
    }

    /// Writes events to the log only.
    pub fn log_only() -> Self {
        Self::with_queue(None)
    }

    /// A publisher whose queue is `queue` (tests read it themselves).
    pub fn with_queue(queue: Option<mpsc::Sender<(Event, ObjectReference)>>) -> Self {
        Self {
            queue,
            dropped: Arc::default(),
        }
    }

    /// How many events were dropped because [`MAX_QUEUED_EVENTS`] were waiting.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues an event about `regarding`; never waits (a full queue drops it).
    pub fn publish(
        &self,
        type_: EventType,
        reason: &str,
        note: String,
        regarding: ObjectReference,
    ) {
        let Some(queue) = &self.queue else {
            let object = regarding.name.as_deref().unwrap_or_default();
            let field = regarding.field_path.as_deref().unwrap_or_default();
            match type_ {
                EventType::Normal => tracing::info!(object, field, reason, "{note}"),
                EventType::Warning => tracing::warn!(object, field, reason, "{note}"),
            }
            return;
        };
        let event = Event {
            type_,
            reason: reason.into(),
            action: action(reason, &note),
            note: Some(note),
            secondary: None,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send((event, regarding)) {
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

/// Publishes queued events one at a time, in order, through one recorder (made again only when
/// the client is replaced, after a certificate rotation). Events are best effort, as in the
/// kubelet: a lost event never stops a pod.
/// The event's action: its reason and a digest of its note, so that only identical events are
/// folded into one series (see the module docs).
fn action(reason: &str, note: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut digest = std::collections::hash_map::DefaultHasher::new();
    note.hash(&mut digest);
    format!("{reason}-{:08x}", digest.finish() as u32)
}

async fn publish_all(
    mut clients: watch::Receiver<kube::Client>,
    reporter: Reporter,
    mut queue: mpsc::Receiver<(Event, ObjectReference)>,
) {
    let mut recorder = Recorder::new(clients.borrow_and_update().clone(), reporter.clone());
    while let Some((event, reference)) = queue.recv().await {
        if clients.has_changed().unwrap_or(false) {
            recorder = Recorder::new(clients.borrow_and_update().clone(), reporter.clone());
        }
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::debug!(%error, reason = %event.reason, "event not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_queue_holds_at_most_a_thousand_events_and_drops_the_rest() {
        let (tx, mut rx) = mpsc::channel(MAX_QUEUED_EVENTS);
        let events = EventPublisher::with_queue(Some(tx));
        // Nobody publishes: a node cut off from the API server, with chatty pods.
        for i in 0..1500 {
            events.publish(
                EventType::Normal,
                "Started",
                format!("event {i}"),
                ObjectReference::default(),
            );
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
