//! The Downward API: pod fields (`fieldRef`) and container resources (`resourceFieldRef`) as
//! values, for environment variables and downwardAPI volume files.

use k8s_openapi::api::core::v1::{Container, Pod, ResourceFieldSelector};

use crate::node::allocatable::NodeResources;
use crate::quantity;

/// The addresses `status.*IP(s)` fields read.
#[derive(Debug, Clone, Copy)]
pub struct Addresses<'a> {
    /// The node's IP (`status.hostIP`, `status.hostIPs`).
    pub host_ip: &'a str,
    /// The pod's IPs, primary first (`status.podIP`, `status.podIPs`): the node's on the
    /// node's network, its own with CNI.
    pub pod_ips: &'a [String],
}

/// Resolves a `fieldRef` path against the pod (and its addresses for status fields).
pub fn field_value(pod: &Pod, path: &str, addresses: &Addresses<'_>) -> Option<String> {
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
        // Whole maps (downwardAPI volumes only), as upstream's `fieldpath.FormatMap`.
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => addresses.host_ip.to_string(),
        "status.podIP" => addresses.pod_ips.first().cloned().unwrap_or_default(),
        // A list, comma-separated, as upstream's `podIPs` for the Downward API.
        "status.podIPs" => addresses.pod_ips.join(","),
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

/// `key="value"` lines, sorted by key, values quoted (upstream quotes with Go's `%q`; JSON
/// string quoting agrees with it for printable text).
fn format_map(map: Option<&std::collections::BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Resolves a `resourceFieldRef` for `container` (upstream's `ExtractContainerResourceValue`):
/// the amount divided by `divisor` (default 1), rounded up. A limit that is not set reads as
/// the node's allocatable amount, as the kubelet does for the Downward API; an unset request
/// reads as 0.
pub fn resource_value(
    pod: &Pod,
    container: &Container,
    reference: &ResourceFieldSelector,
    allocatable: &NodeResources,
) -> Result<String, String> {
    // In a volume the container is named; in env it defaults to the container itself.
    let container = match reference.container_name.as_deref() {
        Some(name) if !name.is_empty() && name != container.name => pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == name)
            .ok_or_else(|| {
                format!("resourceFieldRef names container {name:?}, which this pod does not have")
            })?,
        _ => container,
    };
    let (kind, resource) = reference.resource.split_once('.').ok_or_else(|| {
        format!(
            "unsupported resourceFieldRef resource {:?}",
            reference.resource
        )
    })?;
    let resources = container.resources.as_ref();
    let list = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => None,
    };
    let default = match (kind, resource) {
        ("limits", "cpu") => allocatable.cpu_millis,
        ("limits", "memory") => allocatable.memory_bytes,
        ("limits", "ephemeral-storage") => allocatable.ephemeral_storage_bytes,
        ("requests", "cpu" | "memory" | "ephemeral-storage") => 0,
        _ => {
            return Err(format!(
                "unsupported resourceFieldRef resource {:?}",
                reference.resource
            ));
        }
    };
    let amount = quantity::amount(list, resource).unwrap_or(default);
    let divisor = reference
        .divisor
        .as_ref()
        .map(|d| d.0.as_str())
        .unwrap_or("1");
    let divisor = if resource == "cpu" {
        quantity::parse_millis(divisor)
    } else {
        quantity::parse_count(divisor)
    }
    .map_err(|e| format!("resourceFieldRef divisor: {e}"))?;
    if divisor == 0 {
        return Err("resourceFieldRef divisor must not be 0".into());
    }
    Ok(amount.div_ceil(divisor).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESSES: Addresses<'static> = Addresses {
        host_ip: "1.2.3.4",
        pod_ips: &[],
    };

    #[test]
    fn status_addresses_are_the_node_and_the_pod_ips() {
        let pod = Pod::default();
        let pod_ips = ["10.1.0.7".to_string(), "fd00::7".to_string()];
        let addresses = Addresses {
            host_ip: "1.2.3.4",
            pod_ips: &pod_ips,
        };
        let get = |path| field_value(&pod, path, &addresses);
        assert_eq!(get("status.hostIP").as_deref(), Some("1.2.3.4"));
        assert_eq!(get("status.podIP").as_deref(), Some("10.1.0.7"));
        assert_eq!(get("status.podIPs").as_deref(), Some("10.1.0.7,fd00::7"));
    }

    #[test]
    fn whole_label_and_annotation_maps_are_formatted_as_upstream() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {"tier": "demo", "app": "x"}, "annotations": {"note": "say \"hi\""}},
        }))
        .expect("pod");
        assert_eq!(
            field_value(&pod, "metadata.labels", &ADDRESSES).as_deref(),
            Some("app=\"x\"\ntier=\"demo\"")
        );
        assert_eq!(
            field_value(&pod, "metadata.annotations", &ADDRESSES).as_deref(),
            Some("note=\"say \\\"hi\\\"\"")
        );
    }

    #[test]
    fn resource_values_divide_and_default_to_allocatable() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}}},
                {"name": "b"}
            ]}
        }))
        .expect("pod");
        let node = NodeResources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            ephemeral_storage_bytes: 1 << 40,
            pods: 110,
        };
        let spec = pod.spec.clone().expect("spec");
        let value =
            |container: usize, resource: &str, divisor: Option<&str>, named: Option<&str>| {
                let reference = ResourceFieldSelector {
                    container_name: named.map(str::to_string),
                    resource: resource.into(),
                    divisor: divisor
                        .map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
                };
                resource_value(&pod, &spec.containers[container], &reference, &node)
            };
        assert_eq!(value(0, "limits.cpu", None, None).as_deref(), Ok("1"));
        assert_eq!(
            value(0, "limits.cpu", Some("1m"), None).as_deref(),
            Ok("500")
        );
        assert_eq!(
            value(0, "requests.cpu", Some("1m"), None).as_deref(),
            Ok("250")
        );
        assert_eq!(
            value(0, "limits.memory", Some("1Mi"), None).as_deref(),
            Ok("64")
        );
        assert_eq!(
            value(1, "limits.memory", None, None).as_deref(),
            Ok("1073741824")
        );
        assert_eq!(value(1, "limits.cpu", None, None).as_deref(), Ok("2"));
        assert_eq!(value(1, "requests.memory", None, None).as_deref(), Ok("0"));
        assert_eq!(
            value(1, "limits.memory", Some("1Mi"), Some("a")).as_deref(),
            Ok("64")
        );
        assert!(value(0, "limits.gpu", None, None).is_err());
        assert!(value(0, "limits.cpu", None, Some("nope")).is_err());
    }
}
