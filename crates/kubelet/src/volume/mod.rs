//! Volumes: setting up a pod's volumes as host directories that containers get as preopened
//! directories (the kubelet's volume manager and plugins, for the types this node supports).
//!
//! Supported: emptyDir, configMap, secret, downwardAPI, projected, hostPath ([`host_path`]) and
//! persistentVolumeClaim bound to a hostPath or local PersistentVolume ([`pvc`]); [`subpath`]
//! turns a volume into one container's mount.
//!
//! ConfigMap, Secret, downwardAPI and projected volumes are written in the kubelet's atomic
//! layout (`atomic_writer.go`): the files live in a timestamped directory, `..data` links to it,
//! and each top-level name links through `..data`, so a reader never sees half an update.
//! Containers always get them read-only, as upstream mounts them; a read-only claim
//! (`persistentVolumeClaim.readOnly`) is read-only in every container too.

pub mod atomic;
pub mod fs_at;
pub mod host_path;
pub mod pvc;
pub mod reopen;
pub mod subpath;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount,
    ServiceAccountTokenProjection, Volume,
};
use kube::api::{Api, PostParams};

use crate::container::config_watch::{Kind, ObjectRef};
use crate::container::downward::{Addresses, field_value, resource_value};
use crate::node::allocatable::NodeResources;
use crate::pod::api::{ApiLink, NoApiServer};

/// Why a volume cannot be set up now; reported as a `FailedMount` event and retried.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A referenced ConfigMap or Secret does not exist (and the volume is not optional).
    #[error("MountVolume.SetUp failed for volume {volume:?}: {kind} {name:?} not found")]
    Missing {
        /// The volume.
        volume: String,
        /// `configmap` or `secret`.
        kind: &'static str,
        /// The object.
        name: String,
    },
    /// An item names a key the object does not have.
    #[error("MountVolume.SetUp failed for volume {volume:?}: key {key:?} not in {kind} {name:?}")]
    MissingKey {
        /// The volume.
        volume: String,
        /// `configmap` or `secret`.
        kind: &'static str,
        /// The object.
        name: String,
        /// The key.
        key: String,
    },
    /// The API server refused a read or a token request.
    #[error("MountVolume.SetUp failed for volume {volume:?}: {source}")]
    Api {
        /// The volume.
        volume: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Standalone mode: the volume's content lives in the API server.
    #[error("MountVolume.SetUp failed for volume {volume:?}: {source}")]
    NoApiServer {
        /// The volume.
        volume: String,
        /// What needed the API server.
        #[source]
        source: NoApiServer,
    },
    /// The volume's spec cannot be honoured as written.
    #[error("MountVolume.SetUp failed for volume {volume:?}: {message}")]
    Invalid {
        /// The volume.
        volume: String,
        /// Why.
        message: String,
    },
    /// Writing the files failed.
    #[error("MountVolume.SetUp failed for volume {volume:?}: {source}")]
    Io {
        /// The volume.
        volume: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl VolumeError {
    /// The ConfigMap or Secret whose absence (or missing key) caused this, to watch for.
    pub fn object(&self) -> Option<ObjectRef> {
        let (kind, name, existed) = match self {
            Self::Missing { kind, name, .. } => (*kind, name, false),
            Self::MissingKey { kind, name, .. } => (*kind, name, true),
            _ => return None,
        };
        let kind = if kind == "configmap" {
            Kind::ConfigMap
        } else {
            Kind::Secret
        };
        Some(ObjectRef {
            kind,
            name: name.clone(),
            existed,
        })
    }
}

/// A volume set up on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    /// Its directory (or, for a hostPath, a file).
    pub path: PathBuf,
    /// Whether every container mounts it read-only, whatever its `volumeMount` says.
    pub read_only: bool,
}

impl HostVolume {
    fn writable(path: PathBuf) -> Self {
        Self {
            path,
            read_only: false,
        }
    }
}

/// Volume name -> the volume on the host, for a pod's volumes that are set up.
pub type VolumeMap = HashMap<String, HostVolume>;

/// The outcome of setting up a pod's volumes.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Every volume set up.
    pub mounts: VolumeMap,
    /// Volumes of types this node does not support (the worker warns about them).
    pub unsupported: Vec<String>,
}

use atomic::Files;

/// What volumes need to know about the node.
#[derive(Debug, Clone, Copy)]
pub struct NodeFacts<'a> {
    /// The node's name (local PersistentVolumes must be for it).
    pub name: &'a str,
    /// The node's labels (for PersistentVolume node affinity).
    pub labels: &'a BTreeMap<String, String>,
    /// The node's IP (the pod's, for the Downward API).
    pub ip: &'a str,
    /// Allocatable resources (defaults for `resourceFieldRef`).
    pub allocatable: &'a NodeResources,
}

/// Sets up every volume of `pod` under `pod_dir/volumes`.
pub async fn prepare(
    api: &ApiLink,
    pod: &Pod,
    pod_dir: &Path,
    node: NodeFacts<'_>,
) -> Result<Prepared, VolumeError> {
    let mut prepared = Prepared::default();
    let spec = pod.spec.clone().unwrap_or_default();
    // Secret material is readable by this process only (guests reach it through preopens).
    let root = pod_dir.join("volumes");
    crate::blocking::fs(|| {
        std::fs::create_dir_all(&root).and_then(|()| {
            std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        })
    })
    .map_err(|source| VolumeError::Io {
        volume: "(all)".into(),
        source,
    })?;
    for volume in spec.volumes.iter().flatten() {
        let io = |source| VolumeError::Io {
            volume: volume.name.clone(),
            source,
        };
        let (dir, files) = if volume.empty_dir.is_some() {
            let dir = pod_dir
                .join("volumes/kubernetes.io~empty-dir")
                .join(&volume.name);
            std::fs::create_dir_all(&dir).map_err(io)?;
            prepared
                .mounts
                .insert(volume.name.clone(), HostVolume::writable(dir));
            continue;
        } else if let Some(host) = &volume.host_path {
            let path = host_path::check(&host.path, host.type_.as_deref()).map_err(|message| {
                VolumeError::Invalid {
                    volume: volume.name.clone(),
                    message,
                }
            })?;
            prepared
                .mounts
                .insert(volume.name.clone(), HostVolume::writable(path));
            continue;
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let client = client_for(api, &volume.name, "persistentVolumeClaim")?;
            let path = pvc::host_path(
                &client,
                namespace,
                &claim.claim_name,
                node.name,
                node.labels,
            )
            .await
            .map_err(|message| VolumeError::Invalid {
                volume: volume.name.clone(),
                message,
            })?;
            // The claim's readOnly is the volume spec's readOnly for hostPath and local
            // PersistentVolumes (neither source has its own flag), as upstream's
            // desired_state_of_world_populator passes it to the plugin.
            prepared.mounts.insert(
                volume.name.clone(),
                HostVolume {
                    path,
                    read_only: claim.read_only.unwrap_or(false),
                },
            );
            continue;
        } else if volume.config_map.is_some()
            || volume.secret.is_some()
            || volume.downward_api.is_some()
            || volume.projected.is_some()
        {
            let plugin = if volume.config_map.is_some() {
                "configmap"
            } else if volume.secret.is_some() {
                "secret"
            } else if volume.downward_api.is_some() {
                "downward-api"
            } else {
                "projected"
            };
            let dir = pod_dir
                .join(format!("volumes/kubernetes.io~{plugin}"))
                .join(&volume.name);
            let files = files_for(api, pod, volume, node, &dir).await?;
            (dir, files)
        } else {
            prepared.unsupported.push(volume.name.clone());
            continue;
        };
        atomic::write(&dir, &files).map_err(io)?;
        // Upstream's configMap, secret, downwardAPI and projected plugins report ReadOnly.
        prepared.mounts.insert(
            volume.name.clone(),
            HostVolume {
                path: dir,
                read_only: true,
            },
        );
    }
    Ok(prepared)
}

/// One source of files: the plain volume types are projections of a single source.
enum Source<'a> {
    /// A ConfigMap or Secret (`kind` is `configmap` or `secret`).
    Object {
        kind: &'static str,
        name: String,
        items: Option<&'a [KeyToPath]>,
        optional: Option<bool>,
    },
    /// Downward API files.
    Downward(&'a [DownwardAPIVolumeFile]),
    /// A service account token.
    Token(&'a ServiceAccountTokenProjection),
}

/// A ConfigMap or Secret source.
fn object<'a>(
    kind: &'static str,
    name: &str,
    items: &'a Option<Vec<KeyToPath>>,
    optional: Option<bool>,
) -> Source<'a> {
    Source::Object {
        kind,
        name: name.to_string(),
        items: items.as_deref(),
        optional,
    }
}

/// The sources of a ConfigMap, Secret, downwardAPI or projected volume, with its default mode.
fn sources(volume: &Volume) -> (Vec<Source<'_>>, Option<i32>) {
    if let Some(cm) = &volume.config_map {
        return (
            vec![object("configmap", &cm.name, &cm.items, cm.optional)],
            cm.default_mode,
        );
    }
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.as_deref().unwrap_or_default();
        return (
            vec![object("secret", name, &secret.items, secret.optional)],
            secret.default_mode,
        );
    }
    if let Some(downward) = &volume.downward_api {
        return (
            vec![Source::Downward(
                downward.items.as_deref().unwrap_or_default(),
            )],
            downward.default_mode,
        );
    }
    let Some(projected) = &volume.projected else {
        return (Vec::new(), None);
    };
    let mut all = Vec::new();
    for source in projected.sources.iter().flatten() {
        if let Some(cm) = &source.config_map {
            all.push(object("configmap", &cm.name, &cm.items, cm.optional));
        }
        if let Some(secret) = &source.secret {
            all.push(object(
                "secret",
                &secret.name,
                &secret.items,
                secret.optional,
            ));
        }
        if let Some(downward) = &source.downward_api {
            all.push(Source::Downward(
                downward.items.as_deref().unwrap_or_default(),
            ));
        }
        if let Some(token) = &source.service_account_token {
            all.push(Source::Token(token));
        }
    }
    (all, projected.default_mode)
}

/// The client for a volume whose content comes from the API server.
fn client_for(api: &ApiLink, volume: &str, kind: &str) -> Result<kube::Client, VolumeError> {
    api.client(|| format!("a {kind} volume"))
        .map_err(|source| VolumeError::NoApiServer {
            volume: volume.into(),
            source,
        })
}

/// The files of a ConfigMap, Secret, downwardAPI or projected volume; `current` is where the
/// volume is (or will be) written, to reuse a still-fresh service account token.
async fn files_for(
    api: &ApiLink,
    pod: &Pod,
    volume: &Volume,
    node: NodeFacts<'_>,
    current: &Path,
) -> Result<Files, VolumeError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = &volume.name;
    let api_error = |source| VolumeError::Api {
        volume: name.clone(),
        source,
    };
    let mut files = Files::new();
    let (sources, default_mode) = sources(volume);
    let default_mode = default_mode.map(|m| m as u32).unwrap_or(0o644);
    for source in sources {
        match source {
            Source::Object {
                kind,
                name: object,
                items,
                optional,
            } => {
                let client = client_for(api, name, kind)?;
                let data = if kind == "configmap" {
                    config_map(&client, &namespace, &object).await
                } else {
                    secret_data(&client, &namespace, &object).await
                }
                .map_err(api_error)?;
                add_items(
                    &mut files,
                    name,
                    kind,
                    &object,
                    data,
                    items,
                    optional,
                    default_mode,
                )?;
            }
            Source::Downward(items) => {
                for item in items {
                    let value = if let Some(field) = &item.field_ref {
                        field_value(
                            pod,
                            &field.field_path,
                            // Volumes may name metadata only (API validation): no pod IPs.
                            &Addresses {
                                host_ip: node.ip,
                                pod_ips: &[],
                            },
                        )
                        .unwrap_or_default()
                    } else if let Some(reference) = &item.resource_field_ref {
                        let first = pod.spec.as_ref().and_then(|s| s.containers.first());
                        let Some(container) = first else { continue };
                        resource_value(pod, container, reference, node.allocatable).map_err(
                            |message| VolumeError::Invalid {
                                volume: name.clone(),
                                message,
                            },
                        )?
                    } else {
                        continue;
                    };
                    let mode = item.mode.map(|m| m as u32).unwrap_or(default_mode);
                    files.insert(item.path.clone(), (value.into_bytes(), mode));
                }
            }
            Source::Token(token) => {
                let client = client_for(api, name, "serviceAccountToken")?;
                let content = service_account_token(&client, pod, token, current)
                    .await
                    .map_err(api_error)?;
                files.insert(token.path.clone(), (content, default_mode));
            }
        }
    }
    Ok(files)
}

/// A token for the pod's service account, bound to the pod; reused from `current` until 80%
/// of its lifetime, like the kubelet's token manager.
async fn service_account_token(
    client: &kube::Client,
    pod: &Pod,
    token: &ServiceAccountTokenProjection,
    current: &Path,
) -> Result<Vec<u8>, kube::Error> {
    let expiration = token.expiration_seconds.unwrap_or(3607).max(600) as u64;
    // Read without following links: the volume's files are not to be trusted blindly.
    if let Ok((content, modified)) = atomic::read_current(current, &token.path)
        && modified
            .elapsed()
            .is_ok_and(|age| age.as_secs() < expiration * 8 / 10)
    {
        return Ok(content);
    }
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: token.audience.iter().cloned().collect(),
            expiration_seconds: Some(expiration as i64),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let issued = accounts
        .create_token_request(&account, &PostParams::default(), &request)
        .await?;
    Ok(issued
        .status
        .map(|s| s.token)
        .unwrap_or_default()
        .into_bytes())
}

#[allow(clippy::too_many_arguments)]
fn add_items(
    files: &mut Files,
    volume: &str,
    kind: &'static str,
    object: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    default_mode: u32,
) -> Result<(), VolumeError> {
    let Some(data) = data else {
        if optional.unwrap_or(false) {
            return Ok(());
        }
        return Err(VolumeError::Missing {
            volume: volume.into(),
            kind,
            name: object.into(),
        });
    };
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match data.get(&item.key) {
                    Some(value) => {
                        files.insert(
                            item.path.clone(),
                            (
                                value.clone(),
                                item.mode.map(|m| m as u32).unwrap_or(default_mode),
                            ),
                        );
                    }
                    None if optional.unwrap_or(false) => {}
                    None => {
                        return Err(VolumeError::MissingKey {
                            volume: volume.into(),
                            kind,
                            name: object.into(),
                            key: item.key.clone(),
                        });
                    }
                }
            }
        }
        _ => {
            for (key, value) in data {
                files.insert(key, (value, default_mode));
            }
        }
    }
    Ok(())
}

async fn config_map(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_opt(name).await?.map(|cm| {
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            cm.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        data
    }))
}

async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_opt(name).await?.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}
