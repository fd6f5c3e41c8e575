//! [`WasiRuntime`]: the kubelet's [`Runtime`] on wasmtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};

use futures::FutureExt;
use futures::future::BoxFuture;
use kubelet::runtime::{
    ContainerSpec, ExecSpec, RunningContainer, Runtime, RuntimeError, Termination, Usage,
};
use tokio::sync::oneshot;

use crate::cache::{CacheLimits, CacheOutcome, CompileCache, DiskCache};
use crate::engine::WasmEngine;
use crate::http::{self, HttpState};
use crate::metrics::WasiMetrics;
use crate::module::{Code, Program};
use crate::pool::CompilePool;
use crate::run::{Exit, Mount, RunError, RunSpec, Stdio};
use wasmtime::component::{Component, Linker};

/// A linker for HTTP components, made on first use.
type HttpLinker = std::sync::OnceLock<Result<Arc<Linker<HttpState>>, String>>;

/// How the runtime keeps and compiles programs.
#[derive(Debug, Default)]
pub struct WasiOptions {
    /// The on-disk compile cache (directory and key), if any.
    pub disk: Option<DiskCache>,
    /// Memory and module size limits.
    pub limits: CacheLimits,
    /// Compilations at once (`--compile-concurrency`; 0 means 1).
    pub concurrency: usize,
    /// Whether a program's first start compiles it with Winch, then with Cranelift in the
    /// background (`--first-start-compiler=winch`).
    pub baseline_first_start: bool,
}

/// Runs containers as WASI programs; compiles each program once (see [`CompileCache`]), at
/// most a few at a time (see [`CompilePool`]).
#[derive(Clone)]
pub struct WasiRuntime {
    engine: WasmEngine,
    programs: Arc<CompileCache>,
    pool: Arc<CompilePool>,
    /// Background Cranelift compilations after first starts on Winch, one at a time, apart
    /// from `pool` so that they never hold up a start.
    optimizer: Arc<CompilePool>,
    metrics: WasiMetrics,
    /// The linkers for HTTP components, made at the first one (once per engine): on the
    /// serving engine, and on the on-demand one for components that do not fit a pool slot.
    http_linkers: Arc<[HttpLinker; 2]>,
}

impl WasiRuntime {
    /// A runtime on `engine` that keeps compiled programs in memory only.
    pub fn new(engine: WasmEngine) -> Self {
        Self::with_options(
            engine,
            WasiOptions {
                concurrency: 2,
                ..WasiOptions::default()
            },
        )
    }

    /// A runtime on `engine` with `options` (an on-disk cache, so a restarted process skips
    /// compilation; limits; compile concurrency).
    pub fn with_options(engine: WasmEngine, options: WasiOptions) -> Self {
        Self {
            programs: Arc::new(
                CompileCache::new(engine.clone(), options.disk, options.limits)
                    .with_baseline_first_start(options.baseline_first_start),
            ),
            pool: Arc::new(CompilePool::new(options.concurrency)),
            optimizer: Arc::new(CompilePool::new(1)),
            engine,
            metrics: WasiMetrics::default(),
            http_linkers: Arc::default(),
        }
    }

    /// The compiled program for `spec` and where it came from (on the compile pool: compiling
    /// and loading are CPU-bound).
    async fn program(
        &self,
        path: &std::path::Path,
        digest: &str,
    ) -> Result<(Program, CacheOutcome), RuntimeError> {
        let digest = digest.to_string();
        let started = std::time::Instant::now();
        let found = match self.programs.in_memory(&digest) {
            Some(program) => (program, CacheOutcome::Memory),
            None => {
                let (cache, path, key) =
                    (self.programs.clone(), path.to_path_buf(), digest.clone());
                self.pooled(move || cache.get(&key, &path)).await?
            }
        };
        match found.1 {
            CacheOutcome::Compiled | CacheOutcome::Baseline => self
                .metrics
                .compile_seconds
                .observe(started.elapsed().as_secs_f64()),
            outcome => self.metrics.hit(outcome.as_str()),
        }
        if found.1 == CacheOutcome::Baseline {
            self.optimize_later(&digest, path);
        }
        if !matches!(found.1, CacheOutcome::Compiled | CacheOutcome::Baseline) {
            tracing::info!(
                "compile cache hit ({}) for {digest} in {:?}",
                found.1.as_str(),
                started.elapsed()
            );
        }
        Ok(found)
    }
}

impl WasiRuntime {
    /// Compiles the program of `digest` with Cranelift in the background (one at a time),
    /// after its first start ran on Winch's code.
    fn optimize_later(&self, digest: &str, path: &std::path::Path) {
        let (cache, pool, digest, path) = (
            self.programs.clone(),
            self.optimizer.clone(),
            digest.to_string(),
            path.to_path_buf(),
        );
        tokio::spawn(async move {
            let key = digest.clone();
            match pool.run(move || cache.optimize(&key, &path)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(
                    %digest, %error,
                    "cannot compile the program with Cranelift; its next start tries again"
                ),
                Err(error) => tracing::warn!(%digest, %error, "the compile pool failed"),
            }
        });
    }

    /// The program of `digest` compiled with Cranelift, now (on the compile pool).
    async fn optimized(
        &self,
        digest: &str,
        path: &std::path::Path,
    ) -> Result<Program, RuntimeError> {
        let (cache, digest, path) = (
            self.programs.clone(),
            digest.to_string(),
            path.to_path_buf(),
        );
        self.pooled(move || cache.optimize(&digest, &path)).await
    }

    /// Runs the blocking `job` on the compile pool; either failure is a create error.
    async fn pooled<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, E> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        self.pool
            .run(job)
            .await
            .map_err(|e| create_error(e.to_string()))?
            .map_err(|e| create_error(e.to_string()))
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

    fn forget_programs(&self, digests: &[String]) {
        self.programs.forget(digests);
    }

    fn retain_programs(&self, keep: &std::collections::HashSet<String>) {
        self.programs.retain(keep);
    }

    fn warm_up(&self) {
        self.programs.warm_up();
    }

    fn start(&self, spec: ContainerSpec) -> BoxFuture<'_, Result<RunningContainer, RuntimeError>> {
        async move {
            let (program, _outcome) = self.program(&spec.program, &spec.program_digest).await?;
            if let Code::Component(component) = program.code()
                && !exports_cli_run(component)
            {
                if http::is_http_component(component) {
                    // Served from the pooling engine, where only Cranelift's code can move.
                    let component = if self.programs.is_baseline(&program) {
                        let optimized = self.optimized(&spec.program_digest, &spec.program).await?;
                        let Code::Component(component) = optimized.code().clone() else {
                            return Err(create_error(
                                "the image's program is no longer a component".into(),
                            ));
                        };
                        component
                    } else {
                        component.clone()
                    };
                    let served = self.for_serving(&spec.program_digest, &component).await?;
                    return self.serve_http(&served, spec);
                }
                return Err(create_error(
                    "the component exports neither wasi:cli/run (a command) nor \
                     wasi:http/incoming-handler (an HTTP component), so there is nothing to \
                     run: build it for the wasi:cli/command or the wasi:http/proxy world"
                        .into(),
                ));
            }
            let usage = Arc::new(Usage::default());
            usage.limits.set(spec.limits);
            let run = RunSpec {
                args: spec.args,
                env: spec.env,
                mounts: guest_mounts(spec.mounts),
                stdio: match spec.stdin {
                    Some(stdin) => Stdio::Attached {
                        log: spec.log,
                        stdin,
                        tty: spec.tty,
                    },
                    None => Stdio::Log(spec.log),
                },
                limits: spec.limits,
                usage: usage.clone(),
                network: spec.guest_network,
            };
            Ok(self.launch(program, run, usage))
        }
        .boxed()
    }

    fn exec(&self, spec: ExecSpec) -> BoxFuture<'_, Result<RunningContainer, RuntimeError>> {
        async move {
            let (program, _outcome) = self.program(&spec.program, &spec.program_digest).await?;
            if let Code::Component(component) = program.code()
                && !exports_cli_run(component)
            {
                return Err(RuntimeError {
                    reason: "ExecNotSupported",
                    message: "this container's program is a component without wasi:cli/run \
                              (an HTTP component, say): it has no command to exec; exec into \
                              a container whose program is a command"
                        .into(),
                });
            }
            let usage = Arc::new(Usage::default());
            let run = RunSpec {
                args: spec.args,
                env: spec.env,
                mounts: guest_mounts(spec.mounts),
                stdio: Stdio::Streams(spec.io),
                limits: spec.limits,
                usage: usage.clone(),
                // The container's sockets: same namespace, grants and DNS.
                network: spec.guest_network,
            };
            Ok(self.launch(program, run, usage))
        }
        .boxed()
    }
}

/// The kubelet's mounts as the run's preopens.
fn guest_mounts(mounts: Vec<kubelet::runtime::Mount>) -> Vec<Mount> {
    mounts
        .into_iter()
        .map(|m| Mount {
            dir: m.dir,
            host_path: m.host_path,
            guest_path: m.container_path,
            read_only: m.read_only,
        })
        .collect()
}

/// Whether a component exports `wasi:cli/run` (at any version): a command, which exec can run.
fn exports_cli_run(component: &wasmtime::component::Component) -> bool {
    component
        .component_type()
        .exports(component.engine())
        .any(|(name, _)| name.starts_with("wasi:cli/run"))
}

impl WasiRuntime {
    /// `component` on the serving engine (see [`CompileCache::for_serving`]): at once when
    /// it was moved before, else on the compile pool, as moving it is CPU-bound.
    async fn for_serving(
        &self,
        digest: &str,
        component: &Component,
    ) -> Result<Component, RuntimeError> {
        if let Some(served) = self.programs.served(digest, component) {
            return Ok(served);
        }
        let (cache, digest, component) =
            (self.programs.clone(), digest.to_string(), component.clone());
        self.pooled(move || cache.for_serving(&digest, &component))
            .await
    }

    /// The linker for HTTP components on `engine` (the serving or the on-demand engine).
    fn http_linker(
        &self,
        engine: &wasmtime::Engine,
    ) -> Result<Arc<Linker<HttpState>>, RuntimeError> {
        let pooled = wasmtime::Engine::same(engine, self.engine.serving());
        self.http_linkers[usize::from(pooled)]
            .get_or_init(|| {
                http::linker(engine)
                    .map(Arc::new)
                    .map_err(|e| format!("cannot link wasi:http: {e:#}"))
            })
            .clone()
            .map_err(create_error)
    }

    /// Serves an HTTP component on the container's ports (see [`http`]): Running while it
    /// serves; a graceful stop drains it.
    fn serve_http(
        &self,
        component: &Component,
        spec: ContainerSpec,
    ) -> Result<RunningContainer, RuntimeError> {
        if spec.ports.tcp.is_empty() {
            return Err(create_error(
                "the program is an HTTP component (it exports wasi:http/incoming-handler) but \
                 the container declares no TCP port to serve it on: add \
                 `ports: [{containerPort: 8080}]` to the container"
                    .into(),
            ));
        }
        let pre = http::prepare(&*self.http_linker(component.engine())?, component)
            .map_err(|e| create_error(format!("cannot serve the HTTP component: {e:#}")))?;
        // Opened by the kubelet's pod network, before the container counts as started.
        let listeners = spec.ports.listen()?;
        let usage = Arc::new(Usage::default());
        usage.limits.set(spec.limits);
        let log = spec.log.clone();
        let server = http::Server::new(
            pre,
            http::Template {
                args: spec.args,
                env: spec.env,
                mounts: guest_mounts(spec.mounts),
                log: spec.log,
                network: spec.guest_network,
            },
            usage.clone(),
            spec.http,
        )
        .map_err(|e| create_error(e.to_string()))?;
        let (exit_tx, exit) = oneshot::channel();
        let (kill, killed) = oneshot::channel::<()>();
        let (stop, stopped) = oneshot::channel::<()>();
        let instance = self.metrics.instance();
        tokio::spawn(async move {
            let _instance = instance;
            let termination = tokio::select! {
                // Dropping the server stops every instance at its next epoch.
                _ = killed => Termination::Killed,
                () = server.serve(listeners, stopped) => Termination::Exited(0),
            };
            let _ = log.finish();
            let _ = exit_tx.send(termination);
        });
        Ok(RunningContainer {
            exit,
            kill,
            stop: Some(stop),
            usage,
        })
    }

    /// Runs `program` on its own task; the handle reports its end and stops it on request.
    fn launch(&self, program: Program, run: RunSpec, usage: Arc<Usage>) -> RunningContainer {
        let (exit_tx, exit) = oneshot::channel();
        let (kill, killed) = oneshot::channel::<()>();
        tokio::spawn(GuestTask {
            run: Some(self.engine.run(&program, run)),
            killed,
            exit: Some(exit_tx),
            _instance: self.metrics.instance(),
        });
        RunningContainer {
            exit,
            kill,
            stop: None,
            usage,
        }
    }
}

pin_project_lite::pin_project! {
    /// A guest's task: runs the guest until it ends or `killed` fires (or its sender is
    /// dropped), and sends how it ended. A future of its own rather than an `async` block: one
    /// would keep the run's future twice (the captured one and the one awaited), for as long as
    /// the guest sleeps.
    struct GuestTask<F> {
        #[pin]
        run: Option<F>,
        killed: oneshot::Receiver<()>,
        exit: Option<oneshot::Sender<Termination>>,
        // Counts the instance until the task ends.
        _instance: crate::metrics::InstanceGuard,
    }
}

impl<F: Future<Output = Result<Exit, RunError>>> Future for GuestTask<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(run) = this.run.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        let termination = if Pin::new(this.killed).poll(cx).is_ready() {
            Termination::Killed
        } else {
            match ready!(run.poll(cx)) {
                Ok(Exit::Code(code)) => Termination::Exited(code),
                Ok(Exit::Trap(message)) => Termination::Trapped {
                    exit_code: 1,
                    message,
                },
                Ok(Exit::OomKilled(exceeded)) => Termination::OomKilled {
                    message: exceeded.to_string(),
                },
                Err(error) => Termination::StartFailed {
                    message: error.to_string(),
                },
            }
        };
        // Dropping the run stops the guest at its next epoch yield (and drops an exec's stdio
        // senders, which ends its output): done before the end is sent.
        this.run.set(None);
        if let Some(exit) = this.exit.take() {
            let _ = exit.send(termination);
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NEXT_LOG: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    fn spec(dir: &std::path::Path, program: &std::path::Path, ports: Vec<u16>) -> ContainerSpec {
        ContainerSpec {
            id: "t".into(),
            program: program.to_path_buf(),
            program_digest: format!("sha256:{}", program.display()),
            args: vec!["prog".into()],
            env: vec![],
            mounts: vec![],
            limits: kubelet::runtime::Limits::default(),
            log: kubelet::log::writer::CriLogWriter::create(&dir.join(format!(
                "{}.log",
                NEXT_LOG.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )))
            .expect("log"),
            ports: kubelet::runtime::ContainerPorts {
                tcp: ports,
                network: Some(kubelet::network::NodeNetwork::new(std::net::IpAddr::from(
                    [127, 0, 0, 1],
                ))),
            },
            http: kubelet::runtime::HttpLimits::default(),
            guest_network: None,
            stdin: None,
            tty: false,
        }
    }

    #[tokio::test]
    async fn components_are_run_served_or_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = WasiRuntime::new(WasmEngine::new().expect("engine"));
        let empty = dir.path().join("empty.wasm");
        std::fs::write(&empty, wat::parse_str("(component)").expect("wat")).expect("write");
        let refused = runtime
            .start(spec(dir.path(), &empty, vec![]))
            .await
            .err()
            .expect("neither export");
        assert_eq!(refused.reason, "CreateContainerError");
        assert!(
            refused.message.contains("neither wasi:cli/run"),
            "{}",
            refused.message
        );
        let http = krustlet_test_workloads::http_component().unwrap_or_else(|e| panic!("{e}"));
        let portless = runtime
            .start(spec(dir.path(), &http, vec![]))
            .await
            .err()
            .expect("no port");
        assert!(
            portless.message.contains("declares no TCP port"),
            "{}",
            portless.message
        );
        // A port someone holds: the conflict, before anything runs.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let conflict = runtime
            .start(spec(dir.path(), &http, vec![port]))
            .await
            .err()
            .expect("conflict");
        assert_eq!(conflict.reason, "PortInUse", "{}", conflict.message);
        drop(taken);
        // Served: Running until a graceful stop, which ends it at once when idle.
        let mut running = runtime
            .start(spec(dir.path(), &http, vec![port]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let stop = running
            .stop
            .take()
            .expect("an HTTP server stops gracefully");
        assert!(running.exit.try_recv().is_err(), "still serving");
        stop.send(()).expect("stop");
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), running.exit)
            .await
            .expect("drained")
            .expect("exit");
        assert_eq!(ended, Termination::Exited(0));
    }

    #[test]
    fn only_command_components_can_be_execd() {
        let engine = WasmEngine::new().expect("engine");
        let empty =
            wasmtime::component::Component::new(engine.engine(), "(component)").expect("component");
        assert!(!exports_cli_run(&empty));
        let path = krustlet_test_workloads::multitool_component().unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(path).expect("read");
        let Code::Component(command) = Program::compile(&engine, &bytes)
            .expect("compile")
            .code()
            .clone()
        else {
            panic!("not a component");
        };
        assert!(exports_cli_run(&command));
    }
}
