//! Static pods (the kubelet's `config/file.go` and `config/common.go`): pods from manifest
//! files in a directory, fed to the pod workers without an API server.
//!
//! The directory is polled every second; a file's content hash says whether it changed. Each
//! regular file not starting with `.` holds one Pod (YAML or JSON). As upstream names them:
//! pod name `<metadata.name>-<node>`, namespace `default` if unset, UID a hash of the content,
//! the node and the path, so an edited file is a new pod (the old one is stopped, the new one
//! started), and a restarted Krustlet finds the same pods again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::pod::status::{PodKey, status_file};
use crate::pod::update::PodUpdates;

/// How often the manifest directory is read.
const POLL: Duration = Duration::from_secs(1);
/// Manifests larger than this are refused (upstream's `maxConfigLength`).
const MAX_MANIFEST_BYTES: u64 = 10 << 20;

/// `kubernetes.io/config.hash`: the static pod's hash (its UID).
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// `kubernetes.io/config.source`: where a pod came from (`file`).
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";

/// Why a manifest file is not a pod.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is too large.
    #[error("{path} is larger than 10MiB; a static pod manifest is one Pod")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The content is not a Pod.
    #[error("{path} is not a valid Pod manifest (YAML or JSON, kind: Pod): {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Turns a manifest's content into the static pod it describes on `node_name`.
pub fn pod_from_manifest(
    path: &Path,
    content: &[u8],
    node_name: &str,
) -> Result<Pod, ManifestError> {
    let invalid = |message: String| ManifestError::Invalid {
        path: path.into(),
        message,
    };
    // YAML is a superset of JSON: one parser reads both.
    let value: serde_json::Value =
        serde_yaml::from_slice(content).map_err(|e| invalid(e.to_string()))?;
    match value.get("kind").and_then(|k| k.as_str()) {
        Some("Pod") => {}
        Some(other) => return Err(invalid(format!("kind is {other:?}, want \"Pod\""))),
        None => return Err(invalid("no kind (want kind: Pod, apiVersion: v1)".into())),
    }
    let mut pod: Pod = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("metadata.name is missing".into()))?;
    let spec = pod
        .spec
        .as_mut()
        .ok_or_else(|| invalid("spec is missing".into()))?;
    if spec.containers.is_empty() {
        return Err(invalid("spec.containers is empty".into()));
    }
    spec.node_name = Some(node_name.into());
    // As upstream: static pods tolerate every NoExecute taint, so that their mirror pods are
    // not evicted by node problems (or by the wasm taint of this node).
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    if !tolerations.iter().any(|t| {
        t.operator.as_deref() == Some("Exists")
            && t.key.is_none()
            && t.effect.as_deref() == Some("NoExecute")
    }) {
        tolerations.push(Toleration {
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        });
    }
    let uid = pod
        .metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let mut hasher = Sha256::new();
            hasher.update(content);
            hasher.update(format!("host:{node_name}"));
            hasher.update(format!("file:{}", path.display()));
            let digest = hasher.finalize();
            digest[..16].iter().map(|b| format!("{b:02x}")).collect()
        });
    pod.metadata.name = Some(format!("{name}-{}", node_name.to_lowercase()));
    if pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        pod.metadata.namespace = Some("default".into());
    }
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(CONFIG_HASH.into(), uid.clone());
    annotations.insert(CONFIG_SOURCE.into(), "file".into());
    pod.metadata.uid = Some(uid);
    pod.metadata.creation_timestamp = Some(Time(jiff::Timestamp::now()));
    pod.status = Some(PodStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    });
    Ok(pod)
}

/// The manifest files of `dir`: regular files not starting with `.`, by name.
fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// What a file held when last read.
struct Loaded {
    hash: [u8; 32],
    /// The pod it describes; `None` if the file is not a valid manifest (warned once).
    pod: Option<Arc<Pod>>,
}

/// The static pod source for one directory.
pub struct ManifestDir {
    dir: PathBuf,
    node_name: String,
    /// Where the standalone status files are, to resume restart counts after a restart.
    status_dir: Option<PathBuf>,
    files: HashMap<PathBuf, Loaded>,
    dir_error: Option<String>,
}

impl ManifestDir {
    /// A source for `dir` on `node_name`; with `status_dir`, pods resume the status a previous
    /// Krustlet left there (restart counts, start time).
    pub fn new(dir: PathBuf, node_name: &str, status_dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            node_name: node_name.into(),
            status_dir,
            files: HashMap::new(),
            dir_error: None,
        }
    }

    /// Reads the directory once and tells the workers (through `updates`) what changed; false
    /// once the workers are gone.
    pub async fn sync(&mut self, updates: &PodUpdates) -> bool {
        let files = match manifest_files(&self.dir) {
            Ok(files) => {
                self.dir_error = None;
                files
            }
            Err(error) => {
                // Warned once per distinct problem; pods keep running as last read, as
                // upstream does when the directory is briefly unreadable.
                let message = error.to_string();
                if self.dir_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(dir = %self.dir.display(), %error, "cannot read the static pod manifest directory");
                    self.dir_error = Some(message);
                }
                return true;
            }
        };
        let present: HashSet<&PathBuf> = files.iter().collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(Loaded { pod: Some(pod), .. }) = self.files.remove(&path) {
                tracing::info!(file = %path.display(), pod = ?pod.metadata.name, "static pod manifest removed; stopping its pod");
                if !updates.apply(terminating(&pod)).await {
                    return false;
                }
            }
        }
        for path in files {
            let content = match read_limited(&path) {
                Ok(content) => content,
                Err(error) => {
                    tracing::warn!(%error, "static pod manifest skipped");
                    continue;
                }
            };
            let hash: [u8; 32] = Sha256::digest(&content).into();
            if self.files.get(&path).is_some_and(|l| l.hash == hash) {
                continue;
            }
            let old = self.files.remove(&path).and_then(|l| l.pod);
            let pod = match pod_from_manifest(&path, &content, &self.node_name) {
                Ok(pod) => Some(Arc::new(self.resumed(pod))),
                Err(error) => {
                    tracing::warn!(%error, "static pod manifest skipped");
                    None
                }
            };
            if let Some(old) = old
                && old.metadata.uid != pod.as_ref().and_then(|p| p.metadata.uid.clone())
            {
                tracing::info!(file = %path.display(), "static pod manifest changed; replacing its pod");
                if !updates.apply(terminating(&old)).await {
                    return false;
                }
            }
            self.files.insert(
                path.clone(),
                Loaded {
                    hash,
                    pod: pod.clone(),
                },
            );
            if let Some(pod) = pod {
                tracing::info!(file = %path.display(), pod = ?pod.metadata.name, uid = ?pod.metadata.uid, "static pod");
                if !updates.apply(pod).await {
                    return false;
                }
            }
        }
        true
    }

    /// The pod with the status a previous process wrote for it, if any; a status that only
    /// says the node shut down is not a reason to keep the pod stopped.
    fn resumed(&self, mut pod: Pod) -> Pod {
        let Some(dir) = &self.status_dir else {
            return pod;
        };
        let previous = std::fs::read(status_file(dir, &PodKey::of(&pod)))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Pod>(&bytes).ok())
            .and_then(|p| p.status);
        if let Some(mut status) = previous {
            if status.reason.as_deref() == Some("Terminated") {
                status.phase = Some("Running".into());
                status.reason = None;
                status.message = None;
            }
            pod.status = Some(status);
        }
        pod
    }

    /// The pods currently read from the directory.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.files.values().filter_map(|l| l.pod.clone()).collect()
    }

    /// Keys of the pods currently read from the directory.
    pub fn keys(&self) -> HashSet<PodKey> {
        self.files
            .values()
            .filter_map(|l| l.pod.as_deref())
            .map(PodKey::of)
            .collect()
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, ManifestError> {
    let read = |source| ManifestError::Read {
        path: path.into(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { path: path.into() });
    }
    std::fs::read(path).map_err(read)
}

/// The pod as being deleted, so its worker stops it gracefully, as a deletion in the API would.
fn terminating(pod: &Pod) -> Arc<Pod> {
    let mut deleted = pod.clone();
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    deleted.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    deleted.metadata.deletion_grace_period_seconds = Some(grace);
    Arc::new(deleted)
}

/// Feeds the pod workers (through `updates`) from the manifest directory until `stop` is
/// cancelled or the workers are gone. Status files in `status_dir` of pods that are no longer
/// in the directory are removed after the first read.
pub async fn run(mut source: ManifestDir, updates: PodUpdates, stop: CancellationToken) {
    if !source.sync(&updates).await {
        return;
    }
    if let Some(dir) = source.status_dir.clone() {
        remove_stale_status_files(&dir, &source.keys());
    }
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => if !source.sync(&updates).await {
                return;
            },
        }
    }
}

/// Removes the status files of pods a previous process ran that are not in `current`.
fn remove_stale_status_files(dir: &Path, current: &HashSet<PodKey>) {
    let keep: HashSet<PathBuf> = current.iter().map(|k| status_file(dir, k)).collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !keep.contains(&entry.path()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: app\n    image: example/app:v1\n";

    #[test]
    fn static_pods_are_named_and_hashed_as_upstream() {
        let path = Path::new("/etc/manifests/web.yaml");
        let pod = pod_from_manifest(path, MANIFEST.as_bytes(), "Node-1").expect("valid manifest");
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let uid = pod.metadata.uid.clone().expect("valid manifest");
        assert_eq!(uid.len(), 32);
        assert_eq!(
            pod.spec.expect("valid manifest").node_name.as_deref(),
            Some("Node-1")
        );
        let annotations = pod.metadata.annotations.expect("valid manifest");
        assert_eq!(annotations[CONFIG_HASH], uid);
        assert_eq!(annotations[CONFIG_SOURCE], "file");
        // Same content, same UID; edited content, a new one.
        let again = pod_from_manifest(path, MANIFEST.as_bytes(), "Node-1").expect("valid manifest");
        assert_eq!(again.metadata.uid.as_deref(), Some(uid.as_str()));
        let edited = MANIFEST.replace("app:v1", "app:v2");
        let changed = pod_from_manifest(path, edited.as_bytes(), "Node-1").expect("valid manifest");
        assert_ne!(changed.metadata.uid.as_deref(), Some(uid.as_str()));
    }

    #[test]
    fn json_manifests_are_read_too() {
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j","namespace":"ops"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#;
        let pod =
            pod_from_manifest(Path::new("j.json"), json.as_bytes(), "n").expect("valid manifest");
        assert_eq!(pod.metadata.name.as_deref(), Some("j-n"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ops"));
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let path = Path::new("x.yaml");
        let error =
            pod_from_manifest(path, b"kind: Deployment\n", "n").expect_err("should be refused");
        assert!(
            error.to_string().contains("kind is \"Deployment\""),
            "{error}"
        );
        let error = pod_from_manifest(path, b"kind: Pod\nspec:\n  containers: []\n", "n")
            .expect_err("should be refused");
        assert!(error.to_string().contains("metadata.name"), "{error}");
        let error = pod_from_manifest(path, b": : :", "n").expect_err("should be refused");
        assert!(error.to_string().contains("x.yaml"), "{error}");
    }
}
