//! One pod's worker (the kubelet's `pod_workers.go` + `syncPod`), as one task that drives the
//! pod's [`lifecycle`] state machine.
//!
//! The worker owns the desired-state receiver and turns everything that happens into
//! [`Input`]s: setup finishing, container runners reporting and ending, the desired state
//! changing (deletion, removal, node shutdown, a new container image), eviction, the
//! `activeDeadlineSeconds` timer. [`lifecycle::transition`] says what comes next; the worker
//! carries out its [`Action`]s (start init containers or apps, stop regular containers or
//! sidecars, finish). Container runners report `ContainerStatus`es; the worker turns them into
//! the pod status and hands that to the status manager, the one writer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, HostIP, Pod, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Preconditions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::container::runner::{CurrentPod, Kind, NodeServices, Runner, StatusReport};
use crate::container::{config_watch, resize};
use crate::eviction::{Eviction, Evictions};
use crate::log::pod_log_dir;
use crate::network::{PodNetwork, SandboxSpec};
use crate::pod::admission::Rejection;
use crate::pod::api::ApiLink;
use crate::pod::lifecycle::{self, Action, Cause, InitKind, Input, PodState, StopStep};
use crate::pod::phase;
use crate::pod::restart::{RestartPolicy, RestartRules, Resume, resume};
use crate::pod::status::{PodKey, StatusManager};
use crate::pod::{runtime_class, unsupported};
use crate::runtime::Termination;
use crate::volume;

/// How soon volume setup is retried after a failure other than a missing ConfigMap or Secret
/// (those are watched): an unbound claim, a hostPath not there yet.
const VOLUME_RETRY: Duration = Duration::from_secs(3);
/// How often a running pod's volumes are refreshed (the kubelet's sync period is about a minute).
const VOLUME_RESYNC: Duration = Duration::from_secs(30);
/// The first retry of a sandbox (pod network) that could not be created; it doubles up to
/// [`SANDBOX_RETRY_MAX`], upstream's pod worker back-off period (`backOffPeriod`, 10 s).
const SANDBOX_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between sandbox attempts.
const SANDBOX_RETRY_MAX: Duration = Duration::from_secs(10);

/// What the kubelet wants for a pod.
#[derive(Debug, Clone)]
pub enum Desired {
    /// Run it as specified (a set `deletionTimestamp` means: terminate gracefully).
    Run(Arc<Pod>),
    /// It is gone from the API server: stop at once and forget it.
    Removed,
    /// The node is shutting down: stop within this grace period.
    NodeShutdown(Duration),
}

/// Where a worker keeps a pod's files.
#[derive(Debug, Clone)]
pub struct PodDirs {
    /// `<data-dir>/pods`: one directory per pod UID (volumes).
    pub pods: PathBuf,
    /// The CRI log root (`log::pods_log_root`).
    pub logs: PathBuf,
}

/// Everything a worker shares with the others.
#[derive(Clone)]
pub struct WorkerContext {
    /// Node services for container runners (shared by every worker and runner).
    pub services: Arc<NodeServices>,
    /// The status manager.
    pub status: StatusManager,
    /// Directories.
    pub dirs: PodDirs,
    /// Where the eviction manager reaches workers.
    pub evictions: Evictions,
}

/// How setup ended.
enum Setup {
    /// Volumes and the pod's network are ready.
    Ready,
    /// The desired state changed to one that stops the pod first.
    Superseded,
    /// The pod workers are gone (the process is exiting): stop, report nothing.
    Abandoned,
}

/// Runs one pod until it is deleted or the node shuts down; a pod with a `rejection` from
/// admission never starts: it is reported Failed and waits for deletion.
///
/// Not an `async fn`: the returned future is the worker's own, which keeps the worker once
/// (an `async fn` would keep the context it was given beside the worker made from it).
pub fn run(
    ctx: WorkerContext,
    mut desired: watch::Receiver<Desired>,
    rejection: Option<Rejection>,
) -> impl Future<Output = ()> + Send + 'static {
    let Desired::Run(pod) = desired.borrow_and_update().clone() else {
        return futures::future::Either::Left(std::future::ready(()));
    };
    let key = PodKey::of(&pod);
    let eviction = ctx.evictions.subscribe(&key.uid);
    let worker = Worker::new(ctx, pod, key, desired.clone());
    futures::future::Either::Right(worker.run(desired, eviction, rejection))
}

/// A container runner in flight.
struct Running {
    /// Its stop request channel.
    stop: watch::Sender<Option<Duration>>,
    /// Its role.
    kind: Kind,
    /// Its index among the init containers (sidecars, init containers).
    index: usize,
    /// The spec it runs (with its resources as resized), shared with its runner until one of
    /// them changes.
    container: Arc<Container>,
    /// Its resources, resized in place.
    allocated: resize::Allocated,
}

struct Worker {
    ctx: WorkerContext,
    pod: Arc<Pod>,
    /// `pod`, as the runners read it.
    current: CurrentPod,
    key: PodKey,
    state: PodState,
    inits: Vec<InitKind>,
    /// Boxed: a map allocates several slots at its first insert, and a status is large.
    statuses: HashMap<String, Box<ContainerStatus>>,
    /// The statuses the pod had when this worker started (a restarted Krustlet resumes them).
    initial: HashMap<String, ContainerStatus>,
    start_time: Time,
    runners: JoinSet<(String, Option<Termination>)>,
    running: HashMap<String, Running>,
    /// App containers done for good.
    finished_apps: HashSet<String>,
    /// A resize that is pending or failed: condition type, reason, message.
    resize: Option<(&'static str, &'static str, String)>,
    /// Containers stopped because their definition changed; they start again when stopped.
    restarting: HashSet<String>,
    updates_tx: mpsc::UnboundedSender<StatusReport>,
    updates: mpsc::UnboundedReceiver<StatusReport>,
    volumes: Arc<crate::volume::VolumeMap>,
    /// When this worker first saw the pod, for `kubelet_pod_start_duration_seconds`.
    seen: Instant,
    start_observed: bool,
    apps_started: bool,
    queue: VecDeque<Input>,
    /// The first cause that failed the pod (eviction, deadline, rejection, shutdown): its
    /// reason stays on the status through a later deletion.
    failure: Option<Cause>,
    /// Ephemeral containers already started (or found done): each runs at most once.
    ephemeral_seen: HashSet<String>,
    /// The pod's network, once its sandbox is set up; `None` again after teardown.
    network: Option<Arc<dyn PodNetwork>>,
    /// The pod's IPs as last known (`status.podIPs`): from the network once set up, kept
    /// after teardown as upstream keeps them on a terminated pod; before that, the pod's
    /// previous status (a restarted Krustlet).
    pod_ips: Vec<String>,
    /// The desired state as it is now (read without marking it seen): whether the pod is
    /// already gone from the API server.
    latest: watch::Receiver<Desired>,
}

impl Worker {
    fn new(
        ctx: WorkerContext,
        pod: Arc<Pod>,
        key: PodKey,
        latest: watch::Receiver<Desired>,
    ) -> Self {
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let previous = pod.status.clone().unwrap_or_default();
        let initial: HashMap<String, ContainerStatus> = previous
            .init_container_statuses
            .iter()
            .flatten()
            .chain(previous.container_statuses.iter().flatten())
            .chain(previous.ephemeral_container_statuses.iter().flatten())
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let inits = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .map(|c| {
                if c.restart_policy.as_deref() == Some("Always") {
                    InitKind::Sidecar
                } else {
                    InitKind::Regular
                }
            })
            .collect();
        Self {
            ctx,
            start_time: previous
                .start_time
                .unwrap_or_else(|| Time(jiff::Timestamp::now())),
            current: CurrentPod::new(pod.clone()),
            pod,
            key,
            state: PodState::Preparing,
            inits,
            statuses: initial
                .iter()
                .map(|(name, status)| (name.clone(), Box::new(status.clone())))
                .collect(),
            initial,
            runners: JoinSet::new(),
            running: HashMap::new(),
            finished_apps: HashSet::new(),
            restarting: HashSet::new(),
            resize: None,
            updates_tx,
            updates,
            volumes: Arc::default(),
            seen: Instant::now(),
            start_observed: false,
            apps_started: false,
            queue: VecDeque::new(),
            failure: None,
            ephemeral_seen: HashSet::new(),
            network: None,
            pod_ips: previous
                .pod_ips
                .iter()
                .flatten()
                .map(|ip| ip.ip.clone())
                .filter(|ip| !ip.is_empty())
                .collect(),
            latest,
        }
    }

    /// Whether the pod is gone from the API server, or going without the node's help: a
    /// deletion with no grace period (`--force`, or any delete of a finished pod) and no
    /// finalizers, which the API server carries out itself right after it sets the deletion
    /// timestamp (`updateForGracefulDeletionAndFinalizers`: grace 0 deletes immediately), so
    /// the watch delivers the timestamp and the removal back to back. Then neither a final
    /// status nor a delete can land, and each would be a wasted write (a 404); upstream's
    /// status manager finds the pod gone with a read and writes nothing (`syncPod`). A pod
    /// with finalizers stays until they are removed, so its final status still matters (the
    /// Job controller reads it).
    fn gone_from_api(&self) -> bool {
        let meta = &self.pod.metadata;
        matches!(*self.latest.borrow(), Desired::Removed)
            || (meta.deletion_grace_period_seconds == Some(0)
                && meta.finalizers.as_ref().is_none_or(Vec::is_empty))
    }

    fn spec_containers(&self) -> (Vec<Container>, Vec<Container>) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        (spec.init_containers.unwrap_or_default(), spec.containers)
    }

    fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy::parse(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.as_deref()),
        )
    }

    fn pod_dir(&self) -> PathBuf {
        self.ctx.dirs.pods.join(&self.key.uid)
    }

    fn log_dir(&self) -> PathBuf {
        pod_log_dir(
            &self.ctx.dirs.logs,
            &self.key.namespace,
            &self.key.name,
            &self.key.uid,
        )
    }

    fn grace_period(&self) -> Duration {
        lifecycle::deletion_grace(
            self.pod.metadata.deletion_grace_period_seconds,
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds),
        )
    }

    /// When `activeDeadlineSeconds` runs out, counted from the pod's start time.
    fn active_deadline(&self) -> Option<tokio::time::Instant> {
        let seconds = self.pod.spec.as_ref()?.active_deadline_seconds?;
        let started = self.start_time.0;
        let elapsed = jiff::Timestamp::now().duration_since(started);
        let left = jiff::SignedDuration::from_secs(seconds.max(0)) - elapsed;
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        Some(tokio::time::Instant::now() + left)
    }

    fn terminating(&self) -> bool {
        matches!(
            self.state,
            PodState::Terminating { .. } | PodState::Terminated { .. }
        )
    }

    fn done(&self) -> bool {
        matches!(&self.state, PodState::Terminated { cause } if cause.ends_worker())
    }

    async fn run(
        mut self,
        mut desired: watch::Receiver<Desired>,
        mut eviction: crate::eviction::signal::Subscription,
        rejection: Option<Rejection>,
    ) {
        let (desired, eviction) = (&mut desired, &mut eviction.receiver);
        let already_done = matches!(
            self.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        );
        if let Some(rejection) = rejection {
            tracing::warn!(pod = %self.key, reason = %rejection.reason, message = %rejection.message, "pod rejected");
            self.ctx
                .services
                .events
                .warning(
                    &self.pod,
                    None,
                    &rejection.reason,
                    rejection.message.clone(),
                )
                .await;
            self.state = PodState::Terminated {
                cause: Cause::Rejected {
                    reason: rejection.reason,
                    message: rejection.message,
                },
            };
            self.note_failure();
            self.publish_final();
        } else if already_done {
            // Ran to the end before (a Krustlet restart): nothing runs, deletion is awaited.
            self.state = PodState::Terminated {
                cause: Cause::Completed,
            };
        } else if self.pod.metadata.deletion_timestamp.is_none() {
            let setup_started = Instant::now();
            // Boxed, as `step` below: large futures that would otherwise make this one, which
            // lives as long as the pod, as large as the largest.
            match Box::pin(self.setup(desired)).await {
                Setup::Ready => {
                    self.ctx
                        .services
                        .metrics
                        .observe_worker("create", setup_started.elapsed().as_secs_f64());
                    self.publish();
                    self.queue.push_back(Input::Prepared);
                }
                Setup::Superseded => {}
                Setup::Abandoned => return,
            }
        }
        // A pod deleted while this node was away (or during setup) is terminated right away.
        if self.pod.metadata.deletion_timestamp.is_some() {
            self.queue.push_back(Input::Stop {
                cause: Cause::Deleted,
                grace: self.grace_period(),
            });
        }
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + VOLUME_RESYNC, VOLUME_RESYNC);
        let mut deadline = self.active_deadline();
        loop {
            Box::pin(self.step()).await;
            if self.done() {
                break;
            }
            let active = matches!(
                self.state,
                PodState::Initializing { .. } | PodState::Running
            );
            let deadline_timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = resync.tick(), if active && !self.running.is_empty() => {
                    let started = Instant::now();
                    Box::pin(self.refresh_volumes()).await;
                    self.ctx.services.metrics.observe_worker("sync", started.elapsed().as_secs_f64());
                }
                Some(status) = self.updates.recv() => self.on_update(status),
                Ok(()) = eviction.changed(), if !self.terminating() => {
                    let evicted = eviction.borrow_and_update().clone();
                    if let Some(Eviction { message, grace }) = evicted {
                        self.ctx.services.events.warning(&self.pod, None, "Evicted", message.clone()).await;
                        // Hard thresholds give no grace, soft ones the bounded pod grace.
                        self.queue.push_back(Input::Stop { cause: Cause::Evicted(message), grace });
                    }
                }
                Some(done) = self.runners.join_next(), if !self.runners.is_empty() => {
                    if let Ok((name, termination)) = done {
                        self.on_runner_done(name, termination);
                    }
                }
                _ = deadline_timer, if active => {
                    deadline = None;
                    self.ctx.services.events.warning(
                        &self.pod, None, "DeadlineExceeded",
                        "Pod was active on the node longer than the specified deadline".into(),
                    ).await;
                    self.queue.push_back(Input::Stop { cause: Cause::DeadlineExceeded, grace: self.grace_period() });
                }
                changed = desired.changed() => {
                    if changed.is_err() {
                        // The manager is gone (process exit): stop at once, report nothing.
                        for r in self.running.values() {
                            r.stop.send_replace(Some(Duration::ZERO));
                        }
                        while self.runners.join_next().await.is_some() {}
                        return;
                    }
                    let next = desired.borrow_and_update().clone();
                    self.on_desired(next);
                    deadline = if active { self.active_deadline() } else { None };
                }
            }
        }
    }

    /// Feeds queued inputs through the state machine and carries out its actions.
    async fn step(&mut self) {
        while let Some(input) = self.queue.pop_front() {
            let (next, actions) =
                lifecycle::transition(&self.state, input, &self.inits, tokio::time::Instant::now());
            tracing::debug!(pod = %self.key, from = ?self.state, to = ?next, ?actions, "pod state");
            self.state = next;
            self.note_failure();
            for action in actions {
                self.execute(action).await;
            }
        }
        self.start_ephemeral();
    }

    /// Starts each ephemeral container not started yet, once the pod's containers run
    /// (upstream's `computePodActions`: `EphemeralContainersToStart` once the sandbox exists,
    /// even during initialization; never while terminating, never again after it ends).
    fn start_ephemeral(&mut self) {
        if !matches!(
            self.state,
            PodState::Initializing { .. } | PodState::Running
        ) {
            return;
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        let mut started = false;
        for (index, ec) in spec.ephemeral_containers.iter().flatten().enumerate() {
            if !self.ephemeral_seen.insert(ec.name.clone()) {
                continue;
            }
            let container = match crate::container::ephemeral::effective(ec, &spec) {
                Ok(container) => container,
                Err(error) => {
                    tracing::warn!(pod = %self.key, container = %ec.name, %error, "ephemeral container not started");
                    continue;
                }
            };
            // Ran before a Krustlet restart: done for good (ephemeral containers never restart).
            if let Some(Resume::Done(status)) = self.first_resume(&container, Kind::Ephemeral) {
                self.statuses.insert(container.name.clone(), status);
                continue;
            }
            tracing::info!(pod = %self.key, container = %ec.name, target = ?ec.target_container_name, "starting an ephemeral container");
            self.spawn(container, Kind::Ephemeral, index);
            started = true;
        }
        if started {
            self.publish();
        }
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::StartInit(index) => self.start_init(index),
            Action::StartApps => self.start_apps(),
            Action::StopRegular(grace) => {
                let mut any = false;
                for r in self.running.values() {
                    if r.kind != Kind::Sidecar {
                        r.stop.send_replace(Some(grace));
                        any = true;
                    }
                }
                self.restarting.clear();
                if !any {
                    let sidecars = self.running_sidecars();
                    self.queue.push_back(Input::RegularStopped { sidecars });
                }
                self.publish();
            }
            Action::StopSidecar(index, grace) => {
                match self
                    .running
                    .values()
                    .find(|r| r.kind == Kind::Sidecar && r.index == index)
                {
                    Some(r) => {
                        r.stop.send_replace(Some(grace));
                    }
                    None => self.queue.push_back(Input::SidecarStopped { index }),
                }
            }
            Action::Finish => self.finish().await,
        }
    }

    fn note_failure(&mut self) {
        if let PodState::Terminating { cause, .. } | PodState::Terminated { cause } = &self.state
            && cause.fails_pod()
            && self.failure.is_none()
        {
            self.failure = Some(cause.clone());
        }
    }

    fn running_sidecars(&self) -> Vec<usize> {
        self.running
            .values()
            .filter(|r| r.kind == Kind::Sidecar)
            .map(|r| r.index)
            .collect()
    }

    /// Starts init container `index`, or skips it if it already succeeded before a Krustlet
    /// restart.
    fn start_init(&mut self, index: usize) {
        let (inits, _) = self.spec_containers();
        let Some(init) = inits.get(index).cloned() else {
            return;
        };
        let sidecar = self.inits.get(index) == Some(&InitKind::Sidecar);
        if sidecar {
            self.spawn(init, Kind::Sidecar, index);
            return;
        }
        if let Some(Resume::Done(status)) = self.first_resume(&init, Kind::Init) {
            let success = status
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0);
            self.statuses.insert(init.name.clone(), status);
            self.queue.push_back(Input::InitExited { index, success });
            return;
        }
        self.spawn(init, Kind::Init, index);
    }

    fn start_apps(&mut self) {
        self.apps_started = true;
        let (_, apps) = self.spec_containers();
        for (index, app) in apps.into_iter().enumerate() {
            if let Some(Resume::Done(status)) = self.first_resume(&app, Kind::App) {
                self.finished_apps.insert(app.name.clone());
                self.statuses.insert(app.name.clone(), status);
                continue;
            }
            self.spawn(app, Kind::App, index);
        }
        self.check_apps_finished();
        self.publish();
    }

    /// What a container's status from before this worker (a Krustlet restart) says about
    /// running it; `None` once it has run under this worker.
    fn first_resume(&self, container: &Container, kind: Kind) -> Option<Resume> {
        let rules = self.restart_rules(container, kind);
        self.initial
            .get(&container.name)
            .map(|previous| resume(Some(previous), &rules))
    }

    /// When `container` runs again after it exits: its own rules and policy over the pod's.
    fn restart_rules(&self, container: &Container, kind: Kind) -> RestartRules {
        match kind {
            Kind::Ephemeral => RestartRules::of(container, false, RestartPolicy::Never),
            kind => RestartRules::of(container, kind != Kind::App, self.restart_policy()),
        }
    }

    fn spawn(&mut self, container: Container, kind: Kind, index: usize) {
        let container = Arc::new(container);
        let name = container.name.clone();
        let rules = self.restart_rules(&container, kind);
        // The first run of this worker continues from the pod's last status (a restarted
        // Krustlet); later runs of a changed definition continue from this worker's.
        let previous = self
            .initial
            .remove(&name)
            .or_else(|| self.statuses.get(&name).map(|s| (**s).clone()));
        let (restart_count, last_state) = match resume(previous.as_ref(), &rules) {
            Resume::Fresh => (previous.map(|p| p.restart_count).unwrap_or(0), None),
            Resume::Again {
                restart_count,
                last_state,
            } => (restart_count, Some(last_state)),
            // Done by policy, yet asked to run (a changed definition): run it again.
            Resume::Done(done) => (done.restart_count + 1, done.state.map(Box::new)),
        };
        let (stop, stop_rx) = watch::channel(None);
        let allocated = resize::Allocated::default();
        let runner = Runner {
            services: self.ctx.services.clone(),
            pod: self.current.clone(),
            container: container.clone(),
            kind,
            log_dir: self.log_dir(),
            pod_dir: self.pod_dir(),
            volumes: self.volumes.clone(),
            updates: self.updates_tx.clone(),
            stop: stop_rx,
            restart_count,
            last_state,
            allocated: allocated.clone(),
        };
        self.running.insert(
            name.clone(),
            Running {
                stop,
                kind,
                index,
                container,
                allocated,
            },
        );
        // Mapped, not wrapped in an `async` block: one would keep the runner twice.
        self.runners
            .spawn(runner.run().map(move |termination| (name, termination)));
    }

    fn on_update(&mut self, status: Box<ContainerStatus>) {
        let name = status.name.clone();
        let started = status.started == Some(true);
        self.statuses.insert(name.clone(), status);
        if started
            && let Some(r) = self.running.get(&name)
            && r.kind == Kind::Sidecar
        {
            self.queue
                .push_back(Input::SidecarStarted { index: r.index });
        }
        self.observe_start();
        self.publish();
    }

    fn on_runner_done(&mut self, name: String, termination: Option<Termination>) {
        let Some(ended) = self.running.remove(&name) else {
            return;
        };
        // Drain reports first, so the final state of this container is in `statuses`.
        while let Ok(status) = self.updates.try_recv() {
            self.statuses.insert(status.name.clone(), status);
        }
        if self.restarting.remove(&name) && !self.terminating() {
            // A changed definition: run the new one (computePodActions' "definition changed").
            self.spawn(
                Arc::unwrap_or_clone(ended.container),
                ended.kind,
                ended.index,
            );
            self.publish();
            return;
        }
        match (&self.state, ended.kind) {
            (PodState::Initializing { next }, Kind::Init) if *next == ended.index => {
                let success = termination.as_ref().is_some_and(|t| t.exit_code() == 0);
                self.queue.push_back(Input::InitExited {
                    index: ended.index,
                    success,
                });
            }
            (PodState::Running, Kind::App) => {
                self.finished_apps.insert(name);
                self.check_apps_finished();
            }
            (
                PodState::Terminating {
                    step: StopStep::Regular,
                    ..
                },
                Kind::App | Kind::Init | Kind::Ephemeral,
            ) if self.running.values().all(|r| r.kind == Kind::Sidecar) => {
                let sidecars = self.running_sidecars();
                self.queue.push_back(Input::RegularStopped { sidecars });
            }
            (PodState::Terminating { .. }, Kind::Sidecar) => {
                self.queue
                    .push_back(Input::SidecarStopped { index: ended.index });
            }
            _ => {}
        }
        self.publish();
    }

    /// Every app container done for good: the sidecars stop and the pod ends (upstream stops
    /// restartable init containers once the regular ones are done).
    fn check_apps_finished(&mut self) {
        let (_, apps) = self.spec_containers();
        if matches!(self.state, PodState::Running)
            && apps.iter().all(|c| self.finished_apps.contains(&c.name))
        {
            self.queue.push_back(Input::AppsFinished {
                grace: self.grace_period(),
            });
        }
    }

    fn on_desired(&mut self, next: Desired) {
        match next {
            Desired::Run(pod) => {
                let deleting = pod.metadata.deletion_timestamp.is_some();
                self.current.set(pod.clone());
                self.pod = pod;
                if deleting {
                    self.queue.push_back(Input::Stop {
                        cause: Cause::Deleted,
                        grace: self.grace_period(),
                    });
                } else {
                    self.restart_changed();
                    self.resize_changed();
                }
                // Readiness gates and other conditions may have changed.
                self.publish();
            }
            Desired::Removed => self.queue.push_back(Input::Stop {
                cause: Cause::Removed,
                grace: Duration::ZERO,
            }),
            Desired::NodeShutdown(grace) => self.queue.push_back(Input::Stop {
                cause: Cause::NodeShutdown,
                grace: grace.min(self.grace_period()),
            }),
        }
    }

    /// Restarts running containers whose image changed (`kubectl set image`), as
    /// `computePodActions` does when a container's hash changes.
    fn restart_changed(&mut self) {
        if self.terminating() {
            return;
        }
        let (inits, apps) = self.spec_containers();
        let grace = self.grace_period();
        for new in inits.iter().chain(&apps) {
            let Some(r) = self.running.get_mut(&new.name) else {
                continue;
            };
            if r.container.image == new.image {
                continue;
            }
            let note = format!(
                "Container {} definition changed, will be restarted",
                new.name
            );
            tracing::info!(pod = %self.key, "{note}");
            let events = self.ctx.services.events.clone();
            let pod = self.pod.clone();
            let field = crate::pod::events::container_field(r.kind != Kind::App, &new.name);
            tokio::spawn(async move { events.normal(&pod, field, "Killing", note).await });
            r.container = Arc::new(new.clone());
            r.stop.send_replace(Some(grace));
            self.restarting.insert(new.name.clone());
        }
    }

    /// Applies changed `resources` to running containers in place, or restarts them where
    /// their `resizePolicy` asks (upstream's `computePodResizeAction`); what cannot be done is
    /// reported with upstream's resize conditions.
    fn resize_changed(&mut self) {
        if self.terminating() {
            return;
        }
        let (inits, apps) = self.spec_containers();
        let wanted = crate::pod::admission::Requests::of_pod(&self.pod);
        let services = self.ctx.services.clone();
        let grace = self.grace_period();
        self.resize = None;
        for new in inits.iter().chain(&apps) {
            let Some(r) = self.running.get_mut(&new.name) else {
                continue;
            };
            if r.container.image != new.image {
                continue;
            }
            match resize::decide(
                &r.container,
                new,
                wanted.cpu_millis,
                wanted.memory_bytes,
                &services.allocatable,
                services.memory_bound,
            ) {
                resize::Action::None => {}
                resize::Action::InPlace(limits) => match r.allocated.apply(limits) {
                    Ok(()) => {
                        tracing::info!(pod = %self.key, container = %new.name, ?limits, "resized in place");
                        Arc::make_mut(&mut r.container).resources = new.resources.clone();
                    }
                    Err(error) => {
                        self.resize = Some(("PodResizeInProgress", "Error", error.to_string()));
                    }
                },
                resize::Action::Restart => {
                    tracing::info!(pod = %self.key, container = %new.name, "resize policy RestartContainer: restarting");
                    r.container = Arc::new(new.clone());
                    r.stop.send_replace(Some(grace));
                    self.restarting.insert(new.name.clone());
                }
                resize::Action::Infeasible(message) => {
                    self.resize = Some(("PodResizePending", "Infeasible", message));
                }
            }
        }
    }

    /// Sets up the pod's volumes, then its sandbox (the pod network: `network::Network::setup`,
    /// a CNI ADD into a new network namespace), retrying with `FailedMount` or
    /// `FailedCreatePodSandBox` events until both are ready (a sandbox with back-off: 1 s
    /// doubling to 10 s); [`Setup::Superseded`] if the pod is deleted, removed or the node
    /// stops meanwhile (the new desired state is then applied, so the deletion is never lost).
    /// Upstream also mounts volumes before `RunPodSandbox`.
    async fn setup(&mut self, desired: &mut watch::Receiver<Desired>) -> Setup {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let mut sandbox_retry = SANDBOX_RETRY;
        let (prepared, network) = loop {
            let attempt = async {
                if let Err(error) = runtime_class::check(&self.ctx.services.api, &self.pod).await {
                    return Err((
                        "FailedCreatePodSandBox",
                        format!("Failed to create pod sandbox: {error}"),
                        None,
                        false,
                    ));
                }
                let prepared = volume::prepare(
                    &self.ctx.services.api,
                    &self.pod,
                    &self.pod_dir(),
                    self.ctx.services.node_facts(),
                )
                .await
                .map_err(|error| ("FailedMount", error.to_string(), error.object(), false))?;
                let network = self
                    .ctx
                    .services
                    .network
                    .setup(&SandboxSpec::of(&self.pod))
                    .await
                    .map_err(|error| {
                        (
                            "FailedCreatePodSandBox",
                            format!(
                                "Failed to create pod sandbox: failed to set up the pod's network: {error}"
                            ),
                            None,
                            true,
                        )
                    })?;
                Ok((prepared, network))
            };
            match attempt.await {
                Ok(ready) => break ready,
                Err((reason, message, object, sandbox)) => {
                    let wait = if sandbox {
                        let wait = sandbox_retry;
                        sandbox_retry = (sandbox_retry * 2).min(SANDBOX_RETRY_MAX);
                        wait
                    } else {
                        VOLUME_RETRY
                    };
                    if sandbox {
                        tracing::warn!(pod = %self.key, %message, retry_in = ?wait, "pod sandbox not created");
                    }
                    self.ctx
                        .services
                        .events
                        .warning(&self.pod, None, reason, message)
                        .await;
                    self.publish();
                    let namespace = self.key.namespace.clone();
                    let client = self.ctx.services.api.client(String::new).ok();
                    let retry = async {
                        match (object, client) {
                            // Retry when the object appears or changes, not on a timer.
                            (Some(reference), Some(client)) => {
                                config_watch::changed(&client, &namespace, &[reference]).await
                            }
                            _ => tokio::time::sleep(wait).await,
                        }
                    };
                    tokio::select! {
                        _ = retry => {}
                        changed = desired.changed() => {
                            if changed.is_err() {
                                return Setup::Abandoned;
                            }
                            let next = desired.borrow_and_update().clone();
                            let stops = !matches!(&next, Desired::Run(p) if p.metadata.deletion_timestamp.is_none());
                            self.on_desired(next);
                            if stops {
                                return Setup::Superseded;
                            }
                        }
                    }
                }
            }
        };
        for name in &prepared.unsupported {
            self.ctx.services.events.warning(&self.pod, None, "UnsupportedVolume", format!(
                "volume {name:?} is of a type this node does not mount yet; containers run without it"
            )).await;
        }
        self.volumes = Arc::new(prepared.mounts);
        self.pod_ips = network.ips().iter().map(ToString::to_string).collect();
        let host_ports = network.host_ports();
        self.network = Some(network);
        let pod_fields = unsupported::pod_fields(&spec);
        if !pod_fields.is_empty() {
            let note = format!(
                "the pod asks for what a WebAssembly node cannot honour: {}",
                pod_fields.join(", ")
            );
            self.ctx
                .services
                .events
                .warning(&self.pod, None, "UnsupportedFeature", note)
                .await;
        }
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            let unsupported = unsupported::container_fields(c, host_ports);
            if !unsupported.is_empty() {
                let note = format!(
                    "container {:?} asks for what a WebAssembly node cannot honour: {}",
                    c.name,
                    unsupported.join(", ")
                );
                self.ctx
                    .services
                    .events
                    .warning(&self.pod, None, "UnsupportedFeature", note)
                    .await;
            }
        }
        Setup::Ready
    }

    /// Rewrites the pod's ConfigMap, Secret, downwardAPI and projected volumes from the current
    /// objects (atomically, so running readers see the old or the new set), and renews tokens.
    async fn refresh_volumes(&mut self) {
        if let Err(error) = volume::prepare(
            &self.ctx.services.api,
            &self.pod,
            &self.pod_dir(),
            self.ctx.services.node_facts(),
        )
        .await
        {
            tracing::warn!(pod = %self.key, %error, "volume refresh failed; keeping the current contents");
        }
    }

    /// Once every app container has started (at least once), records the pod's start duration
    /// from when the worker first saw it, as upstream's `kubelet_pod_start_duration_seconds`.
    fn observe_start(&mut self) {
        if self.start_observed {
            return;
        }
        let (_, apps) = self.spec_containers();
        let all_started = apps.iter().all(|c| {
            self.statuses
                .get(&c.name)
                .is_some_and(|s| s.container_id.is_some())
        });
        if all_started {
            self.start_observed = true;
            let metrics = &self.ctx.services.metrics;
            metrics
                .pod_start_duration
                .observe(self.seen.elapsed().as_secs_f64());
            metrics.started_pods.inc();
        }
    }

    fn status(&self, final_status: bool) -> PodStatus {
        let (inits, apps) = self.spec_containers();
        let ordered = |list: &[Container]| -> Vec<ContainerStatus> {
            list.iter()
                .filter_map(|c| {
                    let mut status = self.statuses.get(&c.name).map(|s| (**s).clone())?;
                    // What a running container was given, as resized (upstream reports the
                    // runtime's view and the allocation).
                    if let Some(r) = self.running.get(&c.name) {
                        let given = resize::cpu_and_memory(&r.container);
                        status.allocated_resources = given.requests.clone();
                        status.resources = Some(given);
                    }
                    Some(status)
                })
                .collect()
        };
        let init_statuses = ordered(&inits);
        let app_statuses = ordered(&apps);
        // Ephemeral containers in spec order (upstream's `convertToAPIContainerStatuses` for
        // them): outside the phase and readiness, which only init and app containers decide.
        let ephemeral_statuses: Vec<ContainerStatus> = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.ephemeral_containers.iter().flatten())
            .filter_map(|c| self.statuses.get(&c.name).map(|s| (**s).clone()))
            .collect();
        let regular_inits: Vec<ContainerStatus> = inits
            .iter()
            .filter(|c| c.restart_policy.as_deref() != Some("Always"))
            .filter_map(|c| self.statuses.get(&c.name).map(|s| (**s).clone()))
            .collect();
        let expected_inits = inits
            .iter()
            .filter(|c| c.restart_policy.as_deref() != Some("Always"))
            .count();
        let cause = self.failure.as_ref().or(match &self.state {
            PodState::Terminating { cause, .. } | PodState::Terminated { cause } => Some(cause),
            _ => None,
        });
        let rules: HashMap<&str, RestartRules> = inits
            .iter()
            .map(|c| (c, Kind::Init))
            .chain(apps.iter().map(|c| (c, Kind::App)))
            .map(|(c, kind)| (c.name.as_str(), self.restart_rules(c, kind)))
            .collect();
        let restarts = |status: &ContainerStatus, exit_code: i32| {
            rules
                .get(status.name.as_str())
                .is_some_and(|r| r.restarts_after(exit_code))
        };
        let mut phase =
            phase::phase(&regular_inits, &app_statuses, &restarts, expected_inits).to_string();
        let stopped = matches!(self.state, PodState::Terminated { .. });
        if cause.is_some_and(Cause::fails_pod) && (final_status || stopped) {
            phase = "Failed".into();
        } else if final_status && phase != "Succeeded" && phase != "Failed" {
            let all_ok = app_statuses.iter().chain(&regular_inits).all(|s| {
                s.state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == 0)
            });
            phase = if all_ok && self.apps_started && !app_statuses.is_empty() {
                "Succeeded"
            } else {
                "Failed"
            }
            .into();
        }
        let initialized = self.apps_started;
        // Sidecars count for ContainersReady as app containers do (status/generate.go).
        let unready: Vec<&str> = inits
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
            .chain(&apps)
            .filter(|c| !self.statuses.get(&c.name).is_some_and(|s| s.ready))
            .map(|c| c.name.as_str())
            .collect();
        let containers_ready = unready.is_empty() && !apps.is_empty() && !final_status;
        let previous = self
            .ctx
            .status
            .get(&self.key)
            .or_else(|| self.pod.status.clone())
            .unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        let current = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let gates: Vec<String> = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.readiness_gates.iter().flatten())
            .map(|g| g.condition_type.clone())
            .collect();
        let mut conditions = phase::conditions(
            &phase::Readiness {
                sandbox_ready: !final_status && !stopped,
                initialized,
                unready_containers: if containers_ready {
                    Vec::new()
                } else {
                    unready
                },
                containers_ready,
                gates: &gates,
                current: &current,
                completed: phase == "Succeeded",
                generation: self.pod.metadata.generation,
            },
            previous.conditions.as_deref().unwrap_or_default(),
            &now,
        );
        // The kubelet marks pods it stops for the node's sake (pkg/kubelet/eviction,
        // nodeshutdown): DisruptionTarget, reason TerminationByKubelet.
        if let Some(cause @ (Cause::NodeShutdown | Cause::Evicted(_))) = cause
            && let Some((_, message)) = cause.status_reason()
        {
            let since = previous
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            conditions.push(k8s_openapi::api::core::v1::PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                reason: Some("TerminationByKubelet".into()),
                message: Some(message),
                last_transition_time: Some(since),
                ..Default::default()
            });
        }
        if let Some((type_, reason, message)) = &self.resize {
            conditions.push(k8s_openapi::api::core::v1::PodCondition {
                type_: (*type_).into(),
                status: "True".into(),
                reason: Some((*reason).into()),
                message: Some(message.clone()),
                last_transition_time: Some(now.clone()),
                observed_generation: self.pod.metadata.generation,
                ..Default::default()
            });
        }
        let ip = self.ctx.services.node_ip.clone();
        // The pod's IPs come from its network (the node's own on the node's network); none
        // until its sandbox is set up.
        let pod_ip = self.pod_ips.first().cloned();
        let pod_ips: Vec<PodIP> = self
            .pod_ips
            .iter()
            .map(|ip| PodIP { ip: ip.clone() })
            .collect();
        // A pod that fails for a reason (eviction, deadline, rejection, shutdown) carries it
        // from its first Failed status on, so nobody sees it Failed without one.
        let (reason, message) = match cause.and_then(Cause::status_reason) {
            Some((reason, message)) if phase == "Failed" => (Some(reason), Some(message)),
            _ => (None, None),
        };
        PodStatus {
            phase: Some(phase),
            conditions: Some(conditions),
            host_ip: Some(ip.clone()),
            host_ips: Some(vec![HostIP { ip }]),
            pod_ip,
            pod_ips: (!pod_ips.is_empty()).then_some(pod_ips),
            start_time: Some(self.start_time.clone()),
            qos_class: Some(phase::qos_class(&self.pod).into()),
            init_container_statuses: (!inits.is_empty()).then_some(init_statuses),
            container_statuses: Some(app_statuses),
            ephemeral_container_statuses: (!ephemeral_statuses.is_empty())
                .then_some(ephemeral_statuses),
            reason,
            message,
            observed_generation: self.pod.metadata.generation,
            ..Default::default()
        }
    }

    fn publish(&self) {
        self.ctx.status.set(&self.key, self.status(false));
    }

    fn publish_final(&self) {
        self.ctx.status.set(&self.key, self.status(true));
    }

    /// Everything has stopped: the final status, then deletion and clean-up as the cause asks.
    async fn finish(&mut self) {
        while let Ok(status) = self.updates.try_recv() {
            self.statuses.insert(status.name.clone(), status);
        }
        let PodState::Terminated { cause } = self.state.clone() else {
            return;
        };
        // Every container has stopped: the sandbox goes (upstream's `KillPodSandbox` in
        // `killPodWithSyncResult`), before the pod is deleted, so its address is free again.
        self.teardown_network().await;
        if cause == Cause::Removed || (cause.deletes_pod() && self.gone_from_api()) {
            self.ctx.status.forget(&self.key);
            self.cleanup(true);
            return;
        }
        self.publish_final();
        self.ctx.status.flush(&self.key).await;
        if cause.deletes_pod() {
            self.delete_from_api().await;
            self.cleanup(true);
        } else if cause.ends_worker() {
            self.cleanup(false);
        }
    }

    /// Tears the pod's network down. A failure is logged and reported (`FailedKillPod`, as
    /// upstream) but does not hold the pod: the network's record stays on disk and the orphan
    /// cleanup retries the DEL once the pod is gone (`network::Network::reconcile`).
    async fn teardown_network(&mut self) {
        self.network = None;
        if let Err(error) = self.ctx.services.network.teardown(&self.key.uid).await {
            tracing::warn!(pod = %self.key, %error, "tearing down the pod's network failed; retried once the pod is gone");
            let message = format!(
                "error killing pod: failed to \"KillPodSandbox\" for {:?}: {error}",
                self.key.uid
            );
            self.ctx
                .services
                .events
                .warning(&self.pod, None, "FailedKillPod", message)
                .await;
        }
    }

    /// Deletes the terminated pod from the API server; standalone pods are only local.
    async fn delete_from_api(&self) {
        let ApiLink::Connected(clients) = &self.ctx.services.api else {
            tracing::info!(pod = %self.key, "static pod terminated");
            return;
        };
        let api: Api<Pod> = Api::namespaced(clients.borrow().clone(), &self.key.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.key.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.key.name, &params).await {
            Ok(_) => tracing::info!(pod = %self.key, "pod terminated and deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(error) => {
                tracing::warn!(pod = %self.key, %error, "deleting the terminated pod failed")
            }
        }
    }

    /// Removes the pod's volumes; with `logs`, its logs too (the pod is gone from the API).
    fn cleanup(&self, logs: bool) {
        crate::blocking::fs(|| {
            let _ = std::fs::remove_dir_all(self.pod_dir());
            if logs {
                let _ = std::fs::remove_dir_all(self.log_dir());
                if let Some(links) = &self.ctx.services.log_links {
                    crate::log::links::remove_for(links, &self.log_dir());
                }
            }
        });
        if logs {
            self.ctx.status.forget(&self.key);
        }
    }
}

#[cfg(test)]
mod tests;
