//! Calling a node's kubelet API directly, as the API server does (the API server's node proxy
//! refuses loopback addresses, so tests and benchmarks cannot go through it).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::cluster::cluster;
use crate::node::KrustletNode;

/// A client certificate chain and key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// An HTTPS client that trusts the cluster CA, with `identity` as its client certificate.
pub fn https_client(identity: Option<Identity>) -> reqwest::Client {
    https_client_with_timeout(identity, Duration::from_secs(20))
}

/// The cluster CA's rustls client configuration, presenting `identity` if given (HTTP/1.1).
pub fn tls_config(identity: Option<Identity>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&cluster().ca_file).expect("ca file") {
        roots.add(ca.expect("ca")).expect("add ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    }
}

/// [`https_client`] whose requests may take up to `timeout` (large responses).
pub fn https_client_with_timeout(identity: Option<Identity>, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(identity))
        .timeout(timeout)
        .build()
        .expect("client")
}

/// The API server's kubelet client identity (allowed everything on the kubelet API).
pub fn apiserver_identity() -> Identity {
    let info = cluster();
    identity_from_files(
        &info.kubelet_client_cert_file,
        &info.kubelet_client_key_file,
    )
}

/// Reads a PEM certificate chain and key.
pub fn identity_from_files(cert: &Path, key: &Path) -> Identity {
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    (chain, PrivateKeyDer::from_pem_file(key).expect("key"))
}

/// GETs a kubelet API path on `node` with the API server's kubelet client certificate. Waits
/// for the issued serving certificate, which is the only one the cluster CA verifies.
pub async fn kubelet_get(node: &KrustletNode, path: &str) -> String {
    let info = cluster();
    let client = https_client(Some(identity_from_files(
        &info.kubelet_client_cert_file,
        &info.kubelet_client_key_file,
    )));
    let url = format!(
        "https://{}{path}",
        std::net::SocketAddr::new(node.ip(), node.port())
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.get(&url).send().await {
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.expect("body");
                assert_eq!(status, 200, "GET {path}: {body}");
                return body;
            }
            Err(error) => {
                assert!(Instant::now() < deadline, "GET {path}: {error:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
