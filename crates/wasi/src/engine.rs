//! The process-wide wasmtime engine.
//!
//! One [`wasmtime::Engine`] is shared by every pod: compiled code is only valid for the engine
//! configuration that produced it, and one engine lets modules be compiled once and reused.
//! Epoch interruption is always on, driven by a background ticker, so that every guest yields to
//! the async executor regularly and can be stopped even in a busy loop.

use std::thread;
use std::time::Duration;

/// How often the epoch advances; a running guest yields at least this often.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Most instances alive at once on the node, all pods together (container runs, execs, probes
/// and HTTP requests): the pooling allocator's slots. Past it an instantiation fails with
/// wasmtime's "maximum concurrent ... limit" error.
pub const MAX_INSTANCES: u32 = 2000;

/// The pooling allocator's configuration: slots made once and reused, so an instance per HTTP
/// request costs little (as `wasmtime serve`). Linear memories keep wasmtime's default 4 GiB
/// reservation each (address space only); a component made from a C program with the
/// preview-1 adapter has one memory and a handful of core instances and tables.
fn pooling() -> wasmtime::PoolingAllocationConfig {
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 8)
        .total_memories(MAX_INSTANCES + MAX_INSTANCES / 4)
        .total_tables(MAX_INSTANCES * 8)
        .total_stacks(MAX_INSTANCES)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_core_instances_per_component(32);
    pool
}

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

/// The shared wasmtime engine with its epoch ticker.
#[derive(Clone)]
pub struct WasmEngine {
    engine: wasmtime::Engine,
}

impl WasmEngine {
    /// Creates the engine: epoch interruption, the pooling allocator (see [`MAX_INSTANCES`];
    /// if the host refuses its address space reservation, the on-demand allocator with a
    /// warning) and a ticker thread that advances the epoch every [`EPOCH_TICK`] for as long
    /// as the engine is alive.
    pub fn new() -> Result<Self, EngineError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling()));
        let engine = match wasmtime::Engine::new(&config) {
            Ok(engine) => engine,
            Err(error) => {
                tracing::warn!(
                    "cannot set up the pooling allocator ({error:#}); instantiating on demand"
                );
                config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
                wasmtime::Engine::new(&config).map_err(EngineError::Config)?
            }
        };
        let weak = engine.weak();
        thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                // Ends by itself once the last engine handle is dropped.
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(EngineError::Ticker)?;
        Ok(Self { engine })
    }

    /// The underlying wasmtime engine.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }
}
