//! Public keys a policy trusts (PEM `PUBLIC KEY`, as `cosign generate-key-pair` writes
//! `cosign.pub`) and checking a signature with one. ECDSA P-256 (SHA-256, DER signatures, as
//! cosign signs) and Ed25519 (over the payload itself), verified with `ring`.

use ring::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_ED25519: &str = "1.3.101.112";

/// Which algorithm a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA over P-256 with SHA-256.
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

/// A trusted public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// The raw key (an uncompressed point, or 32 bytes).
    bytes: Vec<u8>,
}

/// Why a PEM is not a usable key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM `PUBLIC KEY`.
    #[error(
        "not a PEM public key ({0}); give the `cosign.pub` that `cosign generate-key-pair` writes"
    )]
    NotPem(String),
    /// A key of another kind.
    #[error("unsupported key type {0}; use an ECDSA P-256 or Ed25519 key")]
    Unsupported(String),
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.trim().as_bytes())
            .map_err(|e| KeyError::NotPem(e.to_string()))?;
        if parsed.label != "PUBLIC KEY" {
            return Err(KeyError::NotPem(format!(
                "found a {:?} block",
                parsed.label
            )));
        }
        Self::from_spki_der(&parsed.contents)
    }

    /// Parses a DER SubjectPublicKeyInfo (a certificate's key, a trusted root's log key).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let (_, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|e| KeyError::NotPem(e.to_string()))?;
        let algorithm = spki.algorithm.algorithm.to_id_string();
        let bytes = spki.subject_public_key.data.to_vec();
        match algorithm.as_str() {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                if curve != OID_P256 {
                    return Err(KeyError::Unsupported(format!("ECDSA on curve {curve}")));
                }
                Ok(Self {
                    algorithm: Algorithm::EcdsaP256,
                    bytes,
                })
            }
            OID_ED25519 if bytes.len() == 32 => Ok(Self {
                algorithm: Algorithm::Ed25519,
                bytes,
            }),
            other => Err(KeyError::Unsupported(other.to_string())),
        }
    }

    /// Whether `signature` is this key's over `payload`.
    pub fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        let algorithm: &dyn ring::signature::VerificationAlgorithm = match self.algorithm {
            Algorithm::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
            Algorithm::Ed25519 => &ED25519,
        };
        UnparsedPublicKey::new(algorithm, &self.bytes)
            .verify(payload, signature)
            .is_ok()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use base64::Engine as _;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    use super::*;

    /// A PEM `PUBLIC KEY` of a DER SubjectPublicKeyInfo.
    pub(crate) fn pem(der: &[u8]) -> String {
        pem_block("PUBLIC KEY", der)
    }

    /// A PEM block with `label` around `der`, in 64-column base64.
    pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// A P-256 key pair: (signer, PEM public key).
    pub(crate) fn p256() -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("pkcs8");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("pair");
        // SPKI prefix of an uncompressed P-256 point.
        let mut der = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
        der.extend_from_slice(pair.public_key().as_ref());
        (pair, pem(&der))
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn p256_and_ed25519_keys_verify_their_own_signatures_only() {
        let rng = SystemRandom::new();
        let (signer, public) = p256();
        let key = PublicKey::from_pem(&public).expect("p256");
        assert_eq!(key.algorithm, Algorithm::EcdsaP256);
        let sig = signer.sign(&rng, b"payload").expect("sign");
        assert!(key.verifies(b"payload", sig.as_ref()));
        assert!(!key.verifies(b"payload!", sig.as_ref()));
        let (_, other) = p256();
        assert!(
            !PublicKey::from_pem(&other)
                .expect("other")
                .verifies(b"payload", sig.as_ref())
        );

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("pkcs8");
        let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ed");
        let mut der = hex("302a300506032b6570032100");
        der.extend_from_slice(ed.public_key().as_ref());
        let key = PublicKey::from_pem(&pem(&der)).expect("ed25519");
        assert_eq!(key.algorithm, Algorithm::Ed25519);
        assert!(key.verifies(b"payload", ed.sign(b"payload").as_ref()));
        assert!(!key.verifies(b"other", ed.sign(b"payload").as_ref()));
        assert!(!key.verifies(b"payload", b"garbage"));
    }

    #[test]
    fn keys_of_other_kinds_are_refused_by_name() {
        assert!(matches!(
            PublicKey::from_pem("nope"),
            Err(KeyError::NotPem(_))
        ));
        // P-384.
        let mut der = hex("3076301006072a8648ce3d020106052b81040022036200");
        der.extend_from_slice(&[4; 97]);
        let error = PublicKey::from_pem(&pem(&der)).expect_err("p384");
        assert!(error.to_string().contains("P-256"), "{error}");
    }
}
