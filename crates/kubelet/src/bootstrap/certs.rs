//! The node's certificates on disk: one PEM file with certificate and key per purpose (as the
//! kubelet's `kubelet-client-current.pem`), written atomically with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Errors reading or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable certificate and key.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Key or certificate generation failed.
    #[error("generating a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate (chain) and its private key, in PEM, with the leaf's validity period.
#[derive(Debug, Clone)]
pub struct CertBundle {
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl CertBundle {
    /// Builds a bundle, reading the validity period from the leaf certificate.
    pub fn new(cert_pem: String, key_pem: String) -> Result<Self, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| format!("no PEM certificate: {e}"))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("certificate does not parse: {e}"))?;
        let to_time = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        Ok(Self {
            not_before: to_time(cert.validity().not_before),
            not_after: to_time(cert.validity().not_after),
            cert_pem,
            key_pem,
        })
    }

    /// Reads a combined PEM file; `Ok(None)` if it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, CertError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CertError::Io {
                    path: path.into(),
                    source,
                });
            }
        };
        let invalid = |message: String| CertError::Invalid {
            path: path.into(),
            message,
        };
        let blocks: Vec<&str> = text.split_inclusive("-----\n").collect();
        let mut cert_pem = String::new();
        let mut key_pem = String::new();
        let mut current: Option<&mut String> = None;
        for chunk in blocks {
            if chunk.contains("-----BEGIN CERTIFICATE-----") {
                current = Some(&mut cert_pem);
            } else if chunk.contains("PRIVATE KEY-----") && chunk.contains("BEGIN") {
                current = Some(&mut key_pem);
            }
            if let Some(buffer) = current.as_deref_mut() {
                buffer.push_str(chunk);
            }
            if chunk.contains("-----END") {
                current = None;
            }
        }
        if cert_pem.is_empty() || key_pem.is_empty() {
            return Err(invalid("expected a certificate and a private key".into()));
        }
        Self::new(cert_pem, key_pem).map(Some).map_err(invalid)
    }

    /// Writes certificate and key into one file, atomically (temp file + rename), mode 0600.
    pub fn store(&self, path: &Path) -> Result<(), CertError> {
        let io = |source| CertError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(self.cert_pem.as_bytes()).map_err(io)?;
        file.write_all(self.key_pem.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Whether the certificate is valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// When to rotate: 80% into the validity period (the kubelet picks 70-90% at random).
    pub fn rotation_deadline(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime.mul_f64(0.8)
    }
}

/// A fresh ECDSA P-256 key pair.
pub fn new_key() -> Result<rcgen::KeyPair, CertError> {
    Ok(rcgen::KeyPair::generate_for(
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )?)
}

/// Certificate parameters for a node identity: CN `system:node:<name>`, O `system:nodes`.
pub fn node_params(node_name: &str, sans: Vec<rcgen::SanType>) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params.subject_alt_names = sans;
    params
}

/// A self-signed serving certificate, used until the cluster issues one (as the kubelet does).
pub fn self_signed_serving(
    node_name: &str,
    sans: Vec<rcgen::SanType>,
) -> Result<CertBundle, CertError> {
    let key = new_key()?;
    let cert = node_params(node_name, sans).self_signed(&key)?;
    CertBundle::new(cert.pem(), key.serialize_pem()).map_err(|message| CertError::Invalid {
        path: PathBuf::from("<self-signed>"),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads_a_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pki/kubelet.pem");
        let bundle = self_signed_serving(
            "node-a",
            vec![rcgen::SanType::DnsName("node-a".try_into().expect("dns"))],
        )
        .expect("self-signed");
        bundle.store(&path).expect("store");
        let mode = std::fs::metadata(&path).expect("meta").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let loaded = CertBundle::load(&path).expect("load").expect("exists");
        assert_eq!(loaded.cert_pem, bundle.cert_pem);
        assert_eq!(loaded.key_pem, bundle.key_pem);
        assert!(loaded.is_valid_at(SystemTime::now()));
        assert!(loaded.rotation_deadline() > SystemTime::now());
        assert!(
            CertBundle::load(&dir.path().join("missing.pem"))
                .expect("ok")
                .is_none()
        );
    }
}
