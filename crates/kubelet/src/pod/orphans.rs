//! Orphaned pod directories: the volumes (secrets, service account tokens) and logs of pods
//! that no longer exist, typically pods deleted while Krustlet was down, whose workers never
//! ran to clean up. Removed at start and then periodically, as upstream's
//! `cleanupOrphanedPodDirs` does in the kubelet's housekeeping (`pkg/kubelet/
//! kubelet_volumes.go`).
//!
//! A directory is an orphan when its pod UID is neither bound to this node in the API nor
//! known to a pod worker. The directories are listed before the workers are asked, so a pod
//! that starts meanwhile (its worker is known before it creates anything) is never taken.
//!
//! The same round reconciles the pod network ([`Network::reconcile`]): CNI sandboxes of pods
//! that are gone (deleted while Krustlet was down, or whose DEL failed) are DELeted and their
//! namespaces removed, so no address stays allocated. The network protects pods it set up
//! itself, so a pod that starts after the list is never taken either.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::network::Network;
use crate::pod::known::KnownPods;

/// How often orphans are looked for after the first round at start.
pub const ORPHAN_CLEANUP_PERIOD: Duration = Duration::from_secs(60);

/// A pod's directory on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDir {
    /// The pod UID it belongs to.
    pub uid: String,
    /// The directory.
    pub path: PathBuf,
}

/// Where pods leave files: `<pods>/<uid>` (volumes) and `<logs>/<ns>_<name>_<uid>`.
#[derive(Debug, Clone)]
pub struct OrphanDirs {
    /// `<data-dir>/pods`.
    pub pods: PathBuf,
    /// The CRI log root (`log::pods_log_root`).
    pub logs: PathBuf,
}

impl OrphanDirs {
    /// Every pod directory under both roots (directories only, never followed symlinks).
    pub fn scan(&self) -> Vec<PodDir> {
        let mut found = subdirs(&self.pods, |name| Some(name.to_string()));
        // Namespaces and pod names cannot contain '_', so the UID is what follows the last one.
        found.extend(subdirs(&self.logs, |name| {
            name.rsplit_once('_').map(|(_, uid)| uid.to_string())
        }));
        found
    }

    /// Removes the directories in `found` whose UID `in_use` does not claim; returns them.
    pub fn remove_unclaimed(found: Vec<PodDir>, in_use: impl Fn(&str) -> bool) -> Vec<PodDir> {
        let mut removed = Vec::new();
        for dir in found {
            if in_use(&dir.uid) {
                continue;
            }
            match std::fs::remove_dir_all(&dir.path) {
                Ok(()) => {
                    tracing::info!(uid = %dir.uid, dir = %dir.path.display(), "removed an orphaned pod directory");
                    removed.push(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => tracing::warn!(
                    %error, dir = %dir.path.display(),
                    "cannot remove an orphaned pod directory"
                ),
            }
        }
        removed
    }
}

/// The subdirectories of `root` whose name gives a non-empty UID through `uid_of`.
fn subdirs(root: &Path, uid_of: impl Fn(&str) -> Option<String>) -> Vec<PodDir> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let uid = uid_of(e.file_name().to_str()?)?;
            (!uid.is_empty()).then(|| PodDir {
                uid,
                path: e.path(),
            })
        })
        .collect()
}

/// The UIDs of the pods bound to `node_name`, from the API server's watch cache.
async fn bound_uids(client: kube::Client, node_name: &str) -> Result<HashSet<String>, kube::Error> {
    let params = ListParams::default()
        .fields(&format!("spec.nodeName={node_name}"))
        .match_any();
    let pods = Api::<Pod>::all(client).list(&params).await?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect())
}

/// Removes orphaned pod directories and pod networks now and every `period` until `stop`. A
/// round whose API list fails removes nothing: a pod that merely could not be seen keeps its
/// files and its network.
pub async fn run(
    clients: watch::Receiver<kube::Client>,
    node_name: String,
    known: KnownPods,
    dirs: OrphanDirs,
    network: std::sync::Arc<dyn Network>,
    period: Duration,
    stop: CancellationToken,
) {
    loop {
        let client = clients.borrow().clone();
        match bound_uids(client, &node_name).await {
            Ok(bound) => {
                let found = dirs.scan();
                let running: HashSet<String> = known
                    .list()
                    .iter()
                    .filter_map(|p| p.metadata.uid.clone())
                    .collect();
                OrphanDirs::remove_unclaimed(found, |uid| {
                    bound.contains(uid) || running.contains(uid)
                });
                let live: HashSet<String> = bound.union(&running).cloned().collect();
                network.reconcile(&live).await;
            }
            Err(error) => {
                tracing::debug!(%error, "listing this node's pods for orphan cleanup failed")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unclaimed_pod_directories_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = OrphanDirs {
            pods: dir.path().join("pods"),
            logs: dir.path().join("logs/pods"),
        };
        for path in [
            dirs.pods.join("uid-gone/volumes/secret"),
            dirs.pods.join("uid-kept/volumes/token"),
            dirs.logs.join("ns_gone_uid-gone/main"),
            dirs.logs.join("ns_kept_uid-kept/main"),
        ] {
            std::fs::create_dir_all(&path).expect("mkdir");
            std::fs::write(path.join("file"), "x").expect("write");
        }
        // A stray file, and a symlink to a directory outside, are left alone.
        std::fs::write(dirs.pods.join("stray"), "x").expect("write");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, dirs.pods.join("uid-link")).expect("symlink");

        let found = dirs.scan();
        assert_eq!(found.len(), 4, "{found:?}");
        let removed = OrphanDirs::remove_unclaimed(found, |uid| uid == "uid-kept");
        let mut uids: Vec<&str> = removed.iter().map(|d| d.uid.as_str()).collect();
        uids.sort_unstable();
        assert_eq!(uids, ["uid-gone", "uid-gone"]);
        assert!(!dirs.pods.join("uid-gone").exists());
        assert!(!dirs.logs.join("ns_gone_uid-gone").exists());
        assert!(dirs.pods.join("uid-kept/volumes/token/file").exists());
        assert!(dirs.logs.join("ns_kept_uid-kept/main/file").exists());
        assert!(dirs.pods.join("stray").exists());
        assert!(outside.exists());
    }
}
