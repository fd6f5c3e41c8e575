//! Krustlet's WebAssembly runtime on wasmtime.
//!
//! Runs WASI preview-1 *modules* and preview-2 *command components* with the host resources a
//! kubelet hands a container: argv, environment, preopened directories for volume mounts and
//! files for stdout/stderr. It knows nothing of Kubernetes; the `kubelet` crate drives it.
//!
//! - [`engine`]: the one wasmtime [`wasmtime::Engine`] per process and its epoch ticker.
//! - [`module`]: compiling bytes into a [`Program`], telling modules from components.
//! - [`cache`]: compiled programs kept in memory (LRU) and on disk (authenticated with the
//!   node's [`key`]), keyed by digest and engine; [`pool`] bounds compilations at once.
//! - [`http`]: serving `wasi:http/incoming-handler` components, an instance per request;
//!   [`outgoing`]: their outgoing requests, under the pod's DNS, grants and namespace.
//! - [`run`]: running a [`Program`] to completion with a [`RunSpec`], yielding an [`Exit`].
//! - [`memory`]: `limits.memory` through a resource limiter; `cpu` (private): CPU accounting and
//!   `limits.cpu` throttling at epoch ticks.

pub mod cache;
mod cpu;
pub mod engine;
pub mod exec_io;
pub mod http;
pub mod key;
mod link;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod module;
pub mod name_lookup;
pub mod outgoing;
pub mod pool;
pub mod run;
pub mod runtime;

pub use cache::{CacheError, CacheLimits, CacheOutcome, CompileCache, DiskCache};
pub use engine::WasmEngine;
pub use key::CacheKey;
pub use module::{Code, Program, ProgramKind};
pub use pool::CompilePool;
pub use run::{Exit, Mount, RunError, RunSpec, Stdio};
pub use runtime::{WasiOptions, WasiRuntime};

/// The wasmtime version this runtime embeds.
pub const WASMTIME_VERSION: &str = wasmtime_environ::VERSION;

/// The node's `containerRuntimeVersion`, as CRI runtimes report `<name>://<version>`.
pub fn runtime_version() -> String {
    format!("wasmtime://{WASMTIME_VERSION}")
}
