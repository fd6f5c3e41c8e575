//! Log rotation, as the kubelet's container log manager does it: once a run's `<n>.log` would
//! grow past `--container-log-max-size`, it is renamed `<n>.log.<YYYYMMDD-HHMMSS.nnnnnnnnn>` and
//! a new `<n>.log` is started; only the newest `--container-log-max-files` files of a container
//! (the current one included) are kept. Older runs than the previous one are removed when a run
//! starts, so a container's directory stays within max-size × max-files plus the previous run.

use std::path::{Path, PathBuf};

/// How a container's log files are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPolicy {
    /// A log file is rotated before it grows past this many bytes.
    pub max_size: u64,
    /// At most this many files per container run: the current one and `max_files - 1` rotated.
    pub max_files: u32,
    /// Output beyond this many bytes per second (averaged, with one second of burst) makes the
    /// container wait; 0 means no bound.
    pub max_rate: u64,
}

impl Default for LogPolicy {
    /// The kubelet's defaults (10Mi, 5 files) and 2Mi/s.
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 5,
            max_rate: 2 << 20,
        }
    }
}

/// The name a log file gets when it is rotated, `<n>.log.<YYYYMMDD-HHMMSS.nnnnnnnnn>` (the
/// kubelet's stamp, with nanoseconds so that several rotations in one second stay ordered).
pub fn rotated_path(current: &Path, now: jiff::Timestamp) -> PathBuf {
    let mut name = current.as_os_str().to_owned();
    name.push(format!(".{}", now.strftime("%Y%m%d-%H%M%S.%9f")));
    PathBuf::from(name)
}

/// The rotated files of the run whose current file is `current`, oldest first.
pub fn rotated_files(current: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (
        current.parent(),
        current.file_name().and_then(|n| n.to_str()),
    ) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut rotated: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let stamp = file.strip_prefix(&prefix)?;
            // `<n>.log.done` is the end-of-run marker, not a rotated file.
            stamp
                .starts_with(|c: char| c.is_ascii_digit())
                .then(|| (stamp.to_string(), e.path()))
        })
        .collect();
    // The stamps have a fixed width, so their order is the files' age.
    rotated.sort();
    rotated.into_iter().map(|(_, path)| path).collect()
}

/// Renames the current file aside and drops the oldest rotated files beyond the policy. The
/// caller opens a new current file.
pub fn rotate(current: &Path, policy: &LogPolicy) -> std::io::Result<()> {
    std::fs::rename(current, rotated_path(current, jiff::Timestamp::now()))?;
    let rotated = rotated_files(current);
    let keep = policy.max_files.saturating_sub(1) as usize;
    for old in &rotated[..rotated.len().saturating_sub(keep)] {
        // A reader may still hold it open; its data goes when the reader closes it.
        let _ = std::fs::remove_file(old);
    }
    Ok(())
}

/// Removes the log files of runs before `restart_count - 1` in a container's log directory:
/// `previous` only ever reads the run before the current one.
pub fn prune_old_runs(container_dir: &Path, restart_count: u32) {
    let Ok(entries) = std::fs::read_dir(container_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(run) = name
            .to_str()
            .and_then(|n| n.split('.').next())
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if run + 1 < restart_count {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_newest_files_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let current = dir.path().join("0.log");
        std::fs::write(super::super::done_marker_path(&current), "").expect("marker");
        let policy = LogPolicy {
            max_files: 3,
            ..Default::default()
        };
        for i in 0..5 {
            std::fs::write(&current, format!("{i}")).expect("write");
            rotate(&current, &policy).expect("rotate");
        }
        let kept: Vec<String> = rotated_files(&current)
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read"))
            .collect();
        assert_eq!(
            kept,
            ["3", "4"],
            "max_files - 1 rotated files, oldest first"
        );
        let name = rotated_files(&current)[0]
            .file_name()
            .and_then(|n| n.to_str())
            .map(String::from)
            .expect("name");
        assert!(name.starts_with("0.log.20"), "{name}");
        assert!(super::super::done_marker_path(&current).exists());
    }

    #[test]
    fn runs_before_the_previous_one_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "0.log",
            "0.log.done",
            "1.log",
            "1.log.20260101-000000.000000000",
            "2.log",
        ] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        prune_old_runs(dir.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        left.sort();
        assert_eq!(left, ["1.log", "1.log.20260101-000000.000000000", "2.log"]);
    }
}
