//! Krustlet's test workloads: C programs built to WebAssembly with Debian's clang-14 and
//! wasi-libc, plus preview-2 components made from them with the preview-1 adapter.
//!
//! Builds happen on first use and are cached by content hash under
//! `$KRUSTLET_CACHE/workloads` (default `~/.cache/krustlet/workloads`), so tests and the dev
//! cluster share them and rebuild only when a source changes.
//!
//! ```no_run
//! let wasm = krustlet_test_workloads::multitool().unwrap();
//! let component = krustlet_test_workloads::multitool_component().unwrap();
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The C compiler; Debian's `clang-14` targets `wasm32-wasi` with `lld-14` and `wasi-libc`.
const CLANG: &str = "clang-14";
const CFLAGS: &[&str] = &[
    "--target=wasm32-wasi",
    "-O2",
    "-fuse-ld=lld",
    "-Wall",
    "-Wextra",
    "-Wno-infinite-recursion",
    "-Wl,--strip-debug",
];
const MULTITOOL_C: &str = include_str!("multitool.c");

/// Why a workload could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    /// A build tool is not installed; the message names the Debian packages to install.
    #[error(
        "prerequisite missing: {tool} ({why}); install it with `apt-get install clang-14 lld-14 \
         wasi-libc libclang-rt-14-dev-wasm32` or run `.ci/run`"
    )]
    MissingTool {
        /// The program that failed to run.
        tool: String,
        /// The OS error.
        why: String,
    },
    /// The compiler ran and failed.
    #[error("building {name} failed:\n{output}")]
    Compile {
        /// The workload.
        name: String,
        /// The compiler's output.
        output: String,
    },
    /// The component encoder rejected the module.
    #[error("making a component of {name} failed: {why}")]
    Component {
        /// The workload.
        name: String,
        /// wit-component's reason.
        why: String,
    },
    /// Writing the cache failed.
    #[error("cannot write {path}: {why}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        why: String,
    },
}

/// The directory where built workloads are cached.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("KRUSTLET_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir)
                .join(".cache/krustlet")
        });
    base.join("workloads")
}

/// The multitool as a WASI preview-1 module (see `multitool.c` for its commands).
pub fn multitool() -> Result<PathBuf, BuildError> {
    static BUILT: OnceLock<Result<PathBuf, BuildError>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_module("multitool", MULTITOOL_C))
        .clone()
}

/// The multitool as a WASI preview-2 command component.
pub fn multitool_component() -> Result<PathBuf, BuildError> {
    static BUILT: OnceLock<Result<PathBuf, BuildError>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let module = multitool()?;
            build_component("multitool", &module)
        })
        .clone()
}

fn hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |e| BuildError::Io {
        path: path.to_owned(),
        why: e.to_string(),
    }
}

/// Writes `bytes` to `path` through a temp file and a rename, so that concurrent builders and
/// interrupted builds never leave a truncated workload behind.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

fn build_module(name: &str, source: &str) -> Result<PathBuf, BuildError> {
    let dir = cache_dir();
    let out = dir.join(format!(
        "{name}-{}.wasm",
        hash(&[source.as_bytes(), CFLAGS.join(" ").as_bytes()])
    ));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let src = dir.join(format!("{name}.{}.c", std::process::id()));
    std::fs::write(&src, source).map_err(io_error(&src))?;
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let result = Command::new(CLANG)
        .args(CFLAGS)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output();
    let _ = std::fs::remove_file(&src);
    let output = result.map_err(|e| BuildError::MissingTool {
        tool: CLANG.into(),
        why: e.to_string(),
    })?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        // clang itself is there but its wasm sysroot, linker or runtime library is not.
        if text.contains("wasm-ld") || text.contains("No such file") || text.contains("not found") {
            return Err(BuildError::MissingTool {
                tool: "lld-14, wasi-libc or libclang-rt-14-dev-wasm32".into(),
                why: text,
            });
        }
        return Err(BuildError::Compile {
            name: name.into(),
            output: text,
        });
    }
    std::fs::rename(&tmp, &out).map_err(io_error(&out))?;
    Ok(out)
}

fn build_component(name: &str, module: &Path) -> Result<PathBuf, BuildError> {
    use wasi_preview1_component_adapter_provider::{
        WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    };
    let bytes = std::fs::read(module).map_err(io_error(module))?;
    let out = cache_dir().join(format!(
        "{name}-component-{}.wasm",
        hash(&[&bytes, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER])
    ));
    if out.exists() {
        return Ok(out);
    }
    let component_error = |e: anyhow::Error| BuildError::Component {
        name: name.into(),
        why: format!("{e:#}"),
    };
    let component = wit_component::ComponentEncoder::default()
        .module(&bytes)
        .map_err(component_error)?
        .validate(true)
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        )
        .map_err(component_error)?
        .encode()
        .map_err(component_error)?;
    write_atomic(&out, &component)?;
    Ok(out)
}
