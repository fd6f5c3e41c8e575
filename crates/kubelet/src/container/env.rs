//! A container's environment (the kubelet's `makeEnvironmentVariables`): `envFrom`, then `env`
//! entries with `$(VAR)` references to earlier ones, `valueFrom.fieldRef` and `resourceFieldRef`
//! (the Downward API),
//! `configMapKeyRef` and `secretKeyRef`, with `optional` as upstream treats it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::Api;

use crate::container::argv::expand;
use crate::container::config_watch::{Kind, ObjectRef};
use crate::container::downward::{Addresses, field_value, resource_value};
use crate::node::allocatable::NodeResources;
use crate::pod::api::{ApiLink, NoApiServer};

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
    /// A referenced ConfigMap or Secret does not exist (and the reference is not optional).
    #[error("{kind} {name:?} not found")]
    MissingObject {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A referenced key is missing (and the reference is not optional).
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// The namespace.
        namespace: String,
        /// The object's name.
        name: String,
        /// The key.
        key: String,
    },
    /// A `resourceFieldRef` that cannot be resolved.
    #[error("env {name}: {message}")]
    ResourceField {
        /// The variable.
        name: String,
        /// Why.
        message: String,
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

/// Why the objects of a container's environment cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The API server refused or is away.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// Standalone mode: there is no API server to read them from.
    #[error(transparent)]
    NoApiServer(#[from] NoApiServer),
}

/// The data of the ConfigMaps and Secrets a container's environment refers to, as fetched
/// (`None`: the object does not exist).
#[derive(Debug, Clone, Default)]
pub struct EnvObjects {
    /// ConfigMap name -> its data.
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    /// Secret name -> its data, decoded.
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

impl EnvObjects {
    /// The objects as last read, for [`crate::container::config_watch::changed`].
    pub fn references(&self) -> Vec<ObjectRef> {
        let refs = |kind, map: &HashMap<String, Option<BTreeMap<String, String>>>| {
            map.iter()
                .map(|(name, data)| ObjectRef {
                    kind,
                    name: name.clone(),
                    existed: data.is_some(),
                })
                .collect::<Vec<_>>()
        };
        let mut all = refs(Kind::ConfigMap, &self.config_maps);
        all.extend(refs(Kind::Secret, &self.secrets));
        all
    }

    /// Fetches every ConfigMap and Secret `container`'s environment names, from `namespace`.
    /// The node may read exactly these (the Node authorizer allows objects its pods reference).
    pub async fn fetch(
        api: &ApiLink,
        namespace: &str,
        container: &Container,
    ) -> Result<Self, FetchError> {
        let mut config_maps = BTreeSet::new();
        let mut secrets = BTreeSet::new();
        for from in container.env_from.iter().flatten() {
            config_maps.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for from in container
            .env
            .iter()
            .flatten()
            .filter_map(|v| v.value_from.as_ref())
        {
            config_maps.extend(from.config_map_key_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_key_ref.as_ref().map(|r| r.name.clone()));
        }
        let mut objects = Self::default();
        if config_maps.is_empty() && secrets.is_empty() {
            return Ok(objects);
        }
        let client = api.client(|| format!("the environment of container {:?}", container.name))?;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        for name in config_maps {
            let data = cms
                .get_opt(&name)
                .await?
                .map(|cm| cm.data.unwrap_or_default());
            objects.config_maps.insert(name, data);
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        for name in secrets {
            let data = api.get_opt(&name).await?.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect()
            });
            objects.secrets.insert(name, data);
        }
        Ok(objects)
    }
}

/// Looks up `key` of a ConfigMap or Secret for an env entry; `Ok(None)` skips an optional miss.
fn key_value(
    pod: &Pod,
    objects: &HashMap<String, Option<BTreeMap<String, String>>>,
    kind: (&'static str, &'static str),
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, EnvError> {
    match objects.get(name).cloned().flatten() {
        None if optional => Ok(None),
        None => Err(EnvError::MissingObject {
            kind: kind.0,
            name: name.into(),
        }),
        Some(data) => match data.get(key) {
            Some(value) => Ok(Some(value.clone())),
            None if optional => Ok(None),
            None => Err(EnvError::MissingKey {
                kind: kind.1,
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: name.into(),
                key: key.into(),
            }),
        },
    }
}

/// The container's environment, in order: `base` (HOSTNAME, Service variables), `envFrom`
/// sources, then `env` entries.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    addresses: &Addresses<'_>,
    allocatable: &NodeResources,
    objects: &EnvObjects,
    base: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, EnvError> {
    // What the runtime and the cluster give every container first (HOSTNAME, Service
    // variables); the pod's own envFrom and env override them.
    let mut resolved: Vec<(String, String)> = base;
    let set = |resolved: &mut Vec<(String, String)>, name: String, value: String| match resolved
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some(existing) => existing.1 = value,
        None => resolved.push((name, value)),
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (sources, name, optional, kind) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (&objects.config_maps, &r.name, r.optional, "configmap"),
            (_, Some(r)) => (&objects.secrets, &r.name, r.optional, "secret"),
            _ => continue,
        };
        match sources.get(name) {
            Some(Some(data)) => {
                for (key, value) in data {
                    let name = format!("{prefix}{key}");
                    // Upstream skips (and reports) keys that are not valid variable names.
                    if name.is_empty() || name.contains('=') {
                        tracing::warn!(%name, "skipping an invalid environment variable name from envFrom");
                        continue;
                    }
                    set(&mut resolved, name, value.clone());
                }
            }
            Some(None) if !optional.unwrap_or(false) => {
                return Err(EnvError::MissingObject {
                    kind,
                    name: name.clone(),
                });
            }
            _ => {}
        }
    }
    let defined_now = |resolved: &Vec<(String, String)>| -> HashMap<String, String> {
        resolved.iter().cloned().collect()
    };
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match key_value(
                        pod,
                        &objects.config_maps,
                        ("configmap", "ConfigMap"),
                        &r.name,
                        &r.key,
                        optional,
                    )? {
                        Some(value) => value,
                        None => continue,
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match key_value(
                        pod,
                        &objects.secrets,
                        ("secret", "Secret"),
                        &r.name,
                        &r.key,
                        optional,
                    )? {
                        Some(value) => value,
                        None => continue,
                    }
                } else if let Some(field) = &from.field_ref {
                    field_value(pod, &field.field_path, addresses).ok_or_else(|| {
                        EnvError::UnsupportedField {
                            name: var.name.clone(),
                            field_path: field.field_path.clone(),
                        }
                    })?
                } else if let Some(reference) = &from.resource_field_ref {
                    resource_value(pod, container, reference, allocatable).map_err(|message| {
                        EnvError::ResourceField {
                            name: var.name.clone(),
                            message,
                        }
                    })?
                } else {
                    return Err(EnvError::UnsupportedSource {
                        name: var.name.clone(),
                        source_kind: "valueFrom",
                    });
                }
            }
            (Some(value), None) => expand(value, &defined_now(&resolved)),
            (None, None) => String::new(),
        };
        set(&mut resolved, var.name.clone(), value);
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: NodeResources = NodeResources {
        cpu_millis: 2000,
        memory_bytes: 1 << 30,
        ephemeral_storage_bytes: 1 << 40,
        pods: 110,
    };

    const IP: Addresses<'static> = Addresses {
        host_ip: "ip",
        pod_ips: &[],
    };

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
        let pod_ips = ["10.0.0.5".to_string()];
        let addresses = Addresses {
            host_ip: "10.0.0.1",
            pod_ips: &pod_ips,
        };
        let env = resolve(
            &pod,
            container,
            &addresses,
            &NODE,
            &EnvObjects::default(),
            Vec::new(),
        )
        .expect("env");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("B"), Some("a-b-$(Z)"));
        assert_eq!(get("POD"), Some("p"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("IP"), Some("10.0.0.5"));
    }

    #[test]
    fn config_map_and_secret_sources_with_optional_and_prefix() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{
                "name": "c",
                "envFrom": [
                    {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
                    {"secretRef": {"name": "absent", "optional": true}}
                ],
                "env": [
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope", "optional": true}}},
                    {"name": "GREETING", "value": "$(CFG_greeting) world"}
                ]
            }]}
        }))
        .expect("pod");
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let data = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let mut objects = EnvObjects::default();
        objects.config_maps.insert(
            "settings".into(),
            data(&[("greeting", "hello"), ("bad=key", "x")]),
        );
        objects
            .secrets
            .insert("creds".into(), data(&[("password", "s3cret")]));
        objects.secrets.insert("absent".into(), None);
        let env = resolve(&pod, container, &IP, &NODE, &objects, Vec::new()).expect("env");
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["CFG_greeting", "PASSWORD", "GREETING"]);
        assert_eq!(env[2].1, "hello world");
        assert_eq!(env[1].1, "s3cret");

        objects.secrets.insert("creds".into(), None);
        let error =
            resolve(&pod, container, &IP, &NODE, &objects, Vec::new()).expect_err("missing secret");
        assert_eq!(error.to_string(), "secret \"creds\" not found");
        objects.secrets.insert("creds".into(), data(&[]));
        let error =
            resolve(&pod, container, &IP, &NODE, &objects, Vec::new()).expect_err("missing key");
        assert_eq!(
            error.to_string(),
            "couldn't find key password in Secret ns/creds"
        );
    }
}
