//! Publishing and reading wasm artifacts in the loopback registries.

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

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
