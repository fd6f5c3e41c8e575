//! Runs one container of a pod through its whole life: pull, start, wait, restart by policy
//! with crash-loop back-off, and stop gracefully when asked. Every state change is reported to
//! the pod worker as a `ContainerStatus`; the worker owns the pod status.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::{mpsc, watch};

use crate::container::exec_targets::{AttachInput, ExecTarget, ExecTargets, Registration};
use crate::container::probe::{self, ProbeEvent, ProbeSpec, ProbeTarget};
use crate::container::service_env::ServiceEnv;
use crate::container::{argv, config_watch, env, resize, termination_message};
use crate::image::{ImageStore, PullPolicy};
use crate::log::rotation::{LogPolicy, prune_old_runs};
use crate::log::writer::CriLogWriter;
use crate::log::{container_log_path, links, mark_run_finished};
use crate::metrics::{ContainerTypeLabel, KubeletMetrics};
use crate::network::outbound::{DenialReporter, GuestNetwork, OutboundPolicy};
use crate::node::allocatable::NodeResources;
use crate::pod::api::ApiLink;
use crate::pod::backoff::Backoff;
use crate::pod::events::{PodEvents, container_field, ephemeral_field};
use crate::pod::restart::{RestartPolicy, RestartRules};
use crate::runtime::{ContainerPorts, ContainerSpec, Runtime, Termination};
use crate::stats::{PodRef, RunInfo, Stats};
use crate::volume::reopen::ClosedMount;
use crate::volume::subpath::container_mount;
use crate::volume::{NodeFacts, VolumeMap};

/// What the runner needs from the node.
#[derive(Clone)]
pub struct NodeServices {
    /// The container runtime.
    pub runtime: Arc<dyn Runtime>,
    /// The image store.
    pub images: Arc<ImageStore>,
    /// Event publisher.
    pub events: PodEvents,
    /// The node's name.
    pub node_name: String,
    /// The node's labels, as registered.
    pub node_labels: BTreeMap<String, String>,
    /// The node's IP (`status.hostIP`; also the pod's on the node's network).
    pub node_ip: String,
    /// The API server (for the ConfigMaps and Secrets containers refer to), if any.
    pub api: ApiLink,
    /// How container logs are rotated and bounded.
    pub log_policy: LogPolicy,
    /// Where `/var/log/containers`-style links to each run's log go, if anywhere.
    pub log_links: Option<PathBuf>,
    /// Where running containers' usage is registered.
    pub stats: Stats,
    /// The kubelet's metrics.
    pub metrics: KubeletMetrics,
    /// What pods may use of the node (admission, Downward API defaults).
    pub allocatable: NodeResources,
    /// Memory bound of a container without a memory limit.
    pub memory_bound: u64,
    /// The Services whose variables containers get.
    pub service_env: ServiceEnv,
    /// Running containers, for exec.
    pub exec: ExecTargets,
    /// The pod network (`network/`): the node's, or CNI sandboxes.
    pub network: Arc<dyn crate::network::Network>,
    /// What guests' own sockets may never reach (`--wasm-outbound-deny`).
    pub outbound_deny: Arc<[crate::network::outbound::Cidr]>,
    /// Pods' DNS (`--cluster-dns`, `--cluster-domain`, `--resolv-conf`).
    pub dns: Arc<crate::network::dns::DnsSettings>,
}

impl NodeServices {
    /// What volume setup needs to know about this node.
    pub fn node_facts(&self) -> NodeFacts<'_> {
        NodeFacts {
            name: &self.node_name,
            labels: &self.node_labels,
            ip: &self.node_ip,
            allocatable: &self.allocatable,
        }
    }
}

/// The role of a container in its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular init container: runs to success before the next starts.
    Init,
    /// An init container with `restartPolicy: Always`: a native sidecar.
    Sidecar,
    /// An app container.
    App,
    /// An ephemeral container (`kubectl debug`): runs once, never restarted.
    Ephemeral,
}

/// The waiting reason for an environment that cannot be built yet.
const CONFIG_ERROR: &str = "CreateContainerConfigError";
/// The Warning event for a guest's connection that its pod does not grant (one per
/// destination).
const OUTBOUND_DENIED: &str = "OutboundDenied";
/// Chunks of attached input buffered before the client waits for the program to read.
const STDIN_QUEUE: usize = 16;
/// How long a container start waits for the first list of Services.
const SERVICES_WAIT: Duration = Duration::from_secs(10);

/// Asks a runner to stop: `Some(grace)` stops it within that grace period.
pub type StopSignal = watch::Receiver<Option<Duration>>;

/// Gives a running guest `grace` to finish, then kills it. A command guest has no signal to
/// catch: it is stopped at its next epoch. A program with a graceful stop (an HTTP server:
/// it drains) is asked for it first and usually ends well before the grace period.
async fn stop_within(
    running: &mut crate::runtime::RunningContainer,
    grace: Duration,
) -> Termination {
    if let Some(stop) = running.stop.take() {
        let _ = stop.send(());
    }
    match tokio::time::timeout(grace, &mut running.exit).await {
        Ok(t) => t.unwrap_or(Termination::Killed),
        Err(_) => {
            let (kill, _) = tokio::sync::oneshot::channel();
            let _ = std::mem::replace(&mut running.kill, kill).send(());
            (&mut running.exit).await.unwrap_or(Termination::Killed)
        }
    }
}

/// Aborts a task when dropped (a run's probes end with the run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A container's new status (its `name` says which), as a runner reports it to its pod worker.
/// Boxed: tokio's unbounded channel allocates 32 slots at once, and a `ContainerStatus` is large.
pub type StatusReport = Box<ContainerStatus>;

/// The pod as its worker knows it now, shared with the worker's runners: a runner reads it
/// at each start (upstream's `syncPod` starts containers from the pod it is given, the
/// latest), and keeps no version of its own for as long as its container runs (one copy of
/// the pod per pod, however many containers and updates).
#[derive(Clone)]
pub struct CurrentPod(Arc<std::sync::Mutex<Arc<Pod>>>);

impl CurrentPod {
    /// Starts at `pod`.
    pub fn new(pod: Arc<Pod>) -> Self {
        Self(Arc::new(std::sync::Mutex::new(pod)))
    }

    /// The pod now.
    pub fn get(&self) -> Arc<Pod> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A newer version of the pod.
    pub fn set(&self, pod: Arc<Pod>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = pod;
    }
}

/// One container's runner.
pub struct Runner {
    /// Node services (shared).
    pub services: Arc<NodeServices>,
    /// The pod, as its worker knows it now.
    pub pod: CurrentPod,
    /// The container (shared with the worker's record of it).
    pub container: Arc<Container>,
    /// Its role.
    pub kind: Kind,
    /// The pod's log directory.
    pub log_dir: PathBuf,
    /// The pod's directory (volumes, subPath staging).
    pub pod_dir: PathBuf,
    /// The pod's volumes that are set up.
    pub volumes: Arc<VolumeMap>,
    /// Where status changes go.
    pub updates: mpsc::UnboundedSender<StatusReport>,
    /// Stop requests.
    pub stop: StopSignal,
    /// Restart count to continue from (a restarted kubelet).
    pub restart_count: i32,
    /// How the previous run ended, if there was one (a restarted kubelet, a changed image).
    pub last_state: Option<Box<ContainerState>>,
    /// Its resources, resized in place by the pod worker.
    pub allocated: resize::Allocated,
}

/// A duration as Go prints one (`523ms`, `1.204s`), as the kubelet's messages show it.
fn go_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

impl Runner {
    /// The pod's `terminationGracePeriodSeconds` (default 30), for a kill the kubelet decides.
    fn grace_period(&self) -> Duration {
        let seconds = self
            .pod
            .get()
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(seconds.unsigned_abs())
    }

    /// When this container runs again after it exits (its own rules over the pod's policy).
    fn restart_rules(&self) -> RestartRules {
        let pod = self.pod.get();
        let pod_policy =
            RestartPolicy::parse(pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()));
        match self.kind {
            // Upstream never restarts an ephemeral container (`computePodActions`).
            Kind::Ephemeral => RestartRules::of(&self.container, false, RestartPolicy::Never),
            kind => RestartRules::of(&self.container, kind != Kind::App, pod_policy),
        }
    }

    /// The pod's name, namespace and UID.
    fn pod_ref(&self) -> PodRef {
        let pod = self.pod.get();
        PodRef {
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }

    fn field(&self) -> Option<String> {
        match self.kind {
            Kind::Ephemeral => ephemeral_field(&self.container.name),
            kind => container_field(kind != Kind::App, &self.container.name),
        }
    }

    // Events are boxed, as the one-off steps of `run`: rare, and their futures are large.
    async fn normal(&self, reason: &str, note: String) {
        let pod = self.pod.get();
        Box::pin(
            self.services
                .events
                .normal(&pod, self.field(), reason, note),
        )
        .await
    }

    /// The pod's DNS configuration for its guests' name lookups (upstream `GetPodDNS`), with
    /// its Warnings (`MissingClusterDNS`, `DNSConfigForming`) for the pod, published when a
    /// guest first looks a name up (a program without sockets never needs them).
    async fn pod_dns(&self) -> crate::network::outbound::GuestDns {
        let pod = self.pod.get();
        let settings = &self.services.dns;
        let host = match &settings.resolv_conf {
            Some(path) => Some(match tokio::fs::read_to_string(path).await {
                Ok(text) => crate::network::dns::parse_resolv_conf(&text),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot read --resolv-conf; pods inherit no resolver from the node");
                    crate::network::dns::PodDns::default()
                }
            }),
            None => None,
        };
        let (dns, notes) = crate::network::dns::for_pod(&pod, settings, host.as_ref());
        let warn = self.services.events.warnings(&pod, None);
        crate::network::outbound::GuestDns::new(dns, move || {
            for note in notes {
                warn(note.reason(), note.message());
            }
        })
    }

    async fn warning(&self, reason: &str, note: String) {
        let pod = self.pod.get();
        Box::pin(
            self.services
                .events
                .warning(&pod, self.field(), reason, note),
        )
        .await
    }

    fn report(&self, status: &ContainerStatus) {
        let _ = self.updates.send(Box::new(status.clone()));
    }

    fn stopping(&self) -> Option<Duration> {
        *self.stop.borrow()
    }

    /// Waits `delay` unless a stop request comes first; returns whether to go on.
    async fn pause(&self, delay: Duration) -> bool {
        if self.stopping().is_some() {
            return false;
        }
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.wait_for(|s| s.is_some()) => false,
        }
    }

    /// Waits until an object the environment refers to appears or changes (or the fallback
    /// timer); false if the runner is stopped meanwhile.
    async fn wait_for_config(&self) -> bool {
        let pod = self.pod.get();
        if self.stopping().is_some() {
            return false;
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut stop = self.stop.clone();
        // Standalone: nothing can appear; the error stays until the manifest changes.
        let Ok(client) = self.services.api.client(String::new) else {
            return tokio::select! {
                _ = tokio::time::sleep(config_watch::FALLBACK) => true,
                _ = stop.wait_for(|s| s.is_some()) => false,
            };
        };
        let refs =
            match env::EnvObjects::fetch(&self.services.api, namespace, &self.container).await {
                Ok(objects) => objects.references(),
                Err(_) => Vec::new(),
            };
        tokio::select! {
            _ = config_watch::changed(&client, namespace, &refs) => true,
            _ = stop.wait_for(|s| s.is_some()) => false,
        }
    }

    /// Runs the container until it is done for good (by restart policy) or stopped. Returns
    /// the last termination, if it ever ran.
    pub async fn run(self) -> Option<Termination> {
        let name = self.container.name.clone();
        let image = self.container.image.clone().unwrap_or_default();
        // Boxed, as `Runner::container`: both live as long as the container, and are large.
        let mut status = Box::new(ContainerStatus {
            name: name.clone(),
            image: image.clone(),
            restart_count: self.restart_count,
            last_state: self.last_state.as_deref().cloned(),
            state: Some(waiting("ContainerCreating", None)),
            ..Default::default()
        });
        self.report(&status);
        let mut backoff = Backoff::crash();
        // Pull and create errors back off apart from crashes, from 10 s on.
        let mut retry_backoff = Backoff::pull();
        let mut last: Option<Termination> = None;
        // Keeps image GC off this container's image while the runner lives (from before the
        // pull, so a freshly pulled image is never collected before it starts).
        let _in_use = self.services.images.acquire(&image);
        loop {
            if self.stopping().is_some() {
                return last;
            }
            // Pull.
            let policy =
                PullPolicy::for_container(self.container.image_pull_policy.as_deref(), &image);
            // The one-off steps are boxed: their futures are large, and inline they would make
            // this one, which lives as long as the container, as large as the largest.
            let pulled = match Box::pin(self.pull(&image, policy)).await {
                Ok(pulled) => pulled,
                Err((reason, message)) => {
                    status.state = Some(waiting(reason, Some(message.clone())));
                    self.report(&status);
                    let delay = retry_backoff.next_delay(Duration::ZERO);
                    if reason == "ErrImagePull" {
                        // After a failed pull the kubelet shows ImagePullBackOff while it waits.
                        status.state = Some(waiting(
                            "ImagePullBackOff",
                            Some(format!("Back-off pulling image {image:?}: {message}")),
                        ));
                        self.normal("BackOff", format!("Back-off pulling image {image:?}"))
                            .await;
                        self.report(&status);
                    }
                    if !self.pause(delay).await {
                        return last;
                    }
                    continue;
                }
            };
            status.image_id = pulled.image_id.clone();

            // The node's signature policy, before anything is compiled (image/signature/).
            if let Err((reason, message)) = Box::pin(self.verify_signature(&image, &pulled)).await {
                status.state = Some(waiting(reason, Some(message)));
                self.report(&status);
                // Back-off as for pull errors: the registry may get a signature meanwhile.
                if !self.pause(retry_backoff.next_delay(Duration::ZERO)).await {
                    return last;
                }
                continue;
            }

            // Resolve and start.
            let started_at = Instant::now();
            let run = match Box::pin(self.start(&pulled, status.restart_count)).await {
                Ok(run) => run,
                Err((reason, message)) => {
                    self.warning("Failed", format!("Error: {message}")).await;
                    status.state = Some(waiting(reason, Some(message)));
                    self.report(&status);
                    let go_on = if reason == CONFIG_ERROR {
                        Box::pin(self.wait_for_config()).await
                    } else {
                        self.pause(retry_backoff.next_delay(Duration::ZERO)).await
                    };
                    if !go_on {
                        return last;
                    }
                    continue;
                }
            };
            let (mut running, log_path, container_id, message_file, exec_registration) = run;
            self.allocated.attach(running.usage.clone());
            let policy_watch = self.watch_policy(&image, &pulled);
            let limits = running.usage.limits.get();
            let registration = self.services.stats.register(
                self.pod_ref(),
                &name,
                RunInfo {
                    id: container_id.clone(),
                    image: image.clone(),
                    memory_limit_bytes: limits.memory_bytes,
                    cpu_limit_millis: limits.cpu_millis,
                },
                running.usage.clone(),
                self.log_dir.join(&name),
            );
            let container_type = match self.kind {
                Kind::App => "container",
                Kind::Init => "init_container",
                Kind::Sidecar => "sidecar",
                Kind::Ephemeral => "ephemeral_container",
            };
            self.services
                .metrics
                .started_containers
                .get_or_create(&ContainerTypeLabel {
                    container_type: container_type.into(),
                })
                .inc();
            let started_time = now();
            status.container_id = Some(format!("wasi://{container_id}"));
            status.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_time.clone()),
                }),
                ..Default::default()
            });
            // Probes (container/probe.rs): a startup probe holds `started`, a readiness
            // probe holds `ready`, until they succeed.
            let probes = ProbeSpec::all_of(&self.container);
            let has = |kind| probes.iter().any(|p| p.kind == kind);
            let (gated, readiness) = (has(probe::Kind::Startup), has(probe::Kind::Readiness));
            status.started = Some(!gated);
            status.ready = !gated && !readiness;
            self.report(&status);
            // A channel only with probes: its first block is allocated with it.
            let mut probe_events = None;
            let _probing = (!probes.is_empty()).then(|| {
                let (probe_tx, events) = mpsc::channel(8);
                probe_events = Some(events);
                let pod = self.pod_ref();
                let target = ProbeTarget {
                    exec: exec_registration.target(),
                    network: crate::network::pod_or_unavailable(&*self.services.network, &pod.uid),
                };
                let recorder = probe::ProbeRecorder {
                    metrics: self.services.metrics.probes.clone(),
                    container: crate::metrics::ProbedContainer {
                        container: name.clone(),
                        pod: pod.name,
                        namespace: pod.namespace,
                        pod_uid: pod.uid,
                    },
                };
                let task = tokio::spawn(probe::run(probes, target, recorder, probe_tx));
                AbortOnDrop(task)
            });

            // Wait for the end, or stop it.
            let mut stop = self.stop.clone();
            let termination = loop {
                tokio::select! {
                    t = &mut running.exit => break t.unwrap_or(Termination::Killed),
                    _ = async { let _ = stop.wait_for(|s| s.is_some()).await; } => {
                        let grace = self.stopping().unwrap_or_default();
                        self.normal("Killing", format!("Stopping container {name}")).await;
                        break stop_within(&mut running, grace).await;
                    }
                    Some(event) = async {
                        match probe_events.as_mut() {
                            Some(events) => events.recv().await,
                            None => std::future::pending().await,
                        }
                    } => match event {
                        ProbeEvent::Started => {
                            status.started = Some(true);
                            status.ready = !readiness;
                            self.report(&status);
                        }
                        ProbeEvent::Ready(ready) => {
                            status.ready = ready;
                            self.report(&status);
                        }
                        ProbeEvent::Unhealthy { kind, message } => {
                            // Upstream's event (prober.go), for every failed run.
                            self.warning("Unhealthy", format!("{} probe failed: {message}", kind.name())).await;
                        }
                        ProbeEvent::Failed { kind, message: _ } => {
                            // Upstream's event (kuberuntime_manager.go).
                            let note = format!(
                                "Container {name} failed {} probe, will be restarted",
                                kind.name().to_lowercase()
                            );
                            self.normal("Killing", note).await;
                            break stop_within(&mut running, self.grace_period()).await;
                        }
                    },
                }
            };
            drop(registration);
            self.allocated.detach();
            drop(exec_registration);
            drop(policy_watch);
            let _ = mark_run_finished(&log_path);
            status.ready = false;
            status.started = Some(false);
            status.state = Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: termination.exit_code(),
                    reason: Some(termination.reason().into()),
                    message: match &message_file {
                        Some(file) => {
                            file.message(termination.exit_code(), &log_path, termination.message())
                        }
                        None => termination.message(),
                    },
                    started_at: Some(started_time),
                    finished_at: Some(now()),
                    container_id: status.container_id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            self.report(&status);
            let restart = self.restart_rules().restarts_after(termination.exit_code());
            last = Some(termination);
            if !restart || self.stopping().is_some() {
                return last;
            }
            let delay = backoff.next_delay(started_at.elapsed());
            status.last_state = status.state.take();
            status.state = Some(waiting("ContainerCreating", None));
            if !delay.is_zero() {
                status.state = Some(waiting(
                    "CrashLoopBackOff",
                    Some(format!(
                        "back-off {}s restarting failed container={name} pod={}",
                        delay.as_secs(),
                        self.pod.get().metadata.name.as_deref().unwrap_or_default()
                    )),
                ));
                self.report(&status);
                self.warning(
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {name} in pod {}",
                        self.pod.get().metadata.name.as_deref().unwrap_or_default()
                    ),
                )
                .await;
            }
            if !self.pause(delay).await {
                return last;
            }
            status.restart_count += 1;
        }
    }

    /// Checks `pulled` against the node's signature policy: `Err` carries the waiting reason
    /// and message; refusals and `warn`-default images get a Warning event.
    async fn verify_signature(
        &self,
        image: &str,
        pulled: &crate::image::PulledImage,
    ) -> Result<(), (&'static str, String)> {
        let pod = self.pod.get();
        use crate::image::signature::{Allowed, SignatureError};
        let signatures = self.services.images.signatures().clone();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut result = signatures
            .check_cached(image, pulled.digest(), namespace, None)
            .await;
        // The registry may want the pod's pull secret to read the signatures too.
        if matches!(result, Err(SignatureError::Fetch { .. }))
            && let Ok(client) = self.services.api.client(String::new)
        {
            let (keyring, _) = crate::image::auth::pod_keyring(&client, &pod).await;
            let registry = crate::image::parse_reference(image)
                .map(|r| r.resolve_registry().to_string())
                .unwrap_or_default();
            if let Some(credentials) = keyring.lookup(&registry) {
                result = signatures
                    .check_cached(image, pulled.digest(), namespace, Some(credentials))
                    .await;
            }
        }
        match result {
            Ok(Allowed::ByDefault {
                warning: Some(warning),
            }) => {
                self.warning("UnverifiedImage", warning).await;
                Ok(())
            }
            Ok(allowed) => {
                if !matches!(allowed, Allowed::NoPolicy) {
                    tracing::debug!(image, %allowed, "image policy");
                }
                Ok(())
            }
            Err(error) => {
                let message = error.to_string();
                let event = match error.reason() {
                    "ErrImagePull" => "Failed",
                    reason => reason,
                };
                self.warning(event, message.clone()).await;
                Err((error.reason(), message))
            }
        }
    }

    /// While the returned guard lives, a policy change that refuses `pulled` is reported on
    /// this pod as a Warning event (the container keeps running).
    fn watch_policy(
        &self,
        image: &str,
        pulled: &crate::image::PulledImage,
    ) -> crate::image::signature::RunningGuard {
        let pod = self.pod.get();
        // The event's reference only: the guard lives as long as the container, and must not
        // keep this version of the pod.
        let warn = self.services.events.warnings(&pod, self.field());
        let report = move |message: String| warn(crate::image::signature::REVOKED_REASON, message);
        self.services
            .images
            .signatures()
            .register(crate::image::signature::RunningImage {
                image: image.into(),
                digest: pulled.digest().into(),
                namespace: pod
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                report: Box::new(report),
            })
    }

    async fn pull(
        &self,
        image: &str,
        policy: PullPolicy,
    ) -> Result<crate::image::PulledImage, (&'static str, String)> {
        let pod = self.pod.get();
        let images = &self.services.images;
        let registry = match crate::image::parse_reference(image) {
            Ok(reference) => reference.resolve_registry().to_string(),
            Err(error) => {
                self.warning(
                    "InspectFailed",
                    format!("Failed to apply default image tag {image:?}: {error}"),
                )
                .await;
                return Err((error.reason(), error.to_string()));
            }
        };
        // A stored image is present only for pods that may use it (KEP-2535, see
        // image/access.rs); one pulled anonymously needs no look at the pod's secrets.
        let present = format!(
            "Container image {image:?} already present on machine and can be accessed by the pod"
        );
        if policy != PullPolicy::Always
            && let Some(found) = images.usable(image, None)
        {
            self.normal("Pulled", present).await;
            return Ok(found);
        }
        // Pull secrets live in the API; standalone pulls anonymously.
        let keyring = match self.services.api.client(String::new) {
            Ok(client) => {
                let (keyring, problems) = crate::image::auth::pod_keyring(&client, &pod).await;
                if !problems.is_empty() {
                    // Upstream's event (`kubelet_pods.go`), with each secret's problem.
                    self.warning(
                        "FailedToRetrieveImagePullSecret",
                        format!(
                            "Unable to retrieve some image pull secrets ({}); attempting to \
                             pull the image may not succeed.",
                            problems.join(", ")
                        ),
                    )
                    .await;
                }
                keyring
            }
            Err(_) => crate::image::auth::Keyring::default(),
        };
        let credentials = keyring.lookup(&registry);
        if policy != PullPolicy::Always
            && let Some(found) = images.usable(image, credentials)
        {
            self.normal("Pulled", present).await;
            return Ok(found);
        }
        if policy == PullPolicy::IfNotPresent && images.lookup(image).is_some() {
            tracing::info!(
                image,
                "the image is stored, but this pod's credentials were never checked for it; asking the registry"
            );
        }
        if policy != PullPolicy::Never {
            self.normal("Pulling", format!("Pulling image {image:?}"))
                .await;
        }
        let started = Instant::now();
        match images.pull(image, policy, credentials).await {
            Ok((pulled, _)) => {
                self.normal(
                    "Pulled",
                    format!(
                        "Successfully pulled image {image:?} in {}. Image size: {} bytes.",
                        go_duration(started.elapsed()),
                        pulled.size_bytes
                    ),
                )
                .await;
                Ok(pulled)
            }
            Err(error) => {
                let message = error.to_string();
                self.warning(
                    "Failed",
                    format!("Failed to pull image {image:?}: {message}"),
                )
                .await;
                Err((error.reason(), message))
            }
        }
    }

    /// What every container's environment starts with: `HOSTNAME` as a container runtime sets
    /// it (the pod's `spec.hostname`, else its name), then the Service variables.
    async fn base_env(&self) -> Result<Vec<(String, String)>, (&'static str, String)> {
        let pod = self.pod.get();
        let spec = pod.spec.as_ref();
        let hostname = spec
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty())
            .or_else(|| pod.metadata.name.clone())
            .unwrap_or_default();
        // A hostname is at most 63 characters (upstream's GeneratePodHostNameAndDomain).
        let hostname: String = hostname.chars().take(63).collect();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let links = spec.and_then(|s| s.enable_service_links).unwrap_or(true);
        let services = self
            .services
            .service_env
            .vars(namespace, links, SERVICES_WAIT)
            .await
            .map_err(|e| (CONFIG_ERROR, e.to_string()))?;
        Ok(std::iter::once(("HOSTNAME".to_string(), hostname))
            .chain(services)
            .collect())
    }

    /// Resolves env, argv and mounts, creates the log file and starts the run.
    async fn start(
        &self,
        pulled: &crate::image::PulledImage,
        restart_count: i32,
    ) -> Result<
        (
            crate::runtime::RunningContainer,
            PathBuf,
            String,
            Option<termination_message::MessageFile>,
            Registration,
        ),
        (&'static str, String),
    > {
        let pod = self.pod.get();
        let c = &self.container;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let objects = env::EnvObjects::fetch(&self.services.api, namespace, c)
            .await
            .map_err(|e| {
                (
                    CONFIG_ERROR,
                    format!("cannot read the ConfigMaps and Secrets of the environment: {e}"),
                )
            })?;
        let base = self.base_env().await?;
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let pod_network = crate::network::pod_or_unavailable(&*self.services.network, uid);
        let pod_ips: Vec<String> = pod_network.ips().iter().map(ToString::to_string).collect();
        let env = env::resolve(
            &pod,
            c,
            &crate::container::downward::Addresses {
                host_ip: &self.services.node_ip,
                pod_ips: &pod_ips,
            },
            &self.services.allocatable,
            &objects,
            base,
        )
        .map_err(|e| (CONFIG_ERROR, e.to_string()))?;
        let env_map: HashMap<String, String> = env.iter().cloned().collect();
        // Without a command, argv[0] is the module's name: the image repository's last segment.
        let module_name = pulled
            .reference
            .rsplit('/')
            .next()
            .unwrap_or(&pulled.reference);
        let module_name = module_name.split(['@', ':']).next().unwrap_or(module_name);
        let args = argv::argv(
            c.command.as_deref().unwrap_or_default(),
            c.args.as_deref().unwrap_or_default(),
            (&pulled.entrypoint, &pulled.cmd),
            module_name,
            &env_map,
        );
        let argv0 = args.first().map(String::as_str).unwrap_or_default();
        let (program, program_digest) = self
            .services
            .images
            .program_for(pulled, argv0)
            .map_err(|message| ("CreateContainerError", message))?;
        let mut mounts = Vec::new();
        for (index, m) in c.volume_mounts.iter().flatten().enumerate() {
            if let Some(host) = self.volumes.get(&m.name) {
                let staging = self
                    .pod_dir
                    .join("volume-subpaths")
                    .join(&m.name)
                    .join(&c.name)
                    .join(index.to_string());
                // An open directory, not a path: nothing a guest swaps from here on matters.
                let mount = container_mount(host, m, &env_map, &staging)
                    .map_err(|error| (CONFIG_ERROR, error.to_string()))?;
                mounts.push(mount);
            }
        }
        let containers_in_pod = pod.spec.as_ref().map_or(1, |s| {
            s.containers.len() + s.init_containers.as_ref().map_or(0, Vec::len)
        });
        let staging = self.pod_dir.join("termination").join(&c.name);
        let log_path = container_log_path(&self.log_dir, &c.name, restart_count as u32);
        // Four directories and two files: off the runtime's workers (`blocking`).
        let (message, log) = crate::blocking::fs(|| {
            let message =
                termination_message::prepare(c, containers_in_pod, &staging).map_err(|e| {
                    (
                        "CreateContainerError",
                        format!("cannot create the termination message file: {e}"),
                    )
                })?;
            prune_old_runs(&self.log_dir.join(&c.name), restart_count as u32);
            let log =
                CriLogWriter::create_with(&log_path, self.services.log_policy).map_err(|e| {
                    (
                        "CreateContainerError",
                        format!("cannot create log file {}: {e}", log_path.display()),
                    )
                })?;
            Ok::<_, (&'static str, String)>((message, log))
        })?;
        let message_file = message.map(|(file, mount)| {
            mounts.push(mount);
            file
        });
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let id = format!("{}-{}-{restart_count}", &uid[..uid.len().min(8)], c.name);
        let limits = self
            .allocated
            .limits_or(resize::container_limits(c, self.services.memory_bound));
        // `stdin: true`: a channel `kubectl attach -i` writes to (upstream's `stdinOnce` rules
        // in `AttachInput`); without it the program reads end of file at once.
        let tty = c.tty.unwrap_or(false);
        let (input, stdin) = if c.stdin.unwrap_or(false) {
            let (tx, rx) = tokio::sync::mpsc::channel(STDIN_QUEUE);
            (
                Some(AttachInput::new(tx, c.stdin_once.unwrap_or(false), tty)),
                Some(rx),
            )
        } else {
            (None, None)
        };
        // The program's own sockets; exec'd instances share them (grants, names, denials).
        let guest_network = GuestNetwork::new(
            pod_network.namespace(),
            OutboundPolicy::for_pod(
                pod.metadata.annotations.as_ref(),
                &self.services.outbound_deny,
                pod_network.namespace().is_some(),
            )
            .map_err(|message| (CONFIG_ERROR, message))?
            .with_node_addresses(self.services.node_ip.parse()),
            DenialReporter::new({
                let warn = self.services.events.warnings(&pod, self.field());
                move |note| warn(OUTBOUND_DENIED, note)
            }),
            Some(self.pod_dns().await),
        );
        let exec_target = ExecTarget {
            guest_network: Some(guest_network.clone()),
            input,
            pod_uid: uid.to_string(),
            program: program.clone(),
            program_digest: program_digest.clone(),
            env: env.clone(),
            mounts: mounts
                .iter()
                .map(ClosedMount::of)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    (
                        "CreateContainerError",
                        format!("cannot examine a mount's directory: {e}"),
                    )
                })?,
            limits,
            runtime: self.services.runtime.clone(),
            stopped: tokio_util::sync::CancellationToken::new(),
        };
        if let Some(dir) = &self.services.log_links {
            let link = links::link_path(
                dir,
                pod.metadata.name.as_deref().unwrap_or_default(),
                namespace,
                &c.name,
                &id,
            );
            if let Err(error) = links::create(&link, &log_path) {
                // Log shippers miss this run; the container itself is fine.
                tracing::warn!(link = %link.display(), %error, "cannot link the container log");
            }
        }
        let spec = ContainerSpec {
            id: id.clone(),
            program,
            program_digest,
            args,
            env,
            mounts,
            limits,
            log,
            guest_network: Some(guest_network),
            ports: ContainerPorts {
                tcp: crate::network::tcp_ports(c),
                network: Some(pod_network),
            },
            http: crate::network::http_limits(&pod).map_err(|message| (CONFIG_ERROR, message))?,
            stdin,
            tty,
        };
        let running = self
            .services
            .runtime
            .start(spec)
            .await
            .map_err(|e| (e.reason, e.message))?;
        let name = &c.name;
        self.normal("Created", format!("Created container: {name}"))
            .await;
        self.normal("Started", format!("Started container {name}"))
            .await;
        let exec_registration = self.services.exec.register(
            namespace,
            pod.metadata.name.as_deref().unwrap_or_default(),
            name,
            exec_target,
        );
        Ok((running, log_path, id, message_file, exec_registration))
    }
}
