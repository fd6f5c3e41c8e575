//! Writing CRI-format log files: one file per container run, stdout and stderr interleaved,
//! each line stamped and tagged.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

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
    file: File,
    pending: [Vec<u8>; 2],
}

/// A container run's log file; clone it to write from both streams.
#[derive(Clone)]
pub struct CriLogWriter {
    state: Arc<Mutex<State>>,
}

impl CriLogWriter {
    /// Creates (or appends to) the log file at `path`, creating its directory.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                file,
                pending: [Vec::new(), Vec::new()],
            })),
        })
    }

    /// Writes `bytes` from `stream`: every complete line becomes an `F` entry; the rest waits
    /// for its newline (or is written as `P` entries once it exceeds 16 KiB).
    pub fn write(&self, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { file, pending } = &mut *state;
        let buffer = &mut pending[stream as usize];
        buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = buffer[start..].iter().position(|&b| b == b'\n') {
            entry(&mut out, stream, 'F', &buffer[start..start + pos]);
            start += pos + 1;
        }
        buffer.drain(..start);
        while buffer.len() > MAX_PARTIAL {
            let rest = buffer.split_off(MAX_PARTIAL);
            entry(&mut out, stream, 'P', buffer);
            *buffer = rest;
        }
        file.write_all(&out)
    }

    /// Writes out unterminated output of both streams as final entries (the run ended).
    pub fn finish(&self) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { file, pending } = &mut *state;
        let mut out = Vec::new();
        for (stream, buffer) in [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .zip(pending.iter_mut())
        {
            if !buffer.is_empty() {
                entry(&mut out, stream, 'F', buffer);
                buffer.clear();
            }
        }
        file.write_all(&out)?;
        file.flush()
    }
}

fn entry(out: &mut Vec<u8>, stream: Stream, tag: char, content: &[u8]) {
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
}
