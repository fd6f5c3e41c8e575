//! Port-forward over WebSocket, which the kubelet accepts directly besides SPDY (upstream
//! `pkg/kubelet/cri/streaming/portforward/websocket.go`: `NewV4Options` and
//! `handleWebSocketStreams`, over `k8s.io/apiserver/pkg/util/wsstream`'s `Conn`). The
//! request is checked and authorized as the SPDY one is (`/portForward/...`, `nodes/proxy`,
//! see [`super::portforward`]); this module is what differs:
//!
//! - **Ports**: the `port` query parameter (upstream's `api.PortHeader`), repeatable, each
//!   value a comma-separated list: `?port=8080&port=9090` or `?port=8080,9090`. Each is a
//!   decimal in 1..=65535; duplicates are separate connections to the same port. At most
//!   [`MAX_PORTS`] (upstream has no limit). Missing, empty or bad values are 400, before the
//!   pod is looked up (upstream `Server.getPortForward`).
//! - **Subprotocols** (`Sec-WebSocket-Protocol`; wsstream's `handshake` over the map of
//!   `handleWebSocketStreams`): the client's first offered one of `v4.channel.k8s.io`
//!   (binary messages) and `v4.base64.channel.k8s.io` (text messages, base64); a client that
//!   offers none gets binary messages and no subprotocol in the answer. `portforward.k8s.io`
//!   names the SPDY protocol and is not one of them: a client offering only names the kubelet
//!   does not know is refused with 403.
//! - **Channels**: for the `i`-th port, data on channel `2*i` (both ways) and error on
//!   `2*i + 1` (written by the kubelet only). Framing is exec's ([`super::websocket`]): the
//!   first byte names the channel (base64: the character `'0' + channel`), the rest is the
//!   data. There is no close signal (that is v5 of the remote command protocol).
//! - **Port prefix**: at the start, before any data, the kubelet writes the port as 2 bytes
//!   little-endian in one message on each of a port's channels, data then error, port by
//!   port.
//! - **Connections**: one TCP connection per port, opened at the start through the pod's
//!   network ([`PodNetwork::forward_tcp`], as the SPDY path connects) and kept for the life of
//!   the WebSocket (`websocketStreamHandler.run`). The client's data on the data channel goes
//!   to it and the pod's bytes come back on the data channel. A connection that cannot be
//!   made, or that fails, writes `error forwarding port P to pod NS/NAME, uid UID: WHY` on the
//!   port's error channel (`websocketStreamHandler.portForward`). Once one direction of a
//!   connection ends (the pod closed it, say), the other gets at most 1 s more (containerd's
//!   `portForward`, which upstream kubelets reach through the CRI).
//! - **End**: the kubelet closes the WebSocket (normal closure) once every port's connection
//!   has ended; the client closing it ends every connection at once (wsstream's `Conn.Close`).
//! - Client messages that are empty, aimed at an error channel or at a channel beyond the
//!   ports', or base64 that does not decode are dropped (wsstream's `Conn.handle`).
//!
//! # Bounds
//! Sessions share the SPDY port-forward's cap ([`super::portforward::MAX_SESSIONS`], 429
//! beyond). Per session: at most [`MAX_PORTS`] ports; client messages and frames of at most
//! [`MAX_MESSAGE`] (larger ones end the connection); client data waiting for the pods at most
//! [`MAX_MESSAGE`] bytes across all ports (a pod that does not read stalls the session's
//! reading, as upstream's pipes do); the pods' data waits in one queue of 64 messages of at
//! most 32 KiB toward the socket.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::SplitStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, mpsc};
use tokio::task::JoinSet;

use super::remotecommand::V4;
use super::websocket::{self, ChannelWriter, Incoming, WsProtocol};
use crate::network::PodNetwork;

/// The query parameter naming the ports (upstream `api.PortHeader`).
pub const PORT_PARAMETER: &str = "port";
/// Most ports one request may forward (upstream has no limit).
pub const MAX_PORTS: usize = 16;
/// Largest message or frame accepted from a client, and the most client data waiting for
/// the pods per session.
pub const MAX_MESSAGE: usize = websocket::MAX_MESSAGE;
/// How long connecting to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the pod at a time (at most one message's payload).
const READ_CHUNK: usize = 32 * 1024;
/// Messages queued toward the socket.
const WRITE_QUEUE: usize = 64;
/// Client messages queued toward one port's connection (bytes are bounded separately).
const INPUT_QUEUE: usize = 16;
/// How long the other direction of a connection may go on once one has ended.
const LINGER: Duration = Duration::from_secs(1);

/// The subprotocols of port-forward over WebSocket, as `handleWebSocketStreams` lists them.
/// The version only selects the framing: v4's, without a close signal.
pub const PROTOCOLS: &[WsProtocol] = &[
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
];

/// What a client that offers no subprotocol gets (wsstream's `""` entry): binary messages.
const NO_SUBPROTOCOL: WsProtocol = WsProtocol {
    name: "",
    base64: false,
    version: V4,
};

/// The data channel of the `i`-th port.
pub fn data_channel(i: usize) -> u8 {
    // At most MAX_PORTS ports, so this fits.
    u8::try_from(2 * i).unwrap_or(u8::MAX)
}

/// The error channel of the `i`-th port.
pub fn error_channel(i: usize) -> u8 {
    data_channel(i).saturating_add(1)
}

/// The ports a WebSocket request asks for (upstream `NewV4Options`), from its query string.
///
/// # Errors
/// The message for a 400: no `port` parameter, an empty one, a value that is not a port in
/// 1..=65535, or more than [`MAX_PORTS`].
pub fn ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let values: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == PORT_PARAMETER)
        .map(|(_, v)| v.into_owned())
        .collect();
    if values.is_empty() {
        return Err(format!("query parameter {PORT_PARAMETER:?} is required"));
    }
    let mut ports = Vec::new();
    for value in &values {
        if value.is_empty() {
            return Err(format!(
                "query parameter {PORT_PARAMETER:?} cannot be empty"
            ));
        }
        for p in value.split(',') {
            // Go's `strconv.ParseUint(p, 10, 16)`: decimal digits only, no sign.
            let parsed = if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                Err("invalid syntax")
            } else {
                p.parse::<u16>().map_err(|_| "value out of range")
            };
            let port = parsed.map_err(|why| {
                format!("unable to parse {value:?} as a port: parsing {p:?}: {why}")
            })?;
            if port < 1 {
                return Err(format!("port {value:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.len() > MAX_PORTS {
        return Err(format!(
            "at most {MAX_PORTS} ports may be forwarded per request, {} were asked for",
            ports.len()
        ));
    }
    Ok(ports)
}

/// The client's first offered subprotocol that port-forward speaks (wsstream's `handshake`).
///
/// # Errors
/// The message for a 403 when the client offers only others.
pub fn negotiate(headers: &http::HeaderMap) -> Result<WsProtocol, String> {
    let offered = websocket::offered(headers);
    if offered.is_empty() {
        return Ok(NO_SUBPROTOCOL);
    }
    offered
        .iter()
        .find_map(|o| PROTOCOLS.iter().find(|p| p.name == o.as_str()).copied())
        .ok_or_else(|| {
            let supported: Vec<&str> = PROTOCOLS.iter().map(|p| p.name).collect();
            format!(
                "unable to upgrade websocket connection: requested protocol(s) are not \
                 supported: {offered:?}; supports {supported:?}"
            )
        })
}

/// Answers the upgrade with `protocol` and forwards `ports` of the pod behind `network`
/// until the WebSocket ends; `permit` (a port-forward session) is held until then. `pod`
/// (`namespace/name`) and `uid` go into error messages.
pub fn upgrade(
    upgrade: WebSocketUpgrade,
    protocol: WsProtocol,
    ports: Vec<u16>,
    network: Arc<dyn PodNetwork>,
    pod: String,
    uid: String,
    permit: SemaphorePermit<'static>,
) -> Response {
    let upgrade = if protocol.name.is_empty() {
        upgrade
    } else {
        upgrade.protocols([protocol.name])
    };
    upgrade
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            serve(socket, protocol, ports, network, pod, uid).await;
        })
}

/// Client data for one port's connection, holding its share of the session's byte budget.
type Input = (Bytes, OwnedSemaphorePermit);

/// Serves one upgraded WebSocket: the port prefixes, then one forwarded connection per port
/// until all have ended or the client goes.
pub async fn serve(
    socket: WebSocket,
    protocol: WsProtocol,
    ports: Vec<u16>,
    network: Arc<dyn PodNetwork>,
    pod: String,
    uid: String,
) {
    let (sink, source) = socket.split();
    let (out, out_rx) = mpsc::channel::<Message>(WRITE_QUEUE);
    let writer = tokio::spawn(websocket::write_messages(sink, out_rx));
    // `handleWebSocketStreams`: every channel starts with its port, before any data.
    let mut prefixed = true;
    for (i, port) in ports.iter().enumerate() {
        for channel in [data_channel(i), error_channel(i)] {
            let message = websocket::encode(channel, &port.to_le_bytes(), protocol.base64);
            prefixed &= out.send(message).await.is_ok();
        }
    }
    let mut inputs = Vec::with_capacity(ports.len());
    let mut forwards = JoinSet::new();
    if prefixed {
        for (i, &port) in ports.iter().enumerate() {
            let (input, input_rx) = mpsc::channel::<Input>(INPUT_QUEUE);
            inputs.push(input);
            let data = ChannelWriter::new(data_channel(i), protocol.base64, out.clone());
            let error = ChannelWriter::new(error_channel(i), protocol.base64, out.clone());
            let (network, pod, uid) = (network.clone(), pod.clone(), uid.clone());
            forwards.spawn(forward(network, port, input_rx, data, error, pod, uid));
        }
    }
    drop(out);
    let budget = Arc::new(Semaphore::new(MAX_MESSAGE));
    let mut reader = tokio::spawn(read_messages(source, protocol, inputs, budget));
    let client_left = tokio::select! {
        () = async { while forwards.join_next().await.is_some() {} } => false,
        _ = &mut reader => true,
    };
    if client_left {
        // wsstream's `Conn.Close`: every port's connection ends with the client.
        forwards.abort_all();
        while forwards.join_next().await.is_some() {}
    }
    reader.abort();
    // The writers are gone: the writer sends what is queued, then the close frame.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// Reads client messages into the ports' connections until the client closes or goes
/// (wsstream's `Conn.handle`).
async fn read_messages(
    mut source: SplitStream<WebSocket>,
    protocol: WsProtocol,
    inputs: Vec<mpsc::Sender<Input>>,
    budget: Arc<Semaphore>,
) {
    while let Some(Ok(message)) = source.next().await {
        let payload: Bytes = match message {
            Message::Binary(data) => data,
            Message::Text(text) => Bytes::from(text),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        let (channel, data) = match websocket::decode(&payload, protocol) {
            Ok(Incoming::Data(channel, data)) => (channel, data),
            Ok(Incoming::CloseChannel(_) | Incoming::Nothing) => continue,
            Err(error) => {
                tracing::debug!(%error, "port-forward: dropping a client message");
                continue;
            }
        };
        // Error channels are the kubelet's to write; channels beyond the ports' are nobody's.
        if channel % 2 != 0 || data.is_empty() {
            continue;
        }
        let Some(input) = inputs.get(usize::from(channel / 2)) else {
            continue;
        };
        // A message is smaller than MAX_MESSAGE, which the whole budget holds.
        let cost = u32::try_from(data.len().min(MAX_MESSAGE)).unwrap_or(u32::MAX);
        let Ok(permit) = budget.clone().acquire_many_owned(cost).await else {
            break;
        };
        // A connection that has ended drops what comes for it.
        let _ = input.send((data, permit)).await;
    }
}

/// Forwards one port (upstream `websocketStreamHandler.portForward` over containerd's
/// `portForward`): connects to the pod, copies both ways, and reports a failure on the error
/// channel.
async fn forward(
    network: Arc<dyn PodNetwork>,
    port: u16,
    mut input: mpsc::Receiver<Input>,
    data: ChannelWriter,
    error: ChannelWriter,
    pod: String,
    uid: String,
) {
    let report = |why: String| {
        let message = format!("error forwarding port {port} to pod {pod}, uid {uid}: {why}");
        tracing::info!("{message}");
        let error = error.clone();
        async move {
            let _ = error.write(Bytes::from(message)).await;
        }
    };
    let conn = match network.forward_tcp(port, CONNECT_TIMEOUT).await {
        Ok(conn) => conn,
        Err(why) => {
            report(why.to_string()).await;
            return;
        }
    };
    let _ = conn.set_nodelay(true);
    let (mut pod_read, mut pod_write) = conn.into_split();
    let to_pod = async move {
        while let Some((chunk, _budget)) = input.recv().await {
            pod_write.write_all(&chunk).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let to_client = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = pod_read.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            if data.write(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                return Err(std::io::Error::other("the client is gone"));
            }
        }
    };
    tokio::pin!(to_pod, to_client);
    // The first direction to end gives the other at most LINGER; the first failure counts.
    let (first, other) = tokio::select! {
        result = &mut to_pod => (result, tokio::time::timeout(LINGER, &mut to_client).await),
        result = &mut to_client => (result, tokio::time::timeout(LINGER, &mut to_pod).await),
    };
    let failure = match (first, other) {
        (Err(e), _) | (Ok(()), Ok(Err(e))) => Some(e),
        _ => None,
    };
    if let Some(why) = failure {
        report(why.to_string()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::Auth;
    use crate::server::{AppState, NodeView, router};
    use futures::SinkExt;
    use k8s_openapi::api::core::v1::Pod;
    use std::sync::Mutex;
    use tokio_tungstenite::tungstenite::Message as ClientMessage;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    type Client = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    /// A fake API server on loopback: TokenReview authenticates the token as the user of
    /// that name; SubjectAccessReview allows only `alice`. Returns its URL and the review
    /// bodies it got.
    async fn api_server() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let reviews = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = reviews.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Some((head, body)) = crate::server::auth::read_test_request(&mut tcp).await
                    else {
                        return;
                    };
                    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let answer = if head.contains("tokenreviews") {
                        let user = body["spec"]["token"].as_str().unwrap_or_default();
                        serde_json::json!({
                            "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                            "metadata": {}, "spec": {},
                            "status": {"authenticated": true, "user": {"username": user}}
                        })
                    } else {
                        let allowed = body["spec"]["user"] == "alice";
                        seen.lock().expect("lock").push(body);
                        serde_json::json!({
                            "kind": "SubjectAccessReview",
                            "apiVersion": "authorization.k8s.io/v1",
                            "metadata": {}, "spec": {}, "status": {"allowed": allowed}
                        })
                    }
                    .to_string();
                    let response = format!(
                        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = tcp.write_all(response.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}"), reviews)
    }

    /// The kubelet's router on loopback, authorizing through `api`, with pod `ns/p` (uid
    /// `uid-1`) on the node's network (127.0.0.1, where the test's "pods" listen).
    async fn kubelet(api: &str, dir: &std::path::Path) -> std::net::SocketAddr {
        let config = crate::config::Flags {
            node_name: Some("node-a".into()),
            node_ip: Some([127, 0, 0, 1].into()),
            port: Some(0),
            data_dir: Some(dir.into()),
            ..Default::default()
        }
        .resolve()
        .expect("config");
        let client =
            kube::Client::try_from(kube::Config::new(api.parse().expect("url"))).expect("client");
        let view = NodeView::new("node-a");
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.name = Some("p".into());
        pod.metadata.uid = Some("uid-1".into());
        view.pods.set(Arc::new(pod));
        let state = Arc::new(AppState {
            data_dir: dir.into(),
            config,
            auth: Auth::new("node-a".into(), tokio::sync::watch::channel(client).1),
            view,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        addr
    }

    /// Opens `path` as `user` offering `subprotocol`: the socket and the chosen subprotocol,
    /// or the refusal's status.
    async fn open(
        addr: std::net::SocketAddr,
        path: &str,
        user: &str,
        subprotocol: &str,
    ) -> Result<(Client, String), u16> {
        let mut request = format!("ws://{addr}{path}")
            .into_client_request()
            .expect("request");
        let headers = request.headers_mut();
        headers.insert(
            "Authorization",
            format!("Bearer {user}").parse().expect("value"),
        );
        if !subprotocol.is_empty() {
            headers.insert(
                "Sec-WebSocket-Protocol",
                subprotocol.parse().expect("value"),
            );
        }
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        match tokio_tungstenite::client_async(request, tcp).await {
            Ok((socket, response)) => {
                let chosen = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                Ok((socket, chosen))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(error) => panic!("handshake: {error}"),
        }
    }

    /// The next message's channel and data (binary framing), or `None` at the close.
    async fn next(socket: &mut Client) -> Option<(u8, Vec<u8>)> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("a message within 10 s");
            match message {
                Some(Ok(ClientMessage::Binary(data))) => {
                    let (channel, rest) = data.split_first().expect("a channel byte");
                    return Some((*channel, rest.to_vec()));
                }
                Some(Ok(ClientMessage::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// A loopback TCP echo server standing in for a pod's port.
    async fn echo_server() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = tcp.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        port
    }

    /// A loopback port nobody listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
    }

    #[tokio::test]
    async fn the_router_forwards_ports_over_websocket_and_reports_a_refused_one() {
        let dir = tempfile::tempdir().expect("dir");
        let (api, reviews) = api_server().await;
        let addr = kubelet(&api, dir.path()).await;
        let echo = echo_server().await;
        let closed = closed_port();
        let path = format!("/portForward/ns/p?port={echo}&port={closed}");

        let (mut socket, chosen) = open(addr, &path, "alice", "v4.channel.k8s.io")
            .await
            .expect("upgrade");
        assert_eq!(chosen, "v4.channel.k8s.io");
        // Every channel starts with its port, 2 bytes little-endian: data, then error.
        let mut prefixes = Vec::new();
        for _ in 0..4 {
            prefixes.push(next(&mut socket).await.expect("a port prefix"));
        }
        assert_eq!(
            prefixes,
            vec![
                (0, echo.to_le_bytes().to_vec()),
                (1, echo.to_le_bytes().to_vec()),
                (2, closed.to_le_bytes().to_vec()),
                (3, closed.to_le_bytes().to_vec()),
            ]
        );
        // Bytes on channel 0 reach the "pod" and its echo comes back on channel 0, in two
        // messages over the same connection; the refused port's error is on channel 3.
        let mut echoed = Vec::new();
        let mut refused = String::new();
        for message in [&b"ping "[..], b"pong"] {
            let mut out = vec![0u8];
            out.extend_from_slice(message);
            socket.send(ClientMessage::binary(out)).await.expect("send");
        }
        while echoed.len() < 9 || refused.is_empty() {
            match next(&mut socket)
                .await
                .expect("echo and error before the end")
            {
                (0, data) => echoed.extend(data),
                (3, data) => refused.push_str(&String::from_utf8_lossy(&data)),
                other => panic!("unexpected message {other:?}"),
            }
        }
        assert_eq!(echoed, b"ping pong");
        assert!(
            refused.starts_with(&format!(
                "error forwarding port {closed} to pod ns/p, uid uid-1:"
            )),
            "{refused}"
        );
        // Messages on an error channel or beyond the ports' go nowhere; the session goes on.
        socket
            .send(ClientMessage::binary(b"\x01nobody".to_vec()))
            .await
            .expect("send");
        socket
            .send(ClientMessage::binary(b"\x09nobody".to_vec()))
            .await
            .expect("send");
        socket
            .send(ClientMessage::binary(b"\x00again".to_vec()))
            .await
            .expect("send");
        assert_eq!(next(&mut socket).await, Some((0, b"again".to_vec())));
        socket.close(None).await.expect("close");

        // Authorized as the SPDY path is: `get` (a WebSocket is a GET) on nodes/proxy.
        let review = reviews.lock().expect("lock")[0].clone();
        let attributes = &review["spec"]["resourceAttributes"];
        assert_eq!(attributes["verb"], "get", "{review}");
        assert_eq!(attributes["resource"], "nodes", "{review}");
        assert_eq!(attributes["subresource"], "proxy", "{review}");
        assert_eq!(attributes["name"], "node-a", "{review}");
        // Without nodes/proxy: 403 before any upgrade.
        assert_eq!(
            open(addr, &path, "bob", "v4.channel.k8s.io").await.err(),
            Some(403)
        );
        // Bad requests: no port, an unknown subprotocol only, another pod.
        assert_eq!(
            open(addr, "/portForward/ns/p", "alice", "v4.channel.k8s.io")
                .await
                .err(),
            Some(400)
        );
        assert_eq!(
            open(addr, &path, "alice", "portforward.k8s.io").await.err(),
            Some(403)
        );
        assert_eq!(
            open(addr, "/portForward/ns/q?port=80", "alice", "")
                .await
                .err(),
            Some(404)
        );
    }

    #[tokio::test]
    async fn base64_framing_and_the_pod_closing_ends_the_websocket() {
        let dir = tempfile::tempdir().expect("dir");
        let (api, _) = api_server().await;
        let addr = kubelet(&api, dir.path()).await;
        // A "pod" that greets and closes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut tcp, _)) = listener.accept().await {
                let _ = tcp.write_all(b"hello").await;
            }
        });
        let (mut socket, chosen) = open(
            addr,
            &format!("/portForward/ns/p/uid-1?port={port}"),
            "alice",
            "v9.channel.k8s.io, v4.base64.channel.k8s.io",
        )
        .await
        .expect("upgrade");
        assert_eq!(chosen, "v4.base64.channel.k8s.io");
        let mut texts = Vec::new();
        let read = async {
            while let Some(message) = socket.next().await {
                match message {
                    Ok(ClientMessage::Text(text)) => texts.push(text.to_string()),
                    Ok(ClientMessage::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the kubelet closes the WebSocket once the pod closed");
        let b64 = |data: &[u8]| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(data)
        };
        let le = b64(&port.to_le_bytes());
        assert_eq!(
            texts,
            vec![
                format!("0{le}"),
                format!("1{le}"),
                format!("0{}", b64(b"hello"))
            ]
        );
    }

    fn header(values: &[&str]) -> http::HeaderMap {
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
    fn ports_come_from_repeated_and_comma_separated_port_parameters() {
        assert_eq!(ports(Some("port=8080")), Ok(vec![8080]));
        assert_eq!(
            ports(Some("port=80,443&port=8080&other=1&port=80")),
            Ok(vec![80, 443, 8080, 80])
        );
        assert_eq!(ports(Some("port=%38%30")), Ok(vec![80]));
        assert_eq!(
            ports(None),
            Err("query parameter \"port\" is required".into())
        );
        assert_eq!(
            ports(Some("ports=80")),
            Err("query parameter \"port\" is required".into())
        );
        assert_eq!(
            ports(Some("port=")),
            Err("query parameter \"port\" cannot be empty".into())
        );
        assert_eq!(ports(Some("port=0")), Err("port \"0\" must be > 0".into()));
        for bad in ["port=x", "port=80,", "port=+80", "port=-1", "port=65536"] {
            let error = ports(Some(bad)).expect_err(bad);
            assert!(error.starts_with("unable to parse"), "{bad}: {error}");
        }
        let many: Vec<String> = (1..=17).map(|p| format!("port={p}")).collect();
        assert!(ports(Some(&many.join("&"))).is_err());
        assert_eq!(ports(Some(&many[..16].join("&"))).map(|p| p.len()), Ok(16));
    }

    #[test]
    fn subprotocols_are_v4_binary_or_base64_and_none_means_binary() {
        assert_eq!(
            negotiate(&header(&["v5.channel.k8s.io, v4.base64.channel.k8s.io"])),
            Ok(PROTOCOLS[1])
        );
        assert_eq!(
            negotiate(&header(&["v4.channel.k8s.io", "v4.base64.channel.k8s.io"])),
            Ok(PROTOCOLS[0])
        );
        assert_eq!(negotiate(&header(&[])), Ok(NO_SUBPROTOCOL));
        for refused in [
            "portforward.k8s.io",
            "channel.k8s.io",
            "SPDY/3.1+portforward.k8s.io",
        ] {
            assert!(negotiate(&header(&[refused])).is_err(), "{refused}");
        }
    }

    #[test]
    fn each_port_has_a_data_and_an_error_channel() {
        assert_eq!((data_channel(0), error_channel(0)), (0, 1));
        assert_eq!(
            (data_channel(MAX_PORTS - 1), error_channel(MAX_PORTS - 1)),
            (30, 31)
        );
    }
}
