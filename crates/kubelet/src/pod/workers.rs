//! The pod workers (the kubelet's `podWorkers`): one worker task per pod UID, fed the newest
//! desired state, forgotten when it ends. The tasks are supervised: a worker that panicked is
//! reaped and started again from the newest desired state (its pod's last status tells it where
//! the pod was), so one bad pod never wedges the node's view of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::eviction;
use crate::pod::admission::{self, Rejection};
use crate::pod::known::KnownPods;
use crate::pod::update::PodUpdate;
use crate::pod::worker::{self, Desired, WorkerContext};

/// How often workers that ended or panicked are looked for when no update comes.
const REAP_PERIOD: Duration = Duration::from_secs(1);

/// One pod's worker, as the dispatcher sees it.
struct Entry {
    desired: watch::Sender<Desired>,
    /// Not admitted: its worker only reports the rejection and waits for deletion.
    rejected: bool,
}

/// Dispatches desired pod states to per-pod workers.
pub struct PodWorkers {
    ctx: WorkerContext,
    workers: HashMap<String, Entry>,
    tasks: JoinSet<String>,
    /// Which pod each task runs, to find a panicked one's pod.
    task_pods: HashMap<tokio::task::Id, String>,
    admitting: bool,
    known: KnownPods,
}

impl PodWorkers {
    /// No workers yet.
    pub fn new(ctx: WorkerContext) -> Self {
        Self {
            ctx,
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            task_pods: HashMap::new(),
            admitting: true,
            known: KnownPods::default(),
        }
    }

    /// The pods seen so far, shared (the kubelet API lists them).
    pub fn known_pods(&self) -> KnownPods {
        self.known.clone()
    }

    /// Applies the sources' updates until every source is gone (the node is stopping), then
    /// hands the workers back for a graceful shutdown. Workers that ended are forgotten and
    /// panicked ones restarted at least every [`REAP_PERIOD`], not only when an update comes.
    pub async fn run(mut self, mut updates: mpsc::Receiver<PodUpdate>) -> Self {
        let mut reap = tokio::time::interval(REAP_PERIOD);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                update = updates.recv() => match update {
                    Some(update) => self.apply(update),
                    None => return self,
                },
                _ = reap.tick() => self.reap(),
            }
        }
    }

    /// Applies one update from a source.
    pub fn apply(&mut self, update: PodUpdate) {
        match update {
            PodUpdate::Apply(pod) => self.update(pod),
            PodUpdate::Remove(uid) => self.remove(&uid),
            PodUpdate::Relisted(present) => {
                let gone: Vec<String> = self
                    .workers
                    .keys()
                    .filter(|uid| !present.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.remove(&uid);
                }
            }
        }
    }

    /// The newest spec of a pod bound to this node: starts its worker or updates it.
    fn update(&mut self, pod: Arc<Pod>) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.known.set(pod.clone());
        self.reap();
        if let Some(worker) = self.workers.get(&uid) {
            worker.desired.send_replace(Desired::Run(pod));
            return;
        }
        if !self.admitting {
            return;
        }
        let rejection = self.admit(&pod).err();
        let rejected = rejection.is_some();
        let (tx, rx) = watch::channel(Desired::Run(pod));
        self.spawn(uid.clone(), rx, rejection);
        self.workers.insert(
            uid,
            Entry {
                desired: tx,
                rejected,
            },
        );
    }

    /// Admits a pod new to this process unless it started before (a Krustlet restart) or is
    /// over; counts the other pods that are admitted and not finished.
    fn admit(&self, pod: &Pod) -> Result<(), Rejection> {
        let started = pod
            .status
            .as_ref()
            .is_some_and(|s| s.container_statuses.as_ref().is_some_and(|c| !c.is_empty()));
        if started || !is_active(pod) {
            return Ok(());
        }
        let active: Vec<Arc<Pod>> = self
            .workers
            .values()
            .filter(|entry| !entry.rejected)
            .filter_map(|entry| match &*entry.desired.borrow() {
                Desired::Run(other) if is_active(other) => Some(other.clone()),
                _ => None,
            })
            .collect();
        admission::admit(
            pod,
            active.iter().map(|p| p.as_ref()),
            &self.ctx.services.allocatable,
        )?;
        eviction::admit(pod, self.ctx.evictions.pressure())
    }

    /// A pod is gone from its source.
    fn remove(&mut self, uid: &str) {
        self.known.remove(uid);
        if let Some(worker) = self.workers.get(uid) {
            worker.desired.send_replace(Desired::Removed);
        }
    }

    fn spawn(&mut self, uid: String, rx: watch::Receiver<Desired>, rejection: Option<Rejection>) {
        let ctx = self.ctx.clone();
        let task_uid = uid.clone();
        // Mapped, not wrapped in an `async` block: one would keep the worker's context twice.
        let handle = self
            .tasks
            .spawn(worker::run(ctx, rx, rejection).map(move |()| task_uid));
        self.task_pods.insert(handle.id(), uid);
    }

    /// Forgets workers that ended; starts again one that panicked, from the newest desired
    /// state.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            match done {
                Ok((id, uid)) => {
                    self.task_pods.remove(&id);
                    self.workers.remove(&uid);
                }
                Err(error) => {
                    let Some(uid) = self.task_pods.remove(&error.id()) else {
                        continue;
                    };
                    tracing::error!(pod_uid = %uid, %error, "pod worker panicked; starting it again");
                    let Some(entry) = self.workers.remove(&uid) else {
                        continue;
                    };
                    let desired = entry.desired.borrow().clone();
                    if let Desired::Run(pod) = desired {
                        let (tx, rx) = watch::channel(Desired::Run(pod));
                        self.spawn(uid.clone(), rx, None);
                        self.workers.insert(
                            uid,
                            Entry {
                                desired: tx,
                                rejected: entry.rejected,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Graceful node shutdown: admit nothing new, stop every pod within `grace`, wait for
    /// their final statuses (bounded by `grace` plus a little for the API).
    pub async fn shutdown(&mut self, grace: Duration) {
        self.admitting = false;
        for worker in self.workers.values() {
            worker.desired.send_replace(Desired::NodeShutdown(grace));
        }
        let all = async { while self.tasks.join_next().await.is_some() {} };
        self.task_pods.clear();
        if tokio::time::timeout(grace + Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!("some pods did not finish stopping within the shutdown grace period");
        }
    }
}

/// Not finished and not being deleted: counts against the node's resources.
fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}
