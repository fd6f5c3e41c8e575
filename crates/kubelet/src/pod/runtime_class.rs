//! `runtimeClassName`: the RuntimeClass handlers this node runs, reported in the Node's
//! `status.runtimeHandlers`, and the check a pod's RuntimeClass must pass before its sandbox
//! exists (upstream: `pkg/kubelet/runtimeclass` `LookupRuntimeHandler`, then the CRI runtime's
//! "no runtime for ... is configured").

use k8s_openapi::api::core::v1::{NodeRuntimeHandler, NodeRuntimeHandlerFeatures, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::Api;

use crate::pod::api::ApiLink;

/// The handler a RuntimeClass names to run pods here. The default handler (`""`, no
/// RuntimeClass) runs them too.
pub const HANDLER: &str = "wasmtime";

/// The Node's `status.runtimeHandlers`: the default handler and [`HANDLER`].
pub fn node_handlers() -> Vec<NodeRuntimeHandler> {
    ["", HANDLER]
        .into_iter()
        .map(|name| NodeRuntimeHandler {
            name: Some(name.into()),
            features: Some(NodeRuntimeHandlerFeatures {
                recursive_read_only_mounts: Some(false),
                user_namespaces: Some(false),
            }),
        })
        .collect()
}

/// Why a pod's sandbox cannot be created; the worker reports it as a
/// `FailedCreatePodSandBox` warning and retries, as the kubelet does.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The RuntimeClass could not be read.
    #[error("failed to lookup RuntimeClass {name}: {source}")]
    Lookup {
        /// The RuntimeClass.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The RuntimeClass names a handler this node does not have.
    #[error(
        "no runtime for {handler:?} is configured (RuntimeClass {class:?}; this node runs handler \
         {HANDLER:?})"
    )]
    UnknownHandler {
        /// The RuntimeClass.
        class: String,
        /// Its handler.
        handler: String,
    },
    /// Standalone mode cannot read RuntimeClasses.
    #[error("RuntimeClass {0:?} needs the API server, and krustlet standalone has none")]
    NoApiServer(String),
}

/// Checks the pod's RuntimeClass, if it names one: its handler must be one this node has.
pub async fn check(api: &ApiLink, pod: &Pod) -> Result<(), SandboxError> {
    let Some(name) = pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.clone())
        .filter(|n| !n.is_empty())
    else {
        return Ok(());
    };
    let client = api
        .client(String::new)
        .map_err(|_| SandboxError::NoApiServer(name.clone()))?;
    let classes: Api<RuntimeClass> = Api::all(client);
    let class = classes
        .get(&name)
        .await
        .map_err(|source| SandboxError::Lookup {
            name: name.clone(),
            source,
        })?;
    if class.handler == HANDLER || class.handler.is_empty() {
        Ok(())
    } else {
        Err(SandboxError::UnknownHandler {
            class: name,
            handler: class.handler,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_reports_the_default_and_the_wasmtime_handler() {
        let names: Vec<String> = node_handlers().into_iter().filter_map(|h| h.name).collect();
        assert_eq!(names, ["", "wasmtime"]);
    }

    #[tokio::test]
    async fn a_pod_without_a_runtime_class_needs_no_lookup() {
        let pod = Pod::default();
        assert!(check(&ApiLink::Standalone, &pod).await.is_ok());
    }
}
