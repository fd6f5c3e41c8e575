//! Reading CRI-format log files the way `kubectl logs` expects them from the kubelet API:
//! content only (or with timestamps), partial entries joined, with tail, since, byte limit and
//! follow.
//!
//! Files are streamed in bounded chunks whatever their size: `tailLines` counts the lines in
//! a first pass over the open files instead of holding them, and a line joined from partial
//! entries is cut at [`MAX_LINE`], so a request costs a few hundred KiB however large the log.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::done_marker_path;
use super::rotation::rotated_files;

/// How often a followed log file is polled for new entries and for the end of its run.
const FOLLOW_POLL: Duration = Duration::from_millis(150);
/// Bytes read from a file at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Output is sent in chunks of about this size (or sooner, when the file has no more yet).
const SEND_CHUNK: usize = 32 * 1024;
/// A line joined from partial entries longer than this is sent in pieces of this size. The
/// writer splits lines into 16 KiB entries; only a guest that never prints a newline gets here.
pub const MAX_LINE: usize = 1 << 20;
/// An entry (one line of the file) longer than this is not one the writer wrote: it is
/// skipped as malformed instead of being buffered.
const MAX_ENTRY: usize = 1 << 20;

/// Errors finding or reading a container's log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// No log directory for the pod on this node.
    #[error("pod \"{pod}\" in namespace \"{namespace}\" has no logs on this node")]
    PodNotFound {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
    /// The pod has no log for the container (it has not started, or does not exist).
    #[error(
        "container \"{container}\" in pod \"{pod}\" has no logs on this node (not started yet, \
         or no such container)"
    )]
    ContainerNotFound {
        /// The pod's name.
        pod: String,
        /// The container's name.
        container: String,
    },
    /// `previous` was asked for but the container has run only once.
    #[error("previous terminated container \"{container}\" in pod \"{pod}\" not found")]
    NoPrevious {
        /// The pod's name.
        pod: String,
        /// The container's name.
        container: String,
    },
    /// A log file or directory could not be read.
    #[error("reading logs at {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What to read, as the query parameters of `GET /containerLogs/...` say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// Keep streaming new entries until the run ends.
    pub follow: bool,
    /// Only the last this many lines.
    pub tail_lines: Option<u64>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Only lines stamped at or after this time.
    pub since: Option<Timestamp>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
    /// Read the run before the current one.
    pub previous: bool,
}

/// One container run's log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRun {
    /// The `<restartCount>.log` file.
    pub path: PathBuf,
    /// Its restart count.
    pub restart_count: u32,
}

impl LogRun {
    /// Whether the run is over: its `.done` marker exists or a later run's file does.
    pub fn is_finished(&self) -> bool {
        if done_marker_path(&self.path).exists() {
            return true;
        }
        // Any later run, not only `n+1`: a restart count may be skipped if a run failed early.
        let Some(dir) = self.path.parent() else {
            return false;
        };
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".log"))
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n > self.restart_count)
            })
        })
    }
}

/// Finds the log file of a container's current run (or the one before, with `previous`).
///
/// The pod directory is found by its `<namespace>_<pod>_` prefix, since the API server does
/// not send the uid; if a pod of that name existed several times, the most recently modified
/// directory is the current one.
pub fn find_run(
    root: &Path,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<LogRun, LogError> {
    let prefix = format!("{namespace}_{pod}_");
    let pod_not_found = || LogError::PodNotFound {
        namespace: namespace.into(),
        pod: pod.into(),
    };
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(pod_not_found()),
        Err(source) => {
            return Err(LogError::Io {
                path: root.to_path_buf(),
                source,
            });
        }
    };
    let pod_dir = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| {
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, e.path()))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
        .ok_or_else(pod_not_found)?;
    let container_not_found = || LogError::ContainerNotFound {
        pod: pod.into(),
        container: container.into(),
    };
    // A container name is a DNS label, so it cannot climb out of the pod directory; check
    // anyway, since it comes straight from the request path.
    if container.is_empty() || container.contains(['/', '.']) {
        return Err(container_not_found());
    }
    let dir = pod_dir.join(container);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(container_not_found()),
        Err(source) => return Err(LogError::Io { path: dir, source }),
    };
    let mut runs: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            name.to_str()?.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    runs.sort_unstable();
    let restart_count = if previous {
        match runs.len() {
            0 => return Err(container_not_found()),
            1 => {
                return Err(LogError::NoPrevious {
                    pod: pod.into(),
                    container: container.into(),
                });
            }
            n => runs[n - 2],
        }
    } else {
        *runs.last().ok_or_else(container_not_found)?
    };
    Ok(LogRun {
        path: dir.join(format!("{restart_count}.log")),
        restart_count,
    })
}

/// One logical log line: partial entries already joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The timestamp as written in the file (of the line's first entry).
    pub stamp: String,
    /// The timestamp, parsed.
    pub time: Timestamp,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The content, without the newline.
    pub content: Vec<u8>,
}

impl LogLine {
    /// The line as the kubelet API sends it: content and newline, stamped if asked.
    pub fn render(&self, timestamps: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.content.len() + self.stamp.len() + 2);
        if timestamps {
            out.extend_from_slice(self.stamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&self.content);
        out.push(b'\n');
        out
    }
}

/// Turns raw CRI entries into logical lines, joining `P` entries to the next entry of the same
/// stream.
#[derive(Debug, Default)]
pub struct CriParser {
    /// Partial lines waiting for their end, per stream.
    pending: Vec<LogLine>,
}

impl CriParser {
    /// Parses one entry (without its newline); returns the line it completes, if any.
    /// Malformed entries are skipped, as the kubelet does.
    pub fn push(&mut self, entry: &[u8]) -> Option<LogLine> {
        let mut parts = entry.splitn(4, |&b| b == b' ');
        let stamp = std::str::from_utf8(parts.next()?).ok()?;
        let stream = std::str::from_utf8(parts.next()?).ok()?;
        let tag = parts.next()?;
        let content = parts.next().unwrap_or_default();
        let time: Timestamp = stamp.parse().ok()?;
        let partial = match tag {
            b"P" => true,
            b"F" => false,
            _ => return None,
        };
        let index = self.pending.iter().position(|l| l.stream == stream);
        let mut line = match index {
            Some(i) => self.pending.swap_remove(i),
            None => LogLine {
                stamp: stamp.into(),
                time,
                stream: stream.into(),
                content: Vec::new(),
            },
        };
        line.content.extend_from_slice(content);
        if partial && line.content.len() < MAX_LINE {
            self.pending.push(line);
            None
        } else {
            Some(line)
        }
    }

    /// Partial lines never completed (the run ended mid-line), oldest first.
    pub fn flush(&mut self) -> Vec<LogLine> {
        let mut rest = std::mem::take(&mut self.pending);
        rest.sort_by_key(|l| l.time);
        rest
    }
}

/// Applies `since`, the tail's skip and `limitBytes`, and sends rendered output to `tx` in
/// chunks.
struct Emitter {
    options: LogOptions,
    /// Lines (of those after `since`) still to leave out: all but the last `tailLines`.
    skip: u64,
    sent: u64,
    buffer: Vec<u8>,
    tx: mpsc::Sender<Vec<u8>>,
}

/// Whether the reader should go on.
#[derive(PartialEq)]
enum Flow {
    More,
    Stop,
}

impl Emitter {
    async fn line(&mut self, line: LogLine) -> Flow {
        if self.options.since.is_some_and(|since| line.time < since) {
            return Flow::More;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Flow::More;
        }
        let mut bytes = line.render(self.options.timestamps);
        let mut flow = Flow::More;
        if let Some(limit) = self.options.limit_bytes {
            let left = limit.saturating_sub(self.sent);
            if bytes.len() as u64 >= left {
                bytes.truncate(left as usize);
                flow = Flow::Stop;
            }
        }
        self.sent += bytes.len() as u64;
        self.buffer.extend_from_slice(&bytes);
        if (self.buffer.len() >= SEND_CHUNK || flow == Flow::Stop)
            && self.flush().await == Flow::Stop
        {
            return Flow::Stop;
        }
        flow
    }

    /// Sends what is buffered.
    async fn flush(&mut self) -> Flow {
        if self.buffer.is_empty() {
            return Flow::More;
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(SEND_CHUNK));
        if self.tx.send(chunk).await.is_err() {
            // The client went away.
            return Flow::Stop;
        }
        Flow::More
    }
}

/// Reads complete entries from an open file in bounded batches, keeping an unterminated last
/// entry for later. When the file it follows is rotated away, it finishes the old file and goes
/// on with the new.
struct Tail {
    file: tokio::fs::File,
    inode: u64,
    path: PathBuf,
    carry: Vec<u8>,
}

impl Tail {
    async fn open(path: &Path) -> Result<Self, LogError> {
        let io = |source| LogError::Io {
            path: path.into(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let inode = file.metadata().await.map_err(io)?.ino();
        Ok(Self {
            file,
            inode,
            path: path.into(),
            carry: Vec::new(),
        })
    }

    /// Whether `path` now names another file than the one open (it was rotated).
    async fn rotated(&self) -> bool {
        tokio::fs::metadata(&self.path)
            .await
            .is_ok_and(|m| m.ino() != self.inode)
    }

    /// The next batch of entries (at most one read's worth), or `None` at the end of the file.
    /// With `reopen`, the end of a file that was rotated away moves on to the new one.
    async fn read_batch(&mut self, reopen: bool) -> Result<Option<Vec<Vec<u8>>>, LogError> {
        let mut chunk = vec![0; READ_CHUNK];
        loop {
            let n = self
                .file
                .read(&mut chunk)
                .await
                .map_err(|source| LogError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                // At the end of a rotated file: everything in it is read, go on with the new one.
                if reopen && self.rotated().await {
                    let next = Self::open(&self.path).await?;
                    self.file = next.file;
                    self.inode = next.inode;
                    continue;
                }
                return Ok(None);
            }
            self.carry.extend_from_slice(&chunk[..n]);
            let mut entries = Vec::new();
            let mut start = 0;
            while let Some(pos) = self.carry[start..].iter().position(|&b| b == b'\n') {
                entries.push(self.carry[start..start + pos].to_vec());
                start += pos + 1;
            }
            self.carry.drain(..start);
            if self.carry.len() > MAX_ENTRY {
                tracing::debug!(path = %self.path.display(), "skipping an overlong log entry");
                self.carry.clear();
            }
            return Ok(Some(entries));
        }
    }

    /// Back to the start, for a second pass.
    async fn rewind(&mut self) -> Result<(), LogError> {
        self.carry.clear();
        self.file
            .seek(SeekFrom::Start(0))
            .await
            .map(drop)
            .map_err(|source| LogError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// Opens the run's rotated files, oldest first, leaving out the one already open as the current
/// file (it was rotated after it was opened).
async fn open_rotated(current: &Tail) -> Result<Vec<Tail>, LogError> {
    let mut files = Vec::new();
    for path in rotated_files(&current.path) {
        match Tail::open(&path).await {
            Ok(old) if old.inode == current.inode => {}
            Ok(old) => files.push(old),
            // Removed by rotation meanwhile: older than what is kept.
            Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(files)
}

/// The tail's first pass: how many lines at or after `since` the files hold now (the rotated
/// ones, then the current one to its present end); every file is rewound afterwards.
async fn count_lines(
    rotated: &mut [Tail],
    current: &mut Tail,
    since: Option<Timestamp>,
) -> Result<u64, LogError> {
    let mut parser = CriParser::default();
    let mut count = 0;
    for file in rotated.iter_mut().chain(std::iter::once(&mut *current)) {
        while let Some(batch) = file.read_batch(false).await? {
            for entry in batch {
                if let Some(line) = parser.push(&entry)
                    && since.is_none_or(|since| line.time >= since)
                {
                    count += 1;
                }
            }
        }
        file.rewind().await?;
    }
    Ok(count)
}

/// Feeds every batch of `file` until its end through `parser` and `emitter`.
async fn feed(
    file: &mut Tail,
    reopen: bool,
    parser: &mut CriParser,
    emitter: &mut Emitter,
) -> Result<Flow, LogError> {
    while let Some(batch) = file.read_batch(reopen).await? {
        for entry in batch {
            if let Some(line) = parser.push(&entry)
                && emitter.line(line).await == Flow::Stop
            {
                return Ok(Flow::Stop);
            }
        }
    }
    Ok(Flow::More)
}

/// Streams a run's log to `tx` by `options`, in chunks of whole lines. With `follow`, keeps
/// polling the file until the run is over (see [`LogRun::is_finished`]) or `tx` is closed (the
/// client disconnected).
pub async fn stream_log(
    run: LogRun,
    options: LogOptions,
    tx: mpsc::Sender<Vec<u8>>,
) -> Result<(), LogError> {
    // The current file first, then the rotated ones: a rotation in between shows up as the
    // open file among the rotated ones, and nothing is missed.
    let mut reader = Tail::open(&run.path).await?;
    let mut rotated = open_rotated(&reader).await?;
    if options.limit_bytes == Some(0) || (options.tail_lines == Some(0) && !options.follow) {
        return Ok(());
    }
    let skip = match options.tail_lines {
        Some(n) => count_lines(&mut rotated, &mut reader, options.since)
            .await?
            .saturating_sub(n),
        None => 0,
    };
    let mut parser = CriParser::default();
    let mut emitter = Emitter {
        options: options.clone(),
        skip,
        sent: 0,
        buffer: Vec::with_capacity(SEND_CHUNK),
        tx,
    };
    let mut finished = !options.follow || run.is_finished();
    for mut old in rotated {
        if feed(&mut old, false, &mut parser, &mut emitter).await? == Flow::Stop {
            return Ok(());
        }
    }
    loop {
        if feed(&mut reader, true, &mut parser, &mut emitter).await? == Flow::Stop
            || emitter.flush().await == Flow::Stop
        {
            return Ok(());
        }
        if finished {
            break;
        }
        // Checked before the next read, so whatever was written before the run ended is read.
        tokio::select! {
            _ = emitter.tx.closed() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        finished = run.is_finished();
    }
    // The tail's window ends here: what follows was not counted, and is shown.
    emitter.skip = 0;
    if !reader.carry.is_empty() {
        let last = std::mem::take(&mut reader.carry);
        if let Some(line) = parser.push(&last)
            && emitter.line(line).await == Flow::Stop
        {
            return Ok(());
        }
    }
    for line in parser.flush() {
        if emitter.line(line).await == Flow::Stop {
            return Ok(());
        }
    }
    emitter.flush().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::pods_log_root;

    const LOG: &str = "\
2026-01-01T00:00:01.000000001Z stdout F one
2026-01-01T00:00:02.000000000Z stdout P tw
2026-01-01T00:00:02.500000000Z stderr F err
2026-01-01T00:00:03.000000000Z stdout F o
garbage line
2026-01-01T00:00:04.000000000Z stdout F three
";

    fn write_run(dir: &Path, container: &str, n: u32, text: &str) -> PathBuf {
        let pod_dir = super::super::pod_log_dir(&pods_log_root(dir), "ns", "pod", "uid-1");
        let path = super::super::container_log_path(&pod_dir, container, n);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        path
    }

    async fn read(path: &Path, options: LogOptions) -> String {
        let run = LogRun {
            path: path.into(),
            restart_count: 0,
        };
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(stream_log(run, options, tx));
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend(chunk);
        }
        task.await.expect("join").expect("stream");
        String::from_utf8(out).expect("utf8")
    }

    #[tokio::test]
    async fn content_only_with_partials_joined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_run(dir.path(), "c", 0, LOG);
        assert_eq!(
            read(&path, LogOptions::default()).await,
            "one\nerr\ntwo\nthree\n"
        );
    }

    #[tokio::test]
    async fn timestamps_prefix_the_first_entry_stamp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_run(dir.path(), "c", 0, LOG);
        let options = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        let out = read(&path, options).await;
        assert_eq!(
            out.lines().nth(2),
            Some("2026-01-01T00:00:02.000000000Z two")
        );
        assert!(out.starts_with("2026-01-01T00:00:01.000000001Z one\n"));
    }

    #[tokio::test]
    async fn tail_since_and_limit_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_run(dir.path(), "c", 0, LOG);
        let tail = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(read(&path, tail).await, "two\nthree\n");
        let zero = LogOptions {
            tail_lines: Some(0),
            ..Default::default()
        };
        assert_eq!(read(&path, zero).await, "");
        let since = LogOptions {
            since: Some("2026-01-01T00:00:02.400Z".parse().expect("time")),
            ..Default::default()
        };
        // "two" began before `since`, so it is left out whole.
        assert_eq!(read(&path, since).await, "err\nthree\n");
        let limit = LogOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(read(&path, limit).await, "one\ner");
    }

    #[tokio::test]
    async fn large_logs_stream_in_bounded_chunks_and_tail_counts_instead_of_holding() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = String::new();
        for n in 0..100_000 {
            text.push_str(&format!("2026-01-01T00:00:01Z stdout F line {n}\n"));
        }
        let path = write_run(dir.path(), "c", 0, &text);
        std::fs::write(
            super::super::rotation::rotated_path(&path, "2026-01-01T00:00:00Z".parse().expect("t")),
            "2026-01-01T00:00:00Z stdout F rotated\n",
        )
        .expect("rotated");
        let run = LogRun {
            path: path.clone(),
            restart_count: 0,
        };
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(stream_log(run.clone(), LogOptions::default(), tx));
        let (mut largest, mut total, mut chunks) = (0, 0, 0);
        while let Some(chunk) = rx.recv().await {
            largest = largest.max(chunk.len());
            total += chunk.len();
            chunks += 1;
        }
        task.await.expect("join").expect("stream");
        assert!(largest <= SEND_CHUNK + 64, "a chunk of {largest} bytes");
        assert!(chunks > 10, "{chunks} chunks");
        assert_eq!(
            total,
            "rotated\n".len()
                + (0..100_000)
                    .map(|n| format!("line {n}\n").len())
                    .sum::<usize>()
        );
        let tail = LogOptions {
            tail_lines: Some(3),
            ..Default::default()
        };
        assert_eq!(
            read(&path, tail).await,
            "line 99997\nline 99998\nline 99999\n"
        );
        let everything = LogOptions {
            tail_lines: Some(1_000_000),
            ..Default::default()
        };
        assert!(
            read(&path, everything)
                .await
                .starts_with("rotated\nline 0\n")
        );
    }

    #[tokio::test]
    async fn a_line_without_end_is_cut_into_pieces_of_max_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = format!("2026-01-01T00:00:01Z stdout P {}\n", "x".repeat(16 * 1024));
        let text = entry.repeat(MAX_LINE / (16 * 1024) + 1);
        let path = write_run(dir.path(), "c", 0, &text);
        let out = read(&path, LogOptions::default()).await;
        let lines: Vec<usize> = out.lines().map(str::len).collect();
        assert_eq!(lines, [MAX_LINE, 16 * 1024]);
    }

    #[tokio::test]
    async fn an_unfinished_partial_line_is_shown_at_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_run(
            dir.path(),
            "c",
            0,
            "2026-01-01T00:00:01Z stdout F a\n2026-01-01T00:00:02Z stdout P b",
        );
        assert_eq!(read(&path, LogOptions::default()).await, "a\nb\n");
    }

    #[test]
    fn current_and_previous_runs_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_run(dir.path(), "c", 0, LOG);
        let err =
            find_run(&pods_log_root(dir.path()), "ns", "pod", "c", true).expect_err("no previous");
        assert!(matches!(err, LogError::NoPrevious { .. }), "{err}");
        write_run(dir.path(), "c", 1, LOG);
        write_run(dir.path(), "c", 10, LOG);
        let current =
            find_run(&pods_log_root(dir.path()), "ns", "pod", "c", false).expect("current");
        assert_eq!(current.restart_count, 10);
        let previous =
            find_run(&pods_log_root(dir.path()), "ns", "pod", "c", true).expect("previous");
        assert_eq!(previous.restart_count, 1);
        assert!(previous.is_finished(), "a later run exists");
        assert!(!current.is_finished());
    }

    #[test]
    fn unknown_pods_and_containers_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            find_run(&pods_log_root(dir.path()), "ns", "pod", "c", false).expect_err("no pod");
        assert!(matches!(err, LogError::PodNotFound { .. }), "{err}");
        write_run(dir.path(), "c", 0, LOG);
        let err = find_run(&pods_log_root(dir.path()), "ns", "pod", "other", false)
            .expect_err("no container");
        assert!(err.to_string().contains("\"other\""), "{err}");
        let err =
            find_run(&pods_log_root(dir.path()), "ns", "pod", "..", false).expect_err("traversal");
        assert!(matches!(err, LogError::ContainerNotFound { .. }), "{err}");
        assert!(find_run(&pods_log_root(dir.path()), "ns", "po", "c", false).is_err());
    }

    #[tokio::test]
    async fn follow_streams_appended_lines_until_the_run_is_marked_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_run(dir.path(), "c", 0, "2026-01-01T00:00:01Z stdout F a\n");
        let run = LogRun {
            path: path.clone(),
            restart_count: 0,
        };
        let options = LogOptions {
            follow: true,
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(stream_log(run, options, tx));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"a\n"[..]));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut file, b"2026-01-01T00:00:02Z stdout F b\n").expect("append");
        assert_eq!(rx.recv().await.as_deref(), Some(&b"b\n"[..]));
        super::super::mark_run_finished(&path).expect("mark");
        assert_eq!(rx.recv().await, None, "the stream ends with the run");
        task.await.expect("join").expect("stream");
    }

    #[tokio::test]
    async fn follow_ends_when_the_client_goes_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_run(dir.path(), "c", 0, "2026-01-01T00:00:01Z stdout F a\n");
        let run = LogRun {
            path,
            restart_count: 0,
        };
        let options = LogOptions {
            follow: true,
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(stream_log(run, options, tx));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ends promptly")
            .expect("join")
            .expect("stream");
    }

    #[tokio::test]
    async fn rotated_files_are_read_first_and_followed_across_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_run(dir.path(), "c", 0, "2026-01-01T00:00:03Z stdout F c\n");
        std::fs::write(
            super::super::rotation::rotated_path(&path, "2026-01-01T00:00:01Z".parse().expect("t")),
            "2026-01-01T00:00:01Z stdout F a\n",
        )
        .expect("rotated");
        std::fs::write(
            super::super::rotation::rotated_path(&path, "2026-01-01T00:00:02Z".parse().expect("t")),
            "2026-01-01T00:00:02Z stdout F b\n",
        )
        .expect("rotated");
        assert_eq!(read(&path, LogOptions::default()).await, "a\nb\nc\n");
        let tail = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(read(&path, tail).await, "b\nc\n");

        let run = LogRun {
            path: path.clone(),
            restart_count: 0,
        };
        let options = LogOptions {
            follow: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(stream_log(run, options, tx));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"c\n"[..]));
        // Rotate as the writer does, then write to the new file.
        let policy = super::super::rotation::LogPolicy::default();
        super::super::rotation::rotate(&path, &policy).expect("rotate");
        std::fs::write(&path, "2026-01-01T00:00:04Z stdout F d\n").expect("new file");
        assert_eq!(rx.recv().await.as_deref(), Some(&b"d\n"[..]));
        super::super::mark_run_finished(&path).expect("mark");
        assert_eq!(rx.recv().await, None);
        task.await.expect("join").expect("stream");
    }
}
