//! Waiting for the ConfigMaps and Secrets a waiting pod needs (upstream's watch-based
//! ConfigMap and Secret managers): one single-object watch per reference (a field selector on
//! `metadata.name`, which the Node authorizer allows for objects the node's pods refer to), so
//! a container waiting in `CreateContainerConfigError` or a volume in `FailedMount` retries as
//! soon as the object appears or changes, without polling the API server.

use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};

/// Retry anyway after this long: a change that raced with the snapshot is not missed forever.
pub const FALLBACK: Duration = Duration::from_secs(60);

/// The kind of a referenced object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

/// A referenced object and whether it existed when last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// ConfigMap or Secret.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Whether it existed at the last read.
    pub existed: bool,
}

/// Resolves when any of `refs` in `namespace` is created, changed or deleted since it was last
/// read, or after [`FALLBACK`].
pub async fn changed(client: &kube::Client, namespace: &str, refs: &[ObjectRef]) {
    if refs.is_empty() {
        tokio::time::sleep(FALLBACK).await;
        return;
    }
    let watches = refs.iter().map(|r| {
        Box::pin(async move {
            let result = match r.kind {
                Kind::ConfigMap => {
                    watch_one(Api::<ConfigMap>::namespaced(client.clone(), namespace), r).await
                }
                Kind::Secret => {
                    watch_one(Api::<Secret>::namespaced(client.clone(), namespace), r).await
                }
            };
            if let Err(error) = result {
                // Cannot watch (API away): fall back to the timer.
                tracing::debug!(name = %r.name, %error, "object watch failed");
                tokio::time::sleep(FALLBACK).await;
            }
        })
    });
    let _ = tokio::time::timeout(FALLBACK, future::select_all(watches)).await;
}

/// Lists the one object (its existence and the list's resourceVersion), then watches from there
/// until the first event.
async fn watch_one<K>(api: Api<K>, reference: &ObjectRef) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let fields = format!("metadata.name={}", reference.name);
    let list = api.list(&ListParams::default().fields(&fields)).await?;
    if list.items.is_empty() == reference.existed {
        // It appeared or went away since the last read.
        return Ok(());
    }
    let version = list.metadata.resource_version.unwrap_or_default();
    let params = WatchParams::default().fields(&fields).timeout(290);
    let mut events = api.watch(&params, &version).await?.boxed();
    while let Some(event) = events.next().await {
        match event? {
            WatchEvent::Bookmark(_) => continue,
            _ => return Ok(()),
        }
    }
    Ok(())
}
