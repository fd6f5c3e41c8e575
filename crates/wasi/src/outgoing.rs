//! Outgoing HTTP requests of HTTP components (`wasi:http/outgoing-handler`), held to the same
//! rules as the pod's own sockets: the host is looked up with the pod's DNS, every address is
//! checked against the pod's outbound grants and the node's deny list (a denied destination is
//! `HTTP-request-denied` for the guest and a Warning event for the pod), and the connection is
//! made from inside the pod's network namespace.
//!
//! wasmtime-wasi-http's `default_send_request` connects with `TcpStream::connect(authority)`,
//! which resolves with the node's resolver and connects from whatever namespace the polling
//! thread is in, and takes no stream from its caller; so this module does its connect, and
//! then what `default_send_request` does over the stream: TLS for `https` (the node's trust
//! store), one HTTP/1.1 connection per request, the guest's connect and first-byte timeouts.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use kubelet::network::netns::{InNamespace, NetNs};
use kubelet::network::outbound::{GuestNetwork, Protocol, Use};
use kubelet::network::resolver::{LookupError, Resolver};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// How long a connection may take when the guest sets no timeout (the request's own time limit
/// bounds it too).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the response head may take when the guest sets no timeout.
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(600);

/// A future that reports the connection's end (`wasi:http`'s io future).
type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// Where an HTTP component's outgoing requests go: nowhere without a network (every request is
/// `HTTP-request-denied`), else through the pod's DNS, grants and namespace.
#[derive(Clone, Default)]
pub struct Outgoing {
    route: Option<Arc<Route>>,
}

/// What a request needs to leave the pod.
struct Route {
    network: GuestNetwork,
    namespace: Option<Arc<NetNs>>,
    resolver: Option<Resolver>,
    tls: Result<Arc<rustls::ClientConfig>, String>,
}

impl Outgoing {
    /// Requests leave through `network` (its namespace, if open in `namespace`), resolved with
    /// `resolver`; `https` is verified against `tls`'s roots.
    pub fn new(
        network: GuestNetwork,
        namespace: Option<Arc<NetNs>>,
        resolver: Option<Resolver>,
        tls: Result<Arc<rustls::ClientConfig>, String>,
    ) -> Self {
        Self {
            route: Some(Arc::new(Route {
                network,
                namespace,
                resolver,
                tls,
            })),
        }
    }
}

/// The TLS client configuration for guests' `https` requests: the node's trust store (as a
/// container sees its image's CA bundle; a wasm image has none of its own), loaded once.
///
/// # Errors
/// rustls's, if the crypto provider cannot make a client configuration (then `https` requests
/// fail with `configuration-error`).
pub fn node_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "a certificate of the node's trust store cannot be read");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "trust store for guests' https requests");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
                })
                .map_err(|error| error.to_string())
        })
        .clone()
}

impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send> {
        let route = self.route.clone();
        Box::new(async move {
            match route {
                Some(route) => route.send(request, options).await,
                None => Err(Error::HttpRequestDenied),
            }
        })
    }
}

/// A connected stream, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

impl Route {
    async fn send(
        &self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, IoFuture), Error> {
        let uri = request.uri();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let first_byte_timeout = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT);

        let tcp = tokio::time::timeout(connect_timeout, self.connect(&host, port))
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
        let stream: Box<dyn Stream> = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let config = self.tls.clone().map_err(|why| {
                tracing::warn!(%why, "no TLS configuration for a guest's https request");
                Error::ConfigurationError
            })?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, connection) = tokio::time::timeout(
            connect_timeout,
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
        // Origin form on the wire: scheme and authority are only for a proxy (RFC 9112 3.2.1);
        // the Host header carries the authority.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        *request.uri_mut() = path;

        // The response head arrives while the connection is driven; after it, the connection
        // is the io future, which wasmtime drives while the guest reads the body.
        let mut connection = Box::pin(connection);
        let response = sender.send_request(request);
        tokio::pin!(response);
        let exchange = async {
            tokio::select! {
                biased;
                response = &mut response => response.map_err(Error::from),
                ended = &mut connection => match ended {
                    // The connection ended first: the response is complete or failed by now.
                    Ok(()) => (&mut response).await.map_err(Error::from),
                    Err(error) => Err(Error::from(error)),
                },
            }
        };
        let response = tokio::time::timeout(first_byte_timeout, exchange)
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;
        let io: IoFuture = Box::new(async move { connection.await.map_err(Error::from) });
        Ok((
            response.map(|body| body.map_err(Error::from).boxed_unsync()),
            io,
        ))
    }

    /// A TCP connection to the first address of `host` that the pod may reach and that
    /// answers, made from inside the pod's namespace.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, Error> {
        let addresses = match host.parse() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let Some(resolver) = &self.resolver else {
                    // No pod DNS (dnsPolicy None without nameservers): nothing to ask.
                    return Err(Error::DnsError {
                        rcode: None,
                        info_code: None,
                    });
                };
                if let Some(dns) = &self.network.dns {
                    dns.used();
                }
                let resolved = resolver.lookup(host).await.map_err(|error| match error {
                    LookupError::InvalidName(_) => Error::HttpRequestUriInvalid,
                    LookupError::NameUnresolvable(_) => Error::DestinationNotFound,
                    LookupError::TemporaryFailure { .. } => Error::DnsTimeout,
                })?;
                self.network
                    .resolved(&[host, resolved.name.as_str()], &resolved.addresses);
                resolved.addresses
            }
        };
        // Each address is checked (a denied one is reported once per destination).
        let allowed: Vec<SocketAddr> = addresses
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .filter(|addr| self.network.check(*addr, Use::Connect(Protocol::Tcp)))
            .collect();
        if allowed.is_empty() {
            return Err(Error::HttpRequestDenied);
        }
        let mut last = Error::DestinationUnavailable;
        for addr in allowed {
            match self.connect_one(addr).await {
                Ok(stream) => return Ok(stream),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    /// Connects to `addr` with a socket made inside the pod's namespace.
    async fn connect_one(&self, addr: SocketAddr) -> Result<TcpStream, Error> {
        let connect = async move {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }?;
            socket.connect(addr).await
        };
        let connected = match &self.namespace {
            Some(namespace) => InNamespace::new(namespace.clone(), connect)
                .await
                .map_err(|error| Error::InternalError(Some(error.to_string())))?,
            None => connect.await,
        };
        connected.map_err(|error| match error.kind() {
            std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
            std::io::ErrorKind::TimedOut => Error::ConnectionTimeout,
            std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                Error::DestinationUnavailable
            }
            _ => Error::Connect(error),
        })
    }
}
