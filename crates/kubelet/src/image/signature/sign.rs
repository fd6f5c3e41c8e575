//! Signing as cosign does, for `krustlet push --sign KEY`: cosign's encrypted private key
//! (`cosign generate-key-pair`: a PEM `ENCRYPTED SIGSTORE PRIVATE KEY` holding scrypt +
//! NaCl secretbox JSON around a PKCS#8 key, as go-securesystemslib's `encrypted` package
//! writes it), the simple-signing payload for a manifest digest, and the signature manifest in
//! cosign's tag layout (`sha256-<hex>.sig`), added to the signatures already there as
//! `cosign sign --tlog-upload=false` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use crypto_secretbox::aead::generic_array::GenericArray;
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use oci_client::Reference;
use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::{OciImageManifest, OciManifest};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::cosign::{
    MAX_PAYLOAD_BYTES, MAX_SIGNATURES, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE,
};
use crate::image::limits::{Budget, Limit, LimitedWriter};
use crate::image::{Credentials, registry_client};

/// The PEM label `cosign generate-key-pair` writes.
pub const SIGSTORE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The PEM label older cosign versions wrote.
pub const COSIGN_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// The largest key file read.
const MAX_KEY_BYTES: u64 = 64 << 10;
/// The DER SubjectPublicKeyInfo prefix of an uncompressed P-256 point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// The scrypt parameters cosign writes and accepts (legacy, standard, OWASP): log2(N).
const SCRYPT_LOG_N: [u8; 3] = [15, 16, 17];

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key file could not be read.
    #[error("signing key {path}: cannot read it: {message}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// Not a cosign private key.
    #[error(
        "signing key {path}: not a cosign private key ({message}); give the cosign.key that `cosign generate-key-pair` writes"
    )]
    NotCosignKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The password does not open the key.
    #[error(
        "signing key {path}: the password does not decrypt it; set COSIGN_PASSWORD to the password given to `cosign generate-key-pair`"
    )]
    WrongPassword {
        /// The key file.
        path: PathBuf,
    },
    /// A key of another kind.
    #[error(
        "signing key {path}: {message}; krustlet signs with ECDSA P-256 keys (cosign generate-key-pair's default)"
    )]
    Unsupported {
        /// The key file.
        path: PathBuf,
        /// What it is.
        message: String,
    },
    /// The random source failed while generating a key.
    #[error("generating a signing key: {0}")]
    Generate(String),
    /// The registry refused the signature.
    #[error("pushing the signature of {image} to {tag}: {message}")]
    Push {
        /// `repository@digest`.
        image: String,
        /// The signature tag.
        tag: String,
        /// The registry error.
        message: String,
    },
}

#[derive(Deserialize)]
struct Encrypted {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Deserialize)]
struct Kdf {
    name: String,
    params: KdfParams,
    salt: String,
}

#[derive(Deserialize)]
struct KdfParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// A cosign signing key, decrypted.
pub struct SigningKey {
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(ECDSA P-256)")
    }
}

impl SigningKey {
    /// Reads and decrypts the cosign private key at `path` with `password`.
    pub fn load(path: &Path, password: &[u8]) -> Result<Self, SignError> {
        let read_error = |e: std::io::Error| SignError::Read {
            path: path.into(),
            message: e.to_string(),
        };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > MAX_KEY_BYTES {
            return Err(SignError::NotCosignKey {
                path: path.into(),
                message: format!("it has {size} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Self::from_pem(&text, password, path)
    }

    /// Decrypts cosign private key `pem` (read from `path`, which names it in errors).
    pub fn from_pem(pem: &str, password: &[u8], path: &Path) -> Result<Self, SignError> {
        let not_key = |message: String| SignError::NotCosignKey {
            path: path.into(),
            message,
        };
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.trim().as_bytes())
            .map_err(|e| not_key(format!("not PEM: {e}")))?;
        if block.label != SIGSTORE_KEY_LABEL && block.label != COSIGN_KEY_LABEL {
            return Err(not_key(format!("a {:?} PEM block", block.label)));
        }
        let encrypted: Encrypted =
            serde_json::from_slice(&block.contents).map_err(|e| not_key(e.to_string()))?;
        let b64 = |what: &str, text: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| not_key(format!("its {what} is not base64")))
        };
        if encrypted.kdf.name != "scrypt" || encrypted.cipher.name != "nacl/secretbox" {
            return Err(not_key(format!(
                "kdf {:?} and cipher {:?}, not scrypt and nacl/secretbox",
                encrypted.kdf.name, encrypted.cipher.name
            )));
        }
        let KdfParams { n, r, p } = encrypted.kdf.params;
        // Only cosign's own parameter sets: a hostile file cannot ask for gigabytes.
        let Some(log_n) = SCRYPT_LOG_N.into_iter().find(|l| n == 1u64 << l) else {
            return Err(not_key(format!("unsupported scrypt parameters N={n}")));
        };
        if r != 8 || p != 1 {
            return Err(not_key(format!(
                "unsupported scrypt parameters r={r} p={p}"
            )));
        }
        let salt = b64("salt", &encrypted.kdf.salt)?;
        let nonce = b64("nonce", &encrypted.cipher.nonce)?;
        let sealed = b64("ciphertext", &encrypted.ciphertext)?;
        if nonce.len() != 24 || sealed.len() < 16 {
            return Err(not_key("its nonce or ciphertext is too short".into()));
        }
        let params = scrypt::Params::new(log_n, r, p, 32)
            .map_err(|e| not_key(format!("scrypt parameters: {e}")))?;
        let mut key = [0u8; 32];
        scrypt::scrypt(password, &salt, &params, &mut key)
            .map_err(|e| not_key(format!("scrypt: {e}")))?;
        // NaCl's secretbox puts the 16-byte Poly1305 tag before the ciphertext.
        let (tag, ciphertext) = sealed.split_at(16);
        let mut plaintext = ciphertext.to_vec();
        crypto_secretbox::XSalsa20Poly1305::new(GenericArray::from_slice(&key))
            .decrypt_in_place_detached(
                GenericArray::from_slice(&nonce),
                b"",
                &mut plaintext,
                GenericArray::from_slice(tag),
            )
            .map_err(|_| SignError::WrongPassword { path: path.into() })?;
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &plaintext,
            &SystemRandom::new(),
        )
        .map_err(|e| SignError::Unsupported {
            path: path.into(),
            message: format!("not an ECDSA P-256 PKCS#8 key ({e})"),
        })?;
        Ok(Self { pair })
    }

    /// An ECDSA P-256 SHA-256 signature (ASN.1 DER, as cosign makes) over `payload`.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        // ring fails only if its random source does.
        self.pair
            .sign(&SystemRandom::new(), payload)
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default()
    }

    /// A new random ECDSA P-256 key (benchmarks and tests; keep real keys with
    /// `cosign generate-key-pair`).
    pub fn generate() -> Result<Self, SignError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| SignError::Generate(e.to_string()))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| SignError::Generate(e.to_string()))?;
        Ok(Self { pair })
    }

    /// The public key, as an uncompressed point.
    pub fn public_point(&self) -> &[u8] {
        use ring::signature::KeyPair as _;
        self.pair.public_key().as_ref()
    }

    /// The public key as a PEM `PUBLIC KEY` (what a policy's `keys` entries take).
    pub fn public_pem(&self) -> String {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.public_point());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }
}

/// cosign's simple-signing payload binding a signature to `repository@digest`.
pub fn payload(repository: &str, digest: &str) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    })
    .to_string()
    .into_bytes()
}

/// Signs `image`'s manifest `digest` with `key` and pushes the signature in cosign's tag
/// layout, keeping the signatures already there; returns the signature tag reference.
pub async fn sign_and_push(
    image: &str,
    digest: &str,
    key: &SigningKey,
    credentials: Option<&Credentials>,
) -> Result<String, SignError> {
    let reference = crate::image::parse_reference(image).map_err(|e| SignError::Push {
        image: image.into(),
        tag: String::new(),
        message: e.to_string(),
    })?;
    let registry = reference.resolve_registry().to_string();
    let repository = reference.repository().to_string();
    let tag = Reference::with_tag(
        registry.clone(),
        repository.clone(),
        format!("{}.sig", digest.replace(':', "-")),
    );
    let error = |message: String| SignError::Push {
        image: format!("{registry}/{repository}@{digest}"),
        tag: tag.to_string(),
        message,
    };
    let (client, auth) = registry_client(&registry, credentials, &[]);

    let payload = payload(&format!("{registry}/{repository}"), digest);
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
    let mut layers = Vec::new();
    // The signatures already there (cosign appends rather than replaces).
    if let Ok((OciManifest::Image(existing), _)) = client.pull_manifest(&tag, &auth).await {
        for layer in existing
            .layers
            .iter()
            .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
            .take(MAX_SIGNATURES - 1)
        {
            let mut bytes = Vec::new();
            let writer =
                LimitedWriter::new(&mut bytes, Budget::new(Limit::Config, MAX_PAYLOAD_BYTES));
            client
                .pull_blob(&tag, layer, writer)
                .await
                .map_err(|e| error(format!("reading existing signature {}: {e}", layer.digest)))?;
            layers.push(ImageLayer::new(
                bytes,
                layer.media_type.clone(),
                layer.annotations.clone(),
            ));
        }
    }
    let annotations = BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), signature)]);
    layers.push(ImageLayer::new(
        payload,
        SIMPLE_SIGNING_MEDIA_TYPE.into(),
        Some(annotations),
    ));
    // cosign's config: the layers' digests as the rootfs.
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{:x}", Sha256::digest(&l.data)))
        .collect();
    let config = serde_json::json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let config = Config::new(
        config.to_string().into_bytes(),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    let manifest = OciImageManifest::build(&layers, &config, None);
    client
        .push(&tag, &layers, config, &auth, Some(manifest))
        .await
        .map_err(|e| error(e.to_string()))?;
    Ok(tag.to_string())
}

#[cfg(test)]
mod tests {
    use ring::signature::EcdsaKeyPair;

    use super::*;
    use crate::image::signature::keys::PublicKey;

    /// `key_der` encrypted as go-securesystemslib does (scrypt N=2^15 to keep the test quick).
    fn cosign_pem(key_der: &[u8], password: &[u8]) -> String {
        let (salt, nonce) = ([7u8; 32], [9u8; 24]);
        let params = scrypt::Params::new(15, 8, 1, 32).expect("params");
        let mut key = [0u8; 32];
        scrypt::scrypt(password, &salt, &params, &mut key).expect("scrypt");
        let mut buffer = key_der.to_vec();
        let tag = crypto_secretbox::XSalsa20Poly1305::new(GenericArray::from_slice(&key))
            .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut buffer)
            .expect("seal");
        let mut sealed = tag.to_vec();
        sealed.extend_from_slice(&buffer);
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let json = serde_json::json!({
            "kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": b64(&salt)},
            "cipher": {"name": "nacl/secretbox", "nonce": b64(&nonce)},
            "ciphertext": b64(&sealed)
        });
        let body = b64(json.to_string().as_bytes());
        format!(
            "-----BEGIN {SIGSTORE_KEY_LABEL}-----\n{body}\n-----END {SIGSTORE_KEY_LABEL}-----\n"
        )
    }

    #[test]
    fn a_cosign_key_decrypts_with_its_password_only_and_its_signatures_verify() {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .expect("pkcs8");
        let pem = cosign_pem(pkcs8.as_ref(), b"s3cret");
        let path = Path::new("/cosign.key");
        let key = SigningKey::from_pem(&pem, b"s3cret", path).expect("decrypts");
        let public = PublicKey::from_pem(&key.public_pem()).expect("public");
        let payload = payload("127.0.0.1:5000/app", "sha256:ab");
        assert_eq!(
            super::super::cosign::signed_digest(&payload).as_deref(),
            Some("sha256:ab")
        );
        assert!(public.verifies(&payload, &key.sign(&payload)));

        let error = SigningKey::from_pem(&pem, b"wrong", path).expect_err("wrong password");
        assert!(matches!(error, SignError::WrongPassword { .. }), "{error}");
        assert!(error.to_string().contains("COSIGN_PASSWORD"), "{error}");
        let error = SigningKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            b"",
            path,
        )
        .expect_err("public key");
        assert!(matches!(error, SignError::NotCosignKey { .. }), "{error}");
    }
}
