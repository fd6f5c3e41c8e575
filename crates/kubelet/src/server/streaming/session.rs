//! A server-side SPDY/3.1 session over an upgraded connection: accepts the streams the client
//! opens (replying at once, as upstream's `spdy.NewResponseUpgrader` does), hands each one's
//! data to its reader and writes what the handler sends. Frames are [`super::spdy`]'s.
//!
//! # Bounds
//! At most [`MAX_STREAMS`] streams are open at once (a stream is open until its handler drops
//! its [`Stream`]); more are refused with RST_STREAM(REFUSED_STREAM). A port-forward session
//! opens two streams per forwarded connection for as long as `kubectl port-forward` runs. Each stream buffers at most [`STREAM_QUEUE`] data frames;
//! a handler that does not read a stream it accepted stalls only its own session.
//!
//! # Caveats
//! SPDY/3.1 flow control (§2.6.8) is not enforced: moby/spdystream, the only client in use
//! (client-go and the API server), ignores WINDOW_UPDATE frames and never waits for window
//! either; the data queues above bound memory instead.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::spdy::{Codec, FLAG_FIN, Frame, Headers, SpdyError, goaway, rst};

/// Most streams open at once in one session (exec needs five; port-forward two per
/// connection).
pub const MAX_STREAMS: usize = 128;
/// Data frames buffered per stream before the session waits for its reader.
pub const STREAM_QUEUE: usize = 16;
/// Frames queued for the writer.
const WRITE_QUEUE: usize = 64;
/// Largest data frame this side writes.
const WRITE_CHUNK: usize = 32 * 1024;

/// The peer closed the session or its stream; nothing more can be written.
#[derive(Debug, thiserror::Error)]
#[error("the SPDY session is closed")]
pub struct Closed;

/// A stream the client opened.
pub struct Stream {
    /// Its ID.
    pub id: u32,
    /// Its headers (`streamtype`, `port`, `requestid`).
    pub headers: Headers,
    /// The client's data, until it half-closes (FIN) or resets the stream.
    pub data: mpsc::Receiver<Bytes>,
    /// Writes to the client on this stream.
    pub writer: StreamWriter,
    /// Holds one of the session's [`MAX_STREAMS`] slots until the stream is dropped.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// The sending half of one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Frame>,
}

impl StreamWriter {
    /// Sends `data` (in frames of at most 32 KiB).
    ///
    /// # Errors
    /// [`Closed`] once the session is gone.
    pub async fn write(&self, mut data: Bytes) -> Result<(), Closed> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(WRITE_CHUNK));
            self.frames
                .send(Frame::Data {
                    stream_id: self.id,
                    flags: 0,
                    data: chunk,
                })
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Half-closes the stream (an empty data frame with FIN).
    pub async fn finish(&self) {
        let _ = self
            .frames
            .send(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            })
            .await;
    }

    /// Resets the stream with `status` (see [`rst`]).
    pub async fn reset(&self, status: u32) {
        let _ = self
            .frames
            .send(Frame::RstStream {
                stream_id: self.id,
                status,
            })
            .await;
    }
}

/// A running session: the streams as the client opens them, and a way to end it.
pub struct Session {
    /// Streams as they are opened.
    pub incoming: mpsc::Receiver<Stream>,
    frames: mpsc::Sender<Frame>,
    stop: CancellationToken,
    peer_gone: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Starts serving `io` (the upgraded connection).
    pub fn start<IO>(io: IO) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(io);
        let (frames_tx, frames_rx) = mpsc::channel(WRITE_QUEUE);
        let (incoming_tx, incoming) = mpsc::channel(MAX_STREAMS);
        let stop = CancellationToken::new();
        let write_task = tokio::spawn(write_frames(writer, frames_rx));
        let read_stop = stop.clone();
        let read_frames_tx = frames_tx.clone();
        let peer_gone = CancellationToken::new();
        let gone = peer_gone.clone();
        let done = tokio::spawn(async move {
            let outcome = tokio::select! {
                outcome = read_frames(reader, read_frames_tx.clone(), incoming_tx) => outcome,
                _ = read_stop.cancelled() => Ok(()),
            };
            gone.cancel();
            if let Err(error) = &outcome {
                tracing::info!(%error, "closing a SPDY session on a protocol error");
                let _ = read_frames_tx
                    .send(Frame::GoAway {
                        last_good_stream_id: 0,
                        status: goaway::PROTOCOL_ERROR,
                    })
                    .await;
            }
            drop(read_frames_tx);
            let _ = write_task.await;
        });
        Self {
            incoming,
            frames: frames_tx,
            stop,
            peer_gone,
            done,
        }
    }

    /// Cancelled once the client closed the connection, sent GOAWAY or broke the protocol.
    pub fn peer_gone(&self) -> CancellationToken {
        self.peer_gone.clone()
    }

    /// Ends the session: GOAWAY, then the connection closes once queued frames are written.
    pub async fn close(self) {
        let _ = self
            .frames
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: goaway::OK,
            })
            .await;
        self.stop.cancel();
        drop(self.frames);
        drop(self.incoming);
        // Bounded: the writer ends once every stream writer is dropped, or the peer stops
        // reading; either way give up after a while.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.done).await;
    }
}

/// Encodes and writes frames until every sender is gone.
async fn write_frames<W: AsyncWrite>(writer: W, mut frames: mpsc::Receiver<Frame>) {
    tokio::pin!(writer);
    let mut codec = Codec::new();
    let mut out = BytesMut::new();
    while let Some(frame) = frames.recv().await {
        let goaway = matches!(frame, Frame::GoAway { .. });
        if let Err(error) = codec.encode(&frame, &mut out) {
            tracing::warn!(%error, "cannot encode a SPDY frame");
            break;
        }
        // Write what is queued together.
        while out.len() < 64 * 1024 {
            match frames.try_recv() {
                Ok(next) => {
                    if codec.encode(&next, &mut out).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        out.clear();
        if goaway {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

/// Reads frames, opens streams and routes data until the peer ends the session.
async fn read_frames<R: AsyncRead>(
    reader: R,
    frames: mpsc::Sender<Frame>,
    incoming: mpsc::Sender<Stream>,
) -> Result<(), SpdyError> {
    tokio::pin!(reader);
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_id = 0u32;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
    loop {
        let frame = loop {
            if let Some(frame) = codec.decode(&mut buf)? {
                break frame;
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        };
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                // §2.3.2: client streams are odd and increase.
                if stream_id.is_multiple_of(2) || stream_id <= last_id {
                    return Err(SpdyError::Malformed {
                        frame: "SYN_STREAM",
                        reason: format!("stream ID {stream_id} is not odd and increasing"),
                    });
                }
                last_id = stream_id;
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(stream_id, "refusing a SPDY stream: too many");
                    let _ = frames
                        .send(Frame::RstStream {
                            stream_id,
                            status: rst::REFUSED_STREAM,
                        })
                        .await;
                    continue;
                };
                let (data_tx, data) = mpsc::channel(STREAM_QUEUE);
                if flags & FLAG_FIN == 0 {
                    streams.insert(stream_id, data_tx);
                }
                let _ = frames
                    .send(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: Vec::new(),
                    })
                    .await;
                let stream = Stream {
                    id: stream_id,
                    headers,
                    data,
                    writer: StreamWriter {
                        id: stream_id,
                        frames: frames.clone(),
                    },
                    _slot: slot,
                };
                if incoming.try_send(stream).is_err() {
                    // Nobody takes streams any more (the handler is done or behind).
                    let _ = frames
                        .send(Frame::RstStream {
                            stream_id,
                            status: rst::REFUSED_STREAM,
                        })
                        .await;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let Some(sender) = streams.get(&stream_id) else {
                    // §2.4.2: data for a stream that is not open.
                    let _ = frames
                        .send(Frame::RstStream {
                            stream_id,
                            status: rst::INVALID_STREAM,
                        })
                        .await;
                    continue;
                };
                if !data.is_empty() && sender.send(data).await.is_err() {
                    // The handler dropped the reader: it does not want more.
                    streams.remove(&stream_id);
                }
                if flags & FLAG_FIN != 0 {
                    streams.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                streams.remove(&stream_id);
            }
            Frame::Ping { id } => {
                // §2.6.5: echo the client's (odd) pings.
                if !id.is_multiple_of(2) {
                    let _ = frames.send(Frame::Ping { id }).await;
                }
            }
            Frame::GoAway { .. } => return Ok(()),
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Ignored { .. } => {}
        }
    }
}
