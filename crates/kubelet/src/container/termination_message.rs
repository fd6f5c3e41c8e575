//! `terminationMessagePath` and `terminationMessagePolicy`: what a container leaves in its
//! terminated state's `message` (upstream: `kuberuntime_container.go`
//! `getTerminationMessage`, `readLastStringFromContainerLogs`).
//!
//! WASI preopens directories, not files, so the message file's directory (`/dev` for the
//! default `/dev/termination-log`) is a private, writable staging directory per container run
//! holding an empty file of that name. The host reads it back after the run without following
//! links: the guest owns that directory and may have replaced the file with a symlink.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

use crate::runtime::Mount;

/// The default `terminationMessagePath`.
pub const DEFAULT_PATH: &str = "/dev/termination-log";
/// The most a container's message holds (`MaxContainerTerminationMessageLength`).
pub const MAX_LENGTH: usize = 4 * 1024;
/// The most all of a pod's messages hold together (`MaxPodTerminationMessageLogLength`).
pub const MAX_POD_LENGTH: usize = 12 * 1024;
/// The most log lines `FallbackToLogsOnError` takes (`MaxContainerTerminationMessageLogLines`).
pub const MAX_LOG_LINES: usize = 80;
/// The most bytes `FallbackToLogsOnError` takes (`MaxContainerTerminationMessageLogLength`).
pub const MAX_LOG_LENGTH: usize = 2 * 1024;

/// One run's termination message file.
#[derive(Debug, Clone)]
pub struct MessageFile {
    file: PathBuf,
    fallback_to_logs: bool,
    limit: usize,
}

/// Creates the staging directory and empty message file for one run under `staging`, and the
/// mount that shows it to the guest; `None` when the path cannot be given its own directory
/// (relative, directly under `/`, or where a volume is already mounted).
pub fn prepare(
    container: &Container,
    containers_in_pod: usize,
    staging: &Path,
) -> std::io::Result<Option<(MessageFile, Mount)>> {
    let path = container
        .termination_message_path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or(DEFAULT_PATH);
    let fallback_to_logs =
        container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    let limit = MAX_LENGTH.min(MAX_POD_LENGTH / containers_in_pod.max(1));
    let guest = Path::new(path);
    let (Some(parent), Some(name)) = (guest.parent(), guest.file_name()) else {
        return Ok(None);
    };
    let parent_str = parent.to_string_lossy();
    let taken = container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| Path::new(&m.mount_path) == parent);
    if !guest.is_absolute() || parent == Path::new("/") || taken || path.contains("..") {
        return Ok(None);
    }
    if staging.exists() {
        std::fs::remove_dir_all(staging)?;
    }
    std::fs::create_dir_all(staging)?;
    let file = staging.join(name);
    std::fs::File::create(&file)?;
    let mount = Mount {
        dir: std::sync::Arc::new(crate::volume::fs_at::open_dir(staging, true)?),
        host_path: staging.to_path_buf(),
        container_path: parent_str.into_owned(),
        read_only: false,
    };
    Ok(Some((
        MessageFile {
            file,
            fallback_to_logs,
            limit,
        },
        mount,
    )))
}

impl MessageFile {
    /// The terminated state's message: the file's last `limit` bytes if the guest wrote any;
    /// else, with `FallbackToLogsOnError` and a failed run, the end of its log; else
    /// `runtime_message` (a trap's description).
    pub fn message(
        &self,
        exit_code: i32,
        log_path: &Path,
        runtime_message: Option<String>,
    ) -> Option<String> {
        if let Some(written) = read_tail_nofollow(&self.file, self.limit)
            && !written.is_empty()
        {
            return Some(written);
        }
        if self.fallback_to_logs
            && exit_code != 0
            && let Some(logs) = log_tail(log_path, MAX_LOG_LINES, MAX_LOG_LENGTH.min(self.limit))
            && !logs.is_empty()
        {
            return Some(logs);
        }
        runtime_message
    }
}

/// The last `limit` bytes of a regular file, never through a symlink.
fn read_tail_nofollow(path: &Path, limit: usize) -> Option<String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_nofollow())
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let len = meta.len();
    let start = len.saturating_sub(limit as u64);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::with_capacity(limit.min(len as usize));
    file.take(limit as u64).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// The content of the last `lines` log lines of a CRI log file, at most `limit` bytes (the
/// end kept).
fn log_tail(path: &Path, lines: usize, limit: usize) -> Option<String> {
    // Enough of the file's end for 80 lines of content plus their CRI prefixes.
    let raw = read_tail_nofollow(path, 64 * 1024)?;
    let mut content: Vec<&str> = raw
        .lines()
        .filter_map(|line| {
            // "<timestamp> <stream> <P|F> <content>"
            let mut parts = line.splitn(4, ' ');
            let (_, _, _, text) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
            Some(text.unwrap_or(""))
        })
        .collect();
    let keep = content.len().saturating_sub(lines);
    content.drain(..keep);
    let mut joined = content.join("\n");
    if !joined.is_empty() {
        joined.push('\n');
    }
    if joined.len() > limit {
        let mut cut = joined.len() - limit;
        while !joined.is_char_boundary(cut) {
            cut += 1;
        }
        joined = joined[cut..].to_string();
    }
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(policy: Option<&str>) -> Container {
        Container {
            name: "c".into(),
            termination_message_policy: policy.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn the_file_wins_and_is_cut_to_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, mount) = prepare(&container(None), 1, &dir.path().join("run"))
            .expect("prepare")
            .expect("a mount");
        assert_eq!(mount.container_path, "/dev");
        std::fs::write(&file.file, "x".repeat(5000) + "END").expect("write");
        let message = file.message(1, Path::new("/nonexistent"), Some("trap".into()));
        let message = message.expect("message");
        assert_eq!(message.len(), MAX_LENGTH);
        assert!(message.ends_with("END"));
    }

    #[test]
    fn a_symlinked_message_file_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, _) = prepare(&container(None), 1, &dir.path().join("run"))
            .expect("prepare")
            .expect("a mount");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host secret").expect("write");
        std::fs::remove_file(&file.file).expect("rm");
        std::os::unix::fs::symlink(&secret, &file.file).expect("symlink");
        assert_eq!(
            file.message(1, Path::new("/nonexistent"), None),
            None,
            "the host must not read through a guest's link"
        );
    }

    #[test]
    fn fallback_to_logs_takes_the_end_of_the_log_on_failure_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        let lines: String = (0..100)
            .map(|i| format!("2026-01-01T00:00:00.000000000Z stdout F line {i}\n"))
            .collect();
        std::fs::write(&log, lines).expect("write log");
        let (file, _) = prepare(
            &container(Some("FallbackToLogsOnError")),
            1,
            &dir.path().join("run"),
        )
        .expect("prepare")
        .expect("a mount");
        let message = file.message(2, &log, None).expect("message");
        assert!(message.starts_with("line 20\n"), "{message}");
        assert!(message.ends_with("line 99\n"), "{message}");
        assert_eq!(file.message(0, &log, None), None);
    }

    #[test]
    fn a_pods_containers_share_twelve_kib() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, _) = prepare(&container(None), 4, &dir.path().join("run"))
            .expect("prepare")
            .expect("a mount");
        assert_eq!(file.limit, 3 * 1024);
    }
}
