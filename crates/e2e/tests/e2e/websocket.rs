//! Exec over WebSocket straight to the kubelet (as upstream's `pkg/kubelet/cri/streaming`
//! accepts it besides SPDY), with the API server's kubelet client certificate: channel-framed
//! stdout and the exit status with `v5.channel.k8s.io` and `v4.channel.k8s.io`, v5's stdin close
//! signal, and a refused subprotocol.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use krustlet_e2e::kubelet_api::{apiserver_identity, kubelet_get, tls_config};
use krustlet_e2e::pods::{container_status, create, for_node, wait_for};
use krustlet_e2e::{KrustletNode, TestNamespace, workloads};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens `path` on `node`'s kubelet as a WebSocket offering `subprotocol`; returns the socket
/// and the subprotocol the kubelet chose, or the refusal's status code.
pub(crate) async fn open(
    node: &KrustletNode,
    path: &str,
    subprotocol: &str,
) -> Result<(Socket, String), u16> {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls_config(Some(apiserver_identity()))));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.port()))
        .await
        .expect("connect");
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let tls = connector.connect(name, tcp).await.expect("tls");
    let url = format!("wss://127.0.0.1:{}{path}", node.port());
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        subprotocol.parse().expect("header value"),
    );
    match tokio_tungstenite::client_async(request, tls).await {
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
        Err(error) => panic!("websocket handshake to {path}: {error}"),
    }
}

/// Reads channel messages until the kubelet closes: (stdout, error channel), each joined.
async fn drain(socket: &mut Socket) -> (String, String) {
    let (mut stdout, mut error) = (Vec::new(), Vec::new());
    let read = async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Binary(data)) => match data.split_first() {
                    Some((1, rest)) => stdout.extend_from_slice(rest),
                    Some((3, rest)) => error.extend_from_slice(rest),
                    _ => {}
                },
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
            assert!(stdout.len() + error.len() < 1 << 20, "runaway output");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the kubelet ends the exec");
    (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&error).into_owned(),
    )
}

fn exec_path(ns: &str, args: &[&str], input: bool) -> String {
    let mut query: String = ["multitool"]
        .iter()
        .chain(args)
        .map(|a| format!("command={a}&"))
        .collect();
    if input {
        query.push_str("input=1&");
    }
    format!("/exec/{ns}/target/main?{query}output=1&error=1")
}

#[tokio::test]
async fn exec_over_websocket_v5_and_v4_gets_stdout_and_the_exit_status() {
    let node = KrustletNode::start(KRUSTLET, "exec-ws", &[]).expect("start node");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("node Ready");
    let ns = TestNamespace::new("exec-ws").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": "target"},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main", "image": workloads::multitool(),
                        "args": ["sleep", "600"]
                    }]
                }
            }),
            node.name(),
        ),
    )
    .await
    .expect("create");
    wait_for(&pods, "target", LONG, "running", |p| {
        container_status(p, "main")
            .and_then(|s| s.state.as_ref())
            .is_some_and(|s| s.running.is_some())
    })
    .await
    .expect("running");
    // Waits for the issued serving certificate, which the cluster CA verifies.
    kubelet_get(&node, "/pods").await;

    // v5: output on channel 1, a NonZeroExitCode Status on channel 3.
    let path = exec_path(ns.name(), &["print", "hello", "exit", "3"], false);
    let (mut socket, chosen) = open(&node, &path, "v5.channel.k8s.io")
        .await
        .expect("upgrade");
    assert_eq!(chosen, "v5.channel.k8s.io");
    let (stdout, error) = drain(&mut socket).await;
    assert_eq!(stdout, "hello\n");
    let status: serde_json::Value = serde_json::from_str(&error).expect("status JSON");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");

    // v4 (offered after an unknown one): success is a Success Status.
    let path = exec_path(ns.name(), &["print", "hi"], false);
    let (mut socket, chosen) = open(&node, &path, "v9.channel.k8s.io, v4.channel.k8s.io")
        .await
        .expect("upgrade");
    assert_eq!(chosen, "v4.channel.k8s.io");
    let (stdout, error) = drain(&mut socket).await;
    assert_eq!(stdout, "hi\n");
    let status: serde_json::Value = serde_json::from_str(&error).expect("status JSON");
    assert_eq!(status["status"], "Success", "{status}");

    // v5 stdin: data on channel 0, then the close signal [255, 0] is the program's EOF.
    let path = exec_path(ns.name(), &["catin", "print", "end"], true);
    let (mut socket, _) = open(&node, &path, "v5.channel.k8s.io")
        .await
        .expect("upgrade");
    socket
        .send(Message::binary(b"\x00typed\n".to_vec()))
        .await
        .expect("stdin");
    socket
        .send(Message::binary(vec![255u8, 0]))
        .await
        .expect("close stdin");
    let (stdout, error) = drain(&mut socket).await;
    assert_eq!(stdout, "typed\nend\n");
    assert!(error.contains("Success"), "{error}");

    // Only subprotocols the kubelet does not speak: refused before the upgrade.
    let refused = open(&node, &path, "v9.channel.k8s.io").await.err();
    assert_eq!(refused, Some(403));
    assert!(
        node.log().lines().all(|l| !l.contains("panicked")),
        "the kubelet panicked:\n{}",
        node.log()
    );
}
