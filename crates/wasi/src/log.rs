//! The guest's stdout and stderr as CRI log streams (see `kubelet::log`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use kubelet::log::writer::{CriLogWriter, Stream};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// One of a guest's output streams, written to its container's CRI log file.
#[derive(Clone)]
pub struct CriStream {
    log: CriLogWriter,
    stream: Stream,
}

impl CriStream {
    /// The `stream` side of `log`.
    pub fn new(log: CriLogWriter, stream: Stream) -> Self {
        Self { log, stream }
    }
}

impl IsTerminal for CriStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CriStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CriStream {
    /// Ready once the container's log rate budget (`--container-log-max-rate`) allows a write:
    /// a guest printing without pause waits here, on its own task, instead of filling the disk.
    async fn ready(&mut self) {
        loop {
            let wait = self.log.write_wait();
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

impl OutputStream for CriStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log
            .write(self.stream, &bytes)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::format_err!(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(self.log.write_budget().min(64 * 1024))
    }
}

impl AsyncWrite for CriStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.log.write(self.stream, buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
