//! Exec and attach over WebSocket, which the kubelet accepts directly besides SPDY (upstream
//! `pkg/kubelet/cri/streaming/remotecommand/websocket.go` over
//! `k8s.io/apimachinery/pkg/util/httpstream/wsstream`). The WebSocket itself is axum's
//! (tungstenite); this module is the channel framing on top:
//!
//! - Channels: 0 stdin, 1 stdout, 2 stderr, 3 error (the outcome), 4 resize. Every message's
//!   first byte names its channel; the `base64.` protocols send text messages whose first
//!   character is `'0' + channel` and whose rest is base64.
//! - Subprotocols (`Sec-WebSocket-Protocol`, the client's first one this kubelet knows):
//!   `v5.channel.k8s.io` (v4's status, plus the close signal: a message `[255, channel]` from
//!   the client closes that channel, i.e. stdin's end of file), `v4.channel.k8s.io` and
//!   `v4.base64.channel.k8s.io` (a JSON `Status` on the error channel), `channel.k8s.io` and
//!   `base64.channel.k8s.io` (the message alone); none offered reads as `channel.k8s.io`.
//! - Once open, an empty message goes on stdout (else stderr, else error), as upstream does
//!   to tell the client the streams are ready.
//!
//! # Bounds
//! Messages and frames are at most 1 MiB (larger ones end the connection); stdin and resize
//! data wait in queues of 16 messages, and a handler that does not read stalls only its own
//! connection. Output waits in one queue of 64 messages toward the socket.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::remotecommand::{Options, Output, ProtocolError, Streams, V1, V4, V5};
use super::session::Closed;

/// Channel of the client's stdin.
pub const STDIN: u8 = 0;
/// Channel of the program's stdout.
pub const STDOUT: u8 = 1;
/// Channel of the program's stderr.
pub const STDERR: u8 = 2;
/// Channel of the outcome.
pub const ERROR: u8 = 3;
/// Channel of terminal size changes.
pub const RESIZE: u8 = 4;
/// v5: a message `[CLOSE_SIGNAL, channel]` closes `channel` (wsstream's `StreamClose`).
pub const CLOSE_SIGNAL: u8 = 255;
/// Largest message or frame accepted from a client.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest payload the server puts in one message.
const WRITE_CHUNK: usize = 32 * 1024;
/// Messages queued toward the socket.
const WRITE_QUEUE: usize = 64;
/// Messages of stdin or resize queued toward the handler.
const READ_QUEUE: usize = 16;

/// One WebSocket subprotocol of the remote command protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsProtocol {
    /// Its name (`Sec-WebSocket-Protocol`); empty when the client offered none.
    pub name: &'static str,
    /// Whether messages are base64 text rather than binary.
    pub base64: bool,
    /// The remote command version whose status format and signals apply.
    pub version: &'static str,
}

/// The subprotocols this kubelet speaks, newest first (upstream `createWebSocketStreams`).
pub const PROTOCOLS: &[WsProtocol] = &[
    WsProtocol {
        name: "v5.channel.k8s.io",
        base64: false,
        version: V5,
    },
    WsProtocol {
        name: "v4.channel.k8s.io",
        base64: false,
        version: V4,
    },
    WsProtocol {
        name: "v4.base64.channel.k8s.io",
        base64: true,
        version: V4,
    },
    WsProtocol {
        name: "channel.k8s.io",
        base64: false,
        version: V1,
    },
    WsProtocol {
        name: "base64.channel.k8s.io",
        base64: true,
        version: V1,
    },
];

/// Whether the request asks for a WebSocket upgrade.
pub fn is_websocket_upgrade(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.eq_ignore_ascii_case("websocket"))
    })
}

/// The client's first offered subprotocol that this kubelet speaks (wsstream's
/// `handshake`); a client that offers none gets binary channels with the v1 status.
///
/// # Errors
/// [`ProtocolError::NoCommonVersion`] when it offers only unknown ones.
pub fn negotiate(headers: &http::HeaderMap) -> Result<WsProtocol, ProtocolError> {
    let offered = offered(headers);
    if offered.is_empty() {
        return Ok(WsProtocol {
            name: "",
            base64: false,
            version: V1,
        });
    }
    offered
        .iter()
        .find_map(|o| PROTOCOLS.iter().find(|p| p.name == o.as_str()).copied())
        .ok_or(ProtocolError::NoCommonVersion { client: offered })
}

/// The subprotocols the client offers (`Sec-WebSocket-Protocol`, repeated or
/// comma-separated), in its order.
pub fn offered(headers: &http::HeaderMap) -> Vec<String> {
    super::remotecommand::offered(headers, http::header::SEC_WEBSOCKET_PROTOCOL)
}

/// One message carrying `data` on `channel`.
pub fn encode(channel: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Message::Text(Utf8Bytes::from(text))
    } else {
        let mut out = BytesMut::with_capacity(1 + data.len());
        out.extend_from_slice(&[channel]);
        out.extend_from_slice(data);
        Message::Binary(out.freeze())
    }
}

/// What a client message means.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Data on a channel.
    Data(u8, Bytes),
    /// v5: the client closed this channel.
    CloseChannel(u8),
    /// Nothing to act on (an empty message).
    Nothing,
}

/// Why a client message breaks the protocol; the connection ends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A close signal not followed by exactly one channel byte.
    #[error("a stream close signal must be followed by one channel byte, got {0} bytes")]
    BadClose(usize),
    /// A base64 message that does not decode.
    #[error("a base64 channel message does not decode")]
    BadBase64,
}

/// Reads one client message's payload (wsstream's `Conn.handle`).
///
/// # Errors
/// [`FrameError`] when it breaks the protocol.
pub fn decode(payload: &[u8], protocol: WsProtocol) -> Result<Incoming, FrameError> {
    let Some((&first, rest)) = payload.split_first() else {
        return Ok(Incoming::Nothing);
    };
    if protocol.version == V5 && first == CLOSE_SIGNAL {
        return match rest {
            [channel] => Ok(Incoming::CloseChannel(*channel)),
            _ => Err(FrameError::BadClose(rest.len())),
        };
    }
    if protocol.base64 {
        let channel = first.wrapping_sub(b'0');
        let data = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| FrameError::BadBase64)?;
        return Ok(Incoming::Data(channel, Bytes::from(data)));
    }
    Ok(Incoming::Data(first, Bytes::copy_from_slice(rest)))
}

/// Writes one channel's data to the client.
#[derive(Clone)]
pub struct ChannelWriter {
    channel: u8,
    base64: bool,
    out: mpsc::Sender<Message>,
}

impl ChannelWriter {
    /// A writer of `channel` into the queue `out` toward the socket.
    pub fn new(channel: u8, base64: bool, out: mpsc::Sender<Message>) -> Self {
        Self {
            channel,
            base64,
            out,
        }
    }

    /// Sends `data` (in messages of at most 32 KiB).
    ///
    /// # Errors
    /// [`Closed`] once the connection is gone.
    pub async fn write(&self, data: Bytes) -> Result<(), Closed> {
        for chunk in data.chunks(WRITE_CHUNK) {
            self.out
                .send(encode(self.channel, chunk, self.base64))
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }
}

/// An open WebSocket connection carrying one remote command session (its streams are
/// handed out by [`start`]).
pub struct Connection {
    /// Cancelled once the client closed the connection or broke the protocol.
    pub peer_gone: CancellationToken,
    out: mpsc::Sender<Message>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

/// Starts serving `socket` with `protocol`: the streams `options` ask for, as exec and
/// attach serve them (upstream `createWebSocketStreams`: the error channel always), and the
/// connection to close once they are dropped.
pub fn start(socket: WebSocket, protocol: WsProtocol, options: Options) -> (Streams, Connection) {
    let (sink, mut source) = socket.split();
    let (out, out_rx) = mpsc::channel::<Message>(WRITE_QUEUE);
    let writer_of = |channel| {
        Output::WebSocket(ChannelWriter {
            channel,
            base64: protocol.base64,
            out: out.clone(),
        })
    };
    let (stdin_tx, stdin) = mpsc::channel::<Bytes>(READ_QUEUE);
    let (resize_tx, resize) = mpsc::channel::<Bytes>(READ_QUEUE);
    let streams = Streams {
        protocol: protocol.version,
        stdin: options.stdin.then_some(stdin),
        stdout: options.stdout.then(|| writer_of(STDOUT)),
        stderr: options.stderr.then(|| writer_of(STDERR)),
        error: Some(writer_of(ERROR)),
        resize: options.tty.then_some(resize),
    };
    // The client learns the streams are ready from an empty message on the lowest writable
    // channel (the queue is new, so there is room).
    let ready = if options.stdout {
        STDOUT
    } else if options.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out.try_send(encode(ready, &[], protocol.base64));
    let writer = tokio::spawn(write_messages(sink, out_rx));
    let peer_gone = CancellationToken::new();
    let gone = peer_gone.clone();
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        let mut resize_tx = Some(resize_tx);
        while let Some(Ok(message)) = source.next().await {
            let payload: Bytes = match message {
                Message::Binary(data) => data,
                Message::Text(text) => Bytes::from(text),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            match decode(&payload, protocol) {
                Ok(Incoming::Nothing) => {}
                Ok(Incoming::CloseChannel(STDIN)) => stdin_tx = None,
                Ok(Incoming::CloseChannel(RESIZE)) => resize_tx = None,
                Ok(Incoming::CloseChannel(_)) => {}
                Ok(Incoming::Data(channel, data)) => {
                    let target = match channel {
                        STDIN => &mut stdin_tx,
                        RESIZE => &mut resize_tx,
                        // Data for a channel the client may not write: ignored, as upstream.
                        _ => continue,
                    };
                    let refused = match target.as_ref() {
                        Some(sender) => sender.send(data).await.is_err(),
                        None => false,
                    };
                    if refused {
                        // The handler does not want it.
                        *target = None;
                    }
                }
                Err(error) => {
                    tracing::info!(%error, "closing a WebSocket stream connection on a protocol error");
                    break;
                }
            }
        }
        gone.cancel();
    });
    (
        streams,
        Connection {
            peer_gone,
            out,
            reader,
            writer,
        },
    )
}

impl Connection {
    /// Ends the connection: whatever is queued, then a close frame (normal closure). Drop
    /// the streams first (their writers hold the queue open); bounded by 5 s either way.
    pub async fn close(self) {
        let Self {
            out,
            reader,
            writer,
            ..
        } = self;
        drop(out);
        reader.abort();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
    }
}

/// Writes queued messages until every writer is gone, then closes the socket.
pub async fn write_messages(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut messages: mpsc::Receiver<Message>,
) {
    while let Some(message) = messages.recv().await {
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: Utf8Bytes::from_static(""),
        })))
        .await;
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for v in values {
            map.append(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                v.parse().expect("value"),
            );
        }
        map
    }

    #[test]
    fn the_clients_first_known_subprotocol_wins() {
        let p = negotiate(&headers(&["v5.channel.k8s.io, v4.channel.k8s.io"])).expect("v5");
        assert_eq!((p.name, p.version), ("v5.channel.k8s.io", V5));
        let p = negotiate(&headers(&["nope", "v4.base64.channel.k8s.io"])).expect("v4b64");
        assert!(p.base64 && p.version == V4);
        let p = negotiate(&headers(&[])).expect("none offered");
        assert_eq!((p.name, p.base64, p.version), ("", false, V1));
        assert!(negotiate(&headers(&["v9.channel.k8s.io"])).is_err());
    }

    #[test]
    fn messages_carry_their_channel_in_the_first_byte() {
        assert_eq!(
            encode(STDOUT, b"hi", false),
            Message::Binary(Bytes::from_static(b"\x01hi"))
        );
        assert_eq!(
            encode(ERROR, b"hi", true),
            Message::Text(Utf8Bytes::from_static("3aGk="))
        );
        let v5 = PROTOCOLS[0];
        let v4b64 = PROTOCOLS[2];
        assert_eq!(
            decode(b"\x00typed", v5),
            Ok(Incoming::Data(STDIN, Bytes::from_static(b"typed")))
        );
        assert_eq!(
            decode(b"0dHlwZWQ=", v4b64),
            Ok(Incoming::Data(STDIN, Bytes::from_static(b"typed")))
        );
        assert_eq!(
            decode(&[CLOSE_SIGNAL, STDIN], v5),
            Ok(Incoming::CloseChannel(0))
        );
        assert_eq!(decode(&[CLOSE_SIGNAL], v5), Err(FrameError::BadClose(0)));
        // Before v5, 255 is just a channel number nobody writes.
        assert_eq!(
            decode(&[CLOSE_SIGNAL, STDIN], PROTOCOLS[1]),
            Ok(Incoming::Data(255, Bytes::from_static(b"\x00")))
        );
        assert_eq!(decode(b"", v5), Ok(Incoming::Nothing));
        assert_eq!(decode(b"0!!", v4b64), Err(FrameError::BadBase64));
    }
}
