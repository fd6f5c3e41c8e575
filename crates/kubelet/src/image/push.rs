//! Publishing a wasm module or component in the CNCF Wasm OCI artifact layout (what
//! `krustlet push` and the tests use).

use oci_client::Reference;

use super::format::WASM_LAYER_MEDIA_TYPES;
use super::{Credentials, ImageError, registry_client};

/// The CNCF Wasm OCI artifact config media type (as `wkg` and `oras` push it).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";

/// Publishes `wasm` (a module or component) to `reference` in the CNCF Wasm OCI artifact
/// layout; returns the manifest digest the registry stored.
pub async fn push_wasm(
    reference: &str,
    wasm: Vec<u8>,
    credentials: Option<&Credentials>,
) -> Result<String, ImageError> {
    use oci_client::client::{Config, ImageLayer};
    use oci_client::manifest::OciImageManifest;
    let parsed: Reference =
        reference
            .parse()
            .map_err(|e: oci_client::ParseError| ImageError::InvalidName {
                image: reference.into(),
                message: e.to_string(),
            })?;
    let registry = parsed.resolve_registry().to_string();
    let push_error = |message: String| ImageError::Pull {
        image: reference.into(),
        registry: registry.clone(),
        message,
    };
    let (client, auth) = registry_client(&registry, credentials, &[]);
    let layer = ImageLayer::new(wasm, WASM_LAYER_MEDIA_TYPES[0].to_string(), None);
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [layer.sha256_digest()],
    });
    let config = Config::new(
        config.to_string().into_bytes(),
        WASM_CONFIG_MEDIA_TYPE.to_string(),
        None,
    );
    let layers = [layer];
    let manifest = OciImageManifest::build(&layers, &config, None);
    client
        .push(&parsed, &layers, config, &auth, Some(manifest))
        .await
        .map_err(|e| push_error(e.to_string()))?;
    // The push response names the tag; ask the registry for the digest it stored.
    let (_, digest) = client
        .pull_image_manifest(&parsed, &auth)
        .await
        .map_err(|e| push_error(e.to_string()))?;
    Ok(digest)
}
