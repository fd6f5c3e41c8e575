//! Registering the Node object (the kubelet's `kubelet_node_status.go`: `registerWithAPIServer`,
//! `initialNode`, `reconcileExistingNode`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use crate::config::KubeletConfig;

/// The architecture label and `nodeInfo.architecture` of a wasm node.
pub const WASM_ARCH: &str = "wasm32-wasi";

/// The labels this kubelet sets on its Node at registration: [`default_labels`] and
/// `--node-labels`.
pub fn labels(config: &KubeletConfig) -> BTreeMap<String, String> {
    let mut labels = default_labels(config);
    labels.extend(
        config
            .node_labels
            .iter()
            .map(|l| (l.key.clone(), l.value.clone())),
    );
    labels
}

/// The well-known labels the kubelet keeps true on an existing Node too (upstream's
/// `updateDefaultLabels`); `--node-labels` are applied at registration only, after which they
/// belong to the cluster's operators.
pub fn default_labels(config: &KubeletConfig) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "kubernetes.io/os".to_string(),
            std::env::consts::OS.to_string(),
        ),
        ("kubernetes.io/arch".to_string(), WASM_ARCH.to_string()),
        (
            "kubernetes.io/hostname".to_string(),
            config.node_name.clone(),
        ),
        ("type".to_string(), "krustlet".to_string()),
    ])
}

/// The Node to create: metadata and spec; the status comes from [`crate::node::status`].
pub fn initial_node(config: &KubeletConfig) -> Node {
    let taints = config
        .register_with_taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: Some(t.value.clone()).filter(|v| !v.is_empty()),
            effect: t.effect.clone(),
            time_added: None,
        })
        .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(labels(config)),
            annotations: Some(BTreeMap::from([(
                // As the kubelet does, so controllers attach and detach volumes for this node.
                "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(taints),
            ..Default::default()
        }),
        status: None,
    }
}

/// The keys of [`default_labels`].
const DEFAULT_LABEL_KEYS: &[&str] = &[
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
    "type",
];

/// Errors registering the node.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The API server refused or could not be reached; registration is retried.
    #[error("registering node {node}: {source}")]
    Api {
        /// The node name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Creates the Node, or reconciles the default labels on an existing one (a restart, or a Node that an
/// operator created ahead of time). Returns the Node as the API server has it.
pub async fn register(api: &Api<Node>, node: &Node) -> Result<Node, RegistrationError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let api_error = |source| RegistrationError::Api {
        node: name.clone(),
        source,
    };
    match api.create(&PostParams::default(), node).await {
        Ok(created) => {
            tracing::info!(node = %name, "registered node");
            Ok(created)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Taints and --node-labels are not reconciled: after registration they belong to
            // the cluster's operators (kubelet_node_status.go reconcileExistingNode).
            let ours: BTreeMap<String, String> = node
                .metadata
                .labels
                .iter()
                .flatten()
                .filter(|(k, _)| DEFAULT_LABEL_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let patch = serde_json::json!({"metadata": {"labels": ours}});
            let existing = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_error)?;
            tracing::info!(node = %name, "node already registered; default labels reconciled");
            Ok(existing)
        }
        Err(source) => Err(api_error(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconciled_keys_are_exactly_the_default_labels() {
        let config = crate::config::Flags {
            node_name: Some("n1".into()),
            node_labels: Some(vec!["team=wasm".parse().expect("label")]),
            ..Default::default()
        }
        .resolve()
        .expect("config");
        assert_eq!(
            labels(&config).get("team").map(String::as_str),
            Some("wasm")
        );
        let defaults = default_labels(&config);
        let keys: Vec<&str> = defaults.keys().map(String::as_str).collect();
        let mut expected = DEFAULT_LABEL_KEYS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }
}
