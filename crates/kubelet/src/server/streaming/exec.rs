//! `/exec/{namespace}/{pod}[/{uid}]/{container}?command=...&input=1&output=1&error=1&tty=1`:
//! `kubectl exec` (upstream `Server.getExec` and `remotecommand.ServeExec`), and `/attach/...`
//! (`Server.getAttach`), over SPDY/3.1 or WebSocket: the transport only yields the
//! [`Streams`]; what is served on them is the same.
//!
//! An exec is one more instance of the container's program: the same compiled module or
//! component, argv from `command`, the container's environment, mounts (with their read-only
//! rules) and limits, its stdio streamed to the client. It ends when the program exits, the
//! client goes away, or the container's run ends. With a TTY stdin and stdout report
//! themselves as a terminal; resize messages are read and dropped, since WASI has no terminal
//! size or signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::remotecommand::{
    ACCEPTED_HEADER, Options, Outcome, Output, PROTOCOL_HEADER, ProtocolError,
    STREAM_CREATION_TIMEOUT, SUPPORTED, Streams, is_spdy_upgrade, negotiate,
};
use super::session::Session;
use super::websocket::{self, WsProtocol};
use crate::container::exec_targets::ExecTarget;
use crate::runtime::{ExecIo, Termination};
use crate::server::AppState;

/// Most exec sessions at once on this node; more are refused with 429.
pub const MAX_SESSIONS: usize = 64;
/// Output chunks buffered between a guest and its client.
const OUTPUT_QUEUE: usize = 16;
/// How long output may take to drain after the program ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

static SESSIONS: Semaphore = Semaphore::const_new(MAX_SESSIONS);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A refusal kubectl shows: a `Status` body, which client-go decodes from a failed upgrade.
pub fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        status.to_string(),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    status_response(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// Where an exec request points.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    namespace: String,
    pod: String,
    uid: Option<String>,
    container: String,
}

fn parse_path(path: &str, root: &str) -> Option<Target> {
    let rest = path.strip_prefix(root)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts.as_slice() {
        [namespace, pod, container] => Some(Target {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            uid: None,
            container: container.to_string(),
        }),
        [namespace, pod, uid, container] => Some(Target {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            uid: Some(uid.to_string()),
            container: container.to_string(),
        }),
        _ => None,
    }
}

/// How the client wants to talk, checked before the upgrade.
enum Transport {
    /// SPDY/3.1 with this remote command version.
    Spdy {
        protocol: &'static str,
        upgrade: hyper::upgrade::OnUpgrade,
    },
    /// WebSocket with this subprotocol.
    WebSocket {
        protocol: WsProtocol,
        upgrade: Box<WebSocketUpgrade>,
    },
}

/// A checked streaming request, ready to upgrade.
struct Prepared {
    target: Target,
    pairs: Vec<(String, String)>,
    options: Options,
    transport: Transport,
    exec_target: Arc<ExecTarget>,
    permit: tokio::sync::SemaphorePermit<'static>,
}

/// The checks exec and attach share, in upstream's order: path, stream options, upgrade
/// headers, protocol version, a running container; each failure is a `Status` kubectl shows.
async fn prepare(
    state: &AppState,
    request: Request,
    root: &str,
) -> Result<Prepared, Box<Response>> {
    let Some(target) = parse_path(request.uri().path(), root) else {
        return Err(Box::new(status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("path must be {root}/{{namespace}}/{{pod}}[/{{uid}}]/{{container}}"),
        )));
    };
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let options = Options::from_query(&pairs).map_err(|e| Box::new(bad_request(&e.to_string())))?;
    let (mut parts, _body) = request.into_parts();
    let refused = |error: ProtocolError, accepted: &[&'static str]| {
        // Upstream `httpstream.Handshake`: 403 with the versions the server accepts.
        let mut response = status_response(StatusCode::FORBIDDEN, "Forbidden", &error.to_string());
        for &version in accepted {
            response
                .headers_mut()
                .append(ACCEPTED_HEADER, http::HeaderValue::from_static(version));
        }
        Box::new(response)
    };
    let transport = if websocket::is_websocket_upgrade(&parts.headers) {
        let ws_names: Vec<&'static str> = websocket::PROTOCOLS.iter().map(|p| p.name).collect();
        let protocol = websocket::negotiate(&parts.headers).map_err(|e| refused(e, &ws_names))?;
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|rejection| {
                Box::new(bad_request(&format!(
                    "not a usable WebSocket upgrade: {}",
                    rejection.body_text()
                )))
            })?;
        Transport::WebSocket {
            protocol,
            upgrade: Box::new(upgrade),
        }
    } else {
        if !is_spdy_upgrade(&parts.headers) {
            return Err(Box::new(bad_request(
                &ProtocolError::NotAnUpgrade.to_string(),
            )));
        }
        let protocol = negotiate(&parts.headers).map_err(|e| refused(e, SUPPORTED))?;
        let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(Box::new(bad_request(
                "this connection cannot be upgraded; exec and attach need HTTP/1.1",
            )));
        };
        Transport::Spdy { protocol, upgrade }
    };
    let Some(exec_target) = state
        .view
        .exec
        .get(&target.namespace, &target.pod, &target.container)
        .filter(|t| target.uid.as_ref().is_none_or(|uid| *uid == t.pod_uid))
    else {
        return Err(Box::new(status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "container {:?} of pod {}/{} is not running on this node; exec and attach need a running container",
                target.container, target.namespace, target.pod
            ),
        )));
    };
    let Ok(permit) = SESSIONS.try_acquire() else {
        return Err(Box::new(status_response(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            &format!("{MAX_SESSIONS} streaming sessions are open on this node; try again later"),
        )));
    };
    Ok(Prepared {
        target,
        pairs,
        options,
        transport,
        exec_target,
        permit,
    })
}

/// The 101 answer that switches the connection to SPDY/3.1.
fn switching(protocol: &'static str) -> Response {
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (http::header::CONNECTION, "Upgrade"),
            (http::header::UPGRADE, "SPDY/3.1"),
            (http::HeaderName::from_static(PROTOCOL_HEADER), protocol),
        ],
    )
        .into_response()
}

/// Answers the upgrade and, once upgraded, runs `serve` on the session's streams; the
/// session permit is held until it is done.
fn upgrade_and_serve<F, Fut>(
    transport: Transport,
    options: Options,
    permit: tokio::sync::SemaphorePermit<'static>,
    what: &'static str,
    serve: F,
) -> Response
where
    F: FnOnce(Streams, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match transport {
        Transport::Spdy { protocol, upgrade } => {
            tokio::spawn(async move {
                let _permit = permit;
                let Ok(upgraded) = upgrade.await else {
                    tracing::debug!("{what} upgrade failed");
                    return;
                };
                let mut session = Session::start(TokioIo::new(upgraded));
                let streams =
                    match Streams::accept(&mut session, protocol, options, STREAM_CREATION_TIMEOUT)
                        .await
                    {
                        Ok(streams) => streams,
                        Err(error) => {
                            tracing::info!(%error, "{what} ended before it started");
                            session.close().await;
                            return;
                        }
                    };
                let peer_gone = session.peer_gone();
                serve(streams, peer_gone).await;
                session.close().await;
            });
            switching(protocol)
        }
        Transport::WebSocket { protocol, upgrade } => {
            let upgrade = *upgrade;
            let upgrade = if protocol.name.is_empty() {
                upgrade
            } else {
                upgrade.protocols([protocol.name])
            };
            upgrade
                .max_message_size(websocket::MAX_MESSAGE)
                .max_frame_size(websocket::MAX_MESSAGE)
                .on_upgrade(move |socket| async move {
                    let _permit = permit;
                    let (streams, connection) = websocket::start(socket, protocol, options);
                    serve(streams, connection.peer_gone.clone()).await;
                    connection.close().await;
                })
        }
    }
}

/// Serves `/exec/...`: checks the request, answers the upgrade (SPDY/3.1 or WebSocket) and
/// runs the command.
pub async fn exec(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let prepared = match prepare(&state, request, "/exec").await {
        Ok(prepared) => prepared,
        Err(response) => return *response,
    };
    let command: Vec<String> = prepared
        .pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return bad_request("you must specify a command to run (`kubectl exec POD -- COMMAND`)");
    }
    if command.first().is_some_and(|c| c == "tar") {
        // `kubectl cp` runs `tar` in the container; an exec here runs the container's own
        // program, which is not tar.
        return bad_request(CP_REFUSAL);
    }
    let Prepared {
        target,
        options,
        transport,
        exec_target,
        permit,
        ..
    } = prepared;
    let id = format!(
        "exec-{}-{}",
        target.container,
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    tracing::info!(
        pod = %format!("{}/{}", target.namespace, target.pod),
        container = %target.container,
        %id,
        websocket = matches!(transport, Transport::WebSocket { .. }),
        ?command,
        tty = options.tty,
        "exec"
    );
    upgrade_and_serve(
        transport,
        options,
        permit,
        "exec",
        move |mut streams, peer_gone| async move {
            if let Some(outcome) =
                run_exec(&mut streams, peer_gone, options, exec_target, &id, command).await
            {
                streams.finish(&outcome).await;
            }
        },
    )
}

/// What `kubectl cp` gets: it runs `tar` through exec, and a wasm pod has no tar.
pub const CP_REFUSAL: &str = "kubectl cp needs tar in the container, and a WebAssembly pod has \
    none: exec runs only the container's own program. Copy files through a volume instead";

/// Serves `/attach/...` (upstream `Server.getAttach`): the running container's output from
/// now on, as its log receives it (stdout and stderr interleaved on the stdout stream), until
/// the run ends or the client leaves; with `input=1` and a container with `stdin: true`, the
/// client's input goes to the program's stdin (see [`crate::container::exec_targets::AttachInput`]).
pub async fn attach(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let prepared = match prepare(&state, request, "/attach").await {
        Ok(prepared) => prepared,
        Err(response) => return *response,
    };
    let Prepared {
        target,
        options,
        transport,
        exec_target,
        permit,
        ..
    } = prepared;
    let pod_logs_dir = state.config.pod_logs_dir.clone();
    upgrade_and_serve(
        transport,
        options,
        permit,
        "attach",
        move |mut streams, peer_gone| async move {
            let outcome = run_attach(
                &mut streams,
                peer_gone,
                &exec_target,
                &pod_logs_dir,
                &target,
            )
            .await;
            streams.finish(&outcome).await;
        },
    )
}

/// Forwards an attach client's input to the program's stdin until the client closes it or
/// leaves; then, with `stdinOnce`, the program's stdin closes.
fn forward_input(input: Option<mpsc::Receiver<Bytes>>, target: &Arc<ExecTarget>) {
    let Some(mut input) = input else {
        return;
    };
    let target = target.clone();
    tokio::spawn(async move {
        let Some(attach) = &target.input else {
            // The container has no stdin (`stdin: false`): input is read and dropped.
            while input.recv().await.is_some() {}
            return;
        };
        if let Some(sender) = attach.session() {
            loop {
                tokio::select! {
                    chunk = input.recv() => match chunk {
                        Some(chunk) => {
                            if sender.send(chunk).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = target.stopped.cancelled() => break,
                }
            }
        }
        attach.session_ended();
    });
}

/// The body of an attach, over either transport.
async fn run_attach(
    streams: &mut Streams,
    peer_gone: CancellationToken,
    exec_target: &Arc<ExecTarget>,
    pod_logs_dir: &std::path::Path,
    target: &Target,
) -> Outcome {
    // "From now on" is a time, not the log's length when the follower opens it: input is
    // forwarded below, and what the program answers may reach the log before the follower
    // has looked at it.
    let attached_at = jiff::Timestamp::now();
    if let Some(mut resize) = streams.resize.take() {
        // WASI has no terminal size: sizes are read (so the session never stalls) and dropped.
        tokio::spawn(async move { while resize.recv().await.is_some() {} });
    }
    let run = match crate::log::reader::find_run(
        pod_logs_dir,
        &target.namespace,
        &target.pod,
        &target.container,
        false,
    ) {
        Err(error) => return Outcome::Error(error.to_string()),
        Ok(run) => run,
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(OUTPUT_QUEUE);
    let follow = crate::log::reader::LogOptions {
        follow: true,
        since: Some(attached_at),
        ..Default::default()
    };
    let reader = tokio::spawn(crate::log::reader::stream_log(run, follow, tx));
    forward_input(streams.stdin.take(), exec_target);
    let writer = streams.stdout.clone().or_else(|| streams.stderr.clone());
    let send = |chunk: Vec<u8>| {
        let writer = writer.clone();
        async move {
            if let Some(writer) = &writer {
                let _ = writer.write(Bytes::from(chunk)).await;
            }
        }
    };
    loop {
        tokio::select! {
            chunk = rx.recv() => match chunk {
                Some(chunk) => send(chunk).await,
                None => break,
            },
            _ = exec_target.stopped.cancelled() => {
                // The run ended: what it wrote last still reaches the client (the follower
                // ends once the run is marked finished), within a bound.
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
                    while let Some(chunk) = rx.recv().await {
                        send(chunk).await;
                    }
                })
                .await;
                break;
            }
            _ = peer_gone.cancelled() => break,
        }
    }
    reader.abort();
    Outcome::Success
}

/// Copies a guest's output to its stream until the guest drops its sender.
fn pump(mut output: mpsc::Receiver<Bytes>, writer: Output) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(chunk) = output.recv().await {
            if writer.write(chunk).await.is_err() {
                // The client is gone: keep draining so the guest is never stuck on a write.
                while output.recv().await.is_some() {}
                return;
            }
        }
    })
}

/// Runs one exec over an upgraded SPDY session (upstream `ServeExec`).
#[cfg(test)]
async fn serve(
    mut session: Session,
    protocol: &'static str,
    options: Options,
    target: Arc<ExecTarget>,
    id: String,
    command: Vec<String>,
) {
    let mut streams =
        match Streams::accept(&mut session, protocol, options, STREAM_CREATION_TIMEOUT).await {
            Ok(streams) => streams,
            Err(error) => {
                tracing::info!(%id, %error, "exec ended before it started");
                session.close().await;
                return;
            }
        };
    let peer_gone = session.peer_gone();
    if let Some(outcome) = run_exec(&mut streams, peer_gone, options, target, &id, command).await {
        streams.finish(&outcome).await;
    }
    drop(streams);
    session.close().await;
}

/// The body of an exec (upstream `ServeExec`), over either transport: `None` when the client
/// went away (nobody to tell the outcome).
async fn run_exec(
    streams: &mut Streams,
    peer_gone: CancellationToken,
    options: Options,
    target: Arc<ExecTarget>,
    id: &str,
    command: Vec<String>,
) -> Option<Outcome> {
    if let Some(mut resize) = streams.resize.take() {
        // WASI has no terminal size: sizes are read (so the session never stalls) and dropped.
        tokio::spawn(async move {
            while let Some(size) = resize.recv().await {
                tracing::debug!(size = %String::from_utf8_lossy(&size), "terminal resize ignored (WASI has no terminal size)");
            }
        });
    }
    let mut pumps = Vec::new();
    let mut output = |writer: &Option<Output>| {
        writer.clone().map(|writer| {
            let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
            pumps.push(pump(rx, writer));
            tx
        })
    };
    let io = ExecIo {
        stdout: output(&streams.stdout),
        stderr: output(&streams.stderr),
        stdin: streams.stdin.take(),
        tty: options.tty,
    };
    let started = match target.spec(id.to_string(), command, io) {
        Ok(spec) => target.runtime.exec(spec).await.map_err(|e| e.message),
        Err(error) => Err(error.to_string()),
    };
    let outcome = match started {
        Err(message) => Outcome::Error(format!("cannot exec in the container: {message}")),
        Ok(mut running) => {
            let termination = tokio::select! {
                ended = &mut running.exit => ended.unwrap_or(Termination::Killed),
                _ = target.stopped.cancelled() => {
                    let _ = running.kill.send(());
                    running.exit.await.unwrap_or(Termination::Killed);
                    Termination::StartFailed { message: "the container stopped; its exec ended with it".into() }
                }
                _ = peer_gone.cancelled() => {
                    tracing::info!(%id, "exec client went away: stopping the command");
                    let _ = running.kill.send(());
                    let _ = running.exit.await;
                    return None;
                }
            };
            outcome_of(termination)
        }
    };
    // Every byte of output goes out before the status (the guest dropped its senders).
    for pump in pumps {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, pump).await;
    }
    tracing::info!(%id, ?outcome, "exec finished");
    Some(outcome)
}

/// The error stream's report of how the program ended.
fn outcome_of(termination: Termination) -> Outcome {
    match termination {
        Termination::Exited(0) => Outcome::Success,
        Termination::Exited(code) => Outcome::ExitCode(code),
        Termination::Trapped { message, .. } => {
            Outcome::Error(format!("the command trapped: {message}"))
        }
        Termination::OomKilled { message } => Outcome::Error(format!(
            "the command exceeded the container's memory limit: {message}"
        )),
        Termination::Killed => Outcome::Error("the command was stopped".into()),
        Termination::StartFailed { message } => Outcome::Error(message),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::server::streaming::remotecommand::V4;
    use crate::server::streaming::session::MAX_STREAMS;
    use crate::server::streaming::spdy::{Codec, FLAG_FIN, Frame, rst};

    fn target() -> Arc<ExecTarget> {
        Arc::new(ExecTarget {
            pod_uid: "uid".into(),
            program: "/p.wasm".into(),
            program_digest: "sha256:0".into(),
            env: vec![],
            mounts: vec![],
            limits: crate::runtime::Limits::default(),
            runtime: Arc::new(crate::runtime::fake::FakeRuntime::default()),
            stopped: tokio_util::sync::CancellationToken::new(),
            input: None,
            guest_network: None,
        })
    }

    /// A test client: writes frames, reads every frame until the server closes.
    struct Client {
        io: DuplexStream,
        codec: Codec,
        read: Codec,
        buf: BytesMut,
    }

    impl Client {
        fn new(io: DuplexStream) -> Self {
            Self {
                io,
                codec: Codec::new(),
                read: Codec::new(),
                buf: BytesMut::new(),
            }
        }

        async fn send(&mut self, frame: Frame) {
            let mut out = BytesMut::new();
            self.codec.encode(&frame, &mut out).expect("encode");
            self.io.write_all(&out).await.expect("write");
        }

        async fn open(&mut self, stream_id: u32, kind: &str) {
            self.send(Frame::SynStream {
                stream_id,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), kind.into())],
            })
            .await;
        }

        /// Frames until GOAWAY or the end of the connection (bounded).
        async fn frames(&mut self) -> Vec<Frame> {
            let mut frames = Vec::new();
            let read = async {
                loop {
                    while let Some(frame) = self.read.decode(&mut self.buf).expect("decode") {
                        let goaway = matches!(frame, Frame::GoAway { .. });
                        frames.push(frame);
                        if goaway {
                            return;
                        }
                    }
                    if self.io.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("the server ends the session");
            frames
        }
    }

    fn data_of(frames: &[Frame]) -> HashMap<u32, String> {
        let mut out: HashMap<u32, String> = HashMap::new();
        for frame in frames {
            if let Frame::Data {
                stream_id, data, ..
            } = frame
            {
                out.entry(*stream_id)
                    .or_default()
                    .push_str(&String::from_utf8_lossy(data));
            }
        }
        out
    }

    #[tokio::test]
    async fn an_exec_over_spdy_streams_stdio_and_reports_the_exit_code() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = Session::start(server);
        let options = Options {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let command = vec!["prog".into(), "a".into(), "exit=3".into()];
        let served = tokio::spawn(serve(session, V4, options, target(), "t".into(), command));
        let mut client = Client::new(client);
        client.open(1, "error").await;
        client.open(3, "stdin").await;
        // An unknown stream type is reset and not counted.
        client.open(5, "bogus").await;
        client.open(7, "stdout").await;
        client.open(9, "stderr").await;
        client
            .send(Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"typed\n"),
            })
            .await;
        let frames = client.frames().await;
        served.await.expect("served");
        let data = data_of(&frames);
        assert_eq!(data.get(&7).map(String::as_str), Some("a exit=3\ntyped\n"));
        assert_eq!(data.get(&9).map(String::as_str), Some("err\n"));
        let status: serde_json::Value =
            serde_json::from_str(data.get(&1).expect("status")).expect("json");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        assert!(frames.contains(&Frame::RstStream {
            stream_id: 5,
            status: rst::PROTOCOL_ERROR
        }));
        // Every output stream is half-closed after its data.
        for id in [1, 7, 9] {
            assert!(
                frames.iter().any(|f| matches!(f, Frame::Data { stream_id, flags, .. } if *stream_id == id && flags & FLAG_FIN != 0)),
                "stream {id} not finished"
            );
        }
    }

    /// Serves one exec over WebSocket on loopback, as `upgrade_and_serve` does.
    async fn websocket_exec_server(options: Options, command: Vec<String>) -> std::net::SocketAddr {
        let app = axum::Router::new().route(
            "/exec",
            axum::routing::get(move |ws: WebSocketUpgrade| {
                let command = command.clone();
                async move {
                    ws.protocols(["v5.channel.k8s.io"])
                        .on_upgrade(move |socket| async move {
                            let (mut streams, connection) =
                                websocket::start(socket, websocket::PROTOCOLS[0], options);
                            let peer_gone = connection.peer_gone.clone();
                            if let Some(outcome) =
                                run_exec(&mut streams, peer_gone, options, target(), "t", command)
                                    .await
                            {
                                streams.finish(&outcome).await;
                            }
                            drop(streams);
                            connection.close().await;
                        })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn an_exec_over_websocket_v5_streams_stdio_closes_stdin_and_reports_the_exit_code() {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message as ClientMessage;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;

        let options = Options {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let command = vec!["prog".into(), "a".into(), "exit=3".into()];
        let addr = websocket_exec_server(options, command).await;
        let mut request = format!("ws://{addr}/exec")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "v5.channel.k8s.io".parse().expect("value"),
        );
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .expect("handshake");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("v5.channel.k8s.io")
        );
        ws.send(ClientMessage::binary(b"\x00typed\n".to_vec()))
            .await
            .expect("stdin");
        // v5's close signal for stdin: the program reads end of file.
        ws.send(ClientMessage::binary(vec![255u8, 0]))
            .await
            .expect("close stdin");
        let mut channels: HashMap<u8, Vec<u8>> = HashMap::new();
        let mut first = None;
        let read = async {
            while let Some(Ok(message)) = ws.next().await {
                match message {
                    ClientMessage::Binary(data) => {
                        let (channel, rest) = data.split_first().expect("a channel byte");
                        first.get_or_insert((*channel, rest.len()));
                        channels
                            .entry(*channel)
                            .or_default()
                            .extend_from_slice(rest);
                    }
                    ClientMessage::Close(_) => break,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the server ends the session");
        // Upstream's "streams ready" signal: an empty message on stdout.
        assert_eq!(first, Some((websocket::STDOUT, 0)));
        let text = |channel| String::from_utf8_lossy(&channels[&channel]).into_owned();
        assert_eq!(text(websocket::STDOUT), "a exit=3\ntyped\n");
        assert_eq!(text(websocket::STDERR), "err\n");
        let status: serde_json::Value =
            serde_json::from_str(&text(websocket::ERROR)).expect("status");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
    }

    #[tokio::test]
    async fn a_client_that_leaves_stops_the_command() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = Session::start(server);
        let options = Options {
            stdout: true,
            ..Options::default()
        };
        let command = vec!["prog".into(), "sleep".into()];
        let served = tokio::spawn(serve(session, V4, options, target(), "t".into(), command));
        let mut client = Client::new(client);
        client.open(1, "error").await;
        client.open(3, "stdout").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the exec ends with its client")
            .expect("served");
    }

    #[tokio::test]
    async fn too_many_streams_are_refused_and_bad_ids_end_the_session() {
        let (client, server) = tokio::io::duplex(1024 * 1024);
        let _session = Session::start(server);
        let mut client = Client::new(client);
        let total = MAX_STREAMS as u32 + 5;
        for n in 0..total {
            client.open(2 * n + 1, "stdout").await;
        }
        // Then a stream ID that goes backwards: a protocol error.
        client.open(1, "stdout").await;
        let frames = client.frames().await;
        let replies = frames
            .iter()
            .filter(|f| matches!(f, Frame::SynReply { .. }))
            .count();
        let refused = frames
            .iter()
            .filter(
                |f| matches!(f, Frame::RstStream { status, .. } if *status == rst::REFUSED_STREAM),
            )
            .count();
        assert_eq!(replies, MAX_STREAMS);
        assert_eq!(refused, 5);
        assert!(matches!(
            frames.last(),
            Some(Frame::GoAway { status: 1, .. })
        ));
    }

    #[test]
    fn paths_name_namespace_pod_optional_uid_and_container() {
        assert_eq!(
            parse_path("/exec/ns/pod/c", "/exec"),
            Some(Target {
                namespace: "ns".into(),
                pod: "pod".into(),
                uid: None,
                container: "c".into()
            })
        );
        assert_eq!(
            parse_path("/exec/ns/pod/uid/c", "/exec").and_then(|t| t.uid),
            Some("uid".into())
        );
        assert_eq!(parse_path("/exec/ns/pod", "/exec"), None);
        assert_eq!(parse_path("/exec/ns//c", "/exec"), None);
    }
}
