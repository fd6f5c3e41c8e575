//! Writing CRI-format log files: one file per container run, stdout and stderr interleaved,
//! each line stamped and tagged; rotated by size and bounded in rate (see [`LogPolicy`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::rate::RateBudget;
use super::rotation::{self, LogPolicy};

/// Partial lines longer than this are written out as `P` entries (containerd's 16 KiB).
const MAX_PARTIAL: usize = 16 * 1024;

/// Which output stream a write came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

struct State {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    size: u64,
    policy: LogPolicy,
    budget: RateBudget,
    pending: [Vec<u8>; 2],
}

impl State {
    /// Appends whole entries, rotating between entries so that no file grows past max-size
    /// (an entry is at most 16 KiB and a bit; max-size is at least 32 KiB).
    fn append(&mut self, entries: &[Vec<u8>]) -> std::io::Result<()> {
        let mut batch = Vec::new();
        for entry in entries {
            let len = entry.len() as u64;
            if self.size + batch.len() as u64 + len > self.policy.max_size
                && self.size + batch.len() as u64 > 0
            {
                self.file.write_all(&batch)?;
                batch.clear();
                self.rotate()?;
            }
            batch.extend_from_slice(entry);
        }
        self.size += batch.len() as u64;
        self.file.write_all(&batch)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        rotation::rotate(&self.path, &self.policy)?;
        self.file = open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Mode of container log files: what containerd's CRI plugin creates them with
/// (`openLogFile` in containerd `internal/cri/server/helpers_linux.go`): owner read-write,
/// group read, nothing for others. A guest's output may hold secrets.
pub const LOG_FILE_MODE: u32 = 0o640;

/// Opens (or creates) a log file for appending, never through a symlink (containerd's
/// `O_NOFOLLOW`), with [`LOG_FILE_MODE`]; a file an older version left wider is narrowed.
fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    let metadata = file.metadata()?;
    if metadata.permissions().mode() & 0o777 & !LOG_FILE_MODE != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(LOG_FILE_MODE))?;
    }
    Ok(file)
}

/// A container run's log file; clone it to write from both streams.
#[derive(Clone)]
pub struct CriLogWriter {
    state: Arc<Mutex<State>>,
}

impl CriLogWriter {
    /// Creates (or appends to) the log file at `path`, creating its directory, with the
    /// default [`LogPolicy`].
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Self::create_with(path, LogPolicy::default())
    }

    /// Creates (or appends to) the log file at `path`, rotated and rate-bounded by `policy`.
    pub fn create_with(path: &Path, policy: LogPolicy) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                path: path.into(),
                file,
                size,
                policy,
                budget: RateBudget::new(policy.max_rate),
                pending: [Vec::new(), Vec::new()],
            })),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many bytes the container may write now under `--container-log-max-rate`.
    pub fn write_budget(&self) -> usize {
        self.state().budget.available(Instant::now())
    }

    /// How long the container must wait before it may write again (zero: now).
    pub fn write_wait(&self) -> Duration {
        self.state().budget.wait(Instant::now())
    }

    /// Writes `bytes` from `stream`: every complete line becomes an `F` entry; the rest waits
    /// for its newline (or is written as `P` entries once it exceeds 16 KiB).
    /// Writes are counted against the rate budget; callers that can wait (the runtime's output
    /// streams) check [`Self::write_wait`] first.
    pub fn write(&self, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        let mut state = self.state();
        state.budget.spend(bytes.len(), Instant::now());
        let buffer = &mut state.pending[stream as usize];
        buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = buffer[start..].iter().position(|&b| b == b'\n') {
            out.push(entry(stream, 'F', &buffer[start..start + pos]));
            start += pos + 1;
        }
        buffer.drain(..start);
        while buffer.len() > MAX_PARTIAL {
            let rest = buffer.split_off(MAX_PARTIAL);
            out.push(entry(stream, 'P', buffer));
            *buffer = rest;
        }
        state.append(&out)
    }

    /// Writes out unterminated output of both streams as final entries (the run ended).
    pub fn finish(&self) -> std::io::Result<()> {
        let mut state = self.state();
        let mut out = Vec::new();
        for (stream, buffer) in [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .zip(state.pending.iter_mut())
        {
            if !buffer.is_empty() {
                out.push(entry(stream, 'F', buffer));
                buffer.clear();
            }
        }
        state.append(&out)?;
        state.file.flush()
    }
}

fn entry(stream: Stream, tag: char, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 48);
    let now = jiff::Timestamp::now();
    // RFC 3339 with nanoseconds, as containerd stamps entries.
    let _ = write!(
        out,
        "{} {} {} ",
        now.strftime("%Y-%m-%dT%H:%M:%S.%9fZ"),
        stream.tag(),
        tag
    );
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_and_partials_wait_for_newlines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let log = CriLogWriter::create(&path).expect("create");
        log.write(Stream::Stdout, b"hello\nwor").expect("write");
        log.write(Stream::Stderr, b"oops\n").expect("write");
        log.write(Stream::Stdout, b"ld\ntail").expect("write");
        log.finish().expect("finish");
        let text = std::fs::read_to_string(&path).expect("read");
        let entries: Vec<(&str, &str, &str)> = text
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let time = parts.next().expect("time");
                assert!(time.ends_with('Z') && time.len() == 30, "{time}");
                (
                    parts.next().expect("stream"),
                    parts.next().expect("tag"),
                    parts.next().expect("content"),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("stdout", "F", "hello"),
                ("stderr", "F", "oops"),
                ("stdout", "F", "world"),
                ("stdout", "F", "tail")
            ]
        );
    }

    #[test]
    fn files_rotate_within_the_size_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let policy = LogPolicy {
            max_size: 32 * 1024,
            max_files: 3,
            max_rate: 0,
        };
        let log = CriLogWriter::create_with(&path, policy).expect("create");
        for n in 0..10_000 {
            log.write(Stream::Stdout, format!("line {n}\n").as_bytes())
                .expect("write");
        }
        log.finish().expect("finish");
        let rotated = super::super::rotation::rotated_files(&path);
        assert_eq!(rotated.len(), 2);
        let mut total = 0;
        for file in rotated.iter().chain([&path]) {
            let size = std::fs::metadata(file).expect("meta").len();
            assert!(
                size <= policy.max_size,
                "{} is {size} bytes",
                file.display()
            );
            total += size;
        }
        assert!(total <= policy.max_size * 3);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.ends_with(" stdout F line 9999\n"), "{text}");
        for file in rotated.iter().chain([&path]) {
            assert_eq!(mode(file), LOG_FILE_MODE, "{}", file.display());
        }
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn log_files_are_not_world_readable_and_never_followed_through_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        CriLogWriter::create(&path).expect("create");
        assert_eq!(mode(&path), 0o640);
        // A file left world-readable (by an older version) is narrowed on open.
        let old = dir.path().join("c/1.log");
        std::fs::write(&old, "").expect("write");
        std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        CriLogWriter::create(&old).expect("reopen");
        assert_eq!(mode(&old), 0o640);
        // A symlink planted where a log goes is refused, not written through.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").expect("write");
        let link = dir.path().join("c/2.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(CriLogWriter::create(&link).is_err());
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "untouched");
    }
}
