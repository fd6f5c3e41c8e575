//! Bounds on what a registry can make the node do: bytes downloaded per blob, bytes a layer
//! decompresses to, and the size of one WebAssembly program. Every guest shares this process,
//! so an image that could exhaust its memory or disk would take the whole node down.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// The most bytes an image config blob may have (configs are a few KiB of JSON).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The size limits of pulls (`--image-max-unpacked-size`, `--max-module-size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullLimits {
    /// Most bytes the layers of one image decompress to, together; also the largest layer
    /// downloaded.
    pub max_unpacked_bytes: u64,
    /// The largest WebAssembly module or component kept.
    pub max_module_bytes: u64,
}

impl Default for PullLimits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
        }
    }
}

/// `--image-max-unpacked-size` default: 1Gi.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 1 << 30;
/// `--max-module-size` default: 128Mi.
pub const DEFAULT_MAX_MODULE_BYTES: u64 = 128 << 20;

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The decompressed size of an image's layers.
    Unpacked,
    /// The size of one WebAssembly program.
    Module,
    /// The size of an image config.
    Config,
}

/// A limit that was exceeded, said the way a user can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct LimitExceeded {
    /// Which limit.
    pub limit: Limit,
    /// Its value in bytes.
    pub bytes: u64,
}

impl LimitExceeded {
    fn describe(&self) -> String {
        let size = human_bytes(self.bytes);
        match self.limit {
            Limit::Unpacked => format!(
                "its layers decompress to more than {size}, the limit set by --image-max-unpacked-size"
            ),
            Limit::Module => format!(
                "it holds a WebAssembly program larger than {size}, the limit set by --max-module-size"
            ),
            Limit::Config => format!("its config is larger than {size}"),
        }
    }

    /// The limit carried by an I/O error from a [`LimitedReader`] or [`LimitedWriter`].
    pub fn from_io(error: &std::io::Error) -> Option<Self> {
        error.get_ref()?.downcast_ref::<Self>().copied()
    }
}

/// `1073741824` as `1Gi (1073741824 bytes)`.
pub fn human_bytes(bytes: u64) -> String {
    let units = [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")];
    for (shift, unit) in units {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit} ({bytes} bytes)", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// A byte budget shared by the readers of one image (or one file), which remembers whether it
/// was exceeded (an error may reach the caller wrapped by a decoder that hides its type).
#[derive(Debug)]
pub struct Budget {
    limit: LimitExceeded,
    used: AtomicU64,
    hit: AtomicBool,
}

impl Budget {
    /// A budget of `bytes` for `limit`.
    pub fn new(limit: Limit, bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            limit: LimitExceeded { limit, bytes },
            used: AtomicU64::new(0),
            hit: AtomicBool::new(false),
        })
    }

    /// The limit, if it was exceeded.
    pub fn exceeded(&self) -> Option<LimitExceeded> {
        self.hit.load(Ordering::Relaxed).then_some(self.limit)
    }

    /// The limit, if `bytes` more would exceed it (to refuse a declared size up front).
    pub fn would_exceed(&self, bytes: u64) -> Option<LimitExceeded> {
        let used = self.used.load(Ordering::Relaxed);
        (used.saturating_add(bytes) > self.limit.bytes).then_some(self.limit)
    }

    /// Takes `n` bytes from the budget, or fails with the limit.
    fn take(&self, n: usize) -> std::io::Result<()> {
        let used = self.used.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if used > self.limit.bytes {
            self.hit.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(self.limit));
        }
        Ok(())
    }
}

/// A reader that fails once more bytes than its budget allows have passed.
pub struct LimitedReader<R> {
    inner: R,
    budget: Arc<Budget>,
}

impl<R> LimitedReader<R> {
    /// Reads `inner`, counting against `budget`.
    pub fn new(inner: R, budget: Arc<Budget>) -> Self {
        Self { inner, budget }
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.budget.take(n)?;
        Ok(n)
    }
}

/// An async writer that fails once more bytes than its budget allows were written.
pub struct LimitedWriter<W> {
    inner: W,
    budget: Arc<Budget>,
}

impl<W> LimitedWriter<W> {
    /// Writes to `inner`, counting against `budget`.
    pub fn new(inner: W, budget: Arc<Budget>) -> Self {
        Self { inner, budget }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LimitedWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => Poll::Ready(this.budget.take(n).map(|()| n)),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_stop_at_their_budget_and_say_which() {
        let budget = Budget::new(Limit::Unpacked, 10);
        let mut reader = LimitedReader::new(std::io::repeat(0).take(100), budget.clone());
        let mut out = Vec::new();
        let error = reader.read_to_end(&mut out).expect_err("over budget");
        assert!(out.len() <= 10 + 8192, "stopped early: {}", out.len());
        let exceeded = budget.exceeded().expect("recorded");
        assert_eq!(LimitExceeded::from_io(&error), Some(exceeded));
        assert!(
            exceeded.to_string().contains("--image-max-unpacked-size"),
            "{exceeded}"
        );
        let within = Budget::new(Limit::Module, 100);
        let mut reader = LimitedReader::new(std::io::repeat(0).take(100), within.clone());
        reader
            .read_to_end(&mut Vec::new())
            .expect("exactly the budget");
        assert!(within.exceeded().is_none());
        assert_eq!(human_bytes(1 << 30), "1Gi (1073741824 bytes)");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
