//! Images: pulling WebAssembly from OCI registries into a content-addressed store under the data
//! dir, by the pod's pull policy.
//!
//! Store layout: `<root>/blobs/sha256/<hex>` holds verified blobs (written to a temp file, checked
//! against their digest, then renamed, so a crash never leaves a bad blob that looks good);
//! `<root>/refs/<reference>.json` records what a reference resolved to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Layer media types that hold a wasm module or component.
pub const WASM_LAYER_MEDIA_TYPES: &[&str] = &[
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// When to pull (the container's `imagePullPolicy`, with Kubernetes' defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the reference with the registry every time.
    Always,
    /// Use the stored image if there is one.
    IfNotPresent,
    /// Never contact the registry.
    Never,
}

impl PullPolicy {
    /// The policy for a container: its `imagePullPolicy`, or `Always` for `:latest` and untagged
    /// references and `IfNotPresent` otherwise (Kubernetes' defaulting).
    pub fn for_container(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => Self::Always,
            Some("Never") => Self::Never,
            Some("IfNotPresent") => Self::IfNotPresent,
            _ => {
                let name = image.rsplit('/').next().unwrap_or(image);
                let digest = image.contains('@');
                let tag = name.split_once(':').map(|(_, t)| t);
                if !digest && matches!(tag, None | Some("latest")) {
                    Self::Always
                } else {
                    Self::IfNotPresent
                }
            }
        }
    }
}

/// Registry credentials for one pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

/// An image in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PulledImage {
    /// The reference as the pod spec names it.
    pub reference: String,
    /// `<repository>@<manifest digest>`, the container status's `imageID`.
    pub image_id: String,
    /// The wasm blob's digest.
    pub program_digest: String,
    /// The wasm file in the store.
    pub program: PathBuf,
    /// The wasm blob's size.
    pub size_bytes: u64,
}

/// Why an image could not be had; [`ImageError::reason`] is the container's waiting reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image name {image:?}: {message}")]
    InvalidName {
        /// The reference.
        image: String,
        /// Why.
        message: String,
    },
    /// `imagePullPolicy: Never` and the image is not stored.
    #[error("container image {image:?} is not present with pull policy of Never")]
    NeverPull {
        /// The reference.
        image: String,
    },
    /// The registry refused or could not be reached.
    #[error("failed to pull image {image:?} from {registry}: {message}")]
    Pull {
        /// The reference.
        image: String,
        /// The registry host.
        registry: String,
        /// The registry's or client's message.
        message: String,
    },
    /// The image holds no WebAssembly.
    #[error("image {image:?} is not WebAssembly: {found}")]
    NotWasm {
        /// The reference.
        image: String,
        /// What it holds instead.
        found: String,
    },
    /// A blob did not match its digest.
    #[error("image {image:?}: blob {digest} failed verification: {message}")]
    Corrupt {
        /// The reference.
        image: String,
        /// The expected digest.
        digest: String,
        /// What was wrong.
        message: String,
    },
    /// The store could not be written.
    #[error("image store {path}: {message}")]
    Store {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
}

impl ImageError {
    /// The container waiting reason Kubernetes uses for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidName { .. } => "InvalidImageName",
            Self::NeverPull { .. } => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }
}

/// The content-addressed image store.
pub struct ImageStore {
    root: PathBuf,
    // One lock per reference, so concurrent pulls of one image download once.
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn store_error(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::Store {
        path: path.into(),
        message: e.to_string(),
    }
}

/// A client for `registry` (plain HTTP on loopback, TLS elsewhere) and the auth to send.
fn registry_client(registry: &str, credentials: Option<&Credentials>) -> (Client, RegistryAuth) {
    // reqwest (under oci-client) has no TLS provider of its own here; use ring, as kube does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if is_loopback(registry) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    let auth = match credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    (client, auth)
}

/// Whether a registry is on this host, where plain HTTP is used, as Docker does.
fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

impl ImageStore {
    /// A store rooted at `root` (created if missing).
    pub fn new(root: PathBuf) -> Result<Self, ImageError> {
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(store_error(&root))?;
        std::fs::create_dir_all(root.join("refs")).map_err(store_error(&root))?;
        Ok(Self {
            root,
            pulling: Mutex::new(HashMap::new()),
        })
    }

    fn ref_path(&self, image: &str) -> PathBuf {
        let escaped: String = image
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("refs").join(format!("{escaped}.json"))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The stored image for `image`, if any.
    pub fn lookup(&self, image: &str) -> Option<PulledImage> {
        let text = std::fs::read(self.ref_path(image)).ok()?;
        let pulled: PulledImage = serde_json::from_slice(&text).ok()?;
        pulled.program.exists().then_some(pulled)
    }

    /// Makes `image` available by `policy`. Returns it, and whether a download happened.
    pub async fn pull(
        &self,
        image: &str,
        policy: PullPolicy,
        credentials: Option<&Credentials>,
    ) -> Result<(PulledImage, bool), ImageError> {
        let reference: Reference =
            image
                .parse()
                .map_err(|e: oci_client::ParseError| ImageError::InvalidName {
                    image: image.into(),
                    message: e.to_string(),
                })?;
        let lock = {
            let mut pulling = self.pulling.lock().unwrap_or_else(|e| e.into_inner());
            pulling.entry(image.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        match (policy, self.lookup(image)) {
            (PullPolicy::Never, Some(found)) | (PullPolicy::IfNotPresent, Some(found)) => {
                return Ok((found, false));
            }
            (PullPolicy::Never, None) => {
                return Err(ImageError::NeverPull {
                    image: image.into(),
                });
            }
            _ => {}
        }
        let registry = reference.resolve_registry().to_string();
        let pull_error = |message: String| ImageError::Pull {
            image: image.into(),
            registry: registry.clone(),
            message,
        };
        let (client, auth) = registry_client(&registry, credentials);
        let (manifest, manifest_digest) = client
            .pull_image_manifest(&reference, &auth)
            .await
            .map_err(|e| pull_error(e.to_string()))?;
        let layer = manifest
            .layers
            .iter()
            .find(|l| WASM_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
            .ok_or_else(|| ImageError::NotWasm {
                image: image.into(),
                found: format!(
                    "layers of media types {:?}",
                    manifest
                        .layers
                        .iter()
                        .map(|l| l.media_type.as_str())
                        .collect::<Vec<_>>()
                ),
            })?;
        let blob = self.blob_path(&layer.digest);
        let downloaded = !blob.exists();
        if downloaded {
            let mut bytes = Vec::with_capacity(layer.size.max(0) as usize);
            client
                .pull_blob(&reference, layer, &mut bytes)
                .await
                .map_err(|e| pull_error(e.to_string()))?;
            self.store_blob(image, &layer.digest, &bytes)?;
        }
        let pulled = PulledImage {
            reference: image.into(),
            image_id: format!("{}/{}@{manifest_digest}", registry, reference.repository()),
            program_digest: layer.digest.clone(),
            program: blob,
            size_bytes: layer.size.max(0) as u64,
        };
        let record = self.ref_path(image);
        let json = serde_json::to_vec(&pulled).map_err(|e| ImageError::Store {
            path: record.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&record, &json)?;
        Ok((pulled, downloaded))
    }

    fn store_blob(&self, image: &str, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let actual = format!("sha256:{:x}", Sha256::digest(bytes));
        if actual != digest {
            return Err(ImageError::Corrupt {
                image: image.into(),
                digest: digest.into(),
                message: format!("content hashes to {actual}"),
            });
        }
        write_atomic(&self.blob_path(digest), bytes)
    }
}

/// Writes through a temp file and a rename, so readers never see a partial file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(store_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(store_error(path))
}

/// The CNCF Wasm OCI artifact config media type (as `wkg` and `oras` push it).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";

/// Publishes `wasm` (a module or component) to `reference` in the CNCF Wasm OCI artifact
/// layout; returns the manifest digest the registry stored.
pub async fn push_wasm(
    reference: &str,
    wasm: Vec<u8>,
    credentials: Option<&Credentials>,
) -> Result<String, ImageError> {
    use oci_client::client::{Config, ImageLayer};
    use oci_client::manifest::OciImageManifest;
    let parsed: Reference =
        reference
            .parse()
            .map_err(|e: oci_client::ParseError| ImageError::InvalidName {
                image: reference.into(),
                message: e.to_string(),
            })?;
    let registry = parsed.resolve_registry().to_string();
    let push_error = |message: String| ImageError::Pull {
        image: reference.into(),
        registry: registry.clone(),
        message,
    };
    let (client, auth) = registry_client(&registry, credentials);
    let layer = ImageLayer::new(wasm, WASM_LAYER_MEDIA_TYPES[0].to_string(), None);
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [layer.sha256_digest()],
    });
    let config = Config::new(
        config.to_string().into_bytes(),
        WASM_CONFIG_MEDIA_TYPE.to_string(),
        None,
    );
    let layers = [layer];
    let manifest = OciImageManifest::build(&layers, &config, None);
    client
        .push(&parsed, &layers, config, &auth, Some(manifest))
        .await
        .map_err(|e| push_error(e.to_string()))?;
    // The push response names the tag; ask the registry for the digest it stored.
    let (_, digest) = client
        .pull_image_manifest(&parsed, &auth)
        .await
        .map_err(|e| push_error(e.to_string()))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_follow_kubernetes() {
        assert_eq!(
            PullPolicy::for_container(None, "r.io/a/b"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::for_container(None, "r.io/a/b:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::for_container(None, "127.0.0.1:5000/b:v1"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::for_container(None, "127.0.0.1:5000/b@sha256:00"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::for_container(Some("Never"), "b"),
            PullPolicy::Never
        );
    }
}
