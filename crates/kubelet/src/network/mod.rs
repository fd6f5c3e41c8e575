//! The pod network: what a pod's IP is, where its containers listen and how the kubelet
//! reaches a pod's port (probes, port-forward), and the sandbox that gives a pod its own
//! network (the CRI's `RunPodSandbox` / `StopPodSandbox`, network part).
//!
//! Two implementations of [`Network`]:
//! - [`NodeNetwork`]: every pod shares the node's network. Its IP is the node's, a container
//!   listens on `node-ip:containerPort`, and a port another pod or a node process holds fails
//!   the container with [`NetworkError::PortInUse`] (as upstream's `hostPort` conflicts do).
//!   `hostNetwork: true` pods always get it.
//! - [`cni::CniNetwork`]: CNI pod networking, as containerd's CRI does it with libcni. Each pod
//!   gets a network namespace ([`netns`]), bind-mounted under `<data-dir>/netns/<pod-uid>`,
//!   and the node's CNI configuration (`--cni-conf-dir`, plugins from `--cni-bin-dir`) is
//!   ADDed to it before any container starts and DELeted when the pod ends. Without a CNI
//!   configuration it falls back to the node's network and says so in the node's Ready
//!   condition ([`NetworkCondition`]).
//!
//! A socket keeps the namespace it was created in, so a listener made on a thread that
//! entered the pod's namespace with `setns` (see [`PodNetwork::run_inside`]) serves the pod's
//! address from any thread.
//!
//! # Guarantees
//! - Listeners are created by the kubelet on purpose and handed to the runtime as handles; a
//!   guest never names an address to bind.
//! - Every sandbox this kubelet set up is DELeted once: when its pod ends, or, after a crash
//!   or a failed DEL, by [`Network::reconcile`] (called at start and every minute by the
//!   orphan cleanup) once the pod is neither bound to this node nor run by a worker.

pub mod cni;
pub mod dns;
pub mod netns;
pub mod outbound;
pub mod resolver;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The port is taken on the node's address (pods share the node's network).
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
    /// The port is taken inside the pod's own network namespace.
    #[error(
        "port {port}/TCP is already in use in the pod's network (pod IP {ip}): another container \
         of this pod listens on it; give one of the two containerPorts another number"
    )]
    PodPortInUse {
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
    /// The pod has no network on this node (not set up yet, or already torn down).
    #[error(
        "pod {uid} has no network on this node: its sandbox is set up before its first container \
         starts and torn down when it ends; wait until the pod is Running"
    )]
    NoNetwork {
        /// The pod UID.
        uid: String,
    },
    /// The pod's network namespace.
    #[error(transparent)]
    Namespace(#[from] netns::NetnsError),
    /// CNI: configuration, plugins, results, the sandbox record.
    #[error(transparent)]
    Cni(#[from] cni::CniError),
}

impl NetworkError {
    /// The container waiting reason for this error when it keeps a container from starting.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PortInUse { .. } | Self::PodPortInUse { .. } => "PortInUse",
            _ => "CreateContainerError",
        }
    }
}

/// How a pod's `hostPort`s are honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPorts {
    /// The pod is on the node's network: a `hostPort` equal to its `containerPort` is what
    /// happens anyway; another one is not honoured.
    NodeNetwork,
    /// A CNI plugin with the `portMappings` capability maps them (e.g. `portmap`).
    Mapped,
    /// The pod has its own network and no plugin maps host ports: none is honoured.
    Unmapped,
}

/// One pod's network: its address, its listeners, the way to its ports.
pub trait PodNetwork: Send + Sync + 'static {
    /// The pod's primary IP (`status.podIP`): the first IPv4 address, else the first address.
    fn ip(&self) -> IpAddr;

    /// The pod's IPs (`status.podIPs`): the primary first, then at most one of the other
    /// family, as the API server allows.
    fn ips(&self) -> Vec<IpAddr> {
        vec![self.ip()]
    }

    /// A TCP listener for the pod's `port`, bound where the pod's peers reach it.
    ///
    /// # Errors
    /// [`NetworkError::PortInUse`] or [`NetworkError::PodPortInUse`] when the port is taken.
    fn listen_tcp(&self, port: u16) -> Result<TcpListener, NetworkError>;

    /// Connects from the node to the pod's TCP `port` within `timeout`: probes, which upstream
    /// sends from the kubelet (the node's namespace) to the pod IP.
    fn connect_tcp(
        &self,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, NetworkError>>;

    /// Connects to the pod's TCP `port` for `kubectl port-forward`. containerd dials
    /// `localhost:port` inside the pod's network namespace (`PortForward` in its CRI server),
    /// so a port the pod only listens on at loopback is reachable too; this default connects
    /// like [`PodNetwork::connect_tcp`].
    fn forward_tcp(
        &self,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, NetworkError>> {
        self.connect_tcp(port, timeout)
    }

    /// Runs `f` on a thread inside the pod's network namespace (sockets it creates belong to
    /// the pod's network); on the node's network, on a thread of the node's. Use [`enter`] for
    /// a typed result.
    ///
    /// # Errors
    /// [`NetworkError::Namespace`] when the namespace cannot be entered (`f` did not run).
    fn run_inside<'a>(&self, f: Box<dyn FnOnce() + Send + 'a>) -> Result<(), NetworkError> {
        f();
        Ok(())
    }

    /// The pod's network namespace file (`CNI_NETNS`), `None` on the node's network.
    fn namespace(&self) -> Option<PathBuf> {
        None
    }

    /// How the pod's `hostPort`s are honoured.
    fn host_ports(&self) -> HostPorts {
        HostPorts::NodeNetwork
    }
}

/// Runs `f` inside `network`'s namespace and returns what it returns (see
/// [`PodNetwork::run_inside`]); the wasi runtime creates `wasi:sockets` sockets this way.
///
/// # Errors
/// [`NetworkError::Namespace`] when the namespace cannot be entered.
pub fn enter<T: Send>(
    network: &dyn PodNetwork,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetworkError> {
    let mut out = None;
    let slot = &mut out;
    network.run_inside(Box::new(move || *slot = Some(f())))?;
    out.ok_or_else(|| {
        NetworkError::Namespace(netns::NetnsError::Thread {
            path: network.namespace().unwrap_or_default(),
        })
    })
}

/// What the node's network is able to do now, for the node's Ready condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkCondition {
    /// Pods get their network as configured.
    Ready,
    /// Pods share the node's network because there is no CNI configuration; the node stays
    /// Ready and its Ready message carries this note.
    NodeFallback(String),
    /// A CNI configuration is there but unusable: pods cannot get a network (upstream's
    /// `NetworkPluginNotReady`; the node is NotReady).
    NotReady(String),
}

/// A pod's identity and what its sandbox needs (upstream's `PodSandboxConfig`, network part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The pod UID (also the CNI container ID).
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `spec.hostNetwork`: the pod uses the node's network, no sandbox.
    pub host_network: bool,
    /// The `hostPort`s of its containers (CNI's `portMappings` capability).
    pub port_mappings: Vec<PortMapping>,
}

impl SandboxSpec {
    /// The sandbox of `pod`. Port mappings come from the app containers' ports with a
    /// `hostPort` > 0, as the kubelet's `generatePodSandboxConfig` and containerd's
    /// `toCNIPortMappings` build them.
    pub fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let mut port_mappings = Vec::new();
        for port in spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
        {
            let (Some(host), Ok(container)) = (
                port.host_port.and_then(|h| u16::try_from(h).ok()),
                u16::try_from(port.container_port),
            ) else {
                continue;
            };
            if host == 0 || container == 0 {
                continue;
            }
            let mapping = PortMapping {
                host_port: host,
                container_port: container,
                protocol: port.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                host_ip: port.host_ip.clone().unwrap_or_default(),
            };
            if !port_mappings.contains(&mapping) {
                port_mappings.push(mapping);
            }
        }
        Self {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            port_mappings,
        }
    }
}

/// One `hostPort`, in the CNI `portMappings` capability's format (CNI CONVENTIONS.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The node's port.
    pub host_port: u16,
    /// The pod's port.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The node address to map on; empty: all (`hostIP`, as the `portmap` plugin's
    /// `PortMapEntry` spells it).
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The node's pod networking: sets up each pod's network and gives out its [`PodNetwork`].
pub trait Network: std::fmt::Debug + Send + Sync + 'static {
    /// The network of the pod with this UID, once [`Network::setup`] has given it one.
    fn pod(&self, uid: &str) -> Option<Arc<dyn PodNetwork>>;

    /// Sets up the pod's network before its first container starts (a sandbox); returns the
    /// existing one if it is set up already (a restarted kubelet resumes it).
    ///
    /// # Errors
    /// What keeps the pod from getting a network; the worker reports it as
    /// `FailedCreatePodSandBox` and retries.
    fn setup<'a>(
        &'a self,
        sandbox: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<Arc<dyn PodNetwork>, NetworkError>>;

    /// Tears the pod's network down after its last container stopped. Calling it again, or
    /// for a pod without a network, is fine.
    ///
    /// # Errors
    /// A DEL that failed; the sandbox is kept and [`Network::reconcile`] retries it.
    fn teardown<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<(), NetworkError>>;

    /// Tears down every sandbox on disk whose pod is neither in `live` (bound to this node or
    /// run by a worker) nor set up by this process; returns the UIDs it removed. Called at
    /// start (after a crash nothing else would) and periodically (DELs that failed before).
    fn reconcile<'a>(&'a self, live: &'a HashSet<String>) -> BoxFuture<'a, Vec<String>>;

    /// What pods get now, for the node's Ready condition.
    fn condition(&self) -> NetworkCondition {
        NetworkCondition::Ready
    }
}

/// The pod's network, or one that fails every use with [`NetworkError::NoNetwork`] (a pod not
/// set up, or already torn down).
pub fn pod_or_unavailable(network: &dyn Network, uid: &str) -> Arc<dyn PodNetwork> {
    network.pod(uid).unwrap_or_else(|| {
        Arc::new(Unavailable {
            uid: uid.to_string(),
        })
    })
}

/// A pod without a network: its IP is unspecified and every use fails.
#[derive(Debug)]
struct Unavailable {
    uid: String,
}

impl PodNetwork for Unavailable {
    fn ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }

    fn ips(&self) -> Vec<IpAddr> {
        Vec::new()
    }

    fn listen_tcp(&self, _port: u16) -> Result<TcpListener, NetworkError> {
        Err(NetworkError::NoNetwork {
            uid: self.uid.clone(),
        })
    }

    fn connect_tcp(
        &self,
        _port: u16,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, NetworkError>> {
        let uid = self.uid.clone();
        Box::pin(async move { Err(NetworkError::NoNetwork { uid }) })
    }
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
    fn pod(&self, _uid: &str) -> Option<Arc<dyn PodNetwork>> {
        Some(Arc::new(self.clone()))
    }

    fn setup<'a>(
        &'a self,
        _sandbox: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<Arc<dyn PodNetwork>, NetworkError>> {
        let network: Arc<dyn PodNetwork> = Arc::new(self.clone());
        Box::pin(async move { Ok(network) })
    }

    fn teardown<'a>(&'a self, _uid: &'a str) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(async { Ok(()) })
    }

    fn reconcile<'a>(&'a self, _live: &'a HashSet<String>) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async { Vec::new() })
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

/// The node's pod networking as configured: [`cni::CniNetwork`] over the node's network (it
/// falls back to it while there is no CNI configuration).
pub fn from_config(config: &crate::config::KubeletConfig) -> Arc<dyn Network> {
    cni::CniNetwork::new(
        cni::CniSettings::of(config),
        NodeNetwork::new(config.node_ip),
    )
}

/// The wildcard address of the family a pod's listeners use: IPv6 (dual-stack) when the pod
/// has an IPv6 address, else IPv4.
pub fn wildcard_for(ips: &[IpAddr]) -> IpAddr {
    if ips.iter().any(IpAddr::is_ipv6) {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
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
        let pod = node.pod("uid").expect("the node network has every pod");
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
        // A port bound and never listened on is refused for sure: a dropped listener can
        // live on for a moment in a child another test forks (until it execs).
        let closed = tokio::net::TcpSocket::new_v4().expect("socket");
        closed
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        let closed_port = closed.local_addr().expect("addr").port();
        let refused = pod
            .connect_tcp(closed_port, Duration::from_secs(5))
            .await
            .expect_err("nobody listens");
        assert!(matches!(refused, NetworkError::Connect { .. }), "{refused}");
    }
}
