//! One pod's lifecycle (the kubelet's `pod_workers.go` + `syncPod`), as one task.
//!
//! ```text
//! Run(pod) ─▶ setup (volumes, log dir) ─▶ init containers, one at a time (sidecars keep running)
//!          ─▶ app containers together ─▶ done (phase terminal) ─▶ wait for deletion
//! deletionTimestamp ─▶ stop containers within the grace period ─▶ final status ─▶ delete (grace 0)
//! Removed (gone from the API) ─▶ stop at once ─▶ clean up
//! NodeShutdown(grace) ─▶ stop within grace ─▶ final status: Failed/Terminated
//! ```
//! Only the newest desired state counts; the worker reads it from a `watch` channel. Container
//! runners report `ContainerStatus`es; the worker turns them into the pod status and hands that
//! to the status manager, the one writer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ContainerStatus, HostIP, Pod, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Preconditions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::container::config_watch;
use crate::container::runner::{Kind, NodeServices, Runner};
use crate::eviction::{Eviction, Evictions};
use crate::log::pod_log_dir;
use crate::pod::admission::Rejection;
use crate::pod::api::ApiLink;
use crate::pod::phase;
use crate::pod::status::{PodKey, StatusManager};
use crate::runtime::Termination;
use crate::volume;

/// How soon volume setup is retried after a failure other than a missing ConfigMap or Secret
/// (those are watched): an unbound claim, a hostPath not there yet.
const VOLUME_RETRY: Duration = Duration::from_secs(3);
/// How often a running pod's volumes are refreshed (the kubelet's sync period is about a minute).
const VOLUME_RESYNC: Duration = Duration::from_secs(30);

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
    /// Node services for container runners.
    pub services: NodeServices,
    /// The status manager.
    pub status: StatusManager,
    /// Directories.
    pub dirs: PodDirs,
    /// Where the eviction manager reaches workers.
    pub evictions: Evictions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Init(usize),
    Apps,
    InitFailed,
}

/// Runs one pod until it is deleted or the node shuts down; a pod with a `rejection` from
/// admission never starts: it is reported Failed and waits for deletion.
pub async fn run(
    ctx: WorkerContext,
    mut desired: watch::Receiver<Desired>,
    rejection: Option<Rejection>,
) {
    let Desired::Run(pod) = desired.borrow_and_update().clone() else {
        return;
    };
    let key = PodKey::of(&pod);
    let span = tracing::info_span!("pod", pod = %key, uid = %key.uid);
    let _enter = span.enter();
    drop(_enter);
    let mut eviction = ctx.evictions.subscribe(&key.uid);
    let mut worker = Worker::new(ctx, pod, key);
    if let Some(rejection) = rejection {
        worker.reject(rejection).await;
    }
    worker.run(&mut desired, &mut eviction.receiver).await;
}

struct Worker {
    ctx: WorkerContext,
    pod: Arc<Pod>,
    key: PodKey,
    statuses: HashMap<String, ContainerStatus>,
    start_time: Time,
    stage: Stage,
    runners: JoinSet<(String, Option<Termination>)>,
    updates_tx: mpsc::UnboundedSender<(String, ContainerStatus)>,
    updates: mpsc::UnboundedReceiver<(String, ContainerStatus)>,
    stop: watch::Sender<Option<Duration>>,
    volumes: Arc<crate::volume::VolumeMap>,
    shutdown_reason: Option<(&'static str, &'static str)>,
    /// When this worker first saw the pod, for `kubelet_pod_start_duration_seconds`.
    seen: Instant,
    start_observed: bool,
    /// Why the pod ended without running to completion (admission, eviction).
    terminal_reason: Option<(String, String)>,
}

impl Worker {
    fn new(ctx: WorkerContext, pod: Arc<Pod>, key: PodKey) -> Self {
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let previous = pod.status.clone().unwrap_or_default();
        let statuses = previous
            .init_container_statuses
            .iter()
            .flatten()
            .chain(previous.container_statuses.iter().flatten())
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        Self {
            ctx,
            start_time: previous
                .start_time
                .unwrap_or_else(|| Time(jiff::Timestamp::now())),
            pod,
            key,
            statuses,
            stage: Stage::Init(0),
            runners: JoinSet::new(),
            updates_tx,
            updates,
            stop: watch::channel(None).0,
            volumes: Arc::default(),
            shutdown_reason: None,
            seen: Instant::now(),
            start_observed: false,
            terminal_reason: None,
        }
    }

    /// Reports the pod rejected by admission, as upstream's `rejectPod`: a Warning event with
    /// the reason, phase Failed with "Pod was rejected: <message>".
    async fn reject(&mut self, rejection: Rejection) {
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
        self.terminal_reason = Some((
            rejection.reason,
            format!("Pod was rejected: {}", rejection.message),
        ));
        self.publish_final();
    }

    fn spec_containers(&self) -> (Vec<Container>, Vec<Container>) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        (spec.init_containers.unwrap_or_default(), spec.containers)
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

    async fn run(
        &mut self,
        desired: &mut watch::Receiver<Desired>,
        eviction: &mut watch::Receiver<Option<Eviction>>,
    ) {
        let already_done = self.terminal_reason.is_some()
            || matches!(
                self.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            );
        let setup_started = Instant::now();
        if !already_done
            && self.pod.metadata.deletion_timestamp.is_none()
            && self.setup(desired).await
        {
            self.ctx
                .services
                .metrics
                .observe_worker("create", setup_started.elapsed().as_secs_f64());
            self.publish();
            self.advance();
        }
        // A pod deleted while this node was away is terminated right away.
        let mut terminating = self.pod.metadata.deletion_timestamp.is_some();
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + VOLUME_RESYNC, VOLUME_RESYNC);
        while !(terminating && self.runners.is_empty()) {
            tokio::select! {
                _ = resync.tick(), if !terminating && !self.runners.is_empty() => {
                    let started = Instant::now();
                    self.refresh_volumes().await;
                    self.ctx.services.metrics.observe_worker("sync", started.elapsed().as_secs_f64());
                }
                Some((name, status)) = self.updates.recv() => {
                    self.statuses.insert(name.clone(), status);
                    self.on_sidecar_started(&name);
                    self.observe_start();
                    self.publish();
                }
                Ok(()) = eviction.changed(), if !terminating => {
                    let evicted = eviction.borrow_and_update().clone();
                    if let Some(Eviction { message }) = evicted {
                        self.ctx.services.events.warning(&self.pod, None, "Evicted", message.clone()).await;
                        self.terminal_reason = Some(("Evicted".into(), message));
                        // Hard eviction thresholds give no grace, as upstream's.
                        self.stop.send_replace(Some(Duration::ZERO));
                        terminating = true;
                    }
                }
                Some(done) = self.runners.join_next(), if !self.runners.is_empty() => {
                    if let Ok((name, termination)) = done {
                        self.on_runner_done(&name, termination);
                    }
                }
                changed = desired.changed(), if !terminating => {
                    if changed.is_err() {
                        // The manager is gone (process exit): stop at once.
                        self.stop.send_replace(Some(Duration::ZERO));
                        terminating = true;
                    } else {
                        let next = desired.borrow_and_update().clone();
                        match next {
                            Desired::Run(pod) => {
                                let deleting = pod.metadata.deletion_timestamp.is_some();
                                self.pod = pod;
                                if deleting {
                                    self.stop.send_replace(Some(self.grace_period()));
                                    terminating = true;
                                }
                            }
                            Desired::Removed => {
                                self.stop.send_replace(Some(Duration::ZERO));
                                self.finish_removed().await;
                                return;
                            }
                            Desired::NodeShutdown(grace) => {
                                self.stop.send_replace(Some(grace.min(self.grace_period())));
                                self.shutdown_reason = Some(("Terminated", "Pod was terminated in response to imminent node shutdown."));
                                terminating = true;
                            }
                        }
                    }
                }
            }
        }
        // Drain the last container reports, then send the final status.
        while let Ok((name, status)) = self.updates.try_recv() {
            self.statuses.insert(name, status);
        }
        self.publish_final();
        self.ctx.status.flush(&self.key).await;
        if self.shutdown_reason.is_none() && self.pod.metadata.deletion_timestamp.is_some() {
            self.delete_from_api().await;
            self.cleanup(true);
        } else {
            self.cleanup(false);
        }
    }

    fn grace_period(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    /// Creates the pod's directories and volumes; warns about what this node cannot honour.
    /// Sets up the pod's volumes, retrying with `FailedMount` events until they are ready;
    /// returns false if the pod was deleted (or the node is stopping) meanwhile.
    async fn setup(&mut self, desired: &mut watch::Receiver<Desired>) -> bool {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let prepared = loop {
            match volume::prepare(
                &self.ctx.services.api,
                &self.pod,
                &self.pod_dir(),
                self.ctx.services.node_facts(),
            )
            .await
            {
                Ok(prepared) => break prepared,
                Err(error) => {
                    self.ctx
                        .services
                        .events
                        .warning(&self.pod, None, "FailedMount", error.to_string())
                        .await;
                    self.publish();
                    let namespace = self.key.namespace.clone();
                    let client = self.ctx.services.api.client(String::new).ok();
                    let retry = async {
                        match (error.object(), client) {
                            // Retry when the object appears or changes, not on a timer.
                            (Some(reference), Some(client)) => {
                                config_watch::changed(&client, &namespace, &[reference]).await
                            }
                            _ => tokio::time::sleep(VOLUME_RETRY).await,
                        }
                    };
                    tokio::select! {
                        _ = retry => {}
                        changed = desired.changed() => {
                            let go_on = changed.is_ok()
                                && matches!(&*desired.borrow(), Desired::Run(p) if p.metadata.deletion_timestamp.is_none());
                            if !go_on {
                                return false;
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
        let volumes = prepared.mounts;
        self.volumes = Arc::new(volumes);
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            let mut unsupported = Vec::new();
            if c.liveness_probe.is_some()
                || c.readiness_probe.is_some()
                || c.startup_probe.is_some()
            {
                unsupported.push("probes (readiness follows the running state)");
            }
            if c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
            {
                unsupported.push("privileged mode (wasm has no privileges to grant)");
            }
            if c.lifecycle.is_some() {
                unsupported.push("lifecycle hooks");
            }
            if c.working_dir.is_some() {
                unsupported.push("workingDir");
            }
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
        true
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

    fn spawn(&mut self, container: Container, kind: Kind) {
        let restart_count = self.statuses.get(&container.name).map(|s| {
            let ran = s
                .state
                .as_ref()
                .is_some_and(|st| st.running.is_some() || st.terminated.is_some());
            s.restart_count + i32::from(ran)
        });
        let runner = Runner {
            services: self.ctx.services.clone(),
            pod: self.pod.clone(),
            container: container.clone(),
            kind,
            log_dir: self.log_dir(),
            pod_dir: self.pod_dir(),
            volumes: self.volumes.clone(),
            updates: self.updates_tx.clone(),
            stop: self.stop.subscribe(),
            restart_count: restart_count.unwrap_or(0),
        };
        let name = container.name.clone();
        self.runners
            .spawn(async move { (name, runner.run().await) });
    }

    /// Starts what comes next: the next init container, or all app containers.
    fn advance(&mut self) {
        let (inits, apps) = self.spec_containers();
        if let Stage::Init(i) = self.stage {
            match inits.get(i).cloned() {
                Some(init) => {
                    let sidecar = init.restart_policy.as_deref() == Some("Always");
                    self.spawn(init, if sidecar { Kind::Sidecar } else { Kind::Init });
                    // Wait for it to finish (or, for a sidecar, to start) before going on.
                    return;
                }
                None => self.stage = Stage::Apps,
            }
        }
        if self.stage == Stage::Apps {
            for app in apps {
                self.spawn(app, Kind::App);
            }
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

    fn on_sidecar_started(&mut self, name: &str) {
        let (inits, _) = self.spec_containers();
        if let Stage::Init(i) = self.stage
            && inits
                .get(i)
                .is_some_and(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
            && self.statuses.get(name).and_then(|s| s.started) == Some(true)
        {
            self.stage = Stage::Init(i + 1);
            self.advance();
        }
    }

    fn on_runner_done(&mut self, name: &str, termination: Option<Termination>) {
        let (inits, _) = self.spec_containers();
        if let Stage::Init(i) = self.stage
            && inits.get(i).is_some_and(|c| c.name == name)
            && self.stop.borrow().is_none()
        {
            if termination.as_ref().is_some_and(|t| t.exit_code() == 0) {
                self.stage = Stage::Init(i + 1);
                self.advance();
            } else {
                // An init container failed for good (restartPolicy Never): the pod fails and
                // the sidecars stop.
                self.stage = Stage::InitFailed;
                self.stop.send_replace(Some(Duration::ZERO));
            }
        }
        self.publish();
    }

    fn status(&self, final_status: bool) -> PodStatus {
        let (inits, apps) = self.spec_containers();
        let ordered = |list: &[Container]| -> Vec<ContainerStatus> {
            list.iter()
                .filter_map(|c| self.statuses.get(&c.name).cloned())
                .collect()
        };
        let init_statuses = ordered(&inits);
        let app_statuses = ordered(&apps);
        let regular_inits: Vec<ContainerStatus> = inits
            .iter()
            .filter(|c| c.restart_policy.as_deref() != Some("Always"))
            .filter_map(|c| self.statuses.get(&c.name).cloned())
            .collect();
        let expected_inits = inits
            .iter()
            .filter(|c| c.restart_policy.as_deref() != Some("Always"))
            .count();
        let restart_policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always");
        let mut phase = phase::phase(
            &regular_inits,
            &app_statuses,
            restart_policy,
            expected_inits,
        )
        .to_string();
        if final_status {
            let all_ok = app_statuses.iter().chain(&regular_inits).all(|s| {
                s.state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == 0)
            });
            if phase != "Succeeded" && phase != "Failed" {
                phase = if all_ok && self.stage == Stage::Apps && !app_statuses.is_empty() {
                    "Succeeded"
                } else {
                    "Failed"
                }
                .into();
            }
        }
        let initialized = matches!(self.stage, Stage::Apps);
        let containers_ready = !app_statuses.is_empty()
            && app_statuses.len() == apps.len()
            && app_statuses.iter().all(|s| s.ready)
            && !final_status;
        let previous = self
            .ctx
            .status
            .get(&self.key)
            .or_else(|| self.pod.status.clone())
            .unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        let conditions = phase::conditions(
            !final_status,
            initialized,
            containers_ready,
            previous.conditions.as_deref().unwrap_or_default(),
            &now,
        );
        let ip = self.ctx.services.node_ip.clone();
        // An evicted or rejected pod whose containers have already stopped is Failed before
        // the final status: it carries its reason from the first Failed on, so nobody sees a
        // Failed pod without one.
        let terminal = phase == "Failed" || phase == "Succeeded";
        let (reason, message) = match (self.shutdown_reason, &self.terminal_reason) {
            (Some((reason, message)), _) if final_status => {
                (Some(reason.to_string()), Some(message.to_string()))
            }
            (_, Some((reason, message))) if final_status || terminal => {
                (Some(reason.clone()), Some(message.clone()))
            }
            _ => (None, None),
        };
        PodStatus {
            phase: Some(phase),
            conditions: Some(conditions),
            host_ip: Some(ip.clone()),
            host_ips: Some(vec![HostIP { ip: ip.clone() }]),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            start_time: Some(self.start_time.clone()),
            qos_class: Some(phase::qos_class(&self.pod).into()),
            init_container_statuses: (!inits.is_empty()).then_some(init_statuses),
            container_statuses: Some(app_statuses),
            reason,
            message,
            ..Default::default()
        }
    }

    fn publish(&self) {
        self.ctx.status.set(&self.key, self.status(false));
    }

    fn publish_final(&self) {
        self.ctx.status.set(&self.key, self.status(true));
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

    async fn finish_removed(&mut self) {
        while self.runners.join_next().await.is_some() {}
        self.ctx.status.forget(&self.key);
        self.cleanup(true);
    }

    /// Removes the pod's volumes; with `logs`, its logs too (the pod is gone from the API).
    fn cleanup(&self, logs: bool) {
        let _ = std::fs::remove_dir_all(self.pod_dir());
        if logs {
            let _ = std::fs::remove_dir_all(self.log_dir());
            self.ctx.status.forget(&self.key);
        }
    }
}
