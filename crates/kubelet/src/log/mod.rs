//! Container logs in the CRI format, laid out like the kubelet's `/var/log/pods`.
//!
//! Layout: `<data-dir>/logs/pods/<namespace>_<pod>_<uid>/<container>/<restartCount>.log`.
//! Each line: `<RFC 3339 UTC time with nanoseconds> <stdout|stderr> <F|P> <content>\n`, where
//! `F` ends a line and `P` is a partial line continued by the next entry of the same stream
//! (as containerd writes them, and as `kubectl logs` shows them through the kubelet API).

pub mod writer;

use std::path::{Path, PathBuf};

/// The root of all pod log directories under the data dir.
pub fn pods_log_root(data_dir: &Path) -> PathBuf {
    data_dir.join("logs").join("pods")
}

/// A pod's log directory, `<root>/<namespace>_<pod>_<uid>`.
pub fn pod_log_dir(root: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{pod}_{uid}"))
}

/// A container's log file for one run: `<pod dir>/<container>/<restart_count>.log`.
pub fn container_log_path(pod_dir: &Path, container: &str, restart_count: u32) -> PathBuf {
    pod_dir.join(container).join(format!("{restart_count}.log"))
}

/// Marks a container run's log as complete by creating `<log>.done` next to it, so readers
/// that follow the log (`kubectl logs -f`) know no more lines will come.
pub fn mark_run_finished(log_path: &Path) -> std::io::Result<()> {
    let mut marker = log_path.as_os_str().to_owned();
    marker.push(".done");
    std::fs::write(PathBuf::from(marker), b"")
}
