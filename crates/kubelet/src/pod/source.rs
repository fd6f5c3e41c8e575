//! The pod source: the pods bound to this node, from a watch on the API server (kube-runtime's
//! watcher, which relists after errors and `410 Gone`), fed to the pod workers.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use crate::pod::workers::PodWorkers;

/// Feeds `workers` from the API server until `stop` is cancelled.
///
/// A relist (start, or after the watch broke) ends with the set of pods that exist: workers
/// of pods missing from it are told their pod was removed, so pods deleted while the watch was
/// down are cleaned up.
pub async fn run(
    client: kube::Client,
    node_name: &str,
    workers: &mut PodWorkers,
    stop: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut relisted: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(Ok(watcher::Event::Apply(pod))) => workers.update(Arc::new(pod)),
            Some(Ok(watcher::Event::Delete(pod))) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    workers.remove(uid);
                }
            }
            Some(Ok(watcher::Event::Init)) => relisted.clear(),
            Some(Ok(watcher::Event::InitApply(pod))) => {
                relisted.extend(pod.metadata.uid.clone());
                workers.update(Arc::new(pod));
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let gone: Vec<String> = workers
                    .known()
                    .filter(|uid| !relisted.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    workers.remove(&uid);
                }
            }
            Some(Err(error)) => tracing::warn!(%error, "pod watch failed; retrying"),
            None => return,
        }
    }
}
