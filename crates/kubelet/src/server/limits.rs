//! What one client may hold of the kubelet API: header bytes per request, idle time per
//! connection, and connections in all. The first two are upstream's `http.Server` settings
//! (`MaxHeaderBytes: 1 << 20`, `IdleTimeout: 90s`, `pkg/kubelet/server/server.go`); the cap
//! has no upstream equivalent but keeps idle crowds from exhausting file descriptors.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Largest request head (request line and headers): Go's `MaxHeaderBytes` of 1 MiB plus the
/// 4096 bytes of slack `net/http` allows on top. A larger head is refused with 431.
pub const MAX_HEADER_BYTES: usize = (1 << 20) + 4096;
/// What hyper buffers of a head at most. Heads between [`MAX_HEADER_BYTES`] and this are read
/// whole and answered 431 by [`head_too_large`]'s check, so the client reads the answer
/// instead of a reset; beyond it hyper answers 431 itself and closes.
const HEAD_BUFFER: usize = 2 * MAX_HEADER_BYTES;

/// The HTTP/1.1 and HTTP/2 settings of every kubelet API connection.
pub fn http_builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(HEAD_BUFFER);
    builder.http2().max_header_list_size(HEAD_BUFFER as u32);
    builder
}

/// Whether a request's head (request line and header fields, as sent) exceeds
/// [`MAX_HEADER_BYTES`].
pub fn head_too_large<B>(request: &http::Request<B>) -> bool {
    let line = request.method().as_str().len() + request.uri().to_string().len() + 12;
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + fields > MAX_HEADER_BYTES
}

/// Whether a connection has a request in progress, and since when it has had none.
///
/// A request is in progress from the moment its head is read until its response body is
/// finished or dropped, so a long `kubectl logs -f` is never idle, while a connection that
/// sends nothing, dribbles a head, or keeps an unused keep-alive (HTTP/1.1 or HTTP/2) is.
#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
    changed: Notify,
}

impl Activity {
    /// A connection that has just been accepted: idle from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            changed: Notify::new(),
        })
    }

    /// Marks a request in progress until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        ActiveGuard(self.clone())
    }

    /// Resolves once the connection has had no request in progress for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Read together with the count, which the guard changes under the same lock.
            let since = {
                let since = self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
                (self.active.load(Ordering::SeqCst) == 0).then_some(*since)
            };
            let Some(since) = since else {
                changed.await;
                continue;
            };
            let deadline = since + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = changed => {}
            }
        }
    }
}

/// A request in progress; see [`Activity::begin`].
#[derive(Debug)]
pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        {
            let mut since = activity
                .idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if activity.active.fetch_sub(1, Ordering::SeqCst) == 1 {
                *since = Instant::now();
            }
        }
        activity.changed.notify_waiters();
    }
}

/// A response body that keeps its request in progress until it is finished or dropped.
pub struct ActiveBody {
    inner: axum::body::Body,
    _guard: ActiveGuard,
}

impl ActiveBody {
    /// Wraps `inner`, holding `guard` for as long as it is sent.
    pub fn new(inner: axum::body::Body, guard: ActiveGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl http_body::Body for ActiveBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_over_a_mebibyte_are_too_large() {
        let request = |padding: usize| {
            http::Request::get("/pods")
                .header("x-padding", "a".repeat(padding))
                .body(())
                .expect("request")
        };
        assert!(!head_too_large(&request(1 << 20)));
        assert!(head_too_large(&request((1 << 20) + 4096)));
    }

    // Real time, scaled down: 100 ms stands for upstream's 90 s.
    const TIMEOUT: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn idle_time_counts_only_without_requests_in_progress() {
        let activity = Activity::new();
        let start = Instant::now();
        // A request starts at once and its response streams for far longer than the timeout.
        let guard = activity.begin();
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(TIMEOUT * 5).await;
            drop(guard);
        });
        tokio::time::timeout(Duration::from_secs(30), activity.idle_for(TIMEOUT))
            .await
            .expect("idle in the end");
        assert!(start.elapsed() >= TIMEOUT * 6, "{:?}", start.elapsed());
        finisher.await.expect("finisher");
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_idle_from_the_start() {
        let activity = Activity::new();
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(30), activity.idle_for(TIMEOUT))
            .await
            .expect("idle");
        assert!(start.elapsed() >= TIMEOUT);
        // Two overlapping requests: idle only once both are over.
        let (a, b) = (activity.begin(), activity.begin());
        drop(a);
        tokio::time::sleep(TIMEOUT * 2).await;
        let waited = Instant::now();
        drop(b);
        tokio::time::timeout(Duration::from_secs(30), activity.idle_for(TIMEOUT))
            .await
            .expect("idle");
        assert!(waited.elapsed() >= TIMEOUT);
    }
}
