//! Image formats: which of the layouts Krustlet runs a manifest is, the platform of an image or
//! index entry, and unpacking the wasm files out of ordinary image layers.
//!
//! 1. CNCF Wasm artifact (layer `application/wasm`), 2. wasm-to-oci (layer
//!    `application/vnd.wasm.content.layer.v1+wasm`): the layer is the program.
//! 3. An ordinary OCI/Docker image whose config says `wasi/wasm`: tar(+gzip) layers, the program
//!    is the file the entrypoint names.
//! 4. A multi-platform index: its `wasi/wasm` entry is one of the above.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use serde::Deserialize;

use super::ImageError;
use super::limits::{Budget, Limit, LimitedReader, PullLimits};
use super::store::Store;

/// Layer media types that hold a wasm module or component.
pub const WASM_LAYER_MEDIA_TYPES: &[&str] = &[
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

/// Config media types of ordinary container images.
const IMAGE_CONFIG_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// The platform Krustlet runs, as image indexes and configs name it.
pub const WASM_PLATFORM: &str = "wasi/wasm";

/// What a single-platform manifest holds.
#[derive(Debug, Clone)]
pub enum Layout {
    /// Formats 1 and 2: this layer is the program.
    Wasm(OciDescriptor),
    /// Format 3: an image config and filesystem layers.
    Image {
        /// The config blob.
        config: OciDescriptor,
        /// The layers, lowest first.
        layers: Vec<OciDescriptor>,
    },
}

/// Tells which layout `manifest` is, or why it is none Krustlet runs.
pub fn classify(image: &str, manifest: &OciImageManifest) -> Result<Layout, ImageError> {
    if let Some(layer) = manifest
        .layers
        .iter()
        .find(|l| WASM_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
    {
        return Ok(Layout::Wasm(layer.clone()));
    }
    if IMAGE_CONFIG_MEDIA_TYPES.contains(&manifest.config.media_type.as_str()) {
        return Ok(Layout::Image {
            config: manifest.config.clone(),
            layers: manifest.layers.clone(),
        });
    }
    Err(ImageError::NotWasm {
        image: image.into(),
        found: format!(
            "config of media type {:?} and layers of media types {:?}",
            manifest.config.media_type,
            manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
        ),
    })
}

/// Whether `os`/`architecture` is a WebAssembly platform (`wasi/wasm`, or `wasip1`/`wasip2`).
pub fn is_wasm_platform(os: &str, architecture: &str) -> bool {
    os.starts_with("wasi") && matches!(architecture, "wasm" | "wasm32")
}

/// The digest of an index's WebAssembly entry; else an error naming the platforms it has.
pub fn choose_platform(image: &str, index: &OciImageIndex) -> Result<String, ImageError> {
    let mut platforms = Vec::new();
    for entry in &index.manifests {
        match &entry.platform {
            Some(p) => {
                let (os, arch) = (p.os.to_string(), p.architecture.to_string());
                if is_wasm_platform(&os, &arch) {
                    return Ok(entry.digest.clone());
                }
                let mut name = format!("{os}/{arch}");
                if let Some(variant) = &p.variant {
                    name = format!("{name}/{variant}");
                }
                platforms.push(name);
            }
            // An entry without a platform may be a wasm artifact (its artifactType says so).
            None if entry
                .artifact_type
                .as_deref()
                .is_some_and(|t| t.contains("wasm")) =>
            {
                return Ok(entry.digest.clone());
            }
            None => platforms.push("unknown".into()),
        }
    }
    platforms.dedup();
    Err(ImageError::WrongPlatform {
        image: image.into(),
        platform: if platforms.is_empty() {
            "no platform at all (the index is empty)".into()
        } else {
            platforms.join(", ")
        },
    })
}

/// The parts of an OCI/Docker image config that matter here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    /// `os`, e.g. `linux` or `wasi`.
    #[serde(default)]
    pub os: String,
    /// `architecture`, e.g. `amd64` or `wasm`.
    #[serde(default)]
    pub architecture: String,
    /// The runtime config.
    #[serde(default)]
    pub config: RunConfig,
}

/// The image config's `config` object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
}

impl ImageConfig {
    /// Parses a config blob and checks that it is for WebAssembly.
    pub fn parse_wasm(image: &str, bytes: &[u8]) -> Result<Self, ImageError> {
        let config: Self = serde_json::from_slice(bytes).map_err(|e| ImageError::NotWasm {
            image: image.into(),
            found: format!("an image config that does not parse: {e}"),
        })?;
        if !is_wasm_platform(&config.os, &config.architecture) {
            return Err(ImageError::WrongPlatform {
                image: image.into(),
                platform: format!("{}/{}", config.os, config.architecture),
            });
        }
        Ok(config)
    }
}

/// Normalises a path in a layer to an absolute image path (`./bin/x` -> `/bin/x`).
fn image_path(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    format!("/{}", parts.join("/"))
}

/// Applies `layers` (tar, or tar+gzip by media type or magic) in order and stores every regular
/// file that is WebAssembly as a blob; returns image path -> blob digest. Whiteouts (`.wh.`
/// files) delete what lower layers put there, as the OCI layer spec says.
///
/// Nothing is held in memory: files stream into the store. The layers together may decompress
/// to at most `limits.max_unpacked_bytes` and one wasm file may be at most
/// `limits.max_module_bytes`, so a small gzip bomb ends as an error, not as a full disk or an
/// out-of-memory node.
pub fn unpack_wasm_files(
    image: &str,
    store: &Store,
    layers: &[(OciDescriptor, std::path::PathBuf)],
    limits: &PullLimits,
) -> Result<BTreeMap<String, String>, ImageError> {
    let unpacked = Budget::new(Limit::Unpacked, limits.max_unpacked_bytes);
    let too_large = |exceeded| ImageError::TooLarge {
        image: image.into(),
        exceeded,
    };
    let mut files = BTreeMap::new();
    for (layer, path) in layers {
        let bad_layer = |message: String| match unpacked.exceeded() {
            Some(exceeded) => too_large(exceeded),
            None => ImageError::NotWasm {
                image: image.into(),
                found: format!("layer {} that cannot be unpacked: {message}", layer.digest),
            },
        };
        let mut file = std::fs::File::open(path).map_err(super::store::store_error(path))?;
        let mut magic = [0u8; 2];
        let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
        let file = std::fs::File::open(path).map_err(super::store::store_error(path))?;
        let reader: Box<dyn Read> = if gzip || layer.media_type.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut archive = tar::Archive::new(LimitedReader::new(reader, unpacked.clone()));
        for entry in archive.entries().map_err(|e| bad_layer(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad_layer(e.to_string()))?;
            let entry_path = entry.path().map_err(|e| bad_layer(e.to_string()))?;
            let name = image_path(&entry_path);
            let (dir, base) = name.rsplit_once('/').unwrap_or(("", &name));
            if base == ".wh..wh..opq" {
                let prefix = format!("{dir}/");
                files.retain(|p: &String, _| !p.starts_with(&prefix));
                continue;
            }
            if let Some(hidden) = base.strip_prefix(".wh.") {
                let gone = format!("{dir}/{hidden}");
                let under = format!("{gone}/");
                files.retain(|p: &String, _| p != &gone && !p.starts_with(&under));
                continue;
            }
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let mut header = [0u8; 4];
            if entry.read_exact(&mut header).is_err() || header != *b"\0asm" {
                if let Some(exceeded) = unpacked.exceeded() {
                    return Err(too_large(exceeded));
                }
                files.remove(&name);
                continue;
            }
            let module = Budget::new(Limit::Module, limits.max_module_bytes);
            let mut content = LimitedReader::new((&header[..]).chain(&mut entry), module.clone());
            match store.put_blob_from(&mut content) {
                Ok(digest) => {
                    files.insert(name, digest);
                }
                Err(error) => {
                    return Err(match (module.exceeded(), unpacked.exceeded()) {
                        (Some(exceeded), _) | (None, Some(exceeded)) => too_large(exceeded),
                        (None, None) => error,
                    });
                }
            }
        }
        if let Some(exceeded) = unpacked.exceeded() {
            return Err(too_large(exceeded));
        }
    }
    Ok(files)
}

/// The image path a container runs: `argv0` as given if absolute, else found in `/` (images
/// built `FROM scratch` usually copy the program there).
pub fn resolve_program<'a>(
    files: &'a BTreeMap<String, String>,
    argv0: &str,
) -> Option<(&'a String, &'a String)> {
    let wanted = if argv0.starts_with('/') {
        image_path(Path::new(argv0))
    } else {
        image_path(&Path::new("/").join(argv0))
    };
    files.get_key_value(&wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        assert!(is_wasm_platform("wasi", "wasm"));
        assert!(is_wasm_platform("wasip1", "wasm"));
        assert!(!is_wasm_platform("linux", "amd64"));
        let config = br#"{"os":"linux","architecture":"amd64","config":{"Cmd":["/bin/sh"]}}"#;
        let error = ImageConfig::parse_wasm("x", config)
            .expect_err("linux")
            .to_string();
        assert!(error.contains("linux/amd64"), "{error}");
        let config = br#"{"os":"wasi","architecture":"wasm","config":{"Entrypoint":["/a.wasm"]}}"#;
        let parsed = ImageConfig::parse_wasm("x", config).expect("wasm");
        assert_eq!(parsed.config.entrypoint, Some(vec!["/a.wasm".to_string()]));
    }

    #[test]
    fn programs_resolve_from_root() {
        let files = BTreeMap::from([("/app/tool.wasm".to_string(), "sha256:1".to_string())]);
        assert!(resolve_program(&files, "/app/tool.wasm").is_some());
        assert!(resolve_program(&files, "app/tool.wasm").is_some());
        assert!(resolve_program(&files, "./app//tool.wasm").is_some());
        assert!(resolve_program(&files, "tool.wasm").is_none());
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use crate::image::limits::{Limit, PullLimits};

    fn layer(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (path, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, &content[..])
                .expect("append");
        }
        tar.into_inner().and_then(|gz| gz.finish()).expect("finish")
    }

    fn unpack(
        bytes: Vec<u8>,
        limits: PullLimits,
    ) -> (
        Result<BTreeMap<String, String>, ImageError>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("store");
        let path = dir.path().join("layer");
        std::fs::write(&path, bytes).expect("layer");
        let descriptor = OciDescriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            ..Default::default()
        };
        let result = unpack_wasm_files("img", &store, &[(descriptor, path)], &limits);
        (result, dir)
    }

    fn limit_of(result: Result<BTreeMap<String, String>, ImageError>) -> Limit {
        match result {
            Err(ImageError::TooLarge { exceeded, .. }) => exceeded.limit,
            other => panic!("not too large: {other:?}"),
        }
    }

    #[test]
    fn decompression_and_module_size_are_capped() {
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        wasm.resize(4096, 0);
        let limits = PullLimits {
            max_unpacked_bytes: 64 << 10,
            max_module_bytes: 8 << 10,
        };
        // Within both limits.
        let (ok, _dir) = unpack(layer(&[("app.wasm", wasm.clone())]), limits);
        assert!(ok.expect("unpacks").contains_key("/app.wasm"));
        // A small bomb: 1 MiB of zeros, a few KiB compressed, in a file that is not wasm.
        let bomb = layer(&[("zeros", vec![0; 1 << 20])]);
        assert!(bomb.len() < 16 << 10, "{} bytes", bomb.len());
        let (result, _dir) = unpack(bomb, limits);
        assert_eq!(limit_of(result), Limit::Unpacked);
        // A wasm file over the module limit, within the unpacked one.
        let mut big = wasm.clone();
        big.resize(16 << 10, 0);
        let (result, dir) = unpack(layer(&[("big.wasm", big)]), limits);
        assert_eq!(limit_of(result), Limit::Module);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("store/blobs/sha256"))
            .expect("blobs")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "no partial blob left: {left:?}");
        let message = ImageError::TooLarge {
            image: "img".into(),
            exceeded: crate::image::limits::LimitExceeded {
                limit: Limit::Unpacked,
                bytes: 1 << 30,
            },
        }
        .to_string();
        assert_eq!(
            message,
            "image \"img\" is too large: its layers decompress to more than 1Gi (1073741824 bytes), the limit set by --image-max-unpacked-size"
        );
    }
}
