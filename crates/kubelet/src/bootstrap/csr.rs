//! Obtaining a certificate through the certificates.k8s.io API: create a
//! CertificateSigningRequest, wait for approval and issuance (the kubelet's
//! `certificate/csr.RequestCertificate` and `WaitForCertificate`).

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher;

use crate::bootstrap::certs::{CertBundle, CertError, new_key, node_params};

/// Signer of node client certificates; the csrapproving controller approves these.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Signer of kubelet serving certificates; Kubernetes never auto-approves these.
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// Errors obtaining a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Key or request generation failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The API server refused the request or could not be reached.
    #[error("certificate signing request: {0}")]
    Api(#[from] kube::Error),
    /// Watching the request failed.
    #[error("watching certificate signing request {name}: {source}")]
    Watch {
        /// The CSR's name.
        name: String,
        /// Why.
        #[source]
        source: watcher::Error,
    },
    /// An approver denied the request, or the signer failed it.
    #[error("certificate signing request {name} was {condition}: {message}")]
    Refused {
        /// The CSR's name.
        name: String,
        /// `Denied` or `Failed`.
        condition: String,
        /// The reason given.
        message: String,
    },
    /// No certificate was issued in time.
    #[error(
        "certificate signing request {name} was not approved within {waited:?}; approve it with \
         `kubectl certificate approve {name}`"
    )]
    Timeout {
        /// The CSR's name.
        name: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The issued certificate does not parse.
    #[error("certificate signing request {name} issued an unusable certificate: {message}")]
    BadCertificate {
        /// The CSR's name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// A certificate request for a node identity.
pub struct NodeCsr<'a> {
    /// The node name (CN `system:node:<name>`).
    pub node_name: &'a str,
    /// The signer.
    pub signer: &'a str,
    /// Subject alternative names (serving certificates only).
    pub sans: Vec<rcgen::SanType>,
    /// The lifetime asked for (`spec.expirationSeconds`); `None`: the signer's default.
    pub expiration_seconds: Option<u32>,
}

impl NodeCsr<'_> {
    /// Creates the CSR and returns its name with the private key that stays with us.
    pub async fn create(
        &self,
        client: &kube::Client,
    ) -> Result<(String, rcgen::KeyPair), CsrError> {
        let key = new_key()?;
        let request = node_params(self.node_name, self.sans.clone())
            .serialize_request(&key)
            .map_err(CertError::from)?
            .pem()
            .map_err(CertError::from)?;
        let usages = if self.signer == SERVING_SIGNER {
            "server auth"
        } else {
            "client auth"
        };
        let csr = CertificateSigningRequest {
            metadata: ObjectMeta {
                generate_name: Some(
                    if self.signer == SERVING_SIGNER {
                        "csr-"
                    } else {
                        "node-csr-"
                    }
                    .into(),
                ),
                ..Default::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(request.into_bytes()),
                signer_name: self.signer.into(),
                usages: Some(vec!["digital signature".into(), usages.into()]),
                // At most i32::MAX by the flag's range; the API server enforces at least 600.
                expiration_seconds: self
                    .expiration_seconds
                    .map(|s| i32::try_from(s).unwrap_or(i32::MAX)),
                ..Default::default()
            },
            status: None,
        };
        let api: Api<CertificateSigningRequest> = Api::all(client.clone());
        let created = api.create(&PostParams::default(), &csr).await?;
        Ok((created.metadata.name.unwrap_or_default(), key))
    }
}

/// Waits until the CSR `name` has a certificate, up to `timeout`; returns it with `key`.
pub async fn wait_for_certificate(
    client: &kube::Client,
    name: &str,
    key: &rcgen::KeyPair,
    timeout: Duration,
) -> Result<CertBundle, CsrError> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut stream = watcher::watch_object(api, name).boxed();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let csr = match next {
            Err(_) | Ok(None) => {
                return Err(CsrError::Timeout {
                    name: name.into(),
                    waited: timeout,
                });
            }
            Ok(Some(Err(source))) => {
                return Err(CsrError::Watch {
                    name: name.into(),
                    source,
                });
            }
            Ok(Some(Ok(csr))) => csr,
        };
        let Some(status) = csr.and_then(|c| c.status) else {
            continue;
        };
        if let Some(refused) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        {
            return Err(CsrError::Refused {
                name: name.into(),
                condition: refused.type_.clone(),
                message: refused.message.clone().unwrap_or_default(),
            });
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let cert_pem = String::from_utf8_lossy(&cert.0).into_owned();
            return CertBundle::new(cert_pem, key.serialize_pem()).map_err(|message| {
                CsrError::BadCertificate {
                    name: name.into(),
                    message,
                }
            });
        }
    }
}
