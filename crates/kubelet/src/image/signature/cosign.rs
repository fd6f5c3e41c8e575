//! cosign's signature formats, read from a registry and checked against a manifest digest.
//!
//! Two layouts hold the same thing (a simple-signing JSON payload as a layer, its signature in
//! the layer's `dev.cosignproject.cosign/signature` annotation):
//! - the tag layout: a manifest tagged `sha256-<hex>.sig` in the image's repository;
//! - OCI 1.1 referrers (`cosign sign --registry-referrers-mode oci-1-1`): a manifest whose
//!   `subject` is the image, listed by the referrers API or, on registries without it, by the
//!   referrers tag schema (an index tagged `sha256-<hex>`), as oci-client reads them.
//!
//! The registry is hostile: every manifest list and payload is bounded, every payload is
//! checked against its descriptor digest, and a payload counts only if it names the exact
//! manifest digest being verified.

use base64::Engine as _;
use oci_client::Reference;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciManifest};
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::image::limits::{Budget, Limit, LimitedWriter};

/// cosign's payload layer media type.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a layer's base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type of cosign signatures stored as OCI 1.1 referrers.
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// The most signature layers (or referrers) read per image and layout.
pub const MAX_SIGNATURES: usize = 32;
/// The largest simple-signing payload read.
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 10;
/// The longest signature annotation read (base64).
const MAX_SIGNATURE_CHARS: usize = 4 << 10;
/// The longest certificate or chain annotation read (PEM).
const MAX_CERTIFICATE_CHARS: usize = 32 << 10;
/// The longest Rekor bundle annotation read (JSON).
const MAX_BUNDLE_CHARS: usize = 64 << 10;

/// Where a signature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigLayout {
    /// The `sha256-<hex>.sig` tag.
    Tag,
    /// An OCI 1.1 referrer.
    Referrers,
}

impl std::fmt::Display for SigLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tag => "the sha256-<digest>.sig tag",
            Self::Referrers => "an OCI 1.1 referrer",
        })
    }
}

/// A signed payload as read from the registry, not yet checked against any key.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Where it was found.
    pub layout: SigLayout,
    /// The simple-signing JSON, exactly as signed.
    pub payload: Vec<u8>,
    /// The raw signature.
    pub signature: Vec<u8>,
    /// The keyless signing certificate (PEM), when there is one.
    pub certificate: Option<String>,
    /// Its CA chain (PEM).
    pub chain: Option<String>,
    /// The Rekor bundle (JSON).
    pub bundle: Option<String>,
}

/// The part of the simple-signing payload that binds a signature to an image.
#[derive(Debug, Deserialize)]
struct SimpleSigning {
    critical: Critical,
}

#[derive(Debug, Deserialize)]
struct Critical {
    image: CriticalImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The manifest digest a payload signs, if it is a cosign container image signature.
pub fn signed_digest(payload: &[u8]) -> Option<String> {
    let parsed: SimpleSigning = serde_json::from_slice(payload).ok()?;
    (parsed.critical.kind == "cosign container image signature")
        .then_some(parsed.critical.image.docker_manifest_digest)
}

/// Reading signatures failed (the registry, not the signatures).
#[derive(Debug, thiserror::Error)]
#[error("reading cosign signatures of {image} from the registry: {message}")]
pub struct FetchError {
    /// `repository@digest`.
    pub image: String,
    /// What went wrong.
    pub message: String,
}

fn not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        _ => false,
    }
}

/// Every cosign signature candidate for `registry/repository@digest`, from both layouts.
pub async fn fetch(
    client: &oci_client::Client,
    auth: &RegistryAuth,
    registry: &str,
    repository: &str,
    digest: &str,
) -> Result<Vec<Candidate>, FetchError> {
    let image = format!("{registry}/{repository}@{digest}");
    let error = |message: String| FetchError {
        image: image.clone(),
        message,
    };
    let mut found = Vec::new();
    // Tag layout.
    let tag = Reference::with_tag(
        registry.into(),
        repository.into(),
        format!("{}.sig", digest.replace(':', "-")),
    );
    match client.pull_manifest(&tag, auth).await {
        Ok((OciManifest::Image(manifest), _)) => {
            read_layers(client, &tag, &manifest.layers, SigLayout::Tag, &mut found)
                .await
                .map_err(error)?;
        }
        Ok((OciManifest::ImageIndex(_), _)) => {
            return Err(error(format!(
                "{tag} is an index, not a cosign signature manifest"
            )));
        }
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(error(format!("{tag}: {e}"))),
    }
    // Referrers (API, or the tag schema fallback).
    let subject = Reference::with_digest(registry.into(), repository.into(), digest.into());
    let referrers = match client.pull_referrers(&subject, None).await {
        Ok(index) => index.manifests,
        Err(e) if not_found(&e) => Vec::new(),
        Err(e) => return Err(error(format!("referrers of {subject}: {e}"))),
    };
    let cosign_referrers: Vec<_> = referrers
        .iter()
        .filter(|entry| {
            entry
                .artifact_type
                .as_deref()
                .is_none_or(|t| t == SIGNATURE_ARTIFACT_TYPE)
        })
        .take(MAX_SIGNATURES)
        .collect();
    for entry in cosign_referrers {
        let by_digest =
            Reference::with_digest(registry.into(), repository.into(), entry.digest.clone());
        match client.pull_manifest(&by_digest, auth).await {
            Ok((OciManifest::Image(manifest), _)) => {
                read_layers(
                    client,
                    &by_digest,
                    &manifest.layers,
                    SigLayout::Referrers,
                    &mut found,
                )
                .await
                .map_err(error)?;
            }
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(error(format!("referrer {}: {e}", entry.digest))),
        }
    }
    Ok(found)
}

/// Reads the simple-signing layers of one signature manifest (bounded, digest-checked).
async fn read_layers(
    client: &oci_client::Client,
    reference: &Reference,
    layers: &[OciDescriptor],
    layout: SigLayout,
    out: &mut Vec<Candidate>,
) -> Result<(), String> {
    for layer in layers
        .iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        .take(MAX_SIGNATURES)
    {
        let Some(signature) = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            .filter(|s| s.len() <= MAX_SIGNATURE_CHARS)
            .and_then(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .ok()
            })
        else {
            continue;
        };
        if layer.size < 0 || layer.size as u64 > MAX_PAYLOAD_BYTES {
            continue;
        }
        let budget = Budget::new(Limit::Config, MAX_PAYLOAD_BYTES);
        let mut payload = Vec::new();
        let writer = LimitedWriter::new(&mut payload, budget);
        if let Err(e) = client.pull_blob(reference, layer, writer).await {
            return Err(format!("payload {} of {reference}: {e}", layer.digest));
        }
        if format!("sha256:{:x}", Sha256::digest(&payload)) != layer.digest {
            continue;
        }
        // Oversized keyless annotations are dropped: the signature then fails as keyless
        // with "no certificate" / "no bundle", which names what is missing.
        let annotation = |name: &str, max: usize| {
            layer
                .annotations
                .as_ref()
                .and_then(|a| a.get(name))
                .filter(|v| v.len() <= max)
                .cloned()
        };
        out.push(Candidate {
            layout,
            payload,
            signature,
            certificate: annotation(
                super::keyless::CERTIFICATE_ANNOTATION,
                MAX_CERTIFICATE_CHARS,
            ),
            chain: annotation(super::keyless::CHAIN_ANNOTATION, MAX_CERTIFICATE_CHARS),
            bundle: annotation(super::keyless::BUNDLE_ANNOTATION, MAX_BUNDLE_CHARS),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_bind_to_their_digest_and_kind() {
        let payload = br#"{"critical":{"identity":{"docker-reference":"r/a"},"image":{"docker-manifest-digest":"sha256:ab"},"type":"cosign container image signature"},"optional":null}"#;
        assert_eq!(signed_digest(payload).as_deref(), Some("sha256:ab"));
        let other = br#"{"critical":{"identity":{},"image":{"docker-manifest-digest":"sha256:ab"},"type":"something else"}}"#;
        assert_eq!(signed_digest(other), None);
        assert_eq!(signed_digest(b"not json"), None);
    }
}
