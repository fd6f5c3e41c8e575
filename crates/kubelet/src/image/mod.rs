//! Images: pulling WebAssembly from OCI registries into a content-addressed store under the data
//! dir, by the pod's pull policy.
//!
//! `format.rs` tells the layouts apart (wasm artifacts, `wasi/wasm` images, indexes),
//! `store.rs` keeps verified blobs and records, `auth.rs` reads pull secrets, `access.rs` decides
//! which pods may reuse a stored image without asking the registry, `limits.rs` bounds sizes,
//! `gc.rs` evicts unused images under disk pressure, `push.rs` publishes modules,
//! `clients.rs` keeps registry clients for reuse, `signature/` enforces the node's cosign
//! signature policy before anything is compiled.

pub mod access;
pub mod auth;
mod clients;
pub mod format;
pub mod gc;
pub mod limits;
pub mod push;
pub mod signature;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use access::Access;
pub use format::WASM_LAYER_MEDIA_TYPES;
use format::{ImageConfig, Layout};
use limits::{Budget, Limit, LimitExceeded, LimitedWriter, PullLimits};
pub use push::{WASM_CONFIG_MEDIA_TYPE, push_wasm};
use store::{Store, store_error};

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
    /// The default program's digest (the wasm layer, or the file the entrypoint names).
    pub program_digest: String,
    /// The default program's file in the store.
    pub program: PathBuf,
    /// The image's size: its blobs as the registry lists them.
    pub size_bytes: u64,
    /// The image config's `Entrypoint` (format 3).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The image config's `Cmd` (format 3).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// The wasm files of a format 3 image: path in the image -> blob digest.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The config and layer blobs of a format 3 image.
    #[serde(default)]
    pub blobs: Vec<String>,
    /// How the content was verified against the registry (who may reuse it without a pull).
    #[serde(default)]
    pub access: Access,
}

impl PulledImage {
    /// Every blob this image keeps in the store.
    pub fn all_blobs(&self) -> Vec<String> {
        let mut all = vec![self.program_digest.clone()];
        all.extend(self.files.values().cloned());
        all.extend(self.blobs.iter().cloned());
        all.sort();
        all.dedup();
        all
    }

    /// The digest that names this image's content (`sha256:..` of `image_id`).
    pub fn digest(&self) -> &str {
        self.image_id
            .rsplit_once('@')
            .map_or(self.image_id.as_str(), |(_, d)| d)
    }
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
    /// The registry wants credentials, or refused the ones given.
    #[error(
        "failed to pull image {image:?}: unauthorized: the registry {registry} requires authentication ({hint}): {message}"
    )]
    Unauthorized {
        /// The reference.
        image: String,
        /// The registry host.
        registry: String,
        /// What to do about it.
        hint: &'static str,
        /// The registry's or client's message.
        message: String,
    },
    /// The image is for another platform (a Linux container image, say).
    #[error(
        "image {image:?} is for {platform}, not wasi/wasm; Krustlet runs only WebAssembly images"
    )]
    WrongPlatform {
        /// The reference.
        image: String,
        /// The platform(s) it is for.
        platform: String,
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
    #[error(
        "image {image:?}: blob {digest} failed digest verification: {message}; the registry's copy is corrupt (push the image again)"
    )]
    Corrupt {
        /// The reference.
        image: String,
        /// The expected digest.
        digest: String,
        /// What was wrong.
        message: String,
    },
    /// The image is larger than a configured limit (a decompression bomb, say).
    #[error("image {image:?} is too large: {exceeded}")]
    TooLarge {
        /// The reference.
        image: String,
        /// Which limit, and its value.
        exceeded: LimitExceeded,
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

/// The content-addressed image store and its pulls.
pub struct ImageStore {
    store: Store,
    insecure: Vec<String>,
    limits: PullLimits,
    // Manifests found over a limit, so a retry fails at once instead of unpacking again.
    too_large: Mutex<HashMap<String, LimitExceeded>>,
    // One lock per reference, so concurrent pulls of one image resolve it once...
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    // ...and one per blob, so two references to one content download it once.
    blobs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    in_use: Arc<Mutex<HashMap<String, usize>>>,
    signatures: Arc<signature::Signatures>,
    clients: clients::RegistryClients,
}

/// Marks an image as used by a container while it is alive (image GC spares it).
pub struct InUse {
    image: String,
    in_use: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut map = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.image) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.image);
            }
        }
    }
}

fn lock_for(
    map: &Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    key: &str,
) -> Arc<tokio::sync::Mutex<()>> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(key.to_string()).or_default().clone()
}

/// A new client for `registry` and the auth to send: plain HTTP on loopback and for
/// registries listed in `insecure` (`--insecure-registry`), TLS elsewhere. For one-off uses
/// (push, sign, resolve); pulls reuse clients ([`clients::RegistryClients`]).
pub(crate) fn registry_client(
    registry: &str,
    credentials: Option<&Credentials>,
    insecure: &[String],
) -> (Client, RegistryAuth) {
    (
        clients::build(is_https(registry, insecure)),
        auth_of(credentials),
    )
}

/// Whether `registry` is reached over TLS: all but loopback and `--insecure-registry` ones.
fn is_https(registry: &str, insecure: &[String]) -> bool {
    !(is_loopback(registry) || insecure.iter().any(|r| r == registry))
}

/// The auth to send for `credentials`.
fn auth_of(credentials: Option<&Credentials>) -> RegistryAuth {
    match credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// Whether a registry is on this host, where plain HTTP is used, as Docker does.
fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Whether `digest` is a well-formed sha256 digest (it becomes a file name).
fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Turns a registry client error into what the user should read.
fn pull_error(
    image: &str,
    registry: &str,
    authenticated: bool,
    error: OciDistributionError,
) -> ImageError {
    let unauthorized = match &error {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    };
    if unauthorized {
        return ImageError::Unauthorized {
            image: image.into(),
            registry: registry.into(),
            hint: if authenticated {
                "it refused the credentials from the pod's imagePullSecrets"
            } else {
                "the pod has no imagePullSecrets entry for it"
            },
            message: error.to_string(),
        };
    }
    if let OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
        expected,
        actual,
    }) = &error
    {
        return ImageError::Corrupt {
            image: image.into(),
            digest: expected.clone(),
            message: format!("content hashes to {actual}"),
        };
    }
    ImageError::Pull {
        image: image.into(),
        registry: registry.into(),
        message: error.to_string(),
    }
}

impl ImageStore {
    /// A store rooted at `root` (created if missing); `insecure` registries use plain HTTP;
    /// pulls stay within `limits`.
    pub fn new(
        root: PathBuf,
        insecure: Vec<String>,
        limits: PullLimits,
    ) -> Result<Self, ImageError> {
        Ok(Self {
            store: Store::open(root)?,
            insecure,
            limits,
            too_large: Mutex::default(),
            pulling: Mutex::default(),
            blobs: Mutex::default(),
            in_use: Arc::default(),
            signatures: signature::Signatures::disabled(),
            clients: clients::RegistryClients::default(),
        })
    }

    /// This store with the node's signature policy (`--image-policy-file`).
    pub fn with_signatures(mut self, signatures: Arc<signature::Signatures>) -> Self {
        self.signatures = signatures;
        self
    }

    /// The node's signature policy.
    pub fn signatures(&self) -> &Arc<signature::Signatures> {
        &self.signatures
    }

    /// The files of the store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The stored image for `image`, if any, whoever pulled it (for the node's own use; a
    /// pod's container uses [`ImageStore::usable`]).
    pub fn lookup(&self, image: &str) -> Option<PulledImage> {
        self.store.lookup(image)
    }

    /// The stored image for `image` if a pod presenting `credentials` (for the image's
    /// registry) may use it without a pull: it was pulled anonymously or with these very
    /// credentials (see `access.rs`).
    pub fn usable(&self, image: &str, credentials: Option<&Credentials>) -> Option<PulledImage> {
        let registry = parse_reference(image).ok()?.resolve_registry().to_string();
        self.lookup(image)
            .filter(|found| found.access.allows(&registry, credentials))
    }

    /// Marks `image` in use until the guard is dropped, and as used now.
    pub fn acquire(&self, image: &str) -> InUse {
        self.store.touch(image);
        let key = store::normalise(image);
        let mut map = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(key.clone()).or_default() += 1;
        InUse {
            image: key,
            in_use: self.in_use.clone(),
        }
    }

    /// The references (normalised) containers on this node use now.
    pub fn in_use(&self) -> HashSet<String> {
        let map = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }

    /// The program a container of `pulled` runs when its argv\[0\] is `argv0`: for an image
    /// with a filesystem (format 3), the wasm file of that name; else the image's program.
    pub fn program_for(
        &self,
        pulled: &PulledImage,
        argv0: &str,
    ) -> Result<(PathBuf, String), String> {
        if pulled.files.is_empty() {
            return Ok((pulled.program.clone(), pulled.program_digest.clone()));
        }
        match format::resolve_program(&pulled.files, argv0) {
            Some((_, digest)) => Ok((self.store.blob_path(digest), digest.clone())),
            None => Err(format!(
                "executable {argv0:?} is not a WebAssembly file in image {:?}; its WebAssembly files are {:?}",
                pulled.reference,
                pulled.files.keys().collect::<Vec<_>>()
            )),
        }
    }

    /// Makes `image` available by `policy` to a pod presenting `credentials`. Returns it, and
    /// whether a download happened.
    ///
    /// A stored image counts as present only for a pod that may use it (`access.rs`); for any
    /// other pod `IfNotPresent` asks the registry with the pod's credentials (every blob is
    /// already stored, so only the manifest moves), and `Never` fails as if it were absent.
    pub async fn pull(
        &self,
        image: &str,
        policy: PullPolicy,
        credentials: Option<&Credentials>,
    ) -> Result<(PulledImage, bool), ImageError> {
        let reference = parse_reference(image)?;
        let lock = lock_for(&self.pulling, &store::normalise(image));
        let _guard = lock.lock().await;
        if policy != PullPolicy::Always
            && let Some(found) = self.usable(image, credentials)
        {
            return Ok((found, false));
        }
        if policy == PullPolicy::Never {
            return Err(ImageError::NeverPull {
                image: image.into(),
            });
        }
        let registry = reference.resolve_registry().to_string();
        let (client, auth) = self.clients.get(&registry, credentials, &self.insecure);
        let oci_error =
            |e: OciDistributionError| pull_error(image, &registry, credentials.is_some(), e);
        let (manifest, manifest_digest) = client
            .pull_manifest(&reference, &auth)
            .await
            .map_err(oci_error)?;
        // Format 4: an index; its wasm entry is one of the other formats.
        let (manifest, source) = match manifest {
            OciManifest::Image(m) => (m, reference.clone()),
            OciManifest::ImageIndex(index) => {
                let chosen = format::choose_platform(image, &index)?;
                let by_digest = reference.clone_with_digest(chosen);
                match client
                    .pull_manifest(&by_digest, &auth)
                    .await
                    .map_err(oci_error)?
                {
                    (OciManifest::Image(m), _) => (m, by_digest),
                    (OciManifest::ImageIndex(_), _) => {
                        return Err(ImageError::NotWasm {
                            image: image.into(),
                            found: "an index whose wasi/wasm entry is another index".into(),
                        });
                    }
                }
            }
        };
        let image_id = format!("{registry}/{}@{manifest_digest}", reference.repository());
        let known_too_large = self
            .too_large
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&image_id)
            .copied();
        if let Some(exceeded) = known_too_large {
            return Err(ImageError::TooLarge {
                image: image.into(),
                exceeded,
            });
        }
        let fetch = |blob: &OciDescriptor, limit: Limit, bytes: u64| {
            let budget = Budget::new(limit, bytes);
            self.fetch_blob(&client, &source, blob.clone(), image, credentials, budget)
        };
        let mut downloaded = false;
        let pulled = match format::classify(image, &manifest)? {
            Layout::Wasm(layer) => {
                downloaded |= fetch(&layer, Limit::Module, self.limits.max_module_bytes).await?;
                PulledImage {
                    reference: image.into(),
                    image_id,
                    program: self.store.blob_path(&layer.digest),
                    program_digest: layer.digest,
                    size_bytes: layer.size.max(0) as u64,
                    entrypoint: Vec::new(),
                    cmd: Vec::new(),
                    files: BTreeMap::new(),
                    blobs: Vec::new(),
                    access: Access::default(),
                }
            }
            Layout::Image { config, layers } => {
                downloaded |= fetch(&config, Limit::Config, limits::MAX_CONFIG_BYTES).await?;
                let config_path = self.store.blob_path(&config.digest);
                // A blob stored earlier under another role was not bounded as a config.
                let size = std::fs::metadata(&config_path)
                    .map_err(store_error(&config_path))?
                    .len();
                if let Some(exceeded) =
                    Budget::new(Limit::Config, limits::MAX_CONFIG_BYTES).would_exceed(size)
                {
                    return Err(ImageError::TooLarge {
                        image: image.into(),
                        exceeded,
                    });
                }
                let bytes = std::fs::read(&config_path).map_err(store_error(&config_path))?;
                let parsed = ImageConfig::parse_wasm(image, &bytes)?;
                let mut stored = Vec::new();
                for layer in &layers {
                    downloaded |=
                        fetch(layer, Limit::Unpacked, self.limits.max_unpacked_bytes).await?;
                    stored.push((layer.clone(), self.store.blob_path(&layer.digest)));
                }
                let (store, name, limits) = (self.store.clone(), image.to_string(), self.limits);
                let unpacked = tokio::task::spawn_blocking(move || {
                    format::unpack_wasm_files(&name, &store, &stored, &limits)
                })
                .await
                .map_err(|e| ImageError::Store {
                    path: self.store.root().into(),
                    message: format!("unpacking panicked: {e}"),
                })?;
                let files = match unpacked {
                    Ok(files) => files,
                    Err(error) => {
                        if let ImageError::TooLarge { exceeded, .. } = &error {
                            // Remembered, and the useless layers dropped: a retry fails at once.
                            self.too_large
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(image_id.clone(), *exceeded);
                            for layer in &layers {
                                self.store.discard_blob(&layer.digest);
                            }
                        }
                        return Err(error);
                    }
                };
                let entrypoint = parsed.config.entrypoint.unwrap_or_default();
                let cmd = parsed.config.cmd.unwrap_or_default();
                let argv0 = entrypoint.first().or(cmd.first());
                let default = argv0
                    .and_then(|a| format::resolve_program(&files, a))
                    .or_else(|| files.iter().next())
                    .map(|(_, d)| d.clone())
                    .ok_or_else(|| ImageError::NotWasm {
                        image: image.into(),
                        found: "a wasi/wasm image without any WebAssembly file in its layers"
                            .into(),
                    })?;
                let mut blobs = vec![config.digest.clone()];
                blobs.extend(layers.iter().map(|l| l.digest.clone()));
                PulledImage {
                    reference: image.into(),
                    image_id,
                    program: self.store.blob_path(&default),
                    program_digest: default,
                    size_bytes: std::iter::once(&config)
                        .chain(&layers)
                        .map(|d| d.size.max(0) as u64)
                        .sum(),
                    entrypoint,
                    cmd,
                    files,
                    blobs,
                    access: Access::default(),
                }
            }
        };
        let pulled = self.store.record(&PulledImage {
            access: Access::pulled_with(&registry, credentials),
            ..pulled
        })?;
        Ok((pulled, downloaded))
    }

    /// Downloads one blob into the store unless it is there; returns whether it downloaded.
    /// One download per digest at a time, however many images or pods want it. At most
    /// `budget`'s bytes are written, whatever the manifest or the registry claim.
    async fn fetch_blob(
        &self,
        client: &Client,
        reference: &Reference,
        blob: OciDescriptor,
        image: &str,
        credentials: Option<&Credentials>,
        budget: Arc<Budget>,
    ) -> Result<bool, ImageError> {
        if !valid_digest(&blob.digest) {
            return Err(ImageError::NotWasm {
                image: image.into(),
                found: format!("a blob with unsupported digest {:?}", blob.digest),
            });
        }
        let too_large = |exceeded| ImageError::TooLarge {
            image: image.into(),
            exceeded,
        };
        if let Some(exceeded) = budget.would_exceed(blob.size.max(0) as u64) {
            return Err(too_large(exceeded));
        }
        let lock = lock_for(&self.blobs, &blob.digest);
        let _guard = lock.lock().await;
        if self.store.blob_path(&blob.digest).exists() {
            return Ok(false);
        }
        tracing::info!(image, digest = %blob.digest, size = blob.size, "downloading blob");
        let tmp = self.store.temp_path(&blob.digest);
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(store_error(&tmp))?;
        let file = LimitedWriter::new(file, budget.clone());
        if let Err(error) = client.pull_blob(reference, &blob, file).await {
            let _ = std::fs::remove_file(&tmp);
            if let Some(exceeded) = budget.exceeded() {
                return Err(too_large(exceeded));
            }
            let registry = reference.resolve_registry();
            return Err(pull_error(image, registry, credentials.is_some(), error));
        }
        let (store, name, digest) = (self.store.clone(), image.to_string(), blob.digest.clone());
        tokio::task::spawn_blocking(move || store.commit_blob(&name, &digest, &tmp))
            .await
            .map_err(|e| ImageError::Store {
                path: self.store.root().into(),
                message: format!("verifying panicked: {e}"),
            })??;
        Ok(true)
    }
}

/// The manifest digest `image` names now (for a tag, the registry's answer): the digest a node
/// pulling it would run and verify.
pub async fn resolve_digest(
    image: &str,
    credentials: Option<&Credentials>,
    insecure: &[String],
) -> Result<String, ImageError> {
    let reference = parse_reference(image)?;
    let registry = reference.resolve_registry().to_string();
    let (client, auth) = registry_client(&registry, credentials, insecure);
    let (_, digest) = client
        .pull_manifest(&reference, &auth)
        .await
        .map_err(|e| pull_error(image, &registry, credentials.is_some(), e))?;
    Ok(digest)
}

/// Compiles oci-spec's image-reference regex now (blocking). It is large and has Unicode
/// classes, and oci-spec compiles it at the first parse in the process: 125-175 ms (release)
/// that the first pod of a new node would otherwise spend before its pull (a `strace` of a
/// cold start showed the megabytes of automaton being built there). Call it while the node
/// starts, before it registers; later calls return at once.
pub fn warm_reference_parser() {
    let _ = parse_reference("krustlet.dev/warm-up:v1");
}

/// Parses an image reference, or says why it is not one.
pub fn parse_reference(image: &str) -> Result<Reference, ImageError> {
    image
        .parse()
        .map_err(|e: oci_client::ParseError| ImageError::InvalidName {
            image: image.into(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_private_image_is_present_only_for_the_credentials_that_pulled_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images =
            ImageStore::new(dir.path().into(), Vec::new(), PullLimits::default()).expect("store");
        let image = "127.0.0.1:5001/team/app:v1";
        let owner = Credentials {
            username: "owner".into(),
            password: "secret".into(),
        };
        let digest = images.store().put_blob(b"\0asm private").expect("blob");
        images
            .store()
            .record(&PulledImage {
                reference: image.into(),
                image_id: format!("127.0.0.1:5001/team/app@{digest}"),
                program: images.store().blob_path(&digest),
                program_digest: digest,
                size_bytes: 13,
                entrypoint: Vec::new(),
                cmd: Vec::new(),
                files: BTreeMap::new(),
                blobs: Vec::new(),
                access: Access::pulled_with("127.0.0.1:5001", Some(&owner)),
            })
            .expect("record");
        assert!(images.usable(image, Some(&owner)).is_some());
        assert!(images.usable(image, None).is_none());
        let thief = Credentials {
            username: "owner".into(),
            password: "guess".into(),
        };
        assert!(images.usable(image, Some(&thief)).is_none());
        // `Never` cannot ask the registry, so for anyone else the image is not there.
        let error = images
            .pull(image, PullPolicy::Never, None)
            .await
            .expect_err("not for this pod");
        assert_eq!(error.reason(), "ErrImageNeverPull");
        let (found, downloaded) = images
            .pull(image, PullPolicy::Never, Some(&owner))
            .await
            .expect("the owner's");
        assert!(!downloaded && found.access.allows("127.0.0.1:5001", Some(&owner)));
    }

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
