//! Publishing and reading wasm artifacts in the loopback registries.

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// The CNCF Wasm OCI artifact config media type (as `wkg` and `oras` push it).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The CNCF Wasm OCI artifact layer media type.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";

/// A registry client that speaks plain HTTP, as the loopback registries do.
pub fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

/// Pushes `wasm` to `reference` in the CNCF Wasm OCI artifact layout; returns the manifest digest.
pub async fn push_wasm(
    reference: &str,
    wasm: Vec<u8>,
    auth: &RegistryAuth,
) -> anyhow::Result<String> {
    let reference: Reference = reference.parse()?;
    let layer = ImageLayer::new(wasm, WASM_LAYER_MEDIA_TYPE.to_string(), None);
    let config = Config::new(
        serde_json::to_vec(&serde_json::json!({
            "architecture": "wasm",
            "os": "wasip1",
            "layerDigests": [layer.sha256_digest()],
        }))?,
        WASM_CONFIG_MEDIA_TYPE.to_string(),
        None,
    );
    let layers = [layer];
    let manifest = OciImageManifest::build(&layers, &config, None);
    let client = client();
    client
        .push(&reference, &layers, config, auth, Some(manifest))
        .await?;
    // The push response names the tag; ask the registry for the digest it stored.
    let (_, digest) = client.pull_image_manifest(&reference, auth).await?;
    Ok(digest)
}
