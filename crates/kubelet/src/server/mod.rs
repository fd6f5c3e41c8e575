//! The kubelet HTTPS API on `--port`: health, container logs, pods, configz, metrics, stats,
//! exec, attach and port-forward, and clear refusals of what WebAssembly pods cannot do (run).
//!
//! TLS uses the serving certificate (`--tls-cert-file`, else the one issued through the
//! kubelet-serving CSR, else a self-signed one until it is issued; an issued certificate is
//! picked up without restart). Clients are authenticated by certificate (verified against
//! `--client-ca-file`, default the cluster CA of the node's kubeconfig) or bearer token
//! (TokenReview) and authorized by SubjectAccessReview; see [`auth`].

pub mod auth;
pub mod exposition;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod pods;
pub mod streaming;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::bootstrap::certs::{CertBundle, self_signed_serving};
use crate::bootstrap::serving_sans;
use crate::config::KubeletConfig;
use crate::container::exec_targets::ExecTargets;
use crate::log::reader::LogError;
use crate::metrics::KubeletMetrics;
use crate::pod::known::KnownPods;
use crate::pod::status::StatusManager;
use crate::stats::Stats;
use auth::{Auth, AuthError, User};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle connection told to close gets this long to finish before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// At most one "connection refused at the cap" warning per this period.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Errors that keep the API server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The port is taken or the address is not ours.
    #[error("cannot listen on {addr} (--port, --node-ip): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate, key or CA file is unusable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client CA verifier could not be built.
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// Errors answering a request; each becomes a status code and a one-line plain text body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The log could not be found or read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            // A container without logs is 400, not 404, like the kubelet's "waiting to start":
            // the API server replaces the body of a 404 with a generic "could not find the
            // requested resource", and this message should reach `kubectl logs`.
            Self::BadRequest(_)
            | Self::Log(LogError::NoPrevious { .. } | LogError::ContainerNotFound { .. }) => {
                StatusCode::BAD_REQUEST
            }
            Self::Log(LogError::PodNotFound { .. }) => StatusCode::NOT_FOUND,
            Self::Log(LogError::Io { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Auth(AuthError::Unauthorized) => StatusCode::UNAUTHORIZED,
            Self::Auth(AuthError::Forbidden { .. }) => StatusCode::FORBIDDEN,
            Self::Auth(AuthError::Review(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, format!("{self}\n")).into_response()
    }
}

/// What the API shows of the running node; the kubelet fills these as it runs.
#[derive(Clone)]
pub struct NodeView {
    /// The pods bound to this node.
    pub pods: KnownPods,
    /// Their newest statuses.
    pub status: StatusManager,
    /// Running containers' usage.
    pub stats: Stats,
    /// The kubelet's metrics (refreshed before each scrape).
    pub metrics: KubeletMetrics,
    /// Everything `/metrics` serves: the kubelet's and the runtime's metrics.
    pub registry: Arc<prometheus_client::registry::Registry>,
    /// Running containers, for exec.
    pub exec: ExecTargets,
    /// The pod network, for port-forward.
    pub network: Arc<dyn crate::network::Network>,
}

impl NodeView {
    /// A view with the kubelet's metrics registered for `node`, and nothing running.
    pub fn new(node: &str) -> Self {
        let metrics = KubeletMetrics::new(node);
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        Self {
            pods: KnownPods::default(),
            status: StatusManager::new(),
            stats: Stats::new(),
            metrics,
            registry: Arc::new(registry),
            exec: ExecTargets::default(),
            network: crate::network::NodeNetwork::new(std::net::IpAddr::from([127, 0, 0, 1])),
        }
    }
}

/// What request handlers share.
pub struct AppState {
    /// The kubelet's data dir (logs live under it).
    pub data_dir: PathBuf,
    /// The resolved configuration (for `/configz`).
    pub config: KubeletConfig,
    /// Authentication and authorization.
    pub auth: Auth,
    /// Pods, statuses, usage and metrics.
    pub view: NodeView,
}

/// The user a connection's verified client certificate names, if any; put on each request.
#[derive(Debug, Clone)]
struct PeerUser(Option<User>);

/// The routes, with authentication and authorization in front of all but the health checks.
pub fn router(state: Arc<AppState>) -> Router {
    let unsupported = |feature: &'static str| any(move || async move { unsupported(feature) });
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::container_logs),
        )
        .route("/pods", get(pods::pods))
        .route("/configz", get(pods::configz))
        .route("/metrics", get(metrics::metrics))
        .route("/metrics/resource", get(metrics::resource_metrics))
        .route("/metrics/cadvisor", get(metrics::cadvisor_metrics))
        .route("/metrics/probes", get(metrics::probe_metrics))
        .route("/stats/summary", get(metrics::stats_summary))
        .route("/exec/{*rest}", any(streaming::exec::exec))
        .route("/attach/{*rest}", any(streaming::exec::attach))
        .route(
            "/portForward/{*rest}",
            any(streaming::portforward::port_forward),
        )
        .route("/run/{*rest}", unsupported("run"))
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        // Added after the layer, so not behind it: probes carry no credentials and learn
        // nothing but that the process answers.
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(state)
}

/// A refusal kubectl shows as is: a `Status` object, which client-go decodes from a failed
/// upgrade (`kubectl exec` prints its message rather than "unable to upgrade connection").
fn unsupported(feature: &str) -> Response {
    let message = format!("{feature} is not supported for WebAssembly pods");
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "BadRequest",
        "code": 400,
    });
    (
        StatusCode::BAD_REQUEST,
        [(http::header::CONTENT_TYPE, "application/json")],
        status.to_string(),
    )
        .into_response()
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<PeerUser>()
        .and_then(|p| p.0.as_ref());
    let user = match state.auth.authenticate(peer, request.headers()).await {
        Ok(user) => user,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let attributes = auth::attributes(request.method(), request.uri().path());
    if let Err(error) = state.auth.authorize(&user, &attributes).await {
        tracing::debug!(user = %user.name, path = %request.uri().path(), %error, "request refused");
        return ApiError::from(error).into_response();
    }
    next.run(request).await
}

/// The serving certificate, replaceable while connections come and go.
#[derive(Debug)]
struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path, message: impl std::fmt::Display) -> ServerError {
    ServerError::Pem {
        path: path.into(),
        message: message.to_string(),
    }
}

/// A rustls key from PEM certificate chain and key.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    path: &Path,
) -> Result<CertifiedKey, ServerError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if chain.is_empty() {
        return Err(pem_error(path, "no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error(path, e))?;
    let key = provider().key_provider.load_private_key(key)?;
    Ok(CertifiedKey::new(chain, key))
}

fn bundle_key(bundle: &CertBundle, path: &Path) -> Result<CertifiedKey, ServerError> {
    certified_key(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes(), path)
}

fn read(path: &Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|e| pem_error(path, e))
}

/// The CA certificates client certificates are verified against: `--client-ca-file`, else the
/// cluster CA of the node's kubeconfig (`certificate-authority` or `-data`).
async fn client_cas(config: &KubeletConfig) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    if let Some(path) = &config.client_ca_file {
        let cas = CertificateDer::pem_slice_iter(&read(path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(path, e))?;
        if cas.is_empty() {
            return Err(pem_error(path, "no CA certificate"));
        }
        return Ok(cas);
    }
    let path = &config.kubeconfig;
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| pem_error(path, e))?;
    let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| pem_error(path, e))?;
    Ok(client_config
        .root_cert
        .unwrap_or_default()
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

/// The kubelet API server, bound and ready to run.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    /// Connections still allowed (`--api-max-connections`).
    connections: Arc<Semaphore>,
    /// `--api-idle-timeout`.
    idle_timeout: Duration,
    /// Where newly issued serving certificates arrive, unless `--tls-cert-file` fixed one.
    reload: Option<(
        watch::Receiver<Option<CertBundle>>,
        Arc<ServingCert>,
        PathBuf,
    )>,
}

impl Server {
    /// Binds `node_ip:port` and prepares TLS. `issued` carries the serving certificate once the
    /// cluster issues it (see [`crate::bootstrap::manage_serving_certificate`]); `view` is what
    /// `/pods`, `/metrics` and `/stats` show.
    pub async fn bind(
        config: &KubeletConfig,
        clients: watch::Receiver<kube::Client>,
        issued: watch::Receiver<Option<CertBundle>>,
        view: NodeView,
    ) -> Result<Self, ServerError> {
        let (initial, reload_path) = match (&config.tls_cert_file, &config.tls_private_key_file) {
            (Some(cert), Some(key)) => (certified_key(&read(cert)?, &read(key)?, cert)?, None),
            _ => {
                let path = config.serving_cert_path();
                // A certificate issued before a restart serves at once; else self-signed.
                let bundle = match CertBundle::load(&path).ok().flatten() {
                    Some(bundle) => bundle,
                    None => self_signed_serving(
                        &config.node_name,
                        serving_sans(&config.node_name, config.node_ip),
                    )
                    .map_err(|e| pem_error(&path, e))?,
                };
                (bundle_key(&bundle, &path)?, Some(path))
            }
        };
        let serving = Arc::new(ServingCert {
            current: RwLock::new(Arc::new(initial)),
        });
        let cas = client_cas(config).await?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = if cas.is_empty() {
            tracing::warn!(
                "no client CA (--client-ca-file, or in the kubeconfig): only bearer tokens authenticate"
            );
            builder.with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                roots.add(ca)?;
            }
            // Certificates are optional: without one, a bearer token may still authenticate.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                .allow_unauthenticated()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        };
        let mut tls = builder.with_cert_resolver(serving.clone());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let addr = SocketAddr::new(config.node_ip, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let state = Arc::new(AppState {
            data_dir: config.data_dir.clone(),
            config: config.clone(),
            auth: Auth::new(config.node_name.clone(), clients),
            view,
        });
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            router: router(state),
            connections: Arc::new(Semaphore::new(config.api_max_connections as usize)),
            idle_timeout: config.api_idle_timeout,
            reload: reload_path.map(|path| (issued, serving, path)),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is cancelled; open connections (log streams) are then dropped.
    pub async fn run(self, stop: CancellationToken) {
        if let Some((issued, serving, path)) = self.reload {
            tokio::spawn(follow_issued(issued, serving, path, stop.clone()));
        }
        tracing::info!(addr = ?self.listener.local_addr().ok(), "kubelet API listening");
        let mut connections = tokio::task::JoinSet::new();
        let mut last_cap_warning: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // At the cap a new connection is closed at once rather than left
                        // waiting in the backlog: its client learns right away.
                        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                            drop(tcp);
                            if last_cap_warning.is_none_or(|t| t.elapsed() >= CAP_WARNING_EVERY) {
                                last_cap_warning = Some(tokio::time::Instant::now());
                                tracing::warn!(
                                    %peer,
                                    "kubelet API connection refused: --api-max-connections reached"
                                );
                            }
                            continue;
                        };
                        let (acceptor, router, idle) =
                            (self.acceptor.clone(), self.router.clone(), self.idle_timeout);
                        connections.spawn(async move {
                            serve(acceptor, tcp, router, idle).await;
                            drop(permit);
                        });
                    }
                    Err(error) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        tracing::warn!(%error, "accepting a kubelet API connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.shutdown().await;
    }
}

/// Installs each serving certificate the cluster issues.
async fn follow_issued(
    mut issued: watch::Receiver<Option<CertBundle>>,
    serving: Arc<ServingCert>,
    path: PathBuf,
    stop: CancellationToken,
) {
    loop {
        let bundle = issued.borrow_and_update().clone();
        if let Some(bundle) = bundle {
            match bundle_key(&bundle, &path) {
                Ok(key) => {
                    serving.set(key);
                    tracing::info!("kubelet API serves the issued serving certificate");
                }
                Err(error) => tracing::error!(%error, "unusable serving certificate"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = issued.changed() => if changed.is_err() { return },
        }
    }
}

async fn serve(acceptor: TlsAcceptor, tcp: TcpStream, router: Router, idle_timeout: Duration) {
    let activity = limits::Activity::new();
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%error, "kubelet API TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    // The verifier already checked the chain; this only reads who it names.
    let peer = PeerUser(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| User::from_certificate(leaf)),
    );
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(peer.clone());
        let mut router = router.clone();
        let guard = requests.begin();
        async move {
            let response = if limits::head_too_large(&request) {
                (
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "431 Request Header Fields Too Large\n",
                )
                    .into_response()
            } else {
                router.call(request).await?
            };
            Ok::<_, std::convert::Infallible>(
                response.map(|body| axum::body::Body::new(limits::ActiveBody::new(body, guard))),
            )
        }
    });
    let builder = limits::http_builder();
    // With upgrades: exec, attach and port-forward switch the connection to SPDY.
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => {
            if let Err(error) = ended {
                tracing::debug!(%error, "kubelet API connection ended");
            }
        }
        _ = activity.idle_for(idle_timeout) => {
            tracing::debug!(?idle_timeout, "closing an idle kubelet API connection");
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flags;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn config(dir: &Path, tls: Option<(&Path, &Path)>, ca: &Path) -> KubeletConfig {
        Flags {
            node_name: Some("node-a".into()),
            node_ip: Some([127, 0, 0, 1].into()),
            port: Some(0),
            data_dir: Some(dir.into()),
            tls_cert_file: tls.map(|(c, _)| c.into()),
            tls_private_key_file: tls.map(|(_, k)| k.into()),
            client_ca_file: Some(ca.into()),
            ..Default::default()
        }
        .resolve()
        .expect("config")
    }

    fn bundle() -> CertBundle {
        self_signed_serving("node-a", serving_sans("node-a", [127, 0, 0, 1].into()))
            .expect("self-signed")
    }

    fn clients() -> watch::Receiver<kube::Client> {
        let config = kube::Config::new("https://127.0.0.1:1".parse().expect("url"));
        watch::channel(kube::Client::try_from(config).expect("client")).1
    }

    /// Connects trusting only `trusted`, and asks for /healthz without credentials.
    async fn healthz(addr: SocketAddr, trusted: &CertBundle) -> std::io::Result<String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(trusted.cert_pem.as_bytes()) {
            roots.add(cert.expect("cert")).expect("root");
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let mut stream = connector.connect(name, tcp).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: node-a\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    #[tokio::test]
    async fn tls_cert_file_overrides_and_health_needs_no_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixed = bundle();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &fixed.cert_pem).expect("write");
        std::fs::write(&key, &fixed.key_pem).expect("write");
        let config = config(dir.path(), Some((&cert, &key)), &cert);
        // An issued certificate must not replace the one given by flag.
        let (issued_tx, issued) = watch::channel(Some(bundle()));
        let server = Server::bind(&config, clients(), issued, NodeView::new("node-a"))
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        issued_tx.send_replace(Some(bundle()));
        let response = healthz(addr, &fixed)
            .await
            .expect("served the flag's certificate");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("ok"), "{response}");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_issued_certificate_replaces_the_self_signed_one_without_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, bundle().cert_pem).expect("write");
        let config = config(dir.path(), None, &ca);
        let (issued_tx, issued) = watch::channel(None);
        let server = Server::bind(&config, clients(), issued, NodeView::new("node-a"))
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        let issued = bundle();
        assert!(
            healthz(addr, &issued).await.is_err(),
            "not issued yet: self-signed"
        );
        issued_tx.send_replace(Some(issued.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match healthz(addr, &issued).await {
                Ok(response) => {
                    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
                    break;
                }
                Err(error) => assert!(
                    std::time::Instant::now() < deadline,
                    "issued certificate not served: {error}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
    }
}
