//! Writing CRI-format log files: one file per container run, stdout and stderr interleaved,
//! each line stamped and tagged; rotated by size and bounded in rate (see [`LogPolicy`]).
//!
//! The file is open only while the container writes: it is opened at the first write and
//! closed once it has gone [`IDLE_CLOSE`] without one (see [`super::idle`]), so a container
//! that sleeps holds no descriptor for its log.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::idle::{self, IdleClose};
use super::rate::RateBudget;
use super::rotation::{self, LogPolicy};

/// Partial lines longer than this are written out as `P` entries (containerd's 16 KiB).
const MAX_PARTIAL: usize = 16 * 1024;

/// A log file unwritten for this long is closed, and opened again at the next write: long
/// enough that a container printing now and then keeps it open, short enough that a node of
/// sleeping pods holds no log descriptors.
pub const IDLE_CLOSE: Duration = Duration::from_secs(5);

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
    /// Open from a write until the idle closer closes it.
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    policy: LogPolicy,
    budget: RateBudget,
    pending: [Vec<u8>; 2],
    /// When the file was last written (or opened).
    last_write: Instant,
    /// How long the file stays open without a write ([`IDLE_CLOSE`]; shorter in tests).
    idle: Duration,
    /// Whether the idle closer has this writer on its list.
    watched: bool,
    /// This state, for the idle closer's list.
    me: Weak<Mutex<State>>,
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
                self.write_out(&batch)?;
                batch.clear();
                self.rotate()?;
            }
            batch.extend_from_slice(entry);
        }
        self.write_out(&batch)
    }

    /// Writes `bytes` to the current file, opening it if it was closed.
    fn write_out(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.last_write = Instant::now();
        let file = match self.file.take() {
            Some(file) => file,
            None => match open(&self.path) {
                Ok(file) => {
                    // Our own count is exact while we are the only writer; the file says
                    // otherwise only if it was removed (and is created anew) while closed.
                    self.size = file.metadata()?.len();
                    file
                }
                // The run's log directory is gone (its pod is being removed): the output has
                // nowhere to go, as it had none when an open file's directory was removed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        let file = self.file.insert(file);
        if !self.watched {
            self.watched = true;
            idle::watch(self.me.clone() as Weak<dyn IdleClose>);
        }
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Renames the current file aside; the next write starts a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        // `File` has no buffer of its own: closing it loses nothing.
        self.file = None;
        rotation::rotate(&self.path, &self.policy)?;
        self.size = 0;
        Ok(())
    }
}

impl IdleClose for Mutex<State> {
    fn close_if_idle(&self, now: Instant) -> bool {
        let mut state = match self.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // Being written right now: not idle.
            Err(std::sync::TryLockError::WouldBlock) => return true,
        };
        if state.file.is_some() && now.saturating_duration_since(state.last_write) < state.idle {
            return true;
        }
        state.file = None;
        state.watched = false;
        false
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
    /// The file exists from here on (readers find the run's log, empty or not); it is held
    /// open only while the container writes.
    pub fn create_with(path: &Path, policy: LogPolicy) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let size = open(path)?.metadata()?.len();
        Ok(Self {
            state: Arc::new_cyclic(|me| {
                Mutex::new(State {
                    path: path.into(),
                    file: None,
                    size,
                    policy,
                    budget: RateBudget::new(policy.max_rate),
                    pending: [Vec::new(), Vec::new()],
                    last_write: Instant::now(),
                    idle: IDLE_CLOSE,
                    watched: false,
                    me: me.clone(),
                })
            }),
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

    /// Writes out unterminated output of both streams as final entries (the run ended) and
    /// closes the file.
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
        let appended = state.append(&out);
        // Nothing more is written once a run ended; a late write would open it again.
        state.file = None;
        appended
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

    /// The rotation bound the rotation tests write under.
    const ROTATION: LogPolicy = LogPolicy {
        max_size: 32 * 1024,
        max_files: 3,
        max_rate: 0,
    };

    /// Writes lines 0..10 000 under [`ROTATION`] (with the file closed as if idle after every
    /// `close_every`th write, if given) and finishes the run; checks that two rotated files
    /// were kept and that no file passed the size bound. Returns the files, oldest first.
    fn write_rotated(dir: &Path, close_every: Option<usize>) -> Vec<PathBuf> {
        let path = dir.join("c/0.log");
        let log = CriLogWriter::create_with(&path, ROTATION).expect("create");
        for n in 0..10_000 {
            log.write(Stream::Stdout, format!("line {n}\n").as_bytes())
                .expect("write");
            if close_every.is_some_and(|every| n % every == 0) {
                let closed = log.state.close_if_idle(Instant::now() + IDLE_CLOSE);
                assert!(!closed && !is_open(&path));
            }
        }
        log.finish().expect("finish");
        let mut files = super::super::rotation::rotated_files(&path);
        assert_eq!(files.len(), 2);
        files.push(path);
        for file in &files {
            let size = std::fs::metadata(file).expect("meta").len();
            assert!(
                size <= ROTATION.max_size,
                "{} is {size} bytes",
                file.display()
            );
        }
        files
    }

    #[test]
    fn files_rotate_within_the_size_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_rotated(dir.path(), None);
        let total: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).expect("meta").len())
            .sum();
        assert!(total <= ROTATION.max_size * 3);
        let text = std::fs::read_to_string(&files[2]).expect("read");
        assert!(text.ends_with(" stdout F line 9999\n"), "{text}");
        for file in &files {
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

    /// Whether this process holds `path` open (a test's files are its own).
    fn is_open(path: &Path) -> bool {
        std::fs::read_dir("/proc/self/fd")
            .expect("fds")
            .filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
    }

    /// The contents of each entry in `path`.
    fn contents(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).expect("content").to_string())
            .collect()
    }

    #[test]
    fn the_file_is_open_only_from_a_write_until_it_goes_idle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let log = CriLogWriter::create(&path).expect("create");
        log.state().idle = Duration::from_millis(100);
        assert!(path.exists(), "the run's file exists before any output");
        assert!(!is_open(&path), "held open before the first write");
        log.write(Stream::Stdout, b"first\n").expect("write");
        assert!(is_open(&path), "closed right after a write");
        let waited = Instant::now();
        while is_open(&path) {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "still open long after it went idle"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Opened again by the next write, appending; and closed again when idle.
        log.write(Stream::Stderr, b"second\n").expect("write");
        assert!(is_open(&path));
        assert_eq!(contents(&path), ["first", "second"]);
        let waited = Instant::now();
        while is_open(&path) {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "not closed twice"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        log.finish().expect("finish");
        assert!(!is_open(&path), "finishing an idle run opens nothing");
    }

    #[test]
    fn only_a_file_unwritten_for_its_idle_time_is_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let log = CriLogWriter::create(&path).expect("create");
        log.write(Stream::Stdout, b"x\n").expect("write");
        let written = log.state().last_write;
        assert!(log.state.close_if_idle(written + IDLE_CLOSE / 2));
        assert!(is_open(&path));
        assert!(!log.state.close_if_idle(written + IDLE_CLOSE));
        assert!(!is_open(&path));
        // Closed: nothing left to look at.
        assert!(!log.state.close_if_idle(written));
        assert!(!log.state().watched);
    }

    #[test]
    fn finishing_a_run_writes_its_partial_lines_and_closes_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let log = CriLogWriter::create(&path).expect("create");
        log.write(Stream::Stdout, b"done\nno newline")
            .expect("write");
        assert!(is_open(&path));
        log.finish().expect("finish");
        assert!(!is_open(&path));
        assert_eq!(contents(&path), ["done", "no newline"]);
    }

    #[test]
    fn rotation_stays_within_bounds_when_the_file_is_closed_between_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines: Vec<String> = write_rotated(dir.path(), Some(97))
            .iter()
            .flat_map(|file| contents(file))
            .collect();
        // The newest lines, each once and in order, across the kept files.
        let first: usize = lines[0]
            .strip_prefix("line ")
            .and_then(|n| n.parse().ok())
            .expect("number");
        let expected: Vec<String> = (first..10_000).map(|n| format!("line {n}")).collect();
        assert_eq!(lines, expected);
    }

    #[test]
    fn a_closed_file_is_reopened_safely_or_its_output_dropped_with_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let log = CriLogWriter::create(&path).expect("create");
        // A symlink planted where the closed file was is refused, never written through.
        std::fs::remove_file(&path).expect("remove");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").expect("write");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        assert!(log.write(Stream::Stdout, b"leak\n").is_err());
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "untouched");
        // The pod's log directory removed (the pod is going away): output is dropped, not an
        // error for the guest, as writes to an open file whose directory was removed were.
        std::fs::remove_dir_all(dir.path().join("c")).expect("remove");
        log.write(Stream::Stdout, b"late\n")
            .expect("dropped quietly");
        assert!(!path.exists());
    }
}
