//! `/portForward/{namespace}/{pod}[/{uid}]`: `kubectl port-forward` (upstream
//! `Server.getPortForward`, `portforward.ServePortForward` and its SPDY handler
//! `pkg/kubelet/cri/streaming/portforward/httpstream.go`), over SPDY/3.1 or, for clients
//! that talk to the kubelet directly, WebSocket (`Upgrade: websocket`, with the ports in
//! `?port=...`; see [`super::portforward_websocket`]). Both go through the same checks
//! (path, pod on this node, session cap) and the same authorization (`nodes/proxy`, in the
//! router's middleware), and reach the pod through the same pod network.
//!
//! Protocol `portforward.k8s.io` over SPDY/3.1: for every connection it forwards, the client
//! opens two streams with headers `streamType` (`error`, then `data`), `port` and `requestID`.
//! Once both of a request's streams are there, the kubelet connects to the pod's port through
//! the pod network (`network::PodNetwork::forward_tcp`: the node's address on the node's
//! network; with CNI, `localhost:port` inside the pod's namespace, as containerd's
//! `PortForward` dials) and copies bytes both ways; a
//! connection that fails is reported on the error stream ("error forwarding port 8080 to pod
//! ..."), which `kubectl` prints. The API server tunnels kubectl's WebSocket into this SPDY
//! session, so kubectl's default and `KUBECTL_PORT_FORWARD_WEBSOCKETS=false` both end here.
//!
//! # Bounds
//! At most [`MAX_SESSIONS`] port-forward sessions per node, SPDY and WebSocket together (429
//! beyond); per SPDY session the
//! SPDY session's stream bound (two streams per open connection); a request whose second
//! stream does not come within [`STREAM_CREATION_TIMEOUT`] is dropped with a message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::exec::status_response;
use super::portforward_websocket as ws;
use super::remotecommand::{
    ACCEPTED_HEADER, PROTOCOL_HEADER, STREAM_CREATION_TIMEOUT, is_spdy_upgrade,
};
use super::session::{Session, Stream};
use super::spdy::header;
use super::websocket::is_websocket_upgrade;
use crate::network::PodNetwork;
use crate::server::AppState;

/// The one port-forward protocol version (upstream `portforward.ProtocolV1Name`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// Most port-forward sessions at once on this node; more are refused with 429.
pub const MAX_SESSIONS: usize = 64;
/// How long connecting to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the pod at a time.
const READ_CHUNK: usize = 32 * 1024;

static SESSIONS: Semaphore = Semaphore::const_new(MAX_SESSIONS);

/// Where a port-forward request points.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    namespace: String,
    pod: String,
    uid: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/portForward/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts.as_slice() {
        [namespace, pod] => Some(Target {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            uid: None,
        }),
        [namespace, pod, uid] => Some(Target {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            uid: Some(uid.to_string()),
        }),
        _ => None,
    }
}

/// Whether the client offers `portforward.k8s.io` (or no version at all: old clients).
fn protocol_ok(headers: &http::HeaderMap) -> bool {
    let offered = super::remotecommand::offered(headers, PROTOCOL_HEADER);
    offered.is_empty() || offered.iter().any(|o| o == PROTOCOL)
}

/// The 429 for a port-forward beyond [`MAX_SESSIONS`].
fn busy() -> Response {
    status_response(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        &format!("{MAX_SESSIONS} port-forward sessions are open on this node; try again later"),
    )
}

/// Serves `/portForward/...`: checks the request, answers the upgrade and forwards over
/// SPDY/3.1 or WebSocket.
pub async fn port_forward(State(state): State<Arc<AppState>>, mut request: Request) -> Response {
    let Some(target) = parse_path(request.uri().path()) else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "path must be /portForward/{namespace}/{pod}[/{uid}]",
        );
    };
    // Upstream `Server.getPortForward`: a WebSocket request's ports are read first (400).
    let websocket_ports = if is_websocket_upgrade(request.headers()) {
        match ws::ports(request.uri().query()) {
            Ok(ports) => Some(ports),
            Err(message) => {
                return status_response(StatusCode::BAD_REQUEST, "BadRequest", &message);
            }
        }
    } else {
        None
    };
    let pod = state.view.pods.list().into_iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(target.namespace.as_str())
            && p.metadata.name.as_deref() == Some(target.pod.as_str())
            && target
                .uid
                .as_ref()
                .is_none_or(|uid| p.metadata.uid.as_ref() == Some(uid))
    });
    let Some(uid) = pod.and_then(|p| p.metadata.uid.clone()) else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "pod {}/{} is not on this node",
                target.namespace, target.pod
            ),
        );
    };
    let label = format!("{}/{}", target.namespace, target.pod);
    if let Some(ports) = websocket_ports {
        return websocket(state.as_ref(), request, ports, label, uid).await;
    }
    let headers = request.headers();
    if !is_spdy_upgrade(headers) {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "unable to upgrade: port-forward needs an upgrade to SPDY/3.1 (Connection: Upgrade, \
             Upgrade: SPDY/3.1) or to WebSocket (Upgrade: websocket, ?port=...)",
        );
    }
    if !protocol_ok(headers) {
        let mut response = status_response(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "unable to upgrade: unable to negotiate protocol: the server accepts {PROTOCOL}"
            ),
        );
        response
            .headers_mut()
            .append(ACCEPTED_HEADER, http::HeaderValue::from_static(PROTOCOL));
        return response;
    }
    let Ok(permit) = SESSIONS.try_acquire() else {
        return busy();
    };
    let Some(upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "this connection cannot be upgraded; port-forward needs HTTP/1.1",
        );
    };
    let network = crate::network::pod_or_unavailable(&*state.view.network, &uid);
    tracing::info!(pod = %label, %uid, "port-forward");
    tokio::spawn(async move {
        let _permit = permit;
        match upgrade.await {
            Ok(upgraded) => {
                let session = Session::start(TokioIo::new(upgraded));
                serve(session, network, label, uid).await;
            }
            Err(error) => tracing::debug!(%error, "port-forward upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (http::header::CONNECTION, "Upgrade"),
            (http::header::UPGRADE, "SPDY/3.1"),
            (http::HeaderName::from_static(PROTOCOL_HEADER), PROTOCOL),
        ],
    )
        .into_response()
}

/// The WebSocket leg of [`port_forward`], once path, ports and pod are checked: the
/// subprotocol (403), the session cap shared with SPDY (429), then the upgrade.
async fn websocket(
    state: &AppState,
    request: Request,
    ports: Vec<u16>,
    label: String,
    uid: String,
) -> Response {
    let protocol = match ws::negotiate(request.headers()) {
        Ok(protocol) => protocol,
        Err(message) => return status_response(StatusCode::FORBIDDEN, "Forbidden", &message),
    };
    let Ok(permit) = SESSIONS.try_acquire() else {
        return busy();
    };
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("not a usable WebSocket upgrade: {}", rejection.body_text()),
            );
        }
    };
    let network = crate::network::pod_or_unavailable(&*state.view.network, &uid);
    tracing::info!(pod = %label, %uid, ?ports, subprotocol = protocol.name, "port-forward over WebSocket");
    ws::upgrade(upgrade, protocol, ports, network, label, uid, permit)
}

/// One request's streams, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    since: Option<tokio::time::Instant>,
}

/// Pairs streams by `requestID` and forwards each pair until the client ends the session.
pub async fn serve(mut session: Session, network: Arc<dyn PodNetwork>, pod: String, uid: String) {
    let peer_gone = session.peer_gone();
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            stream = session.incoming.recv() => match stream {
                Some(stream) => stream,
                None => break,
            },
            _ = peer_gone.cancelled() => break,
            _ = sweep.tick() => {
                // Upstream's `streamCreationTimeout`: a request missing a stream is dropped.
                let now = tokio::time::Instant::now();
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.since.is_some_and(|s| now - s > STREAM_CREATION_TIMEOUT))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    if let Some(pair) = pending.remove(&id)
                        && let Some(error) = pair.error
                    {
                        let message = format!("timed out waiting for the streams of request {id}");
                        let _ = error.writer.write(Bytes::from(message)).await;
                        error.writer.finish().await;
                    }
                }
                while forwards.try_join_next().is_some() {}
                continue;
            }
        };
        let kind = header(&stream.headers, "streamtype")
            .unwrap_or_default()
            .to_string();
        let request_id = header(&stream.headers, "requestid")
            .unwrap_or_default()
            .to_string();
        let pair = pending.entry(request_id.clone()).or_default();
        pair.since.get_or_insert_with(tokio::time::Instant::now);
        match kind.as_str() {
            "error" if pair.error.is_none() => pair.error = Some(stream),
            "data" if pair.data.is_none() => pair.data = Some(stream),
            other => {
                tracing::debug!(
                    stream_type = other,
                    request_id,
                    "unexpected port-forward stream: reset"
                );
                stream.writer.reset(super::spdy::rst::PROTOCOL_ERROR).await;
                continue;
            }
        }
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair {
                error: Some(error),
                data: Some(data),
                ..
            }) = pending.remove(&request_id)
        {
            let (network, pod, uid) = (network.clone(), pod.clone(), uid.clone());
            forwards.spawn(forward(network, error, data, pod, uid));
        }
    }
    // The client is gone: every forwarded connection ends with it.
    forwards.abort_all();
    while forwards.join_next().await.is_some() {}
    drop(pending);
    session.close().await;
}

/// Forwards one connection: the data stream to and from the pod's port; failures go to the
/// error stream. Both streams are half-closed at the end, which `kubectl` waits for.
async fn forward(
    network: Arc<dyn PodNetwork>,
    error: Stream,
    data: Stream,
    pod: String,
    uid: String,
) {
    let port_header = header(&data.headers, "port")
        .unwrap_or_default()
        .to_string();
    let connected = match port_header.parse::<u16>() {
        Ok(port) if port != 0 => network
            .forward_tcp(port, CONNECT_TIMEOUT)
            .await
            .map_err(|e| (port.to_string(), e.to_string())),
        _ => Err((port_header.clone(), format!("invalid port {port_header:?}"))),
    };
    let Stream {
        data: mut from_client,
        writer: to_client,
        ..
    } = data;
    let conn = match connected {
        Ok(conn) => conn,
        Err((port, why)) => {
            // Upstream's message (`httpStreamHandler.portForward`).
            let message = format!("error forwarding port {port} to pod {pod}, uid {uid}: {why}");
            tracing::info!("{message}");
            let _ = error.writer.write(Bytes::from(message)).await;
            error.writer.finish().await;
            to_client.finish().await;
            return;
        }
    };
    let _ = conn.set_nodelay(true);
    let (mut pod_read, mut pod_write) = conn.into_split();
    let to_pod = tokio::spawn(async move {
        while let Some(chunk) = from_client.recv().await {
            if pod_write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The client half-closed: so does the pod's side.
        let _ = pod_write.shutdown().await;
    });
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pod_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to_client
                    .write(Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    to_client.finish().await;
    error.writer.finish().await;
    // The pod closed its side; the client's rest of the data (if any) goes on briefly.
    let abort = to_pod.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), to_pod)
        .await
        .is_err()
    {
        abort.abort();
        tracing::debug!("port-forward: the client kept its side open after the pod closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::streaming::spdy::{Codec, FLAG_FIN, Frame};
    use bytes::BytesMut;
    use tokio::io::DuplexStream;

    #[test]
    fn paths_name_namespace_pod_and_optional_uid() {
        assert_eq!(
            parse_path("/portForward/ns/pod"),
            Some(Target {
                namespace: "ns".into(),
                pod: "pod".into(),
                uid: None
            })
        );
        assert_eq!(
            parse_path("/portForward/ns/pod/uid").and_then(|t| t.uid),
            Some("uid".into())
        );
        assert_eq!(parse_path("/portForward/ns"), None);
        assert_eq!(parse_path("/portForward/ns//x"), None);
    }

    async fn send(io: &mut DuplexStream, codec: &mut Codec, frame: Frame) {
        let mut out = BytesMut::new();
        codec.encode(&frame, &mut out).expect("encode");
        io.write_all(&out).await.expect("write");
    }

    fn open(id: u32, kind: &str, port: u16, request: &str) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![
                ("streamtype".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestid".into(), request.into()),
            ],
        }
    }

    #[tokio::test]
    async fn forwards_a_connection_and_reports_a_refused_one() {
        // An echo server on loopback: the "pod".
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let network = crate::network::NodeNetwork::new(std::net::IpAddr::from([127, 0, 0, 1]));
        let served = tokio::spawn(serve(
            Session::start(server),
            network,
            "ns/p".into(),
            "uid".into(),
        ));
        let mut codec = Codec::new();
        send(&mut client, &mut codec, open(1, "error", port, "0")).await;
        send(&mut client, &mut codec, open(3, "data", port, "0")).await;
        send(
            &mut client,
            &mut codec,
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"ping"),
            },
        )
        .await;
        send(&mut client, &mut codec, open(5, "error", closed, "1")).await;
        send(&mut client, &mut codec, open(7, "data", closed, "1")).await;
        // Read until both requests' streams are finished.
        let mut read = Codec::new();
        let mut buf = BytesMut::new();
        let mut data: HashMap<u32, String> = HashMap::new();
        let mut finished = std::collections::HashSet::new();
        let reading = async {
            while finished.len() < 4 {
                while let Some(frame) = read.decode(&mut buf).expect("decode") {
                    if let Frame::Data {
                        stream_id,
                        flags,
                        data: bytes,
                    } = frame
                    {
                        data.entry(stream_id)
                            .or_default()
                            .push_str(&String::from_utf8_lossy(&bytes));
                        if flags & FLAG_FIN != 0 {
                            finished.insert(stream_id);
                        }
                    }
                }
                // The session stays open: reading on once all four ended would wait forever.
                if finished.len() == 4 {
                    break;
                }
                if client.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), reading)
            .await
            .expect("both requests end");
        assert_eq!(data.get(&3).map(String::as_str), Some("ping"));
        assert_eq!(data.get(&1).map(String::as_str).unwrap_or(""), "");
        let refused = data.get(&5).cloned().unwrap_or_default();
        assert!(
            refused.starts_with(&format!(
                "error forwarding port {closed} to pod ns/p, uid uid:"
            )),
            "{refused}"
        );
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the session ends with its client")
            .expect("served");
    }
}
