//! [`WasiRuntime`]: the kubelet's [`Runtime`] on wasmtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::BoxFuture;
use kubelet::runtime::{
    ContainerSpec, RunningContainer, Runtime, RuntimeError, Termination, Usage,
};
use tokio::sync::oneshot;

use crate::engine::WasmEngine;
use crate::metrics::WasiMetrics;
use crate::module::Program;
use crate::run::{Exit, Mount, RunSpec};

/// Runs containers as WASI programs; compiles each program once per process.
#[derive(Clone)]
pub struct WasiRuntime {
    engine: WasmEngine,
    programs: Arc<Mutex<HashMap<String, Program>>>,
    metrics: WasiMetrics,
}

impl WasiRuntime {
    /// A runtime on `engine`.
    pub fn new(engine: WasmEngine) -> Self {
        Self {
            engine,
            programs: Arc::default(),
            metrics: WasiMetrics::default(),
        }
    }

    /// The compiled program for `spec`, from the cache or compiled now (off the async threads:
    /// compiling is CPU-bound).
    async fn program(&self, spec: &ContainerSpec) -> Result<Program, RuntimeError> {
        let key = spec.program_digest.clone();
        if let Some(program) = self
            .programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            self.metrics.hit("memory");
            return Ok(program.clone());
        }
        let compile_started = std::time::Instant::now();
        let engine = self.engine.clone();
        let path = spec.program.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Program::compile(&engine, &bytes).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| create_error(format!("compiling the program panicked: {e}")))?
        .map_err(create_error)?;
        self.metrics
            .compile_seconds
            .observe(compile_started.elapsed().as_secs_f64());
        self.programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, compiled.clone());
        Ok(compiled)
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
            let program = self.program(&spec).await?;
            let usage = Arc::new(Usage::default());
            let run = RunSpec {
                args: spec.args,
                env: spec.env,
                mounts: spec
                    .mounts
                    .into_iter()
                    .map(|m| Mount { host_path: m.host_path, guest_path: m.container_path, read_only: m.read_only })
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
                        Err(error) => Termination::Trapped { exit_code: 128, message: error.to_string() },
                    },
                };
                let _ = exit_tx.send(termination);
            });
            Ok(RunningContainer { exit, kill, usage })
        }
        .boxed()
    }
}
