//! The pod network seam: what a pod's IP is, where its containers listen and how the kubelet
//! reaches a pod's port (probes, port-forward).
//!
//! Today every pod shares the node's network ([`NodeNetwork`]): its IP is the node's, a
//! container listens on `node-ip:containerPort`, and a port another pod or a node process
//! holds fails the container with [`NetworkError::PortInUse`] (as upstream's `hostPort`
//! conflicts do, which a pod network avoids). A CNI implementation plugs in by implementing
//! [`Network`] and [`PodNetwork`]: it creates the pod's namespace when the pod is set up and
//! hands out sockets created inside it (a socket keeps the namespace it was created in, so a
//! listener made on a thread that entered the namespace with `setns` works from any thread).
//!
//! # Guarantees
//! - Listeners are created by the kubelet on purpose and handed to the runtime as handles; a
//!   guest never names an address to bind.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The port is taken on the pod's address.
    #[error(
        "port {port}/TCP is already in use on {ip}: pods on this node share the node's network \
         (no CNI), so another pod or a node process holds it; give this containerPort another \
         number or delete the pod that holds it"
    )]
    PortInUse {
        /// The pod's IP.
        ip: IpAddr,
        /// The containerPort.
        port: u16,
    },
    /// Any other failure to listen.
    #[error("cannot listen on {addr} for the container: {source}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pod's port did not accept a connection.
    #[error("cannot connect to the pod at {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pod's port did not answer in time.
    #[error("connecting to the pod at {addr} timed out after {}s", timeout.as_secs())]
    ConnectTimeout {
        /// Where.
        addr: SocketAddr,
        /// How long it waited.
        timeout: Duration,
    },
}

impl NetworkError {
    /// The container waiting reason for this error when it keeps a container from starting.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PortInUse { .. } => "PortInUse",
            _ => "CreateContainerError",
        }
    }
}

/// One pod's network: its address, its listeners, the way to its ports.
pub trait PodNetwork: Send + Sync + 'static {
    /// The pod's IP (`status.podIP`).
    fn ip(&self) -> IpAddr;

    /// A TCP listener for the pod's `port`, bound where the pod's peers reach it.
    ///
    /// # Errors
    /// [`NetworkError::PortInUse`] when the port is taken.
    fn listen_tcp(&self, port: u16) -> Result<TcpListener, NetworkError>;

    /// Connects to the pod's TCP `port` within `timeout` (probes, port-forward).
    fn connect_tcp(
        &self,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, NetworkError>>;
}

/// The node's pod networking: gives each pod its [`PodNetwork`].
pub trait Network: Send + Sync + 'static {
    /// The network of the pod with this UID.
    fn pod(&self, uid: &str) -> Arc<dyn PodNetwork>;
}

/// Pods on the node's own network (no CNI): every pod's IP is the node's.
#[derive(Debug, Clone)]
pub struct NodeNetwork {
    ip: IpAddr,
}

impl NodeNetwork {
    /// The node's network at `ip` (`--node-ip`).
    pub fn new(ip: IpAddr) -> Arc<Self> {
        Arc::new(Self { ip })
    }
}

impl Network for NodeNetwork {
    fn pod(&self, _uid: &str) -> Arc<dyn PodNetwork> {
        Arc::new(self.clone())
    }
}

impl PodNetwork for NodeNetwork {
    fn ip(&self) -> IpAddr {
        self.ip
    }

    fn listen_tcp(&self, port: u16) -> Result<TcpListener, NetworkError> {
        listen(SocketAddr::new(self.ip, port))
    }

    fn connect_tcp(
        &self,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, NetworkError>> {
        let addr = SocketAddr::new(self.ip, port);
        Box::pin(connect(addr, timeout))
    }
}

/// A listening TCP socket on `addr`, non-blocking, with `SO_REUSEADDR` (a restarted container
/// rebinds a port whose old connections are in `TIME_WAIT`, as `wasmtime serve` does).
///
/// # Errors
/// [`NetworkError::PortInUse`] for `EADDRINUSE`, else [`NetworkError::Listen`].
pub fn listen(addr: SocketAddr) -> Result<TcpListener, NetworkError> {
    let error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            NetworkError::PortInUse {
                ip: addr.ip(),
                port: addr.port(),
            }
        } else {
            NetworkError::Listen { addr, source }
        }
    };
    // std's bind sets SO_REUSEADDR on Unix and listens with a backlog of 128.
    let listener = TcpListener::bind(addr).map_err(error)?;
    listener.set_nonblocking(true).map_err(error)?;
    Ok(listener)
}

/// Connects to `addr` within `timeout`.
///
/// # Errors
/// [`NetworkError::Connect`] or [`NetworkError::ConnectTimeout`].
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, NetworkError> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(NetworkError::Connect { addr, source }),
        Err(_) => Err(NetworkError::ConnectTimeout { addr, timeout }),
    }
}

/// Annotation: the most bytes of one request body an HTTP component accepts (a quantity,
/// default `10Mi`); a bigger body is answered `413 Payload Too Large`.
pub const MAX_REQUEST_BODY_ANNOTATION: &str = "krustlet.dev/http-max-request-body";
/// Annotation: the most time one request may take (a duration like `30s`, default `60s`).
pub const REQUEST_TIMEOUT_ANNOTATION: &str = "krustlet.dev/http-request-timeout";
/// Annotation: the most requests an HTTP component handles at once (default 100).
pub const MAX_CONCURRENT_REQUESTS_ANNOTATION: &str = "krustlet.dev/http-max-concurrent-requests";

/// A container's declared TCP `containerPort`s, in spec order, each once (`protocol` empty or
/// `TCP`; UDP and SCTP ports are not served).
pub fn tcp_ports(container: &k8s_openapi::api::core::v1::Container) -> Vec<u16> {
    let mut ports = Vec::new();
    for port in container.ports.iter().flatten() {
        let tcp = port.protocol.as_deref().is_none_or(|p| p == "TCP");
        if let Ok(number) = u16::try_from(port.container_port)
            && tcp
            && number != 0
            && !ports.contains(&number)
        {
            ports.push(number);
        }
    }
    ports
}

/// The pod's HTTP request limits: its annotations over the defaults.
///
/// # Errors
/// A message naming the annotation whose value is not understood.
pub fn http_limits(
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<crate::runtime::HttpLimits, String> {
    let mut limits = crate::runtime::HttpLimits::default();
    let annotations = pod.metadata.annotations.as_ref();
    let get = |name: &str| annotations.and_then(|a| a.get(name)).map(|v| v.trim());
    if let Some(value) = get(MAX_REQUEST_BODY_ANNOTATION) {
        limits.max_request_body_bytes = crate::quantity::parse_count(value).map_err(|e| {
            format!("annotation {MAX_REQUEST_BODY_ANNOTATION}: {e} (a size like 1Mi)")
        })?;
    }
    if let Some(value) = get(REQUEST_TIMEOUT_ANNOTATION) {
        limits.request_timeout = humantime::parse_duration(value)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "annotation {REQUEST_TIMEOUT_ANNOTATION}: {value:?} is not a duration like 30s"
                )
            })?;
    }
    if let Some(value) = get(MAX_CONCURRENT_REQUESTS_ANNOTATION) {
        limits.max_concurrent_requests = value
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                format!(
                    "annotation {MAX_CONCURRENT_REQUESTS_ANNOTATION}: {value:?} is not a number \
                     from 1 to 10000"
                )
            })?;
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_limits_come_from_annotations_with_defaults() {
        let pod = |annotations: serde_json::Value| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "annotations": annotations}
            }))
            .expect("pod")
        };
        let defaults = http_limits(&pod(serde_json::json!({}))).expect("defaults");
        assert_eq!(defaults, crate::runtime::HttpLimits::default());
        let set = http_limits(&pod(serde_json::json!({
            MAX_REQUEST_BODY_ANNOTATION: "1Ki",
            REQUEST_TIMEOUT_ANNOTATION: "2s",
            MAX_CONCURRENT_REQUESTS_ANNOTATION: "3",
        })))
        .expect("set");
        assert_eq!(set.max_request_body_bytes, 1024);
        assert_eq!(set.request_timeout, Duration::from_secs(2));
        assert_eq!(set.max_concurrent_requests, 3);
        let bad = http_limits(&pod(
            serde_json::json!({REQUEST_TIMEOUT_ANNOTATION: "soon"}),
        ))
        .expect_err("bad");
        assert!(bad.contains(REQUEST_TIMEOUT_ANNOTATION), "{bad}");
    }

    #[test]
    fn only_tcp_ports_once_each() {
        let c: k8s_openapi::api::core::v1::Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "ports": [
                {"containerPort": 8080},
                {"containerPort": 8080, "name": "again"},
                {"containerPort": 53, "protocol": "UDP"},
                {"containerPort": 9090, "protocol": "TCP"}
            ]
        }))
        .expect("container");
        assert_eq!(tcp_ports(&c), [8080, 9090]);
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_conflict_and_connect_reaches_the_listener() {
        let node = NodeNetwork::new(IpAddr::from([127, 0, 0, 1]));
        let pod = node.pod("uid");
        let first = pod.listen_tcp(0).expect("listen");
        let port = first.local_addr().expect("addr").port();
        let error = pod.listen_tcp(port).expect_err("conflict");
        assert!(
            matches!(error, NetworkError::PortInUse { port: p, .. } if p == port),
            "{error}"
        );
        assert_eq!(error.reason(), "PortInUse");
        assert!(error.to_string().contains("already in use"), "{error}");
        let listener = tokio::net::TcpListener::from_std(first).expect("tokio");
        let (accepted, connected) = tokio::join!(
            listener.accept(),
            pod.connect_tcp(port, Duration::from_secs(5))
        );
        accepted.expect("accept");
        connected.expect("connect");
        drop(listener);
        let refused = pod
            .connect_tcp(port, Duration::from_secs(5))
            .await
            .expect_err("nobody listens");
        assert!(matches!(refused, NetworkError::Connect { .. }), "{refused}");
    }
}
