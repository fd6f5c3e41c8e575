//! `/var/log/containers`-style links: one symlink per container run,
//! `<links dir>/<pod>_<namespace>_<container>-<container id>.log`, pointing at the run's log
//! file, which host log shippers (Fluent Bit, Vector, Promtail) discover by that name.
//!
//! Upstream: `pkg/kubelet/kuberuntime/kuberuntime_container.go` (`startContainer` creates the
//! link, `removeContainerLog` removes it) and `helpers.go` (`logSymlink`, the name, cut to 255
//! bytes). Here links go when the pod's logs go, and dangling ones with orphan cleanup.

use std::path::{Path, PathBuf};

/// Longest file name, as upstream's `logSymlink` cuts it.
const MAX_NAME: usize = 255;

/// The link for a run: `<dir>/<pod>_<namespace>_<container>-<id>.log`.
pub fn link_path(dir: &Path, pod: &str, namespace: &str, container: &str, id: &str) -> PathBuf {
    let mut name = format!("{pod}_{namespace}_{container}-{id}");
    let mut cut = MAX_NAME - ".log".len();
    while cut < name.len() && !name.is_char_boundary(cut) {
        cut -= 1;
    }
    name.truncate(cut.min(name.len()));
    dir.join(format!("{name}.log"))
}

/// Links `link` to `log` (replacing an older link of that name).
///
/// # Errors
/// When the directory cannot be created or the link not made (e.g. no write permission on
/// `/var/log/containers`: run Krustlet as root or point `--container-log-links-dir` elsewhere).
pub fn create(link: &Path, log: &Path) -> std::io::Result<()> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(log, link)
}

/// Removes the links in `dir` that point into `pod_log_dir` or at nothing (dangling).
pub fn remove_for(dir: &Path, pod_log_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(target) = std::fs::read_link(&path) else {
            continue;
        };
        if target.starts_with(pod_log_dir) || !path.exists() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_named_like_the_kubelets_and_go_with_the_pods_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod_dir = dir.path().join("pods/ns_web_uid1");
        let log = pod_dir.join("main/0.log");
        std::fs::create_dir_all(log.parent().expect("parent")).expect("mkdir");
        std::fs::write(&log, "x").expect("write");
        let links = dir.path().join("containers");
        let link = link_path(&links, "web", "ns", "main", "abc123");
        assert_eq!(link, links.join("web_ns_main-abc123.log"));
        create(&link, &log).expect("link");
        assert_eq!(std::fs::read_to_string(&link).expect("read"), "x");
        // Another pod's link stays.
        let other = link_path(&links, "db", "ns", "main", "def");
        create(&other, &log.with_file_name("missing-but-kept-for-now")).expect("link");
        std::fs::write(log.with_file_name("missing-but-kept-for-now"), "y").expect("write");
        remove_for(&links, &dir.path().join("pods/ns_other_uid2"));
        assert!(link.exists() && other.exists());
        remove_for(&links, &pod_dir);
        assert!(!link.exists() && std::fs::symlink_metadata(&link).is_err());
        let long = link_path(&links, &"p".repeat(300), "ns", "c", "id");
        assert_eq!(long.file_name().map(|n| n.len()), Some(MAX_NAME));
    }
}
