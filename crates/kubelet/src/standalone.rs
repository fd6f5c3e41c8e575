//! Standalone mode: static pods from a manifest directory with no API server (the kubelet's
//! `--pod-manifest-path` without `--kubeconfig`).
//!
//! The same pod workers run the pods; what differs is at the edges: statuses go to status
//! files under `<data-dir>/static-pods/` (read by `krustlet pods`), events go to the log,
//! volumes and env that need the API server fail with a message saying so, and a deleted pod
//! is only local. Logs are the usual CRI files under `<data-dir>/logs/pods/`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::KubeletError;
use crate::config::KubeletConfig;
use crate::container::runner::NodeServices;
use crate::container::service_env::ServiceEnv;
use crate::events::EventPublisher;
use crate::eviction::Evictions;
use crate::image::ImageStore;
use crate::kubelet::{signature_policy, warm_up};
use crate::metrics::KubeletMetrics;
use crate::node::allocatable::NodeResources;
use crate::node::host::HostInfo;
use crate::pod::api::ApiLink;
use crate::pod::events::PodEvents;
use crate::pod::static_pods::{self, ManifestDir};
use crate::pod::status::{StatusManager, StatusSink};
use crate::pod::update::PodUpdates;
use crate::pod::worker::{PodDirs, WorkerContext};
use crate::pod::workers::PodWorkers;
use crate::runtime::Runtime;
use crate::stats::Stats;

/// Where standalone mode writes pod status files: `<data-dir>/static-pods`.
pub fn status_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("static-pods")
}

/// Runs the static pods of `manifests` on `runtime` until `shutdown` resolves, then stops them
/// within the shutdown grace period.
///
/// # Errors
/// Only for problems at start: the data dir or the image store cannot be created.
pub async fn run(
    config: KubeletConfig,
    manifests: PathBuf,
    runtime: Arc<dyn Runtime>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KubeletError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| KubeletError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    warm_up(&runtime).await;
    let images = Arc::new(
        ImageStore::new(
            config.data_path("images"),
            config.insecure_registries.clone(),
            config.pull_limits,
        )?
        .with_signatures(signature_policy(&config)?),
    );
    // Compiled code of programs whose images went while the node was down goes too.
    runtime.retain_programs(&images.store().referenced_blobs());
    let host = HostInfo::read();
    let storage = crate::node::host::Filesystem::of(&config.data_dir)
        .map(|fs| fs.total_bytes)
        .unwrap_or(0);
    let capacity = NodeResources::capacity(&config, &host, storage);
    let allocatable = NodeResources::allocatable(&config, &capacity);
    let memory_bound = NodeResources::pods_memory_bound(&config, &capacity);
    let stop = CancellationToken::new();
    let statuses = status_dir(&config.data_dir);
    // Created now, so `krustlet pods` can tell "running, no pods yet" from "not running".
    std::fs::create_dir_all(&statuses).map_err(|source| KubeletError::DataDir {
        path: statuses.clone(),
        source,
    })?;
    let status = StatusManager::new();
    tokio::spawn(status.clone().run(StatusSink::Files(statuses.clone())));
    let stats = Stats::new();
    tokio::spawn(stats.clone().run_sampler(stop.clone()));
    let ctx = WorkerContext {
        services: Arc::new(NodeServices {
            runtime,
            images,
            events: PodEvents::new(EventPublisher::log_only()),
            node_name: config.node_name.clone(),
            node_labels: crate::node::registration::labels(&config),
            node_ip: config.node_ip.to_string(),
            api: ApiLink::Standalone,
            log_policy: config.log_policy(),
            log_links: config.container_log_links_dir.clone(),
            stats,
            metrics: KubeletMetrics::new(&config.node_name),
            allocatable,
            memory_bound,
            service_env: ServiceEnv::none(),
            exec: Default::default(),
            network: crate::network::NodeNetwork::new(config.node_ip),
            outbound_deny: config.wasm_outbound_deny.clone().into(),
            dns: Arc::new(config.dns.clone()),
        }),
        status,
        // No eviction manager here: static pods are never evicted (as upstream's critical
        // static pods), only bounded by their limits.
        evictions: Evictions::default(),
        dirs: PodDirs {
            pods: config.data_path("pods"),
            logs: config.pod_logs_dir.clone(),
        },
    };
    let workers = PodWorkers::new(ctx);
    tracing::info!(manifests = %manifests.display(), node = %config.node_name, data_dir = %config.data_dir.display(), "running static pods standalone");
    let source = ManifestDir::new(manifests, &config.node_name, Some(statuses));
    let source_stop = CancellationToken::new();
    let pods = {
        let stop = source_stop.clone();
        let (updates, queue) = PodUpdates::channel();
        tokio::spawn(static_pods::run(source, updates, stop));
        // Ends when the source does (its sender dropped), handing back the workers.
        tokio::spawn(workers.run(queue))
    };
    shutdown.await;
    source_stop.cancel();
    if config.shutdown_grace_period.is_zero() {
        // A restart: pods resume from their status files at the next start.
        tracing::info!("exiting; pods resume at the next start (--shutdown-grace-period=0)");
    } else if let Ok(mut workers) = pods.await {
        tracing::info!("graceful shutdown");
        workers.shutdown(config.shutdown_grace_period).await;
    }
    stop.cancel();
    Ok(())
}
