//! `persistentVolumeClaim` volumes: the claim's bound PersistentVolume, when it is a `hostPath`
//! or `local` volume this node may use (its node affinity matches this node). The pod's
//! `persistentVolumeClaim.readOnly` makes it read-only in every container (`volume::prepare`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, PersistentVolume, PersistentVolumeClaim, VolumeNodeAffinity,
};
use kube::api::Api;

use crate::volume::host_path;

/// Why a claim cannot be mounted now (retried: the claim may bind any moment).
pub type ClaimError = String;

/// The host path of the PersistentVolume bound to claim `name` in `namespace`.
pub async fn host_path(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    node_name: &str,
    node_labels: &BTreeMap<String, String>,
) -> Result<PathBuf, ClaimError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let claim = claims
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read persistentvolumeclaim {name:?}: {e}"))?
        .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| bound)
        .ok_or_else(|| {
            format!("persistentvolumeclaim {name:?} is not bound to a PersistentVolume yet")
        })?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let volume = volumes
        .get(&volume_name)
        .await
        .map_err(|e| format!("cannot read persistentvolume {volume_name:?}: {e}"))?;
    let spec = volume.spec.unwrap_or_default();
    if !affinity_matches(spec.node_affinity.as_ref(), node_name, node_labels) {
        return Err(format!(
            "volume node affinity conflict: persistentvolume {volume_name:?} is for other nodes"
        ));
    }
    if let Some(host) = &spec.host_path {
        return host_path::check(&host.path, host.type_.as_deref());
    }
    if let Some(local) = &spec.local {
        return host_path::check(&local.path, Some("Directory"));
    }
    Err(format!(
        "persistentvolume {volume_name:?} is of a type this node cannot mount (it mounts hostPath and local volumes)"
    ))
}

/// Whether a PersistentVolume's required node affinity admits this node (no affinity: any).
fn affinity_matches(
    affinity: Option<&VolumeNodeAffinity>,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(required) = affinity.and_then(|a| a.required.as_ref()) else {
        return true;
    };
    // Terms are ORed; the requirements within a term are ANDed.
    required.node_selector_terms.iter().any(|term| {
        let fields = BTreeMap::from([("metadata.name".to_string(), node_name.to_string())]);
        term.match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels))
            && term
                .match_fields
                .iter()
                .flatten()
                .all(|r| requirement_matches(r, &fields))
    })
}

fn requirement_matches(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => !value.is_some_and(|v| values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(|v| number(v)),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_affinity_terms_or_and_requirements_and() {
        let affinity: VolumeNodeAffinity = serde_json::from_value(serde_json::json!({
            "required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [
                    {"key": "zone", "operator": "Exists"},
                    {"key": "rank", "operator": "Gt", "values": ["3"]}
                ]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["by-name"]}]}
            ]}
        }))
        .expect("affinity");
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(affinity_matches(
            Some(&affinity),
            "x",
            &labels(&[("kubernetes.io/hostname", "a")])
        ));
        assert!(!affinity_matches(
            Some(&affinity),
            "x",
            &labels(&[("kubernetes.io/hostname", "b")])
        ));
        assert!(affinity_matches(
            Some(&affinity),
            "x",
            &labels(&[("zone", "z"), ("rank", "4")])
        ));
        assert!(!affinity_matches(
            Some(&affinity),
            "x",
            &labels(&[("zone", "z"), ("rank", "3")])
        ));
        assert!(affinity_matches(Some(&affinity), "by-name", &labels(&[])));
        assert!(affinity_matches(None, "x", &labels(&[])));
    }
}
