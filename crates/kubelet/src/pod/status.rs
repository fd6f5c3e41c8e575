//! The pod status manager (the kubelet's `status_manager.go`): the one writer of pod status.
//!
//! Workers hand it the status they computed; it keeps the newest per pod, sends a patch of the
//! status subresource only when that differs from what was last sent, and sends patches from
//! one background task. A new pod's first status waits up to [`FIRST_STATUS_HOLD`] while the
//! pod is still Pending, so a pod whose containers start at once costs one patch (Running)
//! instead of two (Pending, then Running) and reaches Running sooner. Patches carry the pod's
//! UID, so a status never lands on a newer pod of the same name. In standalone mode the sink
//! is a directory of status files instead ([`StatusSink::Files`]), which `krustlet pods` reads
//! from another process.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Which pod a status belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl PodKey {
    /// The key of `pod`.
    pub fn of(pod: &Pod) -> Self {
        Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Static pod UID -> its mirror pod's UID, for the status manager; cheap to clone.
#[derive(Clone, Default)]
pub struct MirrorUids(Arc<RwLock<HashMap<String, String>>>);

impl MirrorUids {
    /// The UID to patch the status of the pod with `uid` onto: its mirror's, if it has one.
    pub fn translate(&self, uid: &str) -> String {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    pub(crate) fn set(&self, static_uid: &str, mirror_uid: &str) -> bool {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        map.insert(static_uid.into(), mirror_uid.into()).as_deref() != Some(mirror_uid)
    }

    pub(crate) fn remove_mirror(&self, mirror_uid: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, m| m != mirror_uid);
    }
}

/// How long a new pod's first status waits while the pod is Pending (see the module doc).
///
/// Upstream's status manager sends each change at once (`updateStatusInternal`), so a pod
/// starting from a cached image costs it two patches in a row; the second then waits for the
/// first on a busy API server. The hold is short next to any image pull, so a slow start still
/// shows `ContainerCreating` right away to a person watching.
pub const FIRST_STATUS_HOLD: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Entry {
    // Shared, not copied: once a status is sent, `latest` and `sent` are the same allocation
    // (heaptrack at 300 sleeping pods: a pod's status is about 3 KiB). Behind a pointer too,
    // as the map's empty slots are as large as its entries' inline parts.
    latest: Option<Arc<PodStatus>>,
    sent: Option<Arc<PodStatus>>,
    generation: u64,
    sent_generation: u64,
    /// Until when the first status waits ([`FIRST_STATUS_HOLD`]).
    hold_until: Option<Instant>,
    /// In [`State::due`].
    queued: bool,
    /// Being sent: a newer status waits for that patch, so patches of a pod never cross.
    in_flight: bool,
    /// The generation of the last [`StatusManager::resend`]: a patch of an older one went to
    /// the old target, so it does not count as sent.
    resent_generation: u64,
}

impl Entry {
    /// Whether the newest status is due to be sent at `now`.
    fn due(&self, now: Instant) -> bool {
        self.sent_generation < self.generation && self.hold_until.is_none_or(|at| at <= now)
    }
}

/// Whether `status` says Pending (or no phase yet).
fn pending(status: &PodStatus) -> bool {
    status.phase.as_deref().is_none_or(|p| p == "Pending")
}

/// Where pod statuses go.
#[derive(Clone)]
pub enum StatusSink {
    /// The status subresource of the pod in the API server, with the newest client; static
    /// pods' statuses go to their mirror pods.
    Api(watch::Receiver<kube::Client>, MirrorUids),
    /// Standalone mode: one `<namespace>_<name>_<uid>.json` per pod in this directory, a Pod
    /// with metadata and status; removed when the pod is forgotten.
    Files(PathBuf),
}

/// The result of sending one status.
enum Sent {
    Ok,
    /// The pod is gone (404, or a newer pod of that name): nothing more to send.
    Gone,
    Failed(String),
}

impl StatusSink {
    async fn send(&self, key: &PodKey, status: &PodStatus) -> Sent {
        match self {
            Self::Api(clients, mirrors) => {
                let client = clients.borrow().clone();
                let target = PodKey {
                    uid: mirrors.translate(&key.uid),
                    ..key.clone()
                };
                match patch(&client, &target, status).await {
                    Ok(()) => Sent::Ok,
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Sent::Gone,
                    Err(error) => Sent::Failed(error.to_string()),
                }
            }
            Self::Files(dir) => match crate::blocking::fs(|| write_status_file(dir, key, status)) {
                Ok(()) => Sent::Ok,
                Err(error) => Sent::Failed(format!("writing {}: {error}", dir.display())),
            },
        }
    }

    fn forget(&self, key: &PodKey) {
        if let Self::Files(dir) = self {
            let _ = crate::blocking::fs(|| std::fs::remove_file(status_file(dir, key)));
        }
    }
}

/// The status file of a pod in standalone mode.
pub fn status_file(dir: &Path, key: &PodKey) -> PathBuf {
    dir.join(format!("{}_{}_{}.json", key.namespace, key.name, key.uid))
}

/// Writes the file whole (temporary file, then rename), so readers never see half of it.
fn write_status_file(dir: &Path, key: &PodKey, status: &PodStatus) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let pod = Pod {
        metadata: ObjectMeta {
            namespace: Some(key.namespace.clone()),
            name: Some(key.name.clone()),
            uid: Some(key.uid.clone()),
            ..Default::default()
        },
        status: Some(status.clone()),
        ..Default::default()
    };
    let path = status_file(dir, key);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&pod).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// What the manager knows of every pod, behind one lock.
#[derive(Default)]
struct State {
    entries: HashMap<PodKey, Entry>,
    /// Pods whose newest status is due, oldest first, each at most once ([`Entry::queued`]):
    /// the sender takes from the front and never scans every pod.
    due: VecDeque<PodKey>,
    /// Pods whose first status is held, by when the hold ends (every hold is equally long,
    /// so the ends are in order).
    held: VecDeque<(Instant, PodKey)>,
    /// Pods forgotten since the sender last looked, for the sink to drop.
    forgotten: Vec<PodKey>,
}

impl State {
    /// Queues the pod's newest status if it is due and neither queued nor being sent.
    fn enqueue(&mut self, key: &PodKey, now: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        if entry.queued || entry.in_flight || !entry.due(now) {
            return false;
        }
        entry.queued = true;
        self.due.push_back(key.clone());
        true
    }

    /// Queues the statuses whose hold has ended.
    fn release_holds(&mut self, now: Instant) {
        while self.held.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, key)) = self.held.pop_front() {
                self.enqueue(&key, now);
            }
        }
    }

    /// The next status to send, marked in flight; statuses equal to the one last sent are
    /// marked sent on the way (`true` in the second field if any was).
    fn take_due(&mut self, now: Instant) -> (Option<(PodKey, Arc<PodStatus>, u64)>, bool) {
        let mut settled = false;
        while let Some(key) = self.due.pop_front() {
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            entry.queued = false;
            if entry.in_flight || !entry.due(now) {
                continue;
            }
            let Some(latest) = entry.latest.clone() else {
                continue;
            };
            if entry.sent.as_deref() == Some(&*latest) {
                entry.sent_generation = entry.generation;
                settled = true;
                continue;
            }
            entry.in_flight = true;
            return (Some((key, latest, entry.generation)), settled);
        }
        (None, settled)
    }

    /// Records how sending `status` (the pod's `generation`) went; `false` if it failed.
    fn sent(
        &mut self,
        key: &PodKey,
        status: Arc<PodStatus>,
        generation: u64,
        result: Sent,
    ) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return true;
        };
        entry.in_flight = false;
        let ok = match result {
            Sent::Ok => {
                if generation >= entry.resent_generation {
                    entry.sent = Some(status);
                }
                entry.sent_generation = entry.sent_generation.max(generation);
                true
            }
            // Up to this patch's status only: one recorded since (a `resend` to a mirror pod
            // that appeared while the patch to the static pod's own UID was failing) is
            // still due.
            Sent::Gone => {
                entry.sent_generation = entry.sent_generation.max(generation);
                true
            }
            Sent::Failed(error) => {
                tracing::warn!(pod = %key, %error, "pod status patch failed; retrying");
                false
            }
        };
        // A status recorded while this one was in flight, or this one again if it failed.
        self.enqueue(key, Instant::now());
        ok
    }
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    dirty: Notify,
    // Bumped after every patch, for `flush`.
    progress: watch::Sender<u64>,
    // Whether a status is due or being sent ([`StatusManager::sending`]).
    sending: watch::Sender<bool>,
}

/// Handle to the status manager; cheap to clone.
#[derive(Clone, Default)]
pub struct StatusManager {
    inner: Arc<Inner>,
}

/// How many status patches may be in flight at once.
const CONCURRENT_PATCHES: usize = 8;

impl StatusManager {
    /// A manager; call [`Self::run`] to start sending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the newest status of a pod; it is sent soon if it changed.
    pub fn set(&self, key: &PodKey, status: PodStatus) {
        let now = Instant::now();
        let mut state = self.state();
        let entry = state.entries.entry(key.clone()).or_default();
        if entry.latest.as_deref() == Some(&status) {
            return;
        }
        let mut held = None;
        if !pending(&status) {
            entry.hold_until = None;
        } else if entry.latest.is_none() && entry.sent.is_none() {
            held = Some(now + FIRST_STATUS_HOLD);
            entry.hold_until = held;
        }
        entry.latest = Some(Arc::new(status));
        entry.generation += 1;
        let due = entry.hold_until.is_none();
        if let Some(at) = held {
            state.held.push_back((at, key.clone()));
        }
        let queued = state.enqueue(key, now);
        drop(state);
        if due {
            self.mark_sending(true);
        }
        if queued || held.is_some() {
            self.inner.dirty.notify_one();
        }
    }

    /// Whether a status patch is due or in flight. The event publisher lets them go first
    /// (`events.rs`): a pod's Created and Started events, written as its Running status is
    /// sent, made that patch wait for them at the API server.
    pub fn sending(&self) -> watch::Receiver<bool> {
        self.inner.sending.subscribe()
    }

    fn mark_sending(&self, sending: bool) {
        self.inner
            .sending
            .send_if_modified(|now| std::mem::replace(now, sending) != sending);
    }

    /// Sends the newest status of a pod again even if unchanged (its target changed: a new
    /// mirror pod).
    pub fn resend(&self, key: &PodKey) {
        let mut state = self.state();
        if let Some(entry) = state.entries.get_mut(key) {
            entry.sent = None;
            entry.hold_until = None;
            entry.generation += 1;
            entry.resent_generation = entry.generation;
        }
        state.enqueue(key, Instant::now());
        drop(state);
        self.inner.dirty.notify_one();
    }

    /// The newest status recorded for a pod.
    pub fn get(&self, key: &PodKey) -> Option<PodStatus> {
        let state = self.state();
        state
            .entries
            .get(key)
            .and_then(|e| e.latest.as_deref().cloned())
    }

    /// Stops tracking a pod (it is gone from the API).
    pub fn forget(&self, key: &PodKey) {
        let mut state = self.state();
        state.entries.remove(key);
        state.forgotten.push(key.clone());
        drop(state);
        self.inner.dirty.notify_one();
    }

    /// Waits until the newest status of `key` has been sent (or found unchanged).
    pub async fn flush(&self, key: &PodKey) {
        let mut progress = self.inner.progress.subscribe();
        loop {
            let done = self
                .state()
                .entries
                .get(key)
                .is_none_or(|e| e.sent_generation >= e.generation);
            if done || progress.changed().await.is_err() {
                return;
            }
        }
    }

    /// Sends changed statuses to `sink` until the process ends, at most
    /// [`CONCURRENT_PATCHES`] at once and one per pod at a time. A failed patch is retried
    /// with back-off (a 404 or UID conflict means the pod is gone: dropped, never retried).
    pub async fn run(self, sink: StatusSink) {
        let mut sends = FuturesUnordered::new();
        // After a failed patch no new one starts for a while (1 s doubling to 30 s), so an
        // API server that is away is not hammered; a patch that goes through resets it.
        let mut retry = Duration::from_secs(1);
        let mut paused_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if paused_until.is_some_and(|at| at <= now) {
                paused_until = None;
            }
            let (forgotten, settled, sending, wake) = {
                let mut state = self.state();
                state.release_holds(now);
                let mut settled = false;
                while paused_until.is_none() && sends.len() < CONCURRENT_PATCHES {
                    let (next, some_settled) = state.take_due(now);
                    settled |= some_settled;
                    let Some((key, status, generation)) = next else {
                        break;
                    };
                    sends.push(send(&sink, key, status, generation));
                }
                let sending =
                    !sends.is_empty() || (paused_until.is_none() && !state.due.is_empty());
                let hold = state.held.front().map(|(at, _)| *at);
                let wake = match (hold, paused_until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                (std::mem::take(&mut state.forgotten), settled, sending, wake)
            };
            for key in forgotten {
                sink.forget(&key);
            }
            if settled {
                self.inner.progress.send_modify(|n| *n += 1);
            }
            // Not sending while paused: events need not wait for an API server that refuses
            // statuses.
            self.mark_sending(sending);
            tokio::select! {
                Some((key, status, generation, result)) = sends.next(), if !sends.is_empty() => {
                    if self.state().sent(&key, status, generation, result) {
                        retry = Duration::from_secs(1);
                    } else {
                        paused_until = Some(Instant::now() + retry);
                        retry = (retry * 2).min(Duration::from_secs(30));
                    }
                    self.inner.progress.send_modify(|n| *n += 1);
                }
                () = self.inner.dirty.notified() => {}
                () = sleep_until_some(wake) => {}
            }
        }
    }

    /// The manager's state, locked (a panic while it was held leaves it usable).
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends one status; what came of it, with what was sent.
async fn send(
    sink: &StatusSink,
    key: PodKey,
    status: Arc<PodStatus>,
    generation: u64,
) -> (PodKey, Arc<PodStatus>, u64, Sent) {
    let result = sink.send(&key, &status).await;
    (key, status, generation, result)
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn patch(client: &kube::Client, key: &PodKey, status: &PodStatus) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
    let mut status = serde_json::to_value(status).unwrap_or_default();
    // Conditions merge by type: a field we no longer set must be sent as null to be cleared.
    for condition in status["conditions"].as_array_mut().into_iter().flatten() {
        for field in ["reason", "message"] {
            if condition.get(field).is_none() {
                condition[field] = serde_json::Value::Null;
            }
        }
    }
    // The UID makes the API server refuse the patch for a different pod of the same name.
    let body = serde_json::json!({"metadata": {"uid": key.uid}, "status": status});
    api.patch_status(&key.name, &PatchParams::default(), &Patch::Strategic(&body))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PodKey {
        PodKey {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
        }
    }

    fn status(phase: &str, message: Option<&str>) -> PodStatus {
        PodStatus {
            phase: Some(phase.into()),
            message: message.map(Into::into),
            ..Default::default()
        }
    }

    /// The phase in the status file, if one was written.
    fn written(dir: &Path) -> Option<String> {
        let bytes = std::fs::read(status_file(dir, &key())).ok()?;
        let pod: Pod = serde_json::from_slice(&bytes).expect("status file");
        pod.status?.phase
    }

    fn manager_writing_to(dir: &Path) -> StatusManager {
        let manager = StatusManager::new();
        tokio::spawn(manager.clone().run(StatusSink::Files(dir.into())));
        manager
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_starts_at_once_is_reported_once_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let manager = manager_writing_to(dir.path());
        manager.set(&key(), status("Pending", None));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            written(dir.path()),
            None,
            "the first Pending status is held"
        );
        manager.set(&key(), status("Running", None));
        let asked = Instant::now();
        manager.flush(&key()).await;
        assert_eq!(written(dir.path()).as_deref(), Some("Running"));
        assert!(
            asked.elapsed() < Duration::from_millis(1),
            "Running is not held"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sending_is_told_while_a_status_is_due_and_not_while_one_is_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let manager = manager_writing_to(dir.path());
        let mut sending = manager.sending();
        manager.set(&key(), status("Pending", None));
        assert!(
            !*sending.borrow_and_update(),
            "a held status is not being sent"
        );
        manager.set(&key(), status("Running", None));
        assert!(*sending.borrow_and_update(), "Running is due at once");
        manager.flush(&key()).await;
        sending.wait_for(|s| !s).await.expect("the manager runs");
        assert_eq!(written(dir.path()).as_deref(), Some("Running"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_still_pending_after_the_hold_is_reported_pending_and_later_changes_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let manager = manager_writing_to(dir.path());
        manager.set(&key(), status("Pending", None));
        tokio::time::sleep(FIRST_STATUS_HOLD - Duration::from_millis(1)).await;
        assert_eq!(written(dir.path()), None);
        tokio::time::sleep(Duration::from_millis(2)).await;
        manager.flush(&key()).await;
        assert_eq!(written(dir.path()).as_deref(), Some("Pending"));

        manager.set(&key(), status("Pending", Some("pulling")));
        let asked = Instant::now();
        manager.flush(&key()).await;
        assert!(
            asked.elapsed() < Duration::from_millis(1),
            "only a pod's first status is held"
        );
    }

    fn other() -> PodKey {
        PodKey {
            name: "q".into(),
            uid: "v".into(),
            ..key()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_recorded_while_its_pods_patch_is_in_flight_goes_after_that_patch() {
        let manager = StatusManager::new();
        let now = Instant::now();
        manager.set(&key(), status("Running", None));
        manager.set(&other(), status("Running", None));
        let (first, _) = manager.state().take_due(now);
        let (first_key, first_status, first_generation) = first.expect("due");
        assert_eq!(first_key, key(), "oldest first");
        // The pod changes while its Running patch is in flight: not sent alongside it.
        manager.set(&key(), status("Succeeded", None));
        let (next, _) = manager.state().take_due(now);
        assert_eq!(next.map(|(k, _, _)| k), Some(other()));
        assert!(manager.state().take_due(now).0.is_none());
        // Once the patch is done, the newer status is due.
        assert!(
            manager
                .state()
                .sent(&key(), first_status, first_generation, Sent::Ok)
        );
        let (again, _) = manager.state().take_due(now);
        let (again_key, again_status, _) = again.expect("the newer status is due");
        assert_eq!(again_key, key());
        assert_eq!(again_status.phase.as_deref(), Some("Succeeded"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_patch_is_retried_after_a_back_off_and_events_are_not_held_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A file where the status directory should be: every write fails.
        let blocked = dir.path().join("statuses");
        std::fs::write(&blocked, "").expect("file");
        let manager = StatusManager::new();
        tokio::spawn(manager.clone().run(StatusSink::Files(blocked.clone())));
        let mut sending = manager.sending();
        manager.set(&key(), status("Running", None));
        tokio::time::timeout(Duration::from_millis(10), sending.wait_for(|s| !s))
            .await
            .expect("a refused status does not hold events back")
            .expect("the manager runs");
        std::fs::remove_file(&blocked).expect("unblock");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(written(&blocked), None, "not retried before the back-off");
        let asked = Instant::now();
        manager.flush(&key()).await;
        assert_eq!(written(&blocked).as_deref(), Some("Running"));
        assert!(
            asked.elapsed() <= Duration::from_millis(501),
            "retried after 1 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_resend_while_the_same_status_is_in_flight_is_sent_again() {
        let manager = StatusManager::new();
        let now = Instant::now();
        manager.set(&key(), status("Running", None));
        let (first, _) = manager.state().take_due(now);
        let (_, first_status, first_generation) = first.expect("due");
        // A mirror pod appears while the patch to the old target is in flight.
        manager.resend(&key());
        assert!(
            manager
                .state()
                .sent(&key(), first_status, first_generation, Sent::Ok)
        );
        let (again, _) = manager.state().take_due(now);
        assert_eq!(
            again.map(|(k, s, _)| (k, s.phase.clone())),
            Some((key(), Some("Running".into()))),
            "the unchanged status goes to the new target"
        );
    }
}
