//! Publishing and reading wasm artifacts in the loopback registries.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

pub use kubelet::image::WASM_CONFIG_MEDIA_TYPE;

/// The CNCF Wasm OCI artifact layer media type.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";

/// A registry client that speaks plain HTTP, as the loopback registries do.
pub fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

/// Pushes `wasm` to `reference` in the CNCF Wasm OCI artifact layout (with the code
/// `krustlet push` uses); returns the manifest digest.
pub async fn push_wasm(
    reference: &str,
    wasm: Vec<u8>,
    auth: &RegistryAuth,
) -> anyhow::Result<String> {
    let credentials = match auth {
        RegistryAuth::Basic(username, password) => Some(kubelet::image::Credentials {
            username: username.clone(),
            password: password.clone(),
        }),
        _ => None,
    };
    Ok(kubelet::image::push_wasm(reference, wasm, credentials.as_ref()).await?)
}

/// The wasm-to-oci layer media type (format 2).
pub const WASM_TO_OCI_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// `wasm` with a custom section of `padding` bytes appended: the same program under a new
/// digest (so a test gets an image no node has seen), as large as a test needs.
pub fn padded(mut wasm: Vec<u8>, name: &str, padding: usize) -> Vec<u8> {
    let mut payload = Vec::new();
    leb128(&mut payload, name.len() as u64);
    payload.extend_from_slice(name.as_bytes());
    // Varied bytes, so gzip cannot shrink a big padding to nothing.
    let mut x: u32 = 0x9e37_79b9 ^ padding as u32;
    payload.extend((0..padding).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    wasm.push(0);
    leb128(&mut wasm, payload.len() as u64);
    wasm.extend_from_slice(&payload);
    wasm
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// A gzipped tar of `files` (path, content), as an image layer.
pub fn tar_gz(files: &[(&str, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(&mut header, path.trim_start_matches('/'), *content)?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// What a pushed manifest is: its digest and size (for an index entry).
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The manifest digest.
    pub digest: String,
    /// The manifest's size in bytes.
    pub size: i64,
    /// The config and layers' sizes in bytes (0 for an index): what a kubelet reports as the
    /// image's size.
    pub content_size: i64,
}

async fn pushed(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
) -> anyhow::Result<Pushed> {
    let (bytes, digest) = client
        .pull_manifest_raw(
            reference,
            auth,
            &[
                oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
                oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
            ],
        )
        .await?;
    let content_size =
        match serde_json::from_slice::<oci_client::manifest::OciImageManifest>(&bytes) {
            Ok(m) => m.config.size + m.layers.iter().map(|l| l.size).sum::<i64>(),
            Err(_) => 0,
        };
    Ok(Pushed {
        digest,
        size: bytes.len() as i64,
        content_size,
    })
}

/// Pushes an ordinary OCI image (format 3): gzip `layers`, a config for `os`/`architecture`
/// with `entrypoint` and `cmd`.
pub async fn push_oci_image(
    reference: &str,
    layers: Vec<Vec<u8>>,
    (os, architecture): (&str, &str),
    entrypoint: &[&str],
    cmd: &[&str],
    auth: &RegistryAuth,
) -> anyhow::Result<Pushed> {
    use oci_client::client::{Config, ImageLayer};
    let parsed: Reference = reference.parse()?;
    let layers: Vec<ImageLayer> = layers
        .into_iter()
        .map(|data| {
            ImageLayer::new(
                data,
                oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE.into(),
                None,
            )
        })
        .collect();
    let mut run_config = serde_json::Map::new();
    if !entrypoint.is_empty() {
        run_config.insert("Entrypoint".into(), serde_json::json!(entrypoint));
    }
    if !cmd.is_empty() {
        run_config.insert("Cmd".into(), serde_json::json!(cmd));
    }
    let config = serde_json::json!({
        "architecture": architecture,
        "os": os,
        "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.sha256_digest()).collect::<Vec<_>>()},
    });
    let config = Config::new(
        config.to_string().into_bytes(),
        oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE.into(),
        None,
    );
    let manifest = oci_client::manifest::OciImageManifest::build(&layers, &config, None);
    let client = client();
    client
        .push(&parsed, &layers, config, auth, Some(manifest))
        .await?;
    pushed(&client, &parsed, auth).await
}

/// Pushes `wasm` in the older wasm-to-oci layout (format 2).
pub async fn push_wasm_to_oci(reference: &str, wasm: Vec<u8>) -> anyhow::Result<Pushed> {
    use oci_client::client::{Config, ImageLayer};
    let parsed: Reference = reference.parse()?;
    let layers = [ImageLayer::new(
        wasm,
        WASM_TO_OCI_LAYER_MEDIA_TYPE.into(),
        None,
    )];
    let config = Config::new(
        b"{}".to_vec(),
        "application/vnd.wasm.config.v1+json".into(),
        None,
    );
    let manifest = oci_client::manifest::OciImageManifest::build(&layers, &config, None);
    let client = client();
    client
        .push(
            &parsed,
            &layers,
            config,
            &RegistryAuth::Anonymous,
            Some(manifest),
        )
        .await?;
    pushed(&client, &parsed, &RegistryAuth::Anonymous).await
}

/// Pushes a multi-platform index (format 4) of `entries`: (manifest, os, architecture).
pub async fn push_index(
    reference: &str,
    entries: &[(Pushed, &str, &str)],
) -> anyhow::Result<Pushed> {
    use oci_client::manifest::{ImageIndexEntry, OciImageIndex, Platform};
    let parsed: Reference = reference.parse()?;
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE.into()),
        manifests: entries
            .iter()
            .map(|(m, os, arch)| ImageIndexEntry {
                media_type: oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.into(),
                digest: m.digest.clone(),
                size: m.size,
                platform: Some(Platform {
                    architecture: (*arch).into(),
                    os: (*os).into(),
                    os_version: None,
                    os_features: None,
                    variant: None,
                    features: None,
                }),
                annotations: None,
                artifact_type: None,
            })
            .collect(),
        artifact_type: None,
        annotations: None,
    };
    let client = client();
    client
        .push_manifest_list(&parsed, &RegistryAuth::Anonymous, index)
        .await?;
    pushed(&client, &parsed, &RegistryAuth::Anonymous).await
}

/// Where a registry keeps the blob `digest` on disk (distribution's filesystem driver).
pub fn blob_data_path(registry_dir: &std::path::Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    registry_dir
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}
