//! The remote command protocol of exec and attach, versions 1 to 5: which streams a client
//! opens, and how the outcome goes back on the error stream (upstream
//! `pkg/kubelet/cri/streaming/remotecommand/httpstream.go` and
//! `k8s.io/apimachinery/pkg/util/remotecommand`). [`Streams`] is the transport-independent
//! part: SPDY streams ([`Streams::accept`]) and WebSocket channels
//! ([`super::websocket::start`]) both end up as one, which exec and attach serve alike.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::session::{Closed, Session, Stream, StreamWriter};
use super::spdy::header;
use super::websocket::ChannelWriter;

/// `channel.k8s.io`: stdin, stdout, stderr; the error stream carries plain text.
pub const V1: &str = "channel.k8s.io";
/// `v2.channel.k8s.io`: as v1, the error stream is no longer reset early.
pub const V2: &str = "v2.channel.k8s.io";
/// `v3.channel.k8s.io`: adds the resize stream.
pub const V3: &str = "v3.channel.k8s.io";
/// `v4.channel.k8s.io`: the error stream carries a JSON `Status` with the exit code.
pub const V4: &str = "v4.channel.k8s.io";
/// `v5.channel.k8s.io`: adds a stdin close signal (for WebSocket; over SPDY it is v4).
pub const V5: &str = "v5.channel.k8s.io";
/// What this kubelet speaks, newest first (upstream `SupportedStreamingProtocols`).
pub const SUPPORTED: &[&str] = &[V5, V4, V3, V2, V1];
/// The header clients list versions in, and the server names its choice in.
pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// The header a refused negotiation lists the server's versions in.
pub const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";
/// How long a client has to open its streams (upstream `DefaultStreamCreationTimeout`).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A request the protocol cannot serve, answered before the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// No version in common (upstream `httpstream.Handshake`).
    #[error(
        "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {SUPPORTED:?}"
    )]
    NoCommonVersion {
        /// What the client offered.
        client: Vec<String>,
    },
    /// Not a SPDY/3.1 upgrade request.
    #[error(
        "unable to upgrade: missing upgrade headers in request (Connection: Upgrade, Upgrade: SPDY/3.1)"
    )]
    NotAnUpgrade,
    /// No stream was asked for.
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
}

/// Which streams the client asked for in the query (upstream `remotecommand.NewOptions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// `input=1`.
    pub stdin: bool,
    /// `output=1`.
    pub stdout: bool,
    /// `error=1` (ignored with a TTY, whose stderr is its stdout).
    pub stderr: bool,
    /// `tty=1`.
    pub tty: bool,
}

impl Options {
    /// Reads `input`, `output`, `error` and `tty` from query pairs.
    ///
    /// # Errors
    /// [`ProtocolError::NoStreams`] when none of stdin, stdout, stderr is asked for.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, ProtocolError> {
        let on = |name: &str| pairs.iter().any(|(k, v)| k == name && v == "1");
        let tty = on("tty");
        let options = Self {
            stdin: on("input"),
            stdout: on("output"),
            stderr: on("error") && !tty,
            tty,
        };
        if !options.stdin && !options.stdout && !options.stderr {
            return Err(ProtocolError::NoStreams);
        }
        Ok(options)
    }
}

/// Picks the first version the client lists that this kubelet speaks (upstream
/// `httpstream.negotiateProtocol`); values may also be comma-separated.
///
/// # Errors
/// [`ProtocolError::NoCommonVersion`] when there is none.
pub fn negotiate(headers: &http::HeaderMap) -> Result<&'static str, ProtocolError> {
    let client = offered(headers, PROTOCOL_HEADER);
    client
        .iter()
        .find_map(|c| SUPPORTED.iter().find(|s| **s == c.as_str()).copied())
        .ok_or(ProtocolError::NoCommonVersion { client })
}

/// The protocol names a client offers in header `name`: every value, comma-separated lists
/// split, blanks dropped, in the client's order (SPDY's `X-Stream-Protocol-Version` and
/// WebSocket's `Sec-WebSocket-Protocol` alike).
pub fn offered(headers: &http::HeaderMap, name: impl http::header::AsHeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Whether the request asks for a SPDY/3.1 upgrade (upstream `spdy.responseUpgrader`).
pub fn is_spdy_upgrade(headers: &http::HeaderMap) -> bool {
    let has = |name: http::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains(token))
        })
    };
    has(http::header::CONNECTION, "upgrade") && has(http::header::UPGRADE, "spdy/3.1")
}

/// Where one output stream's bytes go, over whichever transport carries the session.
#[derive(Clone)]
pub enum Output {
    /// A SPDY stream.
    Spdy(StreamWriter),
    /// A WebSocket channel.
    WebSocket(ChannelWriter),
}

impl Output {
    /// Sends `data` to the client.
    ///
    /// # Errors
    /// [`Closed`] once the connection is gone.
    pub async fn write(&self, data: Bytes) -> Result<(), Closed> {
        match self {
            Self::Spdy(writer) => writer.write(data).await,
            Self::WebSocket(writer) => writer.write(data).await,
        }
    }

    /// Half-closes the stream (SPDY FIN); WebSocket channels have no half-close from the
    /// server, they end with the connection.
    pub async fn finish(&self) {
        match self {
            Self::Spdy(writer) => writer.finish().await,
            Self::WebSocket(_) => {}
        }
    }
}

/// The streams of one remote command session, once the client opened them all.
pub struct Streams {
    /// The negotiated version (for WebSocket, the version whose status format applies).
    pub protocol: &'static str,
    /// The client's stdin.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// To the client's stdout.
    pub stdout: Option<Output>,
    /// To the client's stderr.
    pub stderr: Option<Output>,
    /// Where the outcome goes (v2+; v1 clients may open it too).
    pub error: Option<Output>,
    /// Terminal size changes, JSON `{"Width":..,"Height":..}` one after another (v3+).
    pub resize: Option<mpsc::Receiver<Bytes>>,
}

/// Why the streams did not all arrive.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// The client did not open the streams in time.
    #[error("timed out waiting for client to create streams")]
    Timeout,
    /// The session ended first.
    #[error("the client closed the connection before opening its streams")]
    Closed,
}

impl Streams {
    /// Waits until the client opened every stream `options` call for (upstream
    /// `v4ProtocolHandler.waitForStreams`): the error stream, one per asked-for stdio, and
    /// the resize stream for a TTY from v3 on. Streams of an unknown type are reset.
    ///
    /// # Errors
    /// [`StreamsError`] when they do not all come within `timeout`.
    pub async fn accept(
        session: &mut Session,
        protocol: &'static str,
        options: Options,
        timeout: Duration,
    ) -> Result<Self, StreamsError> {
        let resizing = matches!(protocol, V3 | V4 | V5);
        let expected = 1
            + usize::from(options.stdin)
            + usize::from(options.stdout)
            + usize::from(options.stderr)
            + usize::from(options.tty && resizing);
        let mut streams = Self {
            protocol,
            stdin: None,
            stdout: None,
            stderr: None,
            error: None,
            resize: None,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut received = 0;
        while received < expected {
            let stream: Stream = tokio::time::timeout_at(deadline, session.incoming.recv())
                .await
                .map_err(|_| StreamsError::Timeout)?
                .ok_or(StreamsError::Closed)?;
            let kind = header(&stream.headers, "streamtype").unwrap_or_default();
            match kind {
                "error" => streams.error = Some(Output::Spdy(stream.writer)),
                "stdin" => streams.stdin = Some(stream.data),
                "stdout" => streams.stdout = Some(Output::Spdy(stream.writer)),
                "stderr" => streams.stderr = Some(Output::Spdy(stream.writer)),
                "resize" => streams.resize = Some(stream.data),
                other => {
                    tracing::debug!(stream_type = other, "unexpected stream type: reset");
                    stream.writer.reset(super::spdy::rst::PROTOCOL_ERROR).await;
                    continue;
                }
            }
            received += 1;
        }
        Ok(streams)
    }

    /// Writes the outcome on the error stream: JSON `Status` from v4 on, the message alone
    /// before, nothing for success before v4 (upstream `v4WriteStatusFunc`,
    /// `v1WriteStatusFunc`). Then half-closes every output stream.
    pub async fn finish(&mut self, outcome: &Outcome) {
        if let Some(error) = &self.error {
            let body = match self.protocol {
                V4 | V5 => Some(outcome.status_json()),
                _ => outcome.message().map(String::from),
            };
            if let Some(body) = body {
                let _ = error.write(Bytes::from(body)).await;
            }
        }
        for writer in [&self.stdout, &self.stderr, &self.error]
            .into_iter()
            .flatten()
        {
            writer.finish().await;
        }
    }
}

/// How a remote command ended, as the error stream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Success,
    /// The command exited with this non-zero code.
    ExitCode(i32),
    /// The command could not run or was ended by the kubelet.
    Error(String),
}

impl Outcome {
    /// The message of a failure.
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Success => None,
            Self::ExitCode(_) => Some("command terminated with non-zero exit code"),
            Self::Error(message) => Some(message),
        }
    }

    /// The `metav1.Status` upstream's `ServeExec` writes: `NonZeroExitCode` with an
    /// `ExitCode` cause, which client-go turns into kubectl's "command terminated with exit
    /// code N" and its own exit code.
    pub fn status_json(&self) -> String {
        let status = match self {
            Self::Success => serde_json::json!({"metadata": {}, "status": "Success"}),
            Self::ExitCode(code) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Self::Error(message) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "code": 500,
                "details": {"causes": [{"message": message}]},
            }),
        };
        status.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for v in values {
            map.append(PROTOCOL_HEADER, v.parse().expect("value"));
        }
        map
    }

    #[test]
    fn negotiation_takes_the_clients_first_known_version() {
        assert_eq!(negotiate(&headers(&[V5, V4])).expect("v5"), V5);
        assert_eq!(
            negotiate(&headers(&["v9.channel.k8s.io", V3])).expect("v3"),
            V3
        );
        assert_eq!(
            negotiate(&headers(&["v4.channel.k8s.io,v3.channel.k8s.io"])).expect("v4"),
            V4
        );
        let error = negotiate(&headers(&["v9"])).expect_err("none");
        assert!(error.to_string().contains("unable to negotiate"), "{error}");
        assert!(negotiate(&headers(&[])).is_err());
    }

    #[test]
    fn options_follow_the_query_and_tty_drops_stderr() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let options = Options::from_query(&q(&[("output", "1"), ("error", "1"), ("tty", "1")]))
            .expect("options");
        assert!(options.stdout && options.tty && !options.stderr);
        assert!(Options::from_query(&q(&[("tty", "1")])).is_err());
    }

    #[test]
    fn exit_codes_become_the_status_client_go_reads() {
        let status: serde_json::Value =
            serde_json::from_str(&Outcome::ExitCode(3).status_json()).expect("json");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value =
            serde_json::from_str(&Outcome::Success.status_json()).expect("json");
        assert_eq!(ok["status"], "Success");
    }
}
