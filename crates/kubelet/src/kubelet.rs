//! [`Kubelet`]: runs the node agent from start to graceful shutdown.
//!
//! Start: credentials (TLS bootstrap if needed) -> register the Node (retried until the API
//! server answers) -> lease, status, certificate tasks. Stop (the shutdown future resolves):
//! with `--shutdown-grace-period` > 0 a graceful node shutdown (stop the pods, report them
//! Failed and the node NotReady); otherwise a restart (return at once, pods resume next start).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bootstrap::{self, BootstrapError};
use crate::config::KubeletConfig;
use crate::container::runner::NodeServices;
use crate::container::service_env::ServiceEnv;
use crate::events::EventPublisher;
use crate::eviction::{EvictionManager, Evictions};
use crate::image::{ImageError, ImageStore};
use crate::metrics::KubeletMetrics;
use crate::node::allocatable::NodeResources;
use crate::node::conditions::Readiness;
use crate::node::host::HostInfo;
use crate::node::lease::LeaseRenewer;
use crate::node::reachability::{ApiServer, connection_failure};
use crate::node::shutdown::SHUTDOWN_MESSAGE;
use crate::node::status::{StatusInputs, StatusReporter, registration_backoff};
use crate::pod::api::ApiLink;
use crate::pod::events::PodEvents;
use crate::pod::mirror::MirrorPods;
use crate::pod::source::{self, StaticPods};
use crate::pod::static_pods::ManifestDir;
use crate::pod::status::MirrorUids;
use crate::pod::status::{StatusManager, StatusSink};
use crate::pod::update::PodUpdates;
use crate::pod::worker::{PodDirs, WorkerContext};
use crate::pod::workers::PodWorkers;
use crate::runtime::Runtime;
use crate::server::NodeView;
use crate::stats::Stats;

/// Before the node registers (or runs its first static pod): what the first pod would otherwise
/// wait for, the image-reference parser and the runtime's one-time set-up.
pub(crate) async fn warm_up(runtime: &Arc<dyn Runtime>) {
    let runtime = runtime.clone();
    let _ = tokio::task::spawn_blocking(move || {
        crate::image::warm_reference_parser();
        runtime.warm_up();
    })
    .await;
}

/// Errors that stop the kubelet from starting.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// No usable credentials.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// The data directory cannot be created.
    #[error("cannot create --data-dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image store cannot be opened.
    #[error(transparent)]
    Images(#[from] ImageError),
    /// The kubelet API cannot start.
    #[error("kubelet API: {0}")]
    Server(#[from] crate::server::ServerError),
    /// A long-running node task panicked.
    #[error(
        "the {0} task panicked (a bug; the log above says where); exiting so the supervisor restarts krustlet"
    )]
    TaskPanicked(&'static str),
    /// The kubelet API's port is taken.
    #[error(
        "port {port} on {ip} is already in use (another kubelet or krustlet?): stop that \
         process or choose another port with --port"
    )]
    PortInUse {
        /// The node IP.
        ip: std::net::IpAddr,
        /// The port.
        port: u16,
    },
    /// The API server cannot be reached for TLS bootstrap.
    #[error("TLS bootstrap: {0}")]
    Unreachable(String),
    /// The client certificate expired and was not renewed.
    #[error(transparent)]
    CertificateExpired(#[from] bootstrap::CertificateExpired),
    /// The image signature policy cannot be loaded.
    #[error("--image-policy-file: {0}")]
    ImagePolicy(#[from] crate::image::signature::policy::PolicyError),
}

/// The node's signature policy from `--image-policy-file` (watched for changes), or none.
pub(crate) fn signature_policy(
    config: &KubeletConfig,
) -> Result<Arc<crate::image::signature::Signatures>, KubeletError> {
    use crate::image::signature::{RELOAD_INTERVAL, Signatures};
    match &config.image_policy_file {
        None => Ok(Signatures::disabled()),
        Some(path) => {
            let signatures = Signatures::load(path, config.insecure_registries.clone())?;
            signatures.watch(RELOAD_INTERVAL);
            Ok(signatures)
        }
    }
}

/// Fails early, before any API traffic, if the kubelet API's port is taken.
fn check_port(config: &KubeletConfig) -> Result<(), KubeletError> {
    match std::net::TcpListener::bind((config.node_ip, config.port)) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(KubeletError::PortInUse {
            ip: config.node_ip,
            port: config.port,
        }),
        // Other problems (an address not ours) are reported by the server with their cause.
        _ => Ok(()),
    }
}

/// A kubelet for one node.
pub struct Kubelet {
    config: KubeletConfig,
    runtime: Arc<dyn Runtime>,
}

impl Kubelet {
    /// A kubelet with `config` running pods on `runtime`.
    pub fn new(config: KubeletConfig, runtime: Arc<dyn Runtime>) -> Self {
        Self { config, runtime }
    }

    /// Runs until `shutdown` resolves, then shuts down gracefully and returns `Ok`.
    ///
    /// # Errors
    /// For problems at start that retrying cannot fix (credentials, data dir), and
    /// [`KubeletError::CertificateExpired`] when the client certificate stayed expired for 5
    /// minutes with no renewal. An unreachable or failing API server is retried for as long as
    /// it takes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), KubeletError> {
        let config = self.config;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| KubeletError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        check_port(&config)?;
        let server = ApiServer::of(&config);
        let client = match bootstrap::node_client(&config).await {
            Ok(client) => client,
            Err(error) => {
                return Err(match connection_failure(&error) {
                    Some(cause) => KubeletError::Unreachable(server.unreachable_message(&cause)),
                    None => error.into(),
                });
            }
        };
        let heartbeat = bootstrap::heartbeat_client(&config).await?;
        let (clients_tx, clients) = watch::channel(client);
        // The Lease and node status: the same credentials without the QPS limit.
        let (heartbeats_tx, heartbeats) = watch::channel(heartbeat);
        let (uid_tx, node_uid) = watch::channel(None);
        let (readiness_tx, readiness) = watch::channel(Readiness::Ready);
        let stop = CancellationToken::new();

        warm_up(&self.runtime).await;
        let images = Arc::new(
            ImageStore::new(
                config.data_path("images"),
                config.insecure_registries.clone(),
                config.pull_limits,
            )?
            .with_signatures(signature_policy(&config)?),
        );
        // Compiled code of programs whose images went while the node was down goes too.
        self.runtime
            .retain_programs(&images.store().referenced_blobs());
        let (images_tx, images_rx) = watch::channel(Vec::new());
        let host = HostInfo::read();
        let storage = crate::node::host::Filesystem::of(&config.data_dir)
            .map(|fs| fs.total_bytes)
            .unwrap_or(0);
        let capacity = NodeResources::capacity(&config, &host, storage);
        let allocatable = NodeResources::allocatable(&config, &capacity);
        let memory_bound = NodeResources::pods_memory_bound(&config, &capacity);
        let evictions = Evictions::default();
        // The pod network, shared by the workers (sandboxes), the runners (listeners, probes),
        // the API (port-forward), node status (Ready) and the orphan cleanup (reconcile).
        let network = crate::network::from_config(&config);
        let inputs = StatusInputs {
            host,
            runtime_version: self.runtime.version(),
            images: images_rx,
            pressure: evictions.shared_pressure(),
            network: network.clone(),
        };
        // Made before the events, which let its patches go first.
        let status = StatusManager::new();
        let events =
            EventPublisher::connected(clients.clone(), &config.node_name, status.sending());
        let mut reporter = StatusReporter::new(
            config.clone(),
            inputs,
            heartbeats.clone(),
            events.clone(),
            uid_tx,
        );
        tokio::pin!(shutdown);
        let mut attempt = 0;
        loop {
            match reporter.register(&Readiness::Ready).await {
                Ok(()) => break,
                Err(error) => {
                    let wait = registration_backoff(attempt);
                    attempt += 1;
                    match connection_failure(&error) {
                        Some(cause) => tracing::warn!(
                            retry_in = ?wait,
                            "{}",
                            server.unreachable_message(&cause)
                        ),
                        None => {
                            tracing::warn!(%error, retry_in = ?wait, "node registration failed")
                        }
                    }
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }

        let lease = LeaseRenewer::new(
            heartbeats,
            config.node_name.clone(),
            config.node_lease_duration_seconds,
        );
        let node_uid_for_mirrors = node_uid.clone();
        let lease_task = tokio::spawn(lease.run(node_uid, stop.clone()));
        let status_task = tokio::spawn(reporter.run(readiness, stop.clone()));
        let mut supervised = JoinSet::new();
        supervise(
            &mut supervised,
            "client certificate rotation",
            bootstrap::rotate_client_certificate(
                config.clone(),
                clients_tx,
                heartbeats_tx,
                stop.clone(),
            ),
        );
        let mirror_uids = MirrorUids::default();
        supervise(
            &mut supervised,
            "status manager",
            status
                .clone()
                .run(StatusSink::Api(clients.clone(), mirror_uids.clone())),
        );
        let stats = Stats::new();
        supervise(
            &mut supervised,
            "stats sampler",
            stats.clone().run_sampler(stop.clone()),
        );
        let metrics = KubeletMetrics::new(&config.node_name);
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        self.runtime.register_metrics(&mut registry);
        let exec_targets = crate::container::exec_targets::ExecTargets::default();
        let ctx = WorkerContext {
            services: Arc::new(NodeServices {
                runtime: self.runtime.clone(),
                images: images.clone(),
                events: PodEvents::new(events),
                node_name: config.node_name.clone(),
                node_labels: crate::node::registration::labels(&config),
                node_ip: config.node_ip.to_string(),
                api: ApiLink::Connected(clients.clone()),
                log_policy: config.log_policy(),
                log_links: config.container_log_links_dir.clone(),
                stats: stats.clone(),
                metrics: metrics.clone(),
                allocatable,
                memory_bound,
                service_env: ServiceEnv::watch(clients.clone(), stop.clone()),
                exec: exec_targets.clone(),
                network: network.clone(),
                outbound_deny: config.wasm_outbound_deny.clone().into(),
                dns: Arc::new(config.dns.clone()),
            }),
            status: status.clone(),
            dirs: PodDirs {
                pods: config.data_path("pods"),
                logs: config.pod_logs_dir.clone(),
            },
            evictions: evictions.clone(),
        };
        let workers = PodWorkers::new(ctx);
        supervise(
            &mut supervised,
            "orphan cleanup",
            crate::pod::orphans::run(
                clients.clone(),
                config.node_name.clone(),
                workers.known_pods(),
                crate::pod::orphans::OrphanDirs {
                    pods: config.data_path("pods"),
                    logs: config.pod_logs_dir.clone(),
                },
                network.clone(),
                crate::pod::orphans::ORPHAN_CLEANUP_PERIOD,
                stop.clone(),
            ),
        );
        let eviction = EvictionManager {
            config: config.clone(),
            pods: workers.known_pods(),
            stats: stats.clone(),
            evictions,
            pods_dir: config.data_path("pods"),
        };
        supervise(
            &mut supervised,
            "eviction manager",
            eviction.run(stop.clone()),
        );

        let (serving_tx, serving) = watch::channel(None);
        let status_for_mirrors = status.clone();
        let view = NodeView {
            pods: workers.known_pods(),
            status,
            stats,
            metrics,
            registry: Arc::new(registry),
            exec: exec_targets,
            network,
        };
        let server = crate::server::Server::bind(&config, clients.clone(), serving, view).await?;
        supervise(&mut supervised, "kubelet API", server.run(stop.clone()));
        supervise(
            &mut supervised,
            "serving certificate",
            bootstrap::manage_serving_certificate(
                config.clone(),
                clients.clone(),
                serving_tx,
                stop.clone(),
            ),
        );

        supervise(
            &mut supervised,
            "image garbage collection",
            crate::image::gc::run(
                images.clone(),
                self.runtime.clone(),
                config.data_dir.clone(),
                config.image_gc,
                images_tx,
                stop.clone(),
            ),
        );
        let source_stop = CancellationToken::new();
        let pods = {
            let (clients, node, stop) = (
                clients.clone(),
                config.node_name.clone(),
                source_stop.clone(),
            );
            let statics = config.manifests.clone().map(|dir| StaticPods {
                dir: ManifestDir::new(dir, &node, None),
                mirrors: MirrorPods::new(
                    clients.clone(),
                    &node,
                    node_uid_for_mirrors,
                    mirror_uids,
                    status_for_mirrors,
                ),
            });
            let (updates, queue) = PodUpdates::channel();
            tokio::spawn(async move { source::run(clients, &node, updates, statics, stop).await });
            // Ends when the source does (its sender dropped), handing back the workers.
            tokio::spawn(workers.run(queue))
        };

        let expired =
            bootstrap::exit_when_expired(config.client_cert_path(), clients.clone(), None);
        tokio::pin!(expired);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                expired = &mut expired => {
                    // As upstream: exit at once, pods as they are; their statuses cannot be
                    // written without credentials anyway, and the restarted kubelet picks them
                    // up again.
                    tracing::error!(%expired, "exiting");
                    source_stop.cancel();
                    stop.cancel();
                    return Err(expired.into());
                }
                Some(done) = supervised.join_next(), if !supervised.is_empty() => {
                    // A node task that panicked leaves the node half alive: end the process
                    // non-zero so its supervisor (systemd) starts it again.
                    if let Ok(Some(task)) = done {
                        tracing::error!(task, "node task panicked; exiting");
                        source_stop.cancel();
                        stop.cancel();
                        return Err(KubeletError::TaskPanicked(task));
                    }
                }
            }
        }
        if config.shutdown_grace_period.is_zero() {
            // A restart, not a node shutdown (upstream's kubelet exits on SIGTERM too; its
            // graceful node shutdown needs shutdownGracePeriod > 0). Wasm instances end with
            // the process; pods resume from their last status when Krustlet starts again.
            tracing::info!(node = %config.node_name, "exiting; pods resume at the next start (graceful node shutdown is off: --shutdown-grace-period=0)");
            source_stop.cancel();
            stop.cancel();
            return Ok(());
        }
        tracing::info!(node = %config.node_name, "graceful node shutdown");
        readiness_tx.send_replace(Readiness::NotReady(SHUTDOWN_MESSAGE.into()));
        source_stop.cancel();
        if let Ok(mut workers) = pods.await {
            workers.shutdown(config.shutdown_grace_period).await;
        }
        stop.cancel();
        let _ = lease_task.await;
        if let Ok(mut reporter) = status_task.await {
            let not_ready = Readiness::NotReady(SHUTDOWN_MESSAGE.into());
            let final_report = reporter.report_now(&not_ready);
            match tokio::time::timeout(config.shutdown_grace_period, final_report).await {
                Ok(Ok(())) => tracing::info!("reported the node NotReady"),
                Ok(Err(error)) => tracing::warn!(%error, "could not report the node NotReady"),
                Err(_) => tracing::warn!("timed out reporting the node NotReady"),
            }
        }
        Ok(())
    }
}

/// Runs `task` in `set`; the set yields its name if it panicked.
fn supervise<F>(set: &mut JoinSet<Option<&'static str>>, name: &'static str, task: F)
where
    F: Future + Send + 'static,
{
    use futures::FutureExt;
    set.spawn(async move {
        std::panic::AssertUnwindSafe(task)
            .catch_unwind()
            .await
            .err()
            .map(|_| name)
    });
}
