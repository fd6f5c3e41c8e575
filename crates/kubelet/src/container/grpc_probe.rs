//! `grpc` probes (upstream `pkg/probe/grpc`): the gRPC health protocol's
//! `grpc.health.v1.Health/Check` over HTTP/2 without TLS to the pod's address on the probe's
//! port, with the probe's `service`; `SERVING` is success. Upstream's failure messages.
//!
//! No gRPC stack for one unary call: the request and response are one-field protobuf messages
//! (`HealthCheckRequest{string service = 1}`, `HealthCheckResponse{ServingStatus status = 1}`),
//! framed as gRPC does (a flag byte and a 4-byte big-endian length), over hyper's HTTP/2
//! client; the status comes from the `grpc-status` trailer (or header, for a trailers-only
//! answer).

use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;

use crate::network::PodNetwork;

/// The path of the health check (`grpc.health.v1.Health/Check`).
pub const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// Most response bytes read.
const MAX_RESPONSE: usize = 64 << 10;

/// The gRPC status `UNIMPLEMENTED`.
const UNIMPLEMENTED: u32 = 12;

/// `HealthCheckRequest{service}`, gRPC-framed.
fn request_body(service: &str) -> Bytes {
    let mut message = Vec::new();
    if !service.is_empty() {
        // Field 1, wire type 2 (length-delimited).
        message.push(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The `status` of a gRPC-framed `HealthCheckResponse` (0, `UNKNOWN`, when absent).
fn response_status(mut framed: &[u8]) -> Result<u64, String> {
    if framed.len() < 5 {
        return Err("the health response has no message".into());
    }
    if framed[0] != 0 {
        return Err("the health response is compressed, which probes do not support".into());
    }
    let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    framed.advance(5);
    let mut message = framed
        .get(..len)
        .ok_or("the health response message is cut short")?;
    let mut status = 0;
    while !message.is_empty() {
        let key = varint(&mut message).ok_or("a malformed health response")?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut message).ok_or("a malformed health response")?,
            // Skip unknown fields.
            (_, 0) => {
                varint(&mut message).ok_or("a malformed health response")?;
            }
            (_, 2) => {
                let n = varint(&mut message).ok_or("a malformed health response")? as usize;
                message = message.get(n..).ok_or("a malformed health response")?;
            }
            (_, 5) => message = message.get(4..).ok_or("a malformed health response")?,
            (_, 1) => message = message.get(8..).ok_or("a malformed health response")?,
            _ => return Err("a malformed health response".into()),
        }
    }
    Ok(status)
}

/// The name of a `ServingStatus`.
fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        other => other.to_string(),
    }
}

/// Runs one gRPC health check against `port` of the pod behind `network` within `timeout`:
/// `Ok` when it answers `SERVING`, else upstream's failure message.
pub async fn grpc_once(
    network: &dyn PodNetwork,
    port: u16,
    service: &str,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, attempt(network, port, service, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {timeout:?}"
        )),
    }
}

async fn attempt(
    network: &dyn PodNetwork,
    port: u16,
    service: &str,
    timeout: Duration,
) -> Result<(), String> {
    let addr = std::net::SocketAddr::new(network.ip(), port).to_string();
    let connect_error =
        |e: String| format!("timeout: failed to connect service {addr:?} within {timeout:?}: {e}");
    let stream = network
        .connect_tcp(port, timeout)
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| connect_error(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = http::Request::post(format!("http://{addr}{HEALTH_CHECK_PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "kube-probe/1.35")
        .body(http_body_util::Full::new(request_body(service)))
        .map_err(|e| format!("invalid gRPC probe request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        let (head, body) = response.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(format!(
                "error: health rpc probe failed: the server answered HTTP {} (not a gRPC server?)",
                head.status
            ));
        }
        let collected = http_body_util::Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let grpc = |name: &str| {
            trailers
                .get(name)
                .or_else(|| head.headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let code: u32 = grpc("grpc-status")
            .and_then(|s| s.parse().ok())
            .ok_or("error: health rpc probe failed: the answer has no grpc-status")?;
        let message = grpc("grpc-message").unwrap_or_default();
        match code {
            0 => {}
            UNIMPLEMENTED => {
                return Err(format!(
                    "timeout: this server does not implement the grpc health protocol \
                     (grpc.health.v1.Health): {message}"
                ));
            }
            code => {
                return Err(format!(
                    "error: health rpc probe failed: rpc error: code = {code} desc = {message}"
                ));
            }
        }
        match response_status(&collected.to_bytes())? {
            1 => Ok(()),
            other => Err(format!(
                "service unhealthy (responded with {:?})",
                status_name(other)
            )),
        }
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;

    /// An h2c gRPC health server on 127.0.0.1 answering with `status` (or `grpc-status`
    /// `code` and no message when `code` is not 0); the services asked for are recorded.
    async fn serve(status: u8, code: u32) -> (u16, Arc<std::sync::Mutex<Vec<Bytes>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            assert_eq!(request.uri().path(), HEALTH_CHECK_PATH);
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .expect("body")
                                .to_bytes();
                            log.lock().expect("lock").push(body);
                            let mut trailers = http::HeaderMap::new();
                            trailers
                                .insert("grpc-status", code.to_string().parse().expect("value"));
                            let mut frames = Vec::new();
                            if code == 0 {
                                frames.push(Ok::<_, Infallible>(hyper::body::Frame::data(
                                    Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]),
                                )));
                            }
                            frames.push(Ok(hyper::body::Frame::trailers(trailers)));
                            let body =
                                http_body_util::StreamBody::new(futures::stream::iter(frames));
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .expect("response"),
                            )
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (port, asked)
    }

    fn node() -> std::sync::Arc<dyn PodNetwork> {
        crate::network::NodeNetwork::new(std::net::IpAddr::from([127, 0, 0, 1]))
    }

    #[tokio::test]
    async fn serving_is_success_and_the_service_is_asked_for() {
        let (port, asked) = serve(1, 0).await;
        let result = grpc_once(&*node(), port, "shop", Duration::from_secs(5)).await;
        assert_eq!(result, Ok(()));
        assert_eq!(
            asked.lock().expect("lock")[0].as_ref(),
            b"\0\0\0\0\x06\x0a\x04shop"
        );
        // An empty service sends an empty message.
        grpc_once(&*node(), port, "", Duration::from_secs(5))
            .await
            .expect("healthy");
        assert_eq!(asked.lock().expect("lock")[1].as_ref(), b"\0\0\0\0\0");
    }

    #[tokio::test]
    async fn other_statuses_and_errors_fail_with_upstreams_messages() {
        let (port, _) = serve(2, 0).await;
        assert_eq!(
            grpc_once(&*node(), port, "", Duration::from_secs(5)).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let (port, _) = serve(0, UNIMPLEMENTED).await;
        let error = grpc_once(&*node(), port, "", Duration::from_secs(5))
            .await
            .expect_err("unimplemented");
        assert!(
            error.starts_with("timeout: this server does not implement the grpc health protocol"),
            "{error}"
        );
        // Nothing listens: a port bound and never listened on.
        let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = unused.local_addr().expect("addr").port();
        drop(unused);
        let error = grpc_once(&*node(), port, "", Duration::from_secs(2))
            .await
            .expect_err("refused");
        assert!(
            error.starts_with("timeout: failed to connect service"),
            "{error}"
        );
    }

    #[test]
    fn responses_are_decoded_field_by_field() {
        // status after an unknown string field.
        assert_eq!(
            response_status(&[0, 0, 0, 0, 5, 0x12, 0x01, b'x', 0x08, 0x03]),
            Ok(3)
        );
        assert_eq!(response_status(&[0, 0, 0, 0, 0]), Ok(0));
        assert!(response_status(&[1, 0, 0, 0, 0]).is_err());
        assert!(response_status(&[0, 0, 0, 0, 9, 0x08]).is_err());
        assert_eq!(status_name(3), "SERVICE_UNKNOWN");
    }
}
