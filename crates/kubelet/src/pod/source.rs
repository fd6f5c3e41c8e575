//! The pod source: the pods bound to this node, from a watch on the API server (kube-runtime's
//! watcher, which relists after errors and `410 Gone`), fed to the pod workers.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bootstrap::clients::follow_client;
use crate::pod::mirror::{MirrorPods, is_mirror};
use crate::pod::static_pods::ManifestDir;
use crate::pod::update::{PodUpdate, PodUpdates};

/// Static pods of a connected node: the manifest directory and their mirror pods.
pub struct StaticPods {
    /// The manifest directory.
    pub dir: ManifestDir,
    /// The mirror pods in the API.
    pub mirrors: MirrorPods,
}

/// `pod` as the node keeps it for as long as the pod lives (heaptrack at 300 sleeping pods:
/// the watched pods were the largest part of what the node held per pod):
/// - without its `metadata.managedFields`, which the node never reads: the server-side apply
///   bookkeeping of every writer of the pod, kept as parsed JSON;
/// - with its lists no longer than their items. serde grows a list as it reads it, so a pod's
///   one container status (about 750 bytes) was kept in room for four.
fn slim(mut pod: Pod) -> Arc<Pod> {
    pod.metadata.managed_fields = None;
    shrink(&mut pod);
    Arc::new(pod)
}

/// Gives back the spare room of the lists a pod keeps; the values are unchanged.
fn shrink(pod: &mut Pod) {
    fn fit<T>(list: &mut Option<Vec<T>>) {
        if let Some(list) = list {
            list.shrink_to_fit();
        }
    }
    fit(&mut pod.metadata.owner_references);
    fit(&mut pod.metadata.finalizers);
    if let Some(spec) = &mut pod.spec {
        spec.containers.shrink_to_fit();
        fit(&mut spec.init_containers);
        fit(&mut spec.ephemeral_containers);
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            fit(&mut c.command);
            fit(&mut c.args);
            fit(&mut c.env);
            fit(&mut c.env_from);
            fit(&mut c.ports);
            fit(&mut c.volume_mounts);
        }
        fit(&mut spec.volumes);
        fit(&mut spec.tolerations);
        fit(&mut spec.image_pull_secrets);
    }
    if let Some(status) = &mut pod.status {
        fit(&mut status.conditions);
        fit(&mut status.container_statuses);
        fit(&mut status.init_container_statuses);
        fit(&mut status.ephemeral_container_statuses);
        fit(&mut status.pod_ips);
        fit(&mut status.host_ips);
    }
}

/// Feeds the pod workers (through `updates`) from the API server until `stop` is cancelled.
///
/// A relist (start, or after the watch broke) ends with the set of pods that exist: workers
/// of pods missing from it are told their pod was removed, so pods deleted while the watch was
/// down are cleaned up. Ends when `stop` is cancelled or the workers are gone.
///
/// The watch follows the current client on `clients`: a rotated client certificate restarts
/// it (with a relist), so it never runs on with an expired one.
///
/// With `statics`, the manifest directory is read every second too, and mirror pods (which
/// the node does not run: it runs their static pods) are kept in step with it.
pub async fn run(
    clients: watch::Receiver<kube::Client>,
    node_name: &str,
    updates: PodUpdates,
    mut statics: Option<StaticPods>,
    stop: CancellationToken,
) {
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut events = follow_client(clients, move |client| {
        watcher(Api::<Pod>::all(client), config.clone()).default_backoff()
    })
    .boxed();
    let mut relisted: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick(), if statics.is_some() => {
                if let Some(statics) = statics.as_mut() {
                    if !statics.dir.sync(&updates).await {
                        return;
                    }
                    statics.mirrors.reconcile(&statics.dir.pods()).await;
                }
                continue;
            }
            event = events.next() => event,
        };
        // Mirror pods are the node's own reflections of static pods: tracked, never run.
        if let Some(Ok(
            watcher::Event::Apply(pod)
            | watcher::Event::InitApply(pod)
            | watcher::Event::Delete(pod),
        )) = &event
            && is_mirror(pod)
        {
            if let Some(statics) = statics.as_mut() {
                if matches!(event, Some(Ok(watcher::Event::Delete(_)))) {
                    statics.mirrors.forget(pod);
                } else {
                    statics.mirrors.observe(pod);
                }
                statics.mirrors.reconcile(&statics.dir.pods()).await;
            }
            continue;
        }
        let sent = match event {
            Some(Ok(watcher::Event::Apply(pod))) => updates.apply(slim(pod)).await,
            Some(Ok(watcher::Event::Delete(pod))) => match pod.metadata.uid {
                Some(uid) => updates.remove(uid).await,
                None => true,
            },
            Some(Ok(watcher::Event::Init)) => {
                relisted.clear();
                true
            }
            Some(Ok(watcher::Event::InitApply(pod))) => {
                relisted.extend(pod.metadata.uid.clone());
                updates.apply(slim(pod)).await
            }
            Some(Ok(watcher::Event::InitDone)) => {
                // Static pods are not in the API under their own UIDs.
                let mut present = std::mem::take(&mut relisted);
                if let Some(statics) = &statics {
                    present.extend(statics.dir.keys().into_iter().map(|k| k.uid));
                }
                updates.send(PodUpdate::Relisted(present)).await
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "pod watch failed; retrying");
                true
            }
            None => return,
        };
        if !sent {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slim_pod_keeps_its_values_in_lists_without_spare_room() {
        // From text, as the watch reads it: no length ahead of each list.
        let text = serde_json::json!({
            "metadata": {"name": "p", "managedFields": [{"manager": "kubectl"}]},
            "spec": {"containers": [{"name": "main", "args": ["sleep", "9"]}]},
            "status": {"containerStatuses": [{"name": "main", "image": "i", "imageID": "",
                                              "ready": false, "restartCount": 0}],
                       "conditions": [{"type": "Ready", "status": "False"}]}
        })
        .to_string();
        let parsed: Pod = serde_json::from_str(&text).expect("a pod");
        let statuses = parsed
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        assert!(
            statuses.expect("statuses").capacity() > 1,
            "serde left spare room"
        );
        let mut expected = parsed.clone();
        expected.metadata.managed_fields = None;

        let slim = slim(parsed);
        assert_eq!(*slim, expected);
        let spec = slim.spec.as_ref().expect("a spec");
        assert_eq!(spec.containers.capacity(), 1);
        assert_eq!(spec.containers[0].args.as_ref().map(Vec::capacity), Some(2));
        let status = slim.status.as_ref().expect("a status");
        assert_eq!(
            status.container_statuses.as_ref().map(Vec::capacity),
            Some(1)
        );
        assert_eq!(status.conditions.as_ref().map(Vec::capacity), Some(1));
    }
}
