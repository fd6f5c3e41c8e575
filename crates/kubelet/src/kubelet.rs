//! [`Kubelet`]: runs the node agent from start to graceful shutdown.
//!
//! Start: credentials (TLS bootstrap if needed) -> register the Node (retried until the API
//! server answers) -> lease, status, certificate tasks. Stop (the shutdown future resolves):
//! report NotReady, stop the tasks, return.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bootstrap::{self, BootstrapError};
use crate::config::KubeletConfig;
use crate::container::runner::NodeServices;
use crate::eviction::{EvictionManager, Evictions};
use crate::image::{ImageError, ImageStore};
use crate::log::pods_log_root;
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
use crate::pod::mirror::{MirrorPods, MirrorUids};
use crate::pod::source::{self, StaticPods};
use crate::pod::static_pods::ManifestDir;
use crate::pod::status::{StatusManager, StatusSink};
use crate::pod::worker::{PodDirs, WorkerContext};
use crate::pod::workers::PodWorkers;
use crate::runtime::Runtime;
use crate::server::NodeView;
use crate::stats::Stats;

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
    /// Only for problems at start that retrying cannot fix (credentials, data dir). An
    /// unreachable or failing API server is retried for as long as it takes.
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
        let (clients_tx, clients) = watch::channel(client);
        let (uid_tx, node_uid) = watch::channel(None);
        let (readiness_tx, readiness) = watch::channel(Readiness::Ready);
        let stop = CancellationToken::new();

        let images = Arc::new(ImageStore::new(
            config.data_path("images"),
            config.insecure_registries.clone(),
            config.pull_limits,
        )?);
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
        let inputs = StatusInputs {
            host,
            runtime_version: self.runtime.version(),
            images: images_rx,
        };
        let mut reporter = StatusReporter::new(config.clone(), inputs, clients.clone(), uid_tx);
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
            clients.clone(),
            config.node_name.clone(),
            config.node_lease_duration_seconds,
        );
        let node_uid_for_mirrors = node_uid.clone();
        let lease_task = tokio::spawn(lease.run(node_uid, stop.clone()));
        let status_task = tokio::spawn(reporter.run(readiness, stop.clone()));
        tokio::spawn(bootstrap::rotate_client_certificate(
            config.clone(),
            clients_tx,
            stop.clone(),
        ));
        let status = StatusManager::new();
        let mirror_uids = MirrorUids::default();
        tokio::spawn(
            status
                .clone()
                .run(StatusSink::Api(clients.clone(), mirror_uids.clone())),
        );
        let stats = Stats::new();
        tokio::spawn(stats.clone().run_sampler(stop.clone()));
        let metrics = KubeletMetrics::new(&config.node_name);
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        self.runtime.register_metrics(&mut registry);
        let evictions = Evictions::default();
        let ctx = WorkerContext {
            services: NodeServices {
                runtime: self.runtime.clone(),
                images: images.clone(),
                events: PodEvents::new(ApiLink::Connected(clients.clone()), &config.node_name),
                node_name: config.node_name.clone(),
                node_labels: crate::node::registration::labels(&config),
                node_ip: config.node_ip.to_string(),
                api: ApiLink::Connected(clients.clone()),
                log_policy: config.log_policy(),
                stats: stats.clone(),
                metrics: metrics.clone(),
                allocatable,
                memory_bound,
            },
            status: status.clone(),
            dirs: PodDirs {
                pods: config.data_path("pods"),
                logs: pods_log_root(&config.data_dir),
            },
            evictions: evictions.clone(),
        };
        let mut workers = PodWorkers::new(ctx);
        let eviction = EvictionManager {
            config: config.clone(),
            pods: workers.known_pods(),
            stats: stats.clone(),
            evictions,
            pods_dir: config.data_path("pods"),
        };
        tokio::spawn(eviction.run(stop.clone()));

        let (serving_tx, serving) = watch::channel(None);
        let status_for_mirrors = status.clone();
        let view = NodeView {
            pods: workers.known_pods(),
            status,
            stats,
            metrics,
            registry: Arc::new(registry),
        };
        let server = crate::server::Server::bind(&config, clients.clone(), serving, view).await?;
        tokio::spawn(server.run(stop.clone()));
        tokio::spawn(bootstrap::manage_serving_certificate(
            config.clone(),
            clients.clone(),
            serving_tx,
            stop.clone(),
        ));

        tokio::spawn(crate::image::gc::run(
            images.clone(),
            self.runtime.clone(),
            config.data_dir.clone(),
            config.image_gc,
            images_tx,
            stop.clone(),
        ));
        let source_stop = CancellationToken::new();
        let pods = {
            let (client, node, stop) = (
                clients.borrow().clone(),
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
            tokio::spawn(async move {
                source::run(client, &node, &mut workers, statics, stop).await;
                workers
            })
        };

        shutdown.await;
        tracing::info!(node = %config.node_name, "shutting down");
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
