//! A container's environment (the kubelet's `makeEnvironmentVariables`): `value` with `$(VAR)`
//! references to earlier entries, and `valueFrom.fieldRef` (the Downward API).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::container::argv::expand;

/// Why the environment cannot be built; the container waits with
/// `CreateContainerConfigError` and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A `fieldRef` names a field the Downward API does not offer.
    #[error("env {name}: unsupported fieldRef {field_path:?}")]
    UnsupportedField {
        /// The variable.
        name: String,
        /// The field path.
        field_path: String,
    },
    /// A source this kubelet does not resolve yet.
    #[error("env {name}: {source_kind} is not supported by this node yet")]
    UnsupportedSource {
        /// The variable (or `envFrom`).
        name: String,
        /// What kind of source.
        source_kind: &'static str,
    },
}

/// Resolves a `fieldRef` path against the pod (and the node's IP for status fields).
pub fn field_value(pod: &Pod, path: &str, node_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str| {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_string)
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        // The pod shares the node's network: its IPs are the node's.
        "status.hostIP" | "status.hostIPs" | "status.podIP" | "status.podIPs" => {
            node_ip.to_string()
        }
        _ => {
            if let Some(key) = map_key("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = map_key("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

/// The container's environment, in order.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    node_ip: &str,
) -> Result<Vec<(String, String)>, EnvError> {
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(EnvError::UnsupportedSource {
            name: "envFrom".into(),
            source_kind: "envFrom",
        });
    }
    let mut resolved: Vec<(String, String)> = Vec::new();
    let mut defined: HashMap<String, String> = HashMap::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, &field.field_path, node_ip).ok_or_else(|| {
                        EnvError::UnsupportedField {
                            name: var.name.clone(),
                            field_path: field.field_path.clone(),
                        }
                    })?
                } else {
                    let source_kind = if from.config_map_key_ref.is_some() {
                        "configMapKeyRef"
                    } else if from.secret_key_ref.is_some() {
                        "secretKeyRef"
                    } else if from.resource_field_ref.is_some() {
                        "resourceFieldRef"
                    } else {
                        "valueFrom"
                    };
                    return Err(EnvError::UnsupportedSource {
                        name: var.name.clone(),
                        source_kind,
                    });
                }
            }
            (Some(value), None) => expand(value, &defined),
            (None, None) => String::new(),
        };
        defined.insert(var.name.clone(), value.clone());
        match resolved.iter_mut().find(|(n, _)| *n == var.name) {
            Some(existing) => existing.1 = value,
            None => resolved.push((var.name.clone(), value)),
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expand_earlier_entries_and_field_refs_resolve() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{
                "name": "c",
                "env": [
                    {"name": "A", "value": "a"},
                    {"name": "B", "value": "$(A)-b-$(Z)"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                ]
            }]}
        }))
        .expect("pod");
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let env = resolve(&pod, container, "10.0.0.5").expect("env");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("B"), Some("a-b-$(Z)"));
        assert_eq!(get("POD"), Some("p"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("IP"), Some("10.0.0.5"));
    }
}
