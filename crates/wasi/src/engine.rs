//! The process-wide wasmtime engine.
//!
//! One [`wasmtime::Engine`] is shared by every pod: compiled code is only valid for the engine
//! configuration that produced it, and one engine lets modules be compiled once and reused.
//! Epoch interruption is always on, driven by a background ticker, so that every guest yields to
//! the async executor regularly and can be stopped even in a busy loop.
//!
//! HTTP components get a second engine of the same settings on wasmtime's pooling instance
//! allocator ([`WasmEngine::serving`]), as `wasmtime serve` does: an instance per request
//! then takes a warm slot instead of an `mmap`/`munmap` pair per memory and stack. It is made
//! at the first HTTP component only, because its slots reserve address space up front (1 000
//! of each kind, wasmtime's defaults, about 4 TiB of reservations) that 10 000 idle command pods
//! do not need; where the reservation fails (a 39-bit address space, a `ulimit -v`), HTTP
//! components run on the shared on-demand engine instead.
//!
//! A program's first start can also run on a third engine, [`WasmEngine::baseline`]: the same
//! settings with wasmtime's Winch compiler, a single-pass baseline compiler that compiles in a
//! fraction of Cranelift's time and makes slower code (on x86-64, where wasmtime supports it at
//! tier 1, as Cranelift). The compile cache uses it for a program it has never compiled and
//! then compiles it with Cranelift in the background for every later start (see
//! [`crate::cache`]).

use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use crate::link::Linkers;

/// How often the epoch advances; a running guest yields at least this often.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Errors building the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime rejected the configuration (a bug in Krustlet, or an unsupported host CPU).
    #[error("cannot configure the wasmtime engine: {0}")]
    Config(#[source] wasmtime::Error),
    /// The epoch ticker thread could not be started (the process is out of threads).
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(#[source] std::io::Error),
}

/// The shared wasmtime engine with its epoch ticker, and the linkers every run uses (made at
/// the first run: link once, instantiate many).
#[derive(Clone)]
pub struct WasmEngine {
    engine: wasmtime::Engine,
    linkers: Arc<OnceLock<Result<Linkers, String>>>,
    /// The pooling engine for HTTP components, made at the first (`None`: it could not be).
    serving: Arc<OnceLock<Option<wasmtime::Engine>>>,
    /// The Winch engine for first starts and its linkers, made at the first (`None`: it
    /// could not be).
    baseline: Arc<OnceLock<Option<Baseline>>>,
}

/// An engine on Winch and the run linkers on it.
struct Baseline {
    engine: wasmtime::Engine,
    linkers: OnceLock<Result<Linkers, String>>,
}

/// The settings both engines share; compiled code moves between engines of equal settings.
pub(crate) fn config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config
}

impl WasmEngine {
    /// Creates the engine: epoch interruption and a ticker thread that advances
    /// the epoch every [`EPOCH_TICK`] for as long as the engine is alive.
    pub fn new() -> Result<Self, EngineError> {
        let engine = wasmtime::Engine::new(&config()).map_err(EngineError::Config)?;
        let serving: Arc<OnceLock<Option<wasmtime::Engine>>> = Arc::default();
        let baseline: Arc<OnceLock<Option<Baseline>>> = Arc::default();
        let weak = engine.weak();
        let (ticked, ticked_baseline) = (serving.clone(), baseline.clone());
        thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                // Ends by itself once the last engine handle is dropped.
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    if let Some(Some(serving)) = ticked.get() {
                        serving.increment_epoch();
                    }
                    if let Some(Some(baseline)) = ticked_baseline.get() {
                        baseline.engine.increment_epoch();
                    }
                    drop(engine);
                    thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(EngineError::Ticker)?;
        Ok(Self {
            engine,
            linkers: Arc::default(),
            serving,
            baseline,
        })
    }

    /// The underlying wasmtime engine.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// The engine HTTP components are served on: the pooling engine, made on first use, or
    /// [`WasmEngine::engine`] if the pooling allocator cannot reserve its slots here.
    pub fn serving(&self) -> &wasmtime::Engine {
        self.serving
            .get_or_init(|| {
                let mut config = config();
                config.allocation_strategy(wasmtime::PoolingAllocationConfig::default());
                match wasmtime::Engine::new(&config) {
                    Ok(engine) => {
                        tracing::info!("HTTP components are served on the pooling allocator");
                        Some(engine)
                    }
                    Err(error) => {
                        tracing::warn!(
                            error = %format!("{error:#}"),
                            "the pooling allocator cannot reserve its slots here; HTTP \
                             components run on the on-demand allocator"
                        );
                        None
                    }
                }
            })
            .as_ref()
            .unwrap_or(&self.engine)
    }

    /// The Winch engine for first starts, made on first use; `None` where Winch cannot run
    /// with these settings (the log says why once).
    pub fn baseline(&self) -> Option<&wasmtime::Engine> {
        self.baseline_engine().map(|b| &b.engine)
    }

    fn baseline_engine(&self) -> Option<&Baseline> {
        self.baseline
            .get_or_init(|| {
                // Winch is a tier-1 compiler of wasmtime's on x86-64 only.
                if !cfg!(target_arch = "x86_64") {
                    return None;
                }
                let mut config = config();
                config.strategy(wasmtime::Strategy::Winch);
                match wasmtime::Engine::new(&config) {
                    Ok(engine) => Some(Baseline {
                        engine,
                        linkers: OnceLock::new(),
                    }),
                    Err(error) => {
                        tracing::warn!(
                            error = %format!("{error:#}"),
                            "the Winch compiler cannot run here; first starts wait for Cranelift"
                        );
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Whether `engine` is the Winch engine (its programs are compiled again with Cranelift).
    pub fn is_baseline(&self, engine: &wasmtime::Engine) -> bool {
        matches!(self.baseline.get(), Some(Some(b)) if wasmtime::Engine::same(&b.engine, engine))
    }

    /// The run linkers on `engine` (this engine or the Winch one), made on first use.
    ///
    /// # Errors
    /// wasmtime's message if the WASI interfaces cannot be linked (a bug), or if `engine` is
    /// neither of the two.
    pub(crate) fn linkers(&self, engine: &wasmtime::Engine) -> Result<&Linkers, String> {
        let (engine, linkers) = if wasmtime::Engine::same(engine, &self.engine) {
            (&self.engine, &*self.linkers)
        } else {
            match self.baseline.get() {
                Some(Some(b)) if wasmtime::Engine::same(&b.engine, engine) => {
                    (&b.engine, &b.linkers)
                }
                _ => return Err("the program belongs to another wasmtime engine".into()),
            }
        };
        linkers
            .get_or_init(|| Linkers::new(engine).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(Clone::clone)
    }
}
