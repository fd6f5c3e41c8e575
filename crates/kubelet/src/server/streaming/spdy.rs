//! SPDY/3.1 framing: what the API server speaks toward a kubelet for exec, attach and
//! port-forward (upstream `k8s.io/apimachinery/pkg/util/httpstream/spdy`, built on
//! `moby/spdystream`).
//!
//! Section numbers refer to the SPDY Protocol Draft 3.1
//! (<https://www.chromium.org/spdy/spdy-protocol/spdy-protocol-draft3-1/>). This module only
//! turns bytes into [`Frame`]s and back, including the zlib header-block compression with the
//! SPDY/3 dictionary (§2.6.10.1); the session (which streams exist, who writes what) is
//! [`super::session`].
//!
//! # Bounds
//! Every frame is bounded before its payload is read: control frames by
//! [`MAX_CONTROL_FRAME`], data frames by [`MAX_DATA_FRAME`], an inflated header block by
//! [`MAX_HEADER_BLOCK`] and [`MAX_HEADER_PAIRS`]. A peer that exceeds one gets a
//! [`SpdyError`] naming the bound, never a panic or an unbounded allocation.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version in every control frame (§2.2.1).
pub const VERSION: u16 = 3;
/// Largest control frame payload accepted: header blocks of exec streams are a few dozen bytes.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// Largest data frame payload accepted (client-go writes at most 32 KiB at a time).
pub const MAX_DATA_FRAME: usize = 1024 * 1024;
/// Largest inflated header block: a guard against compression bombs.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Most name/value pairs in one header block.
pub const MAX_HEADER_PAIRS: usize = 256;
/// Size of the frame header, control or data (§2.2).
const FRAME_HEADER: usize = 8;

/// Flag FIN of SYN_STREAM, SYN_REPLY, HEADERS and data frames: the sender's half is closed.
pub const FLAG_FIN: u8 = 0x01;
/// Flag UNIDIRECTIONAL of SYN_STREAM (§2.6.1): the recipient may not send.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes (§2.6.3).
pub mod rst {
    /// A generic error.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// A frame for a stream that is not open.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// The stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// A frame larger than the endpoint supports.
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes (§2.6.6).
pub mod goaway {
    /// A normal session teardown.
    pub const OK: u32 = 0;
    /// A generic error.
    pub const PROTOCOL_ERROR: u32 = 1;
}

/// Control frame types (§2.6).
mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// Header names and values; a name may repeat (values joined by NUL on the wire, §2.6.10).
pub type Headers = Vec<(String, String)>;

/// One SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream (§2.6.1).
    SynStream {
        /// The new stream; odd when the client opens it.
        stream_id: u32,
        /// The stream it belongs to, or 0.
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// FIN and UNIDIRECTIONAL flags.
        flags: u8,
        /// Its headers (`streamtype` for remote command streams).
        headers: Headers,
    },
    /// Accepts a stream (§2.6.2).
    SynReply {
        /// The stream.
        stream_id: u32,
        /// FIN flag.
        flags: u8,
        /// Reply headers.
        headers: Headers,
    },
    /// Ends a stream abnormally (§2.6.3).
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why; see [`rst`].
        status: u32,
    },
    /// Session settings (§2.6.4); entries are `(flags, id, value)`.
    Settings {
        /// Frame flags (CLEAR_SETTINGS).
        flags: u8,
        /// The settings.
        entries: Vec<(u8, u32, u32)>,
    },
    /// Liveness check, echoed by the receiver (§2.6.5).
    Ping {
        /// Odd from the client, even from the server.
        id: u32,
    },
    /// Ends the session (§2.6.6).
    GoAway {
        /// The last stream the sender processed.
        last_good_stream_id: u32,
        /// Why; see [`goaway`].
        status: u32,
    },
    /// More headers for a stream (§2.6.7).
    Headers {
        /// The stream.
        stream_id: u32,
        /// FIN flag.
        flags: u8,
        /// The headers.
        headers: Headers,
    },
    /// Flow-control credit (§2.6.8).
    WindowUpdate {
        /// The stream, or 0 for the session.
        stream_id: u32,
        /// Bytes added to the window.
        delta: u32,
    },
    /// Stream data (§2.2.2).
    Data {
        /// The stream.
        stream_id: u32,
        /// FIN flag.
        flags: u8,
        /// The payload.
        data: Bytes,
    },
    /// A control frame of a type this endpoint does not know (CREDENTIAL, say), which it
    /// must ignore (§2.2.1).
    Ignored {
        /// The frame type.
        kind: u16,
    },
}

/// A peer sent something this endpoint cannot or will not read.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// A control frame of another SPDY version (§2.2.1).
    #[error("SPDY version {0} is not supported; speak SPDY/3.1")]
    UnsupportedVersion(u16),
    /// A frame beyond this endpoint's bound.
    #[error("SPDY {what} frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Control or data.
        what: &'static str,
        /// Its declared length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A frame whose fields do not fit its type.
    #[error("malformed SPDY {frame} frame: {reason}")]
    Malformed {
        /// The frame type.
        frame: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A header block that does not inflate or parse.
    #[error("bad SPDY header block: {0}")]
    HeaderBlock(String),
}

fn malformed(frame: &'static str, reason: impl Into<String>) -> SpdyError {
    SpdyError::Malformed {
        frame,
        reason: reason.into(),
    }
}

/// The zlib dictionary of SPDY/3 header compression (§2.6.10.1): these length-prefixed
/// words, then [`DICTIONARY_TAIL`].
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The unprefixed end of the SPDY/3 dictionary (§2.6.10.1).
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The 1423-byte SPDY/3 header compression dictionary.
pub fn dictionary() -> Vec<u8> {
    let mut out = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    out
}

/// Reads and writes frames of one connection: the header compression contexts live as long
/// as the connection (§2.6.10.1: one zlib stream per direction).
pub struct Codec {
    inflate: Decompress,
    deflate: Compress,
    dictionary: Vec<u8>,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    /// A codec for a new connection.
    pub fn new() -> Self {
        let dictionary = dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        // The compressor takes the dictionary up front; the decompressor when the first
        // header block's zlib header asks for it (FDICT).
        let _ = deflate.set_dictionary(&dictionary);
        Self {
            inflate: Decompress::new(true),
            deflate,
            dictionary,
        }
    }

    /// Takes one whole frame off the front of `buf`; `Ok(None)` while it is incomplete.
    ///
    /// # Errors
    /// [`SpdyError`] for a frame this endpoint cannot read; the connection cannot go on.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        let control = buf[0] & 0x80 != 0;
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        let (what, max) = if control {
            ("control", MAX_CONTROL_FRAME)
        } else {
            ("data", MAX_DATA_FRAME)
        };
        if len > max {
            return Err(SpdyError::FrameTooLarge { what, len, max });
        }
        if control {
            let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
            if version != VERSION {
                return Err(SpdyError::UnsupportedVersion(version));
            }
        }
        if buf.len() < FRAME_HEADER + len {
            buf.reserve(FRAME_HEADER + len - buf.len());
            return Ok(None);
        }
        let head = buf.split_to(FRAME_HEADER);
        let mut payload = buf.split_to(len).freeze();
        let flags = head[4];
        if !control {
            // §2.2.2: 31-bit stream ID, flags, 24-bit length.
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(malformed("data", "stream ID 0"));
            }
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = |frame: &'static str, n: usize, payload: &Bytes| {
            if payload.len() < n {
                Err(malformed(
                    frame,
                    format!("{} bytes, at least {n} needed", payload.len()),
                ))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            kind::SYN_STREAM => {
                // §2.6.1: stream ID, associated stream ID, priority (3 bits) and slot.
                need("SYN_STREAM", 10, &payload)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let associated_to = payload.get_u32() & 0x7fff_ffff;
                let priority = payload.get_u8() >> 5;
                let _slot = payload.get_u8();
                if stream_id == 0 {
                    return Err(malformed("SYN_STREAM", "stream ID 0"));
                }
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers: self.inflate_headers(&payload)?,
                }
            }
            kind::SYN_REPLY => {
                need("SYN_REPLY", 4, &payload)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers: self.inflate_headers(&payload)?,
                }
            }
            kind::RST_STREAM => {
                if payload.len() != 8 {
                    return Err(malformed("RST_STREAM", "length must be 8"));
                }
                Frame::RstStream {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            kind::SETTINGS => {
                // §2.6.4: count, then 8 bytes per entry (flags, 24-bit ID, value).
                need("SETTINGS", 4, &payload)?;
                let count = payload.get_u32() as usize;
                if payload.len() != count.saturating_mul(8) {
                    return Err(malformed(
                        "SETTINGS",
                        format!("{count} entries do not fit {} bytes", payload.len()),
                    ));
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = payload.get_u32();
                        ((word >> 24) as u8, word & 0x00ff_ffff, payload.get_u32())
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            kind::PING => {
                if payload.len() != 4 {
                    return Err(malformed("PING", "length must be 4"));
                }
                Frame::Ping {
                    id: payload.get_u32(),
                }
            }
            kind::GOAWAY => {
                if payload.len() != 8 {
                    return Err(malformed("GOAWAY", "length must be 8"));
                }
                Frame::GoAway {
                    last_good_stream_id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            kind::HEADERS => {
                need("HEADERS", 4, &payload)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                Frame::Headers {
                    stream_id,
                    flags,
                    headers: self.inflate_headers(&payload)?,
                }
            }
            kind::WINDOW_UPDATE => {
                if payload.len() != 8 {
                    return Err(malformed("WINDOW_UPDATE", "length must be 8"));
                }
                Frame::WindowUpdate {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    delta: payload.get_u32() & 0x7fff_ffff,
                }
            }
            kind => Frame::Ignored { kind },
        };
        Ok(Some(frame))
    }

    /// Appends `frame` to `out`.
    ///
    /// # Errors
    /// Only when a payload exceeds the 24-bit length field or compression fails.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        let mut body = BytesMut::new();
        let (kind, flags) = match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > 0x00ff_ffff {
                    return Err(SpdyError::FrameTooLarge {
                        what: "data",
                        len: data.len(),
                        max: 0x00ff_ffff,
                    });
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32((u32::from(*flags) << 24) | data.len() as u32);
                out.put_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                body.put_u32(*stream_id);
                body.put_u32(*associated_to);
                body.put_u8((priority & 0x07) << 5);
                body.put_u8(0);
                self.deflate_headers(headers, &mut body)?;
                (kind::SYN_STREAM, *flags)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                body.put_u32(*stream_id);
                self.deflate_headers(headers, &mut body)?;
                (kind::SYN_REPLY, *flags)
            }
            Frame::RstStream { stream_id, status } => {
                body.put_u32(*stream_id);
                body.put_u32(*status);
                (kind::RST_STREAM, 0)
            }
            Frame::Settings { flags, entries } => {
                body.put_u32(entries.len() as u32);
                for (flag, id, value) in entries {
                    body.put_u32((u32::from(*flag) << 24) | (id & 0x00ff_ffff));
                    body.put_u32(*value);
                }
                (kind::SETTINGS, *flags)
            }
            Frame::Ping { id } => {
                body.put_u32(*id);
                (kind::PING, 0)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                body.put_u32(*last_good_stream_id);
                body.put_u32(*status);
                (kind::GOAWAY, 0)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                body.put_u32(*stream_id);
                self.deflate_headers(headers, &mut body)?;
                (kind::HEADERS, *flags)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                body.put_u32(*stream_id);
                body.put_u32(*delta);
                (kind::WINDOW_UPDATE, 0)
            }
            Frame::Ignored { kind } => (*kind, 0),
        };
        if body.len() > 0x00ff_ffff {
            return Err(SpdyError::FrameTooLarge {
                what: "control",
                len: body.len(),
                max: 0x00ff_ffff,
            });
        }
        // §2.2.1: control bit, version, type, flags, 24-bit length.
        out.put_u16(0x8000 | VERSION);
        out.put_u16(kind);
        out.put_u32((u32::from(flags) << 24) | body.len() as u32);
        out.put_slice(&body);
        Ok(())
    }

    /// Inflates and parses a header block (§2.6.10).
    fn inflate_headers(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let mut plain = Vec::with_capacity(1024);
        let mut input = compressed;
        loop {
            if plain.len() >= MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlock(format!(
                    "inflates beyond {MAX_HEADER_BLOCK} bytes"
                )));
            }
            plain.reserve(4096.min(MAX_HEADER_BLOCK - plain.len()));
            let before = self.inflate.total_in();
            let result = self
                .inflate
                .decompress_vec(input, &mut plain, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::HeaderBlock(
                        "the zlib stream ended; it must last the whole connection".into(),
                    ));
                }
                Ok(_) => {
                    // Done once the input is used up and the output was not the limit.
                    if input.is_empty() && plain.len() < plain.capacity() {
                        break;
                    }
                }
                Err(error) if error.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dictionary)
                        .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
                }
                Err(error) => return Err(SpdyError::HeaderBlock(error.to_string())),
            }
        }
        parse_header_block(&plain)
    }

    /// Serializes and deflates a header block onto `out` (a sync flush, as spdystream does).
    fn deflate_headers(&mut self, headers: &Headers, out: &mut BytesMut) -> Result<(), SpdyError> {
        let mut plain = BytesMut::new();
        // Repeated names go out once, values joined by NUL (§2.6.10).
        let mut merged: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => {
                    values.push('\0');
                    values.push_str(value);
                }
                None => merged.push((name, value.clone())),
            }
        }
        plain.put_u32(merged.len() as u32);
        for (name, value) in &merged {
            plain.put_u32(name.len() as u32);
            plain.put_slice(name.as_bytes());
            plain.put_u32(value.len() as u32);
            plain.put_slice(value.as_bytes());
        }
        let mut compressed = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            compressed.reserve(256);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut compressed, FlushCompress::Sync)
                .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
            let used = (self.deflate.total_in() - before) as usize;
            input = &input[used..];
            // A sync flush is complete once the input is used up and output space was left.
            if input.is_empty() && compressed.len() < compressed.capacity() {
                break;
            }
        }
        out.put_slice(&compressed);
        Ok(())
    }
}

/// Parses an inflated header block: a count, then length-prefixed names and values.
fn parse_header_block(mut block: &[u8]) -> Result<Headers, SpdyError> {
    let bad = |reason: &str| SpdyError::HeaderBlock(reason.into());
    if block.len() < 4 {
        return Err(bad("shorter than its pair count"));
    }
    let count = block.get_u32() as usize;
    if count > MAX_HEADER_PAIRS {
        return Err(SpdyError::HeaderBlock(format!(
            "{count} header pairs, at most {MAX_HEADER_PAIRS} accepted"
        )));
    }
    let take = |block: &mut &[u8]| -> Result<String, SpdyError> {
        if block.len() < 4 {
            return Err(bad("truncated length"));
        }
        let len = block.get_u32() as usize;
        if block.len() < len {
            return Err(bad("a length runs past the block"));
        }
        let text = std::str::from_utf8(&block[..len])
            .map_err(|_| bad("a name or value is not UTF-8"))?
            .to_string();
        block.advance(len);
        Ok(text)
    };
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut block)?;
        if name.is_empty() {
            return Err(bad("an empty header name"));
        }
        let values = take(&mut block)?;
        for value in values.split('\0') {
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }
    Ok(headers)
}

/// The first value of header `name` (lower case).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
        let (mut writer, mut reader) = (Codec::new(), Codec::new());
        let mut wire = BytesMut::new();
        for frame in frames {
            writer.encode(frame, &mut wire).expect("encode");
        }
        let mut out = Vec::new();
        while let Some(frame) = reader.decode(&mut wire).expect("decode") {
            out.push(frame);
        }
        assert!(wire.is_empty(), "{} bytes left", wire.len());
        out
    }

    #[test]
    fn the_dictionary_is_the_specs() {
        let dictionary = dictionary();
        assert_eq!(dictionary.len(), 1423);
        // zlib's Adler-32 of the dictionary, which a SPDY/3 zlib header names (DICTID).
        let mut deflate = Compress::new(Compression::default(), true);
        assert_eq!(
            deflate.set_dictionary(&dictionary).expect("dictionary"),
            0xe3c6_a7c2
        );
    }

    #[test]
    fn every_frame_type_roundtrips_with_one_compression_context() {
        let stream = |id: u32, kind: &str| Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), kind.into())],
        };
        let frames = vec![
            stream(1, "error"),
            stream(3, "stdout"),
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 65536)],
            },
            Frame::Ping { id: 1 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: goaway::OK,
            },
            Frame::Headers {
                stream_id: 3,
                flags: 0,
                headers: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 1000,
            },
        ];
        assert_eq!(roundtrip(&frames), frames);
    }

    /// Header blocks captured from Go's `compress/zlib` exactly as moby/spdystream's framer
    /// writes them (`zlib.NewWriterLevelDict(buf, BestCompression, dictionary)`, then
    /// `Flush()` per block; Go 1.25): `{streamtype: error}` then `{streamtype: stdout}` on one
    /// zlib stream. The first carries the zlib header with FDICT and the dictionary's ID.
    const GO_ERROR_BLOCK: &[u8] = &[
        0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x62, 0x60, 0x60, 0x60, 0x04, 0xa7, 0xb3, 0x92, 0xa2,
        0xd4, 0xc4, 0x5c, 0x68, 0x51, 0xc2, 0x9a, 0x0a, 0x0a, 0x68, 0x00, 0x00, 0x00, 0x00, 0xff,
        0xff,
    ];
    const GO_STDOUT_BLOCK: &[u8] = &[
        0xc2, 0x2a, 0xc5, 0x56, 0x5c, 0x92, 0x92, 0x5f, 0x5a, 0x02, 0x00, 0x00, 0x00, 0xff, 0xff,
    ];

    /// A SYN_STREAM frame around a captured header block.
    fn syn_stream_bytes(stream_id: u32, block: &[u8]) -> BytesMut {
        let mut wire = BytesMut::new();
        wire.put_u16(0x8000 | VERSION);
        wire.put_u16(kind::SYN_STREAM);
        wire.put_u32(10 + block.len() as u32);
        wire.put_u32(stream_id);
        wire.put_u32(0);
        wire.put_u16(0);
        wire.put_slice(block);
        wire
    }

    #[test]
    fn go_client_syn_streams_decode() {
        let mut codec = Codec::new();
        let mut wire = syn_stream_bytes(1, GO_ERROR_BLOCK);
        wire.extend_from_slice(&syn_stream_bytes(3, GO_STDOUT_BLOCK));
        let stream = |stream_id, kind: &str| {
            Some(Frame::SynStream {
                stream_id,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), kind.into())],
            })
        };
        assert_eq!(codec.decode(&mut wire).expect("first"), stream(1, "error"));
        assert_eq!(
            codec.decode(&mut wire).expect("second"),
            stream(3, "stdout")
        );
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut codec = Codec::new();
        let mut wire = BytesMut::new();
        codec
            .encode(
                &Frame::Data {
                    stream_id: 1,
                    flags: 0,
                    data: Bytes::from_static(b"abcdef"),
                },
                &mut wire,
            )
            .expect("encode");
        let whole = wire.clone();
        let mut partial = BytesMut::from(&whole[..10]);
        assert_eq!(codec.decode(&mut partial).expect("partial"), None);
        partial.extend_from_slice(&whole[10..]);
        assert!(codec.decode(&mut partial).expect("whole").is_some());
    }

    #[test]
    fn hostile_frames_get_bounded_errors() {
        let decode = |bytes: &[u8]| Codec::new().decode(&mut BytesMut::from(bytes));
        // A data frame declaring 16 MiB - 1.
        let error = decode(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]).expect_err("too large");
        assert!(matches!(error, SpdyError::FrameTooLarge { .. }), "{error}");
        // A huge control frame.
        let error = decode(&[0x80, 3, 0, 1, 0, 0x10, 0, 0]).expect_err("too large");
        assert!(error.to_string().contains("exceeds the limit"), "{error}");
        // SPDY/2.
        let error = decode(&[0x80, 2, 0, 1, 0, 0, 0, 0]).expect_err("version");
        assert!(matches!(error, SpdyError::UnsupportedVersion(2)));
        // A PING of the wrong length.
        let error = decode(&[0x80, 3, 0, 6, 0, 0, 0, 2, 0, 0]).expect_err("ping");
        assert!(error.to_string().contains("PING"), "{error}");
        // SETTINGS claiming a billion entries.
        let error = decode(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0x40, 0, 0, 0]).expect_err("settings");
        assert!(error.to_string().contains("SETTINGS"), "{error}");
        // A SYN_STREAM whose header block is not zlib.
        let error = decode(&[
            0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
        ])
        .expect_err("garbage block");
        assert!(matches!(error, SpdyError::HeaderBlock(_)), "{error}");
        // Data on stream 0.
        let error = decode(&[0, 0, 0, 0, 0, 0, 0, 0]).expect_err("stream 0");
        assert!(error.to_string().contains("stream ID 0"), "{error}");
        // An unknown control type is ignored (§2.2.1), not an error.
        assert_eq!(
            decode(&[0x80, 3, 0, 10, 0, 0, 0, 0]).expect("ignored"),
            Some(Frame::Ignored { kind: 10 })
        );
    }

    #[test]
    fn a_header_block_bomb_is_refused() {
        // 1 MiB of zeros inflates from a few hundred bytes.
        let mut plain = BytesMut::new();
        plain.put_u32(1);
        plain.put_u32(1);
        plain.put_slice(b"a");
        plain.put_u32(1 << 20);
        plain.put_slice(&vec![b'x'; 1 << 20]);
        let mut deflate = Compress::new(Compression::best(), true);
        deflate.set_dictionary(&dictionary()).expect("dictionary");
        let mut compressed = Vec::with_capacity(64 * 1024);
        deflate
            .compress_vec(&plain, &mut compressed, FlushCompress::Sync)
            .expect("compress");
        assert!(compressed.len() < MAX_CONTROL_FRAME);
        let mut wire = BytesMut::new();
        wire.put_u16(0x8000 | VERSION);
        wire.put_u16(kind::SYN_STREAM);
        wire.put_u32(10 + compressed.len() as u32);
        wire.put_u32(1);
        wire.put_u32(0);
        wire.put_u16(0);
        wire.put_slice(&compressed);
        let error = Codec::new().decode(&mut wire).expect_err("bomb");
        assert!(error.to_string().contains("inflates beyond"), "{error}");
    }

    #[test]
    fn too_many_header_pairs_are_refused() {
        let mut plain = BytesMut::new();
        plain.put_u32(100_000);
        let error = parse_header_block(&plain).expect_err("pairs");
        assert!(error.to_string().contains("header pairs"), "{error}");
        let error = parse_header_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).expect_err("past");
        assert!(error.to_string().contains("runs past"), "{error}");
    }
}
