//! The node's event broadcaster (client-go's `tools/record` as the kubelet uses it): one bounded
//! queue and one background publisher for every event the node writes, about pods and about
//! itself, with one [`Series`] memory of what it published.
//!
//! The same event (same object, reason, action, type) repeated within [`SERIES_TTL`] becomes
//! one `events.k8s.io` Event with a growing `series.count` (a patch), not a new object each
//! time, as upstream's `EventCorrelator` aggregates a crash-looping container's `BackOff`
//! events. The key has no note, while upstream's dedupe key has the message (`getEventKey`,
//! client-go `tools/record/events_cache.go`): so the action carries the reason and a digest of
//! the note, and a liveness `Unhealthy` is never folded into an earlier readiness one.
//!
//! kube-runtime's `Recorder` does the same, but keeps every event it published, whole, for its
//! TTL and scans them all at each publish: at 300 sleeping pods its map was 5.9 KiB per pod
//! (heaptrack), and it grows with the pods a node starts in six minutes. [`Series`] keeps what a
//! patch needs, for at most upstream's [`MAX_REMEMBERED`] events.

use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use lru::LruCache;
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
    /// Publishes as `kubelet` on `node_name` with the newest client from `clients`, after the
    /// pod status patches that `status_sending` says are due ([`yield_to_status`]); starts the
    /// background publisher (call within the async runtime).
    pub fn connected(
        clients: watch::Receiver<kube::Client>,
        node_name: &str,
        status_sending: watch::Receiver<bool>,
    ) -> Self {
        let reporter = Reporter {
            controller: "kubelet".into(),
            instance: Some(node_name.into()),
        };
        let (tx, rx) = mpsc::channel(MAX_QUEUED_EVENTS);
        tokio::spawn(publish_all(clients, reporter, rx, status_sending));
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

/// The event's action: its reason and a digest of its note, so that only identical events are
/// folded into one series (see the module docs).
fn action(reason: &str, note: &str) -> String {
    use std::hash::Hasher;
    let mut digest = std::collections::hash_map::DefaultHasher::new();
    note.hash(&mut digest);
    format!("{reason}-{:08x}", digest.finish() as u32)
}

/// How long after an event an identical one is folded into its series (kube-runtime's
/// recorder's TTL; upstream's correlator has no TTL, only its bound).
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// The most published events remembered for folding, the least recently seen forgotten first:
/// upstream's bound (`maxLruCacheEntries`, client-go `tools/record/events_cache.go`).
pub const MAX_REMEMBERED: usize = 4096;

/// What is remembered of a published event: where it is, and its series so far.
struct Published {
    name: String,
    namespace: String,
    count: i32,
    last: Instant,
}

/// How to write the next event.
#[derive(Debug, PartialEq, Eq)]
enum Write {
    /// As a new Event object.
    Create,
    /// As the next of the series of Event `name` in `namespace`, which then counts `count`.
    Patch {
        name: String,
        namespace: String,
        count: i32,
    },
}

/// The events published lately, by a digest of what makes two events the same (64 bits of a
/// keyed hash: a collision would only fold two different events together).
struct Series {
    published: LruCache<u64, Published>,
    keys: std::collections::hash_map::RandomState,
}

impl Series {
    fn new() -> Self {
        Self {
            published: LruCache::new(
                NonZeroUsize::new(MAX_REMEMBERED).unwrap_or(NonZeroUsize::MIN),
            ),
            keys: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The key of `event` about `regarding`: type, reason, action and the object with its
    /// field path, as upstream's `getEventKey` (the reporter is the same for every event of a
    /// node). Not the object's resource version, which every status patch changes.
    fn key(&self, event: &Event, regarding: &ObjectReference) -> u64 {
        let r = regarding;
        self.keys.hash_one((
            matches!(event.type_, EventType::Warning),
            &event.reason,
            &event.action,
            (&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid),
            &r.field_path,
        ))
    }

    /// How to write the event of `key` at `now`: a patch of the series of an identical one
    /// seen within [`SERIES_TTL`] (counted here), else a new object.
    fn next(&mut self, key: u64, now: Instant) -> Write {
        match self.published.get_mut(&key) {
            Some(p) if now.saturating_duration_since(p.last) < SERIES_TTL => {
                p.count = p.count.saturating_add(1);
                p.last = now;
                Write::Patch {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    count: p.count,
                }
            }
            _ => Write::Create,
        }
    }

    /// Remembers the event of `key`, created at `now` as `name` in `namespace`.
    fn created(&mut self, key: u64, name: String, namespace: String, now: Instant) {
        self.published.put(
            key,
            Published {
                name,
                namespace,
                count: 1,
                last: now,
            },
        );
    }
}

/// Publishes queued events one at a time, in order, with the newest client (replaced after a
/// certificate rotation). Events are best effort, as in the kubelet: a lost event never stops
/// a pod.
async fn publish_all(
    mut clients: watch::Receiver<kube::Client>,
    reporter: Reporter,
    mut queue: mpsc::Receiver<(Event, ObjectReference)>,
    mut status_sending: watch::Receiver<bool>,
) {
    let mut series = Series::new();
    while let Some(first) = queue.recv().await {
        // A container's Pulled event comes a moment before the Running status it leads to:
        // gathered, it no longer goes ahead of that status either (serial starts A/B, three
        // runs each, interleaved: 1.21-1.31x the floor's p50 with, 1.42-1.43x without).
        tokio::time::sleep(GATHER).await;
        // Once per batch, not per event: under churn statuses are almost always due, and
        // events must still keep up.
        yield_to_status(&mut status_sending).await;
        let mut next = Some(first);
        while let Some((event, reference)) = next.take() {
            let client = clients.borrow_and_update().clone();
            if let Err(error) = write(&client, &reporter, &mut series, &event, &reference).await {
                tracing::debug!(%error, reason = %event.reason, "event not recorded");
            }
            next = queue.try_recv().ok();
        }
    }
}

/// How long the publisher gathers events before it writes a batch.
pub const GATHER: Duration = Duration::from_millis(5);

/// The longest an event waits for pod status patches to go first.
pub const YIELD_AT_MOST: Duration = Duration::from_millis(100);

/// Waits, at most [`YIELD_AT_MOST`], while a pod status patch is due or in flight.
///
/// A starting pod's Pulled, Created and Started events are queued as its Running status is:
/// written at once, they held the node's HTTP/1.1 connections to the API server and its time
/// while the status patch went out (20 serial pods on a 2-core machine: the patch took 3-7 ms
/// at the API server beside them, and `strace` showed it waiting 4.4 ms for a connection).
/// Who watches the pod sees Running sooner, and the events come a few ms later. Upstream's
/// kubelet writes events from a broadcaster of their own over HTTP/2, which kube-client lacks.
async fn yield_to_status(sending: &mut watch::Receiver<bool>) {
    // A gone status manager (`Err`) holds nothing back.
    let _ = tokio::time::timeout(YIELD_AT_MOST, sending.wait_for(|due| !due)).await;
}

/// Writes `event` about `regarding`: a patch of its series, or a new Event (also when the one
/// to patch is gone: the API server expires events after an hour).
async fn write(
    client: &kube::Client,
    reporter: &Reporter,
    series: &mut Series,
    event: &Event,
    regarding: &ObjectReference,
) -> Result<(), kube::Error> {
    let key = series.key(event, regarding);
    let now = Instant::now();
    let time = MicroTime(jiff::Timestamp::now());
    if let Write::Patch {
        name,
        namespace,
        count,
    } = series.next(key, now)
    {
        let patch = serde_json::json!({
            "series": EventSeries { count, last_observed_time: time.clone() }
        });
        let events: Api<K8sEvent> = Api::namespaced(client.clone(), &namespace);
        match events
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            done => return done.map(drop),
        }
    }
    let namespace = regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = format!(
        "{}.{:x}",
        regarding.name.as_deref().unwrap_or(&reporter.controller),
        time.0.as_nanosecond()
    );
    let object = K8sEvent {
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        event_time: Some(time),
        regarding: Some(regarding.clone()),
        note: event.note.clone(),
        metadata: ObjectMeta {
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
            ..Default::default()
        },
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        related: event.secondary.clone(),
        ..Default::default()
    };
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &namespace);
    events.create(&PostParams::default(), &object).await?;
    series.created(key, name, namespace, now);
    Ok(())
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

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: reason.into(),
            action: action(reason, note),
            note: Some(note.into()),
            secondary: None,
        }
    }

    fn about(pod: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("ns".into()),
            name: Some(pod.into()),
            uid: Some(format!("uid-{pod}")),
            ..Default::default()
        }
    }

    #[test]
    fn identical_events_fold_into_a_series_within_the_ttl_and_others_do_not() {
        let mut series = Series::new();
        let t0 = Instant::now();
        let backoff = series.key(&event("BackOff", "Back-off restarting"), &about("a"));
        assert_eq!(series.next(backoff, t0), Write::Create);
        series.created(backoff, "a.1".into(), "ns".into(), t0);
        let patch = |count| Write::Patch {
            name: "a.1".into(),
            namespace: "ns".into(),
            count,
        };
        assert_eq!(series.next(backoff, t0 + Duration::from_secs(10)), patch(2));
        // The TTL counts from the last one seen.
        assert_eq!(series.next(backoff, t0 + SERIES_TTL), patch(3));
        // A newer version of the same pod is the same object.
        let newer = ObjectReference {
            resource_version: Some("2".into()),
            ..about("a")
        };
        let again = series.key(&event("BackOff", "Back-off restarting"), &newer);
        assert_eq!(again, backoff);
        // Another note, pod, container or reason is another event.
        let container = ObjectReference {
            field_path: Some("spec.containers{main}".into()),
            ..about("a")
        };
        for other in [
            series.key(&event("BackOff", "Back-off restarting"), &container),
            series.key(&event("BackOff", "another note"), &about("a")),
            series.key(&event("BackOff", "Back-off restarting"), &about("b")),
            series.key(&event("Unhealthy", "Back-off restarting"), &about("a")),
        ] {
            assert_ne!(other, backoff);
        }
        // Quiet for a whole TTL: a new object.
        let later = t0 + SERIES_TTL + SERIES_TTL;
        assert_eq!(series.next(backoff, later), Write::Create);
    }

    #[test]
    fn at_most_upstreams_bound_of_events_is_remembered() {
        let mut series = Series::new();
        let now = Instant::now();
        for i in 0..MAX_REMEMBERED + 100 {
            let key = series.key(
                &event("Started", "Started container"),
                &about(&i.to_string()),
            );
            series.created(key, format!("{i}.1"), "ns".into(), now);
        }
        assert_eq!(series.published.len(), MAX_REMEMBERED);
        // The first ones seen went first.
        let first = series.key(&event("Started", "Started container"), &about("0"));
        assert_eq!(series.next(first, now), Write::Create);
        let last = series.key(
            &event("Started", "Started container"),
            &about(&(MAX_REMEMBERED + 99).to_string()),
        );
        assert!(matches!(
            series.next(last, now),
            Write::Patch { count: 2, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn events_wait_for_a_due_status_but_never_longer_than_the_bound() {
        let (sending, mut rx) = watch::channel(false);
        let started = tokio::time::Instant::now();
        yield_to_status(&mut rx).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "no status is due");

        sending.send_replace(true);
        let done = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(7)).await;
            sending.send_replace(false);
            sending
        });
        yield_to_status(&mut rx).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(7),
            "until it is sent"
        );

        let sending = done.await.expect("the sender");
        sending.send_replace(true);
        let stuck = tokio::time::Instant::now();
        yield_to_status(&mut rx).await;
        assert_eq!(
            stuck.elapsed(),
            YIELD_AT_MOST,
            "an API server that never answers"
        );
        drop(sending);
        yield_to_status(&mut rx).await;
        assert_eq!(
            stuck.elapsed(),
            YIELD_AT_MOST,
            "a gone status manager holds nothing"
        );
    }
}
