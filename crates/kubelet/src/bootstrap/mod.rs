//! TLS bootstrap and certificate rotation (the kubelet's `pkg/kubelet/certificate/bootstrap`
//! and `certificate/kubelet.go`).
//!
//! With only a bootstrap kubeconfig (a bootstrap token), the node asks for a client certificate
//! through a CSR, stores it in `--cert-dir` and writes `--kubeconfig` pointing at it. The
//! certificate is rotated at 80% of its lifetime with a new CSR under the node's own identity.
//! The serving certificate for the kubelet API is requested the same way; until an approver
//! grants it, a self-signed certificate serves.

pub mod certs;
pub mod csr;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kube::config::{AuthInfo, Context, Kubeconfig, NamedAuthInfo, NamedContext};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::KubeletConfig;
use certs::{CertBundle, CertError};
use csr::{CLIENT_SIGNER, CsrError, NodeCsr, SERVING_SIGNER, wait_for_certificate};

/// How long to wait for a client certificate during bootstrap before giving up.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(300);

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

/// Loads a kubeconfig file into a client.
pub async fn load_client(path: &Path) -> Result<kube::Client, BootstrapError> {
    let error = |message: String| BootstrapError::Kubeconfig {
        path: path.into(),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| error(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| error(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| error(e.to_string()))
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
            return load_client(&config.kubeconfig).await;
        }
        tracing::warn!(cert = %cert_path.display(), "client certificate expired; bootstrapping again");
    }
    let Some(bootstrap) = &config.bootstrap_kubeconfig else {
        return Err(BootstrapError::NoCredentials {
            path: config.kubeconfig.clone(),
        });
    };
    let bootstrap_client = load_client(bootstrap).await?;
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
    load_client(&config.kubeconfig).await
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
/// `clients`. Does nothing for credentials that are not our certificate (a kubeconfig with a
/// token or another certificate file).
pub async fn rotate_client_certificate(
    config: KubeletConfig,
    clients: watch::Sender<kube::Client>,
    shutdown: CancellationToken,
) {
    loop {
        let bundle = match CertBundle::load(&config.client_cert_path()) {
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
        match request(
            &client,
            &config,
            CLIENT_SIGNER,
            Vec::new(),
            BOOTSTRAP_TIMEOUT,
        )
        .await
        {
            Ok(new) => {
                if let Err(error) = new.store(&config.client_cert_path()) {
                    tracing::error!(%error, "storing the rotated client certificate");
                    continue;
                }
                match load_client(&config.kubeconfig).await {
                    Ok(client) => {
                        clients.send_replace(client);
                        tracing::info!("client certificate rotated");
                    }
                    Err(error) => tracing::error!(%error, "loading the rotated client certificate"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "client certificate rotation failed; retrying in 1 minute");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
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
