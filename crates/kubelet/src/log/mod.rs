//! Container logs in the CRI format, laid out like the kubelet's `/var/log/pods`.
//!
//! Layout: `<pod logs dir>/<namespace>_<pod>_<uid>/<container>/<restartCount>.log`, the pod
//! logs dir being `--pod-logs-dir` (default `<data-dir>/logs/pods`; `/var/log/pods` as the
//! kubelet's); with `--container-log-links-dir`, each run also gets a link named as in
//! `/var/log/containers` ([`links`]).
//! Each line: `<RFC 3339 UTC time with nanoseconds> <stdout|stderr> <F|P> <content>\n`, where
//! `F` ends a line and `P` is a partial line continued by the next entry of the same stream
//! (as containerd writes them, and as `kubectl logs` shows them through the kubelet API).
//!
//! A file that would grow past `--container-log-max-size` is rotated to
//! `<restartCount>.log.<stamp>` (see [`rotation`]); readers read the rotated files first.
//!
//! A run is over once `<restartCount>.log.done` exists next to its file (see
//! [`mark_run_finished`]) or a later run's file appears; `kubectl logs -f` ends then.

mod idle;
pub mod links;
pub mod rate;
pub mod reader;
pub mod rotation;
pub mod writer;

use std::path::{Path, PathBuf};

/// The default root of all pod log directories: `<data-dir>/logs/pods`.
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

/// The marker that says a run's log is complete: `<restartCount>.log.done`.
pub fn done_marker_path(log_path: &Path) -> PathBuf {
    let mut name = log_path.as_os_str().to_owned();
    name.push(".done");
    PathBuf::from(name)
}

/// Marks a container run as finished by creating `<log_path>.done`, so that followers of its
/// log (`kubectl logs -f`) stop once they have read everything. Call it after the run's
/// [`writer::CriLogWriter::finish`]; calling it again is harmless.
pub fn mark_run_finished(log_path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(done_marker_path(log_path))
        .map(drop)
}
