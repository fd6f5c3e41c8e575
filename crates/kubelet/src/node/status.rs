//! Node status: computed every `--node-status-update-frequency`, sent when it changed or when
//! `--node-status-report-frequency` has passed (the kubelet's `syncNodeStatus` and
//! `nodestatus/setters.go`). A Node deleted under us is registered again.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::KubeletConfig;
use crate::events::EventPublisher;
use crate::network::NetworkCondition;
use crate::node::allocatable::NodeResources;
use crate::node::conditions::{Measurements, Readiness, SharedPressure, conditions};
use crate::node::events::NodeEvents;
use crate::node::host::{Filesystem, HostInfo, Memory, Pids};
use crate::node::registration::{WASM_ARCH, initial_node, register};

/// The version this kubelet reports: the Kubernetes API release it implements, tagged with ours.
pub const KUBELET_VERSION: &str = concat!("v1.35.0-krustlet.", env!("CARGO_PKG_VERSION"));

/// What the status is computed from besides the configuration.
#[derive(Debug, Clone)]
pub struct StatusInputs {
    /// Host facts.
    pub host: HostInfo,
    /// `nodeInfo.containerRuntimeVersion`, e.g. `wasmtime://48.0.8`.
    pub runtime_version: String,
    /// The images on the node, as image GC publishes them.
    pub images: watch::Receiver<Vec<ContainerImage>>,
    /// The pressure conditions, as the eviction manager decides them.
    pub pressure: SharedPressure,
    /// The pod network, whose condition goes into Ready.
    pub network: std::sync::Arc<dyn crate::network::Network>,
}

/// Measures the host now.
pub fn measure(config: &KubeletConfig) -> std::io::Result<Measurements> {
    Ok(Measurements {
        memory: Memory::read()?,
        nodefs: Filesystem::of(&config.data_dir).map_err(std::io::Error::from)?,
        pids: Pids::read()?,
    })
}

/// The node status for this round. `previous` supplies the conditions' transition times.
pub fn node_status(
    config: &KubeletConfig,
    inputs: &StatusInputs,
    measurements: &Measurements,
    readiness: &Readiness,
    previous: &[NodeCondition],
    now: Time,
) -> NodeStatus {
    let capacity = NodeResources::capacity(config, &inputs.host, measurements.nodefs.total_bytes);
    let allocatable = NodeResources::allocatable(config, &capacity);
    let host = &inputs.host;
    let pressure = inputs.pressure.get();
    let readiness = with_network(readiness, &inputs.network.condition());
    NodeStatus {
        capacity: Some(capacity.to_list()),
        allocatable: Some(allocatable.to_list()),
        conditions: Some(conditions(&readiness, pressure, previous, now)),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: config.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: config.node_name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(config.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: WASM_ARCH.into(),
            boot_id: host.boot_id.clone(),
            container_runtime_version: inputs.runtime_version.clone(),
            kernel_version: host.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: host.machine_id.clone(),
            operating_system: std::env::consts::OS.into(),
            os_image: host.os_image.clone(),
            system_uuid: host.machine_id.clone(),
            ..Default::default()
        }),
        images: {
            let images = inputs.images.borrow().clone();
            (!images.is_empty()).then_some(images)
        },
        runtime_handlers: Some(crate::pod::runtime_class::node_handlers()),
        ..Default::default()
    }
}

/// The node's readiness with its pod network's condition: a CNI configuration that cannot be
/// used makes the node NotReady with upstream's message (`container runtime network not
/// ready: NetworkReady=false reason:NetworkPluginNotReady message:...`, from the kubelet's
/// runtime state); pods on the node's network for want of one are noted in the Ready message.
pub fn with_network(readiness: &Readiness, network: &NetworkCondition) -> Readiness {
    match (readiness, network) {
        (Readiness::NotReady(_), _) | (_, NetworkCondition::Ready) => readiness.clone(),
        (Readiness::Ready, NetworkCondition::NodeFallback(note)) => {
            Readiness::ReadyWithNote(note.clone())
        }
        (Readiness::ReadyWithNote(note), NetworkCondition::NodeFallback(more)) => {
            Readiness::ReadyWithNote(format!("{note}; {more}"))
        }
        (_, NetworkCondition::NotReady(why)) => Readiness::NotReady(format!(
            "container runtime network not ready: NetworkReady=false \
             reason:NetworkPluginNotReady message:{why}"
        )),
    }
}

/// Whether two statuses differ in anything but heartbeat times (what makes a patch worth it).
pub fn differs(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(a) != strip(b)
}

/// Keeps the Node registered and its status current until `shutdown` fires.
///
/// Publishes the Node's UID on `node_uid` (the lease's owner). `readiness` is read every
/// round, so a change to it (shutdown) is reported at the next round; call
/// [`StatusReporter::report_now`] to send it at once.
pub struct StatusReporter {
    config: KubeletConfig,
    inputs: StatusInputs,
    clients: watch::Receiver<kube::Client>,
    last_sent: Option<(NodeStatus, Instant)>,
    node_uid: watch::Sender<Option<String>>,
    events: NodeEvents,
    started: bool,
}

/// Errors of one status round; all are retried at the next round.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The host could not be measured.
    #[error("measuring the host: {0}")]
    Measure(#[from] std::io::Error),
    /// The API server refused or was unreachable.
    #[error("updating node status: {0}")]
    Api(#[from] kube::Error),
    /// Re-registering a deleted Node failed.
    #[error(transparent)]
    Register(#[from] crate::node::registration::RegistrationError),
}

impl StatusReporter {
    /// A reporter for the Node of `config`, using the newest client; `node_uid` receives the
    /// Node's UID once registered.
    pub fn new(
        config: KubeletConfig,
        inputs: StatusInputs,
        clients: watch::Receiver<kube::Client>,
        events: EventPublisher,
        node_uid: watch::Sender<Option<String>>,
    ) -> Self {
        let events = NodeEvents::new(events, &config.node_name);
        Self {
            config,
            inputs,
            clients,
            last_sent: None,
            node_uid,
            events,
            started: false,
        }
    }

    fn api(&self) -> Api<Node> {
        Api::all(self.clients.borrow().clone())
    }

    /// Registers the Node (creating or reconciling it) and sends a first status.
    pub async fn register(&mut self, readiness: &Readiness) -> Result<(), StatusError> {
        let node = register(&self.api(), &initial_node(&self.config)).await?;
        self.node_uid.send_replace(node.metadata.uid.clone());
        if !self.started {
            self.started = true;
            self.events.starting().await;
        }
        self.last_sent = None;
        self.report(
            readiness,
            node.status.and_then(|s| s.conditions).unwrap_or_default(),
        )
        .await
    }

    /// Computes the status and sends it if it changed or the report period passed. A Node
    /// that no longer exists is registered again.
    pub async fn sync(&mut self, readiness: &Readiness) -> Result<(), StatusError> {
        let current = match self.api().get_opt(&self.config.node_name).await? {
            Some(node) => node,
            None => {
                tracing::warn!(node = %self.config.node_name, "Node object is gone; registering again");
                return self.register(readiness).await;
            }
        };
        if current.metadata.uid != *self.node_uid.borrow() {
            self.node_uid.send_replace(current.metadata.uid.clone());
        }
        let previous = current
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        self.report(readiness, previous).await
    }

    /// Sends the status now, whatever changed (used on shutdown).
    pub async fn report_now(&mut self, readiness: &Readiness) -> Result<(), StatusError> {
        self.last_sent = None;
        self.sync(readiness).await
    }

    async fn report(
        &mut self,
        readiness: &Readiness,
        previous: Vec<NodeCondition>,
    ) -> Result<(), StatusError> {
        let measurements = measure(&self.config)?;
        let now = Time(jiff::Timestamp::now());
        let status = node_status(
            &self.config,
            &self.inputs,
            &measurements,
            readiness,
            &previous,
            now,
        );
        let due = match &self.last_sent {
            None => true,
            Some((sent, at)) => {
                differs(sent, &status) || at.elapsed() >= self.config.node_status_report_frequency
            }
        };
        if !due {
            return Ok(());
        }
        let patch = serde_json::json!({ "status": status });
        self.api()
            .patch_status(
                &self.config.node_name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await?;
        tracing::debug!(node = %self.config.node_name, "node status sent");
        self.events
            .transitions(&previous, status.conditions.as_deref().unwrap_or_default())
            .await;
        self.last_sent = Some((status, Instant::now()));
        Ok(())
    }

    /// Runs [`Self::sync`] every update period until `shutdown` is cancelled; errors are logged
    /// and retried next period, so an unreachable API server never ends the loop.
    pub async fn run(
        mut self,
        mut readiness: watch::Receiver<Readiness>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        let mut ticker = tokio::time::interval(self.config.node_status_update_frequency);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return self,
                _ = ticker.tick() => {}
                // A readiness change is worth a patch right away.
                Ok(()) = readiness.changed() => {}
            }
            let current = readiness.borrow_and_update().clone();
            if let Err(error) = self.sync(&current).await {
                tracing::warn!(node = %self.config.node_name, %error, "node status update failed; retrying");
            }
        }
    }
}

/// How long to wait between registration attempts (the kubelet's 100 ms doubling to 7 s).
pub fn registration_backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(7))).min(Duration::from_secs(7))
}
