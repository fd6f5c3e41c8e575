//! Linking WASI into programs: the store state of a run, the linkers (made once per engine)
//! and each program's imports resolved against them (once per program).
//!
//! wasmtime's own advice for a program run many times: link once, then `instantiate_pre` once
//! per program, and instantiate from that ("link once and instantiate many"). Resolving the
//! imports per run cost time on the hot path and, per sleeping instance, memory: a run kept
//! its own copy of the resolved imports (heaptrack at 300 sleeping pods: `instantiate_pre`
//! was most of what wasmtime held per instance besides the instance itself).

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::memory::MemoryLimiter;
use crate::name_lookup::{self, HasNameLookups, NameLookups};

/// Store state for modules: the preview-1 WASI context and the memory limiter.
pub(crate) struct ModuleState {
    /// The guest's WASI.
    pub(crate) wasi: WasiP1Ctx,
    /// Its memory limit.
    pub(crate) limiter: MemoryLimiter,
}

/// Store state for components: the WASI context, its resource table, the memory limiter and
/// the guest's name lookups (if it has a pod network).
pub(crate) struct ComponentState {
    /// The guest's WASI.
    pub(crate) ctx: WasiCtx,
    /// Its resources.
    pub(crate) table: ResourceTable,
    /// Its memory limit.
    pub(crate) limiter: MemoryLimiter,
    /// Name lookups through the pod's DNS; `None`: every lookup fails.
    pub(crate) lookups: Option<NameLookups>,
}

/// A store state with a memory limiter (the run's stores are all limited the same way).
pub(crate) trait Limited: Send + 'static {
    /// The state's memory limiter.
    fn limiter(&mut self) -> &mut MemoryLimiter;
}

impl Limited for ModuleState {
    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

impl Limited for ComponentState {
    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

impl HasNameLookups for ComponentState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    fn lookups(&self) -> Option<&NameLookups> {
        self.lookups.as_ref()
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// The linkers of modules and command components, made once per engine: defining WASI's
/// functions is most of what a fresh linker per run cost (the hot path in BENCHMARKS.md).
pub(crate) struct Linkers {
    module: wasmtime::Linker<ModuleState>,
    component: wasmtime::component::Linker<ComponentState>,
}

impl Linkers {
    /// Preview 1 for modules; all of WASI 0.2 for components, with name lookups through the
    /// pod's DNS ([`name_lookup`]; without a pod network every lookup fails).
    pub(crate) fn new(engine: &wasmtime::Engine) -> wasmtime::Result<Self> {
        let mut module = wasmtime::Linker::<ModuleState>::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module, |state| &mut state.wasi)?;
        let mut component = wasmtime::component::Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component)?;
        name_lookup::add_to_linker(&mut component)?;
        Ok(Self { module, component })
    }
}

/// A program with its imports resolved against its engine's linker: what each run
/// instantiates.
#[derive(Clone)]
pub(crate) enum Linked {
    /// A module's `wasi_snapshot_preview1` imports.
    Module(wasmtime::InstancePre<ModuleState>),
    /// A command component's WASI imports, and where its `wasi:cli/run` export is.
    Command(CommandPre<ComponentState>),
}

/// Resolves a module's imports.
///
/// # Errors
/// wasmtime's message: an import this runtime does not provide.
pub(crate) fn module(linkers: &Linkers, module: &wasmtime::Module) -> wasmtime::Result<Linked> {
    Ok(Linked::Module(linkers.module.instantiate_pre(module)?))
}

/// Resolves a command component's imports and finds its `wasi:cli/run` export.
///
/// # Errors
/// wasmtime's message: an import this runtime does not provide, or no `wasi:cli/run`.
pub(crate) fn command(
    linkers: &Linkers,
    component: &wasmtime::component::Component,
) -> wasmtime::Result<Linked> {
    Ok(Linked::Command(CommandPre::new(
        linkers.component.instantiate_pre(component)?,
    )?))
}
