//! TLS bootstrap and certificate rotation (the kubelet's `pkg/kubelet/certificate/bootstrap`
//! and `certificate/kubelet.go`).
//!
//! With only a bootstrap kubeconfig (a bootstrap token), the node asks for a client certificate
//! through a CSR, stores it in `--cert-dir` and writes `--kubeconfig` pointing at it. The
//! certificate is rotated at 80% of its lifetime with a new CSR under the node's own identity.
//! The serving certificate for the kubelet API is requested the same way; until an approver
//! grants it, a self-signed certificate serves.

pub mod certs;
pub mod clients;
pub mod csr;
pub mod rate_limit;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kube::config::{AuthInfo, Context, Kubeconfig, NamedAuthInfo, NamedContext};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::KubeletConfig;
use certs::{CertBundle, CertError};
use csr::{CLIENT_SIGNER, CsrError, NodeCsr, SERVING_SIGNER, wait_for_certificate};
use rate_limit::RateLimit;

/// How long to wait for a client certificate during bootstrap before giving up.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the client certificate may stay expired, with no renewal, before the kubelet
/// exits (upstream's `exitAfter` of 5 minutes, `cmd/kubelet/app/server.go`).
pub const EXPIRED_EXIT_AFTER: Duration = Duration::from_secs(300);
/// How often the expiry of the client certificate is checked.
const EXPIRY_CHECK: Duration = Duration::from_secs(10);
/// First wait after a failed rotation; doubled per failure up to [`ROTATION_RETRY_MAX`].
const ROTATION_RETRY: Duration = Duration::from_secs(10);
/// Longest wait between rotation attempts, so a failing store cannot spin out CSRs.
const ROTATION_RETRY_MAX: Duration = Duration::from_secs(120);

/// Errors getting a working API client.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Neither a usable kubeconfig nor a bootstrap kubeconfig.
    #[error(
        "kubeconfig {path} does not exist and no --bootstrap-kubeconfig was given; pass a \
         kubeconfig with the node's credentials, or a bootstrap kubeconfig with a bootstrap token"
    )]
    NoCredentials {
        /// The missing kubeconfig.
        path: PathBuf,
    },
    /// Storing certificates failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The CSR flow failed.
    #[error("TLS bootstrap: {0}")]
    Csr(#[from] CsrError),
}

/// The client certificate expired and no renewal came: only a new bootstrap helps.
#[derive(Debug, thiserror::Error)]
#[error(
    "the client certificate {path} expired at {expired} and was not renewed within {after:?} \
     while the API server answers; exiting so that the supervisor restarts krustlet, which \
     bootstraps a new one with --bootstrap-kubeconfig"
)]
pub struct CertificateExpired {
    /// The certificate file.
    pub path: PathBuf,
    /// When it expired (RFC 3339).
    pub expired: String,
    /// How long it had been expired.
    pub after: Duration,
}

/// Loads a kubeconfig file into a client, rate-limited by `limit` if given (the node's
/// client: `--kube-api-qps`, `--kube-api-burst`).
pub async fn load_client(
    path: &Path,
    limit: Option<RateLimit>,
) -> Result<kube::Client, BootstrapError> {
    let error = |message: String| BootstrapError::Kubeconfig {
        path: path.into(),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| error(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| error(e.to_string()))?;
    let Some(limit) = limit else {
        return kube::Client::try_from(config).map_err(|e| error(e.to_string()));
    };
    let builder =
        kube::client::ClientBuilder::try_from(config).map_err(|e| error(e.to_string()))?;
    Ok(builder.with_layer(&limit.layer()).build())
}

/// The node's heartbeat client: the node's own credentials without a rate limit, for the
/// Lease and node status only, as upstream's `heartbeatClientConfig.QPS = -1`
/// (`cmd/kubelet/app/server.go`): a node busy writing pod status must not miss a heartbeat
/// queued behind `--kube-api-qps`. Call after [`node_client`] (which writes the kubeconfig).
///
/// # Errors
/// When the kubeconfig cannot be loaded.
pub async fn heartbeat_client(config: &KubeletConfig) -> Result<kube::Client, BootstrapError> {
    load_client(&config.kubeconfig, None).await
}

/// Returns a client with the node's own credentials, bootstrapping them if needed:
/// an existing `--kubeconfig` is used as is, unless it points at our client certificate and
/// that has expired and a bootstrap kubeconfig is available.
pub async fn node_client(config: &KubeletConfig) -> Result<kube::Client, BootstrapError> {
    let cert_path = config.client_cert_path();
    if config.kubeconfig.exists() {
        let expired =
            CertBundle::load(&cert_path)?.is_some_and(|b| !b.is_valid_at(SystemTime::now()));
        if !(expired && config.bootstrap_kubeconfig.is_some()) {
            return load_client(&config.kubeconfig, Some(config.kube_api_limit)).await;
        }
        tracing::warn!(cert = %cert_path.display(), "client certificate expired; bootstrapping again");
    }
    let Some(bootstrap) = &config.bootstrap_kubeconfig else {
        return Err(BootstrapError::NoCredentials {
            path: config.kubeconfig.clone(),
        });
    };
    let bootstrap_client = load_client(bootstrap, None).await?;
    tracing::info!(node = %config.node_name, "requesting a client certificate (TLS bootstrap)");
    let bundle = request(
        &bootstrap_client,
        config,
        CLIENT_SIGNER,
        Vec::new(),
        BOOTSTRAP_TIMEOUT,
    )
    .await?;
    bundle.store(&cert_path)?;
    write_node_kubeconfig(bootstrap, &config.kubeconfig, &cert_path)?;
    tracing::info!(kubeconfig = %config.kubeconfig.display(), "client certificate issued");
    load_client(&config.kubeconfig, Some(config.kube_api_limit)).await
}

async fn request(
    client: &kube::Client,
    config: &KubeletConfig,
    signer: &str,
    sans: Vec<rcgen::SanType>,
    timeout: Duration,
) -> Result<CertBundle, CsrError> {
    let (name, key) = NodeCsr {
        node_name: &config.node_name,
        signer,
        sans,
        expiration_seconds: config.csr_expiration_seconds,
    }
    .create(client)
    .await?;
    if signer == SERVING_SIGNER {
        tracing::info!(
            csr = %name,
            "requested a serving certificate; until it is approved the kubelet API serves a \
             self-signed one. Approve it with `kubectl certificate approve {name}`"
        );
    } else {
        tracing::info!(csr = %name, "waiting for the client certificate to be approved and issued");
    }
    wait_for_certificate(client, &name, &key, timeout).await
}

/// Writes the node's kubeconfig: the bootstrap kubeconfig's cluster, our certificate as user.
fn write_node_kubeconfig(
    bootstrap: &Path,
    target: &Path,
    cert: &Path,
) -> Result<(), BootstrapError> {
    let error = |message: String| BootstrapError::Kubeconfig {
        path: target.into(),
        message,
    };
    let source = Kubeconfig::read_from(bootstrap).map_err(|e| BootstrapError::Kubeconfig {
        path: bootstrap.into(),
        message: e.to_string(),
    })?;
    let cluster_name = source
        .current_context
        .as_ref()
        .and_then(|name| source.contexts.iter().find(|c| &c.name == name))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .or_else(|| source.clusters.first().map(|c| c.name.clone()))
        .ok_or_else(|| error("the bootstrap kubeconfig names no cluster".into()))?;
    let cluster = source
        .clusters
        .into_iter()
        .find(|c| c.name == cluster_name)
        .ok_or_else(|| {
            error(format!(
                "cluster {cluster_name} missing from the bootstrap kubeconfig"
            ))
        })?;
    let cert = cert.to_string_lossy().into_owned();
    let kubeconfig = Kubeconfig {
        clusters: vec![cluster],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".into(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(cert.clone()),
                client_key: Some(cert),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "default-context".into(),
            context: Some(Context {
                cluster: cluster_name,
                user: Some("default-auth".into()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        current_context: Some("default-context".into()),
        ..Default::default()
    };
    let yaml = serde_yaml::to_string(&kubeconfig).map_err(|e| error(e.to_string()))?;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| error(e.to_string()))?;
    }
    let tmp = target.with_extension("tmp");
    std::fs::write(&tmp, yaml).map_err(|e| error(e.to_string()))?;
    std::fs::rename(&tmp, target).map_err(|e| error(e.to_string()))
}

/// Rotates the client certificate before it expires and publishes each new client on
/// `clients` and each new [`heartbeat_client`] on `heartbeats`. Does nothing for credentials
/// that are not our certificate (a kubeconfig with a token or another certificate file). A
/// failed attempt (request, store or load) is retried with a doubling back-off (10 s to
/// 2 min), so each failure costs at most one CSR.
pub async fn rotate_client_certificate(
    config: KubeletConfig,
    clients: watch::Sender<kube::Client>,
    heartbeats: watch::Sender<kube::Client>,
    shutdown: CancellationToken,
) {
    let path = config.client_cert_path();
    let mut failures = 0;
    loop {
        let bundle = match CertBundle::load(&path) {
            Ok(Some(bundle)) => bundle,
            _ => return,
        };
        let wait = bundle
            .rotation_deadline()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tracing::info!(in_ = ?wait, "client certificate rotation scheduled");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let client = clients.borrow().clone();
        let rotated = async {
            let new = request(
                &client,
                &config,
                CLIENT_SIGNER,
                Vec::new(),
                BOOTSTRAP_TIMEOUT,
            )
            .await
            .map_err(BootstrapError::from)?;
            new.store(&path)?;
            let limited = load_client(&config.kubeconfig, Some(config.kube_api_limit)).await?;
            Ok::<_, BootstrapError>((limited, heartbeat_client(&config).await?))
        };
        let rotated = tokio::select! {
            _ = shutdown.cancelled() => return,
            rotated = rotated => rotated,
        };
        match rotated {
            Ok((client, heartbeat)) => {
                failures = 0;
                clients.send_replace(client);
                heartbeats.send_replace(heartbeat);
                tracing::info!("client certificate rotated");
            }
            Err(error) => {
                let delay = rotation_retry_delay(failures);
                failures += 1;
                tracing::warn!(%error, retry_in = ?delay, "client certificate rotation failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// The wait after `failures` failed rotations in a row.
fn rotation_retry_delay(failures: u32) -> Duration {
    ROTATION_RETRY
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(ROTATION_RETRY_MAX)
}

/// Whether a certificate valid until `not_after` has been expired for [`EXPIRED_EXIT_AFTER`].
fn expired_too_long(not_after: SystemTime, now: SystemTime) -> bool {
    now.duration_since(not_after)
        .is_ok_and(|expired_for| expired_for >= EXPIRED_EXIT_AFTER)
}

/// Returns once the client certificate at `path` has been expired for
/// [`EXPIRED_EXIT_AFTER`] with no renewal while the API server answers (so a restart, which
/// bootstraps again, can help); the caller exits non-zero, as upstream's kubelet does
/// (`pkg/kubelet/certificate/transport.go`). Never returns for credentials that are not our
/// certificate. An unreachable API server is logged and waited for: a restart would not help.
pub async fn exit_when_expired(
    path: PathBuf,
    clients: watch::Receiver<kube::Client>,
    period: Option<Duration>,
) -> CertificateExpired {
    let period = period.unwrap_or(EXPIRY_CHECK);
    loop {
        tokio::time::sleep(period).await;
        let Ok(Some(bundle)) = CertBundle::load(&path) else {
            continue;
        };
        let now = SystemTime::now();
        if !expired_too_long(bundle.not_after, now) {
            continue;
        }
        let client = clients.borrow().clone();
        let expired = jiff::Timestamp::try_from(bundle.not_after)
            .map(|t| t.to_string())
            .unwrap_or_default();
        match client.apiserver_version().await {
            // Any answer (the expired certificate's 401 Unauthorized) means it is responsive.
            Ok(_) | Err(kube::Error::Api(_)) => {
                return CertificateExpired {
                    path,
                    expired,
                    after: now.duration_since(bundle.not_after).unwrap_or_default(),
                };
            }
            Err(error) => tracing::error!(
                %error, %expired,
                "no valid client certificate and the API server does not answer; a restart may \
                 be necessary to bootstrap new credentials"
            ),
        }
    }
}

/// The SANs of the node's serving certificate: its addresses and name.
pub fn serving_sans(node_name: &str, node_ip: IpAddr) -> Vec<rcgen::SanType> {
    let mut sans = vec![rcgen::SanType::IpAddress(node_ip)];
    if let Ok(name) = node_name.to_string().try_into() {
        sans.push(rcgen::SanType::DnsName(name));
    }
    sans
}

/// Ensures a serving certificate exists (self-signed at first), then requests one from the
/// cluster and waits, however long, for an approver; returns once it is stored. Kept current
/// by requesting a new one at 80% of the lifetime.
pub async fn manage_serving_certificate(
    config: KubeletConfig,
    clients: watch::Receiver<kube::Client>,
    issued: watch::Sender<Option<CertBundle>>,
    shutdown: CancellationToken,
) {
    let path = config.serving_cert_path();
    let sans = serving_sans(&config.node_name, config.node_ip);
    loop {
        let current = CertBundle::load(&path).ok().flatten();
        let wait = match &current {
            Some(bundle) => {
                issued.send_replace(Some(bundle.clone()));
                bundle
                    .rotation_deadline()
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
            }
            None => Duration::ZERO,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let client = clients.borrow().clone();
        // An approver may take any time; wait a day per request, then ask again.
        let requested = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = request(&client, &config, SERVING_SIGNER, sans.clone(), Duration::from_secs(86_400)) => r,
        };
        match requested {
            Ok(bundle) => match bundle.store(&path) {
                Ok(()) => tracing::info!(cert = %path.display(), "serving certificate issued"),
                Err(error) => tracing::error!(%error, "storing the serving certificate"),
            },
            Err(error) => {
                tracing::warn!(%error, "serving certificate request failed; retrying in 1 minute");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A certificate that expired long ago, stored at `path`.
    fn store_expired(path: &Path) {
        let key = certs::new_key().expect("key");
        let mut params = certs::node_params("node-a", Vec::new());
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 2);
        let cert = params.self_signed(&key).expect("cert");
        CertBundle::new(cert.pem(), key.serialize_pem())
            .expect("bundle")
            .store(path)
            .expect("store");
    }

    fn client_of(url: &str) -> watch::Receiver<kube::Client> {
        let config = kube::Config::new(url.parse().expect("url"));
        watch::channel(kube::Client::try_from(config).expect("client")).1
    }

    /// An API server that answers every request 401, as one does to an expired certificate.
    async fn unauthorized_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0; 4096];
                    let _ = tcp.read(&mut buffer).await;
                    let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
                    let response = format!(
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(response.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn rotation_retries_back_off_to_two_minutes() {
        let delays: Vec<u64> = (0..6).map(|n| rotation_retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 120, 120]);
        assert_eq!(rotation_retry_delay(u32::MAX), ROTATION_RETRY_MAX);
    }

    #[test]
    fn expiry_counts_only_after_five_minutes() {
        let expired = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!expired_too_long(expired, expired - Duration::from_secs(1)));
        assert!(!expired_too_long(
            expired,
            expired + Duration::from_secs(299)
        ));
        assert!(expired_too_long(
            expired,
            expired + Duration::from_secs(300)
        ));
    }

    #[tokio::test]
    async fn an_expired_certificate_exits_once_the_api_server_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubelet-client-current.pem");
        store_expired(&path);
        let clients = client_of(&unauthorized_server().await);
        let expired = tokio::time::timeout(
            Duration::from_secs(30),
            exit_when_expired(path.clone(), clients, Some(Duration::from_millis(10))),
        )
        .await
        .expect("exits");
        assert_eq!(expired.path, path);
        assert!(expired.expired.starts_with("2020-01-02"), "{expired}");
        assert!(expired.to_string().contains("--bootstrap-kubeconfig"));
    }

    #[tokio::test]
    async fn an_unreachable_api_server_or_a_valid_certificate_never_exits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubelet-client-current.pem");
        store_expired(&path);
        // Nothing listens on a port just released: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let unreachable = exit_when_expired(
            path,
            client_of(&format!("http://127.0.0.1:{port}")),
            Some(Duration::from_millis(10)),
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(500), unreachable)
                .await
                .is_err()
        );
        let valid = dir.path().join("valid.pem");
        certs::self_signed_serving("node-a", Vec::new())
            .expect("cert")
            .store(&valid)
            .expect("store");
        let answering = exit_when_expired(
            valid,
            client_of(&unauthorized_server().await),
            Some(Duration::from_millis(10)),
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(500), answering)
                .await
                .is_err()
        );
    }
}
