//! [`WasiRuntime`]: the kubelet's [`Runtime`] on wasmtime.

use std::path::PathBuf;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use kubelet::runtime::{
    ContainerSpec, RunningContainer, Runtime, RuntimeError, Termination, Usage,
};
use tokio::sync::oneshot;

use crate::cache::{CacheOutcome, CompileCache};
use crate::engine::WasmEngine;
use crate::metrics::WasiMetrics;
use crate::module::Program;
use crate::run::{Exit, Mount, RunSpec};

/// Runs containers as WASI programs; compiles each program once (see [`CompileCache`]).
#[derive(Clone)]
pub struct WasiRuntime {
    engine: WasmEngine,
    programs: Arc<CompileCache>,
    metrics: WasiMetrics,
}

impl WasiRuntime {
    /// A runtime on `engine` that keeps compiled programs in memory only.
    pub fn new(engine: WasmEngine) -> Self {
        Self {
            programs: Arc::new(CompileCache::new(engine.clone(), None)),
            engine,
            metrics: WasiMetrics::default(),
        }
    }

    /// A runtime on `engine` that also keeps compiled programs under `dir`, so a restarted
    /// process skips compilation.
    pub fn with_compile_cache(engine: WasmEngine, dir: PathBuf) -> Self {
        Self {
            programs: Arc::new(CompileCache::new(engine.clone(), Some(dir))),
            engine,
            metrics: WasiMetrics::default(),
        }
    }

    /// The compiled program for `spec` and where it came from (off the async threads:
    /// compiling and loading are CPU-bound).
    async fn program(&self, spec: &ContainerSpec) -> Result<(Program, CacheOutcome), RuntimeError> {
        let digest = spec.program_digest.clone();
        let started = std::time::Instant::now();
        let found = match self.programs.in_memory(&digest) {
            Some(program) => (program, CacheOutcome::Memory),
            None => {
                let (cache, path, key) =
                    (self.programs.clone(), spec.program.clone(), digest.clone());
                tokio::task::spawn_blocking(move || cache.get(&key, &path))
                    .await
                    .map_err(|e| create_error(format!("compiling the program panicked: {e}")))?
                    .map_err(create_error)?
            }
        };
        match found.1 {
            CacheOutcome::Compiled => self
                .metrics
                .compile_seconds
                .observe(started.elapsed().as_secs_f64()),
            outcome => self.metrics.hit(outcome.as_str()),
        }
        if found.1 != CacheOutcome::Compiled {
            tracing::info!(
                "compile cache hit ({}) for {digest} in {:?}",
                found.1.as_str(),
                started.elapsed()
            );
        }
        Ok(found)
    }
}

fn create_error(message: String) -> RuntimeError {
    RuntimeError {
        reason: "CreateContainerError",
        message,
    }
}

impl Runtime for WasiRuntime {
    fn version(&self) -> String {
        crate::runtime_version()
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    fn start(&self, spec: ContainerSpec) -> BoxFuture<'_, Result<RunningContainer, RuntimeError>> {
        async move {
            let (program, _outcome) = self.program(&spec).await?;
            let usage = Arc::new(Usage::default());
            let run = RunSpec {
                args: spec.args,
                env: spec.env,
                mounts: spec
                    .mounts
                    .into_iter()
                    .map(|m| Mount { dir: m.dir, host_path: m.host_path, guest_path: m.container_path, read_only: m.read_only })
                    .collect(),
                log: spec.log,
                limits: spec.limits,
                usage: usage.clone(),
            };
            let (exit_tx, exit) = oneshot::channel();
            let (kill, killed) = oneshot::channel::<()>();
            let engine = self.engine.clone();
            let instance = self.metrics.instance();
            tokio::spawn(async move {
                let _instance = instance;
                let termination = tokio::select! {
                    // Dropping the run future stops the guest at its next epoch yield.
                    _ = killed => Termination::Killed,
                    result = engine.run(&program, run) => match result {
                        Ok(Exit::Code(code)) => Termination::Exited(code),
                        Ok(Exit::Trap(message)) => Termination::Trapped { exit_code: 1, message },
                        Ok(Exit::OomKilled(exceeded)) => Termination::OomKilled { message: exceeded.to_string() },
                        Err(error) => Termination::StartFailed { message: error.to_string() },
                    },
                };
                let _ = exit_tx.send(termination);
            });
            Ok(RunningContainer { exit, kill, usage })
        }
        .boxed()
    }
}
