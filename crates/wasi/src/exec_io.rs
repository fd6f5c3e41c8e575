//! An exec'd instance's stdio as bounded channels (see [`kubelet::runtime::ExecIo`]): output
//! goes to a `Sender<Bytes>` the kubelet forwards to the client, input comes from a
//! `Receiver<Bytes>`. A full channel makes the guest wait (its `ready` pollable), never the
//! kubelet buffer without bound.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use wasmtime_wasi::cli::{AsyncStdinStream, IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// Largest write the guest is offered at once.
const WRITE_BUDGET: usize = 64 * 1024;

/// A guest output stream into a channel.
#[derive(Clone)]
pub struct ChannelOut {
    tx: mpsc::Sender<Bytes>,
    tty: bool,
}

impl ChannelOut {
    /// Output into `tx`; `tty` is what `isatty` answers.
    pub fn new(tx: mpsc::Sender<Bytes>, tty: bool) -> Self {
        Self { tx, tty }
    }
}

impl IsTerminal for ChannelOut {
    fn is_terminal(&self) -> bool {
        self.tty
    }
}

impl StdoutStream for ChannelOut {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(ChannelWrite {
            tx: tokio_util::sync::PollSender::new(self.tx.clone()),
        })
    }
}

#[async_trait::async_trait]
impl Pollable for ChannelOut {
    /// Ready once the channel has room (or is closed, which the next write reports).
    async fn ready(&mut self) {
        if let Ok(permit) = self.tx.reserve().await {
            drop(permit);
        }
    }
}

impl OutputStream for ChannelOut {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        match self.tx.try_send(bytes) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(StreamError::Closed),
            // check_write said there was room; another handle of the same stream took it.
            Err(TrySendError::Full(_)) => Err(StreamError::Trap(wasmtime::format_err!(
                "stdout written beyond its permitted budget"
            ))),
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.tx.is_closed() {
            return Err(StreamError::Closed);
        }
        Ok(if self.tx.capacity() > 0 {
            WRITE_BUDGET
        } else {
            0
        })
    }
}

/// [`ChannelOut`] as an `AsyncWrite`.
struct ChannelWrite {
    tx: tokio_util::sync::PollSender<Bytes>,
}

impl AsyncWrite for ChannelWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.tx.poll_reserve(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Poll::Ready(Ok(())) => Poll::Ready(
                self.tx
                    .send_item(Bytes::copy_from_slice(buf))
                    .map(|()| buf.len())
                    .map_err(|_| io::ErrorKind::BrokenPipe.into()),
            ),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A channel of chunks as an `AsyncRead`; end of file once the sender is gone.
struct ChannelRead {
    rx: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

impl AsyncRead for ChannelRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(chunk)) => self.pending = chunk,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// A guest's stdin from a channel.
pub struct ChannelIn {
    inner: AsyncStdinStream,
    tty: bool,
}

impl ChannelIn {
    /// Input from `rx`; `tty` is what `isatty` answers.
    pub fn new(rx: mpsc::Receiver<Bytes>, tty: bool) -> Self {
        Self {
            inner: AsyncStdinStream::new(ChannelRead {
                rx,
                pending: Bytes::new(),
            }),
            tty,
        }
    }
}

impl IsTerminal for ChannelIn {
    fn is_terminal(&self) -> bool {
        self.tty
    }
}

impl StdinStream for ChannelIn {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        self.inner.p2_stream()
    }

    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        self.inner.async_stream()
    }
}
