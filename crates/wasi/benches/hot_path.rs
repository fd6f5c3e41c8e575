//! The hot path of a pod start: a cached, compiled program to a finished instance, with the
//! WASI context and stdio the runtime gives every container; beside each, wasmtime's own
//! instantiation of the same program in the same process, for comparison:
//! - an empty module, against a bare `Instance::new` and call;
//! - the multitool's `hello` as a p1 module and as a p2 command component, against wasmtime
//!   with its linker and `InstancePre` made once (what `wasmtime run` does per run, less the
//!   compile) and a plain WASI context.
//!
//! `cargo bench -p krustlet-wasi --bench hot_path`

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use krustlet_wasi::run::Stdio;
use krustlet_wasi::{Code, Program, RunSpec, WasmEngine};
use kubelet::log::writer::CriLogWriter;
use kubelet::runtime::{Limits, Usage};

/// A module that does nothing: what is measured is the runtime around it.
const EMPTY: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// A WASI 0.2 store for the wasmtime side of the component comparison.
struct P2 {
    ctx: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for P2 {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// One run of `program` with `args`, as Krustlet runs a container.
fn krustlet_run(
    runtime: &tokio::runtime::Runtime,
    engine: &WasmEngine,
    program: &Program,
    log: &CriLogWriter,
    args: &[&str],
) {
    let spec = RunSpec {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("POD_NAME".into(), "bench".into())],
        mounts: vec![],
        stdio: Stdio::Log(log.clone()),
        limits: Limits::default(),
        usage: Arc::new(Usage::default()),
        network: None,
    };
    runtime.block_on(engine.run(program, spec)).expect("run");
}

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let engine = WasmEngine::new().expect("engine");
    let bytes = wat::parse_str(EMPTY).expect("wat");
    let program = Program::compile(&engine, &bytes).expect("compile");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = CriLogWriter::create(&logs.path().join("0.log")).expect("log");

    c.bench_function("krustlet: cached module → WASI instance → exit", |b| {
        b.iter(|| krustlet_run(&runtime, &engine, &program, &log, &["empty"]))
    });

    let Code::Module(module) = program.code() else {
        panic!("the empty program is a module");
    };
    c.bench_function("wasmtime: bare instantiate + call", |b| {
        b.iter(|| {
            let mut store = wasmtime::Store::new(engine.engine(), ());
            store.set_epoch_deadline(1_000_000);
            let instance = wasmtime::Instance::new(&mut store, module, &[]).expect("instance");
            let start = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .expect("_start");
            start.call(&mut store, ()).expect("call");
        })
    });
}

/// The multitool's `hello`, a p1 module and a p2 component, each beside wasmtime's own run.
fn multitool(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let engine = WasmEngine::new().expect("engine");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = CriLogWriter::create(&logs.path().join("0.log")).expect("log");
    let args = ["multitool", "hello"];
    let module_bytes =
        std::fs::read(krustlet_test_workloads::multitool().expect("multitool")).expect("module");
    let component_bytes =
        std::fs::read(krustlet_test_workloads::multitool_component().expect("multitool component"))
            .expect("component");

    let module = Program::compile(&engine, &module_bytes).expect("compile module");
    c.bench_function("krustlet: p1 multitool hello", |b| {
        b.iter(|| krustlet_run(&runtime, &engine, &module, &log, &args))
    });
    let Code::Module(bare) = module.code() else {
        panic!("the multitool is a module");
    };
    let mut linker = wasmtime::Linker::<wasmtime_wasi::p1::WasiP1Ctx>::new(engine.engine());
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |ctx| ctx).expect("link p1");
    let pre = linker.instantiate_pre(bare).expect("instance pre");
    c.bench_function("wasmtime: p1 multitool hello", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let ctx = wasmtime_wasi::WasiCtxBuilder::new().args(&args).build_p1();
                let mut store = wasmtime::Store::new(engine.engine(), ctx);
                store.set_epoch_deadline(1_000_000);
                let instance = pre.instantiate_async(&mut store).await.expect("instance");
                let start = instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .expect("_start");
                start.call_async(&mut store, ()).await.expect("call");
            })
        })
    });

    let component = Program::compile(&engine, &component_bytes).expect("compile component");
    c.bench_function("krustlet: p2 multitool hello", |b| {
        b.iter(|| krustlet_run(&runtime, &engine, &component, &log, &args))
    });
    let Code::Component(bare) = component.code() else {
        panic!("the multitool component is a component");
    };
    let mut linker = wasmtime::component::Linker::<P2>::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("link p2");
    let pre = wasmtime_wasi::p2::bindings::CommandPre::new(
        linker.instantiate_pre(bare).expect("instance pre"),
    )
    .expect("command pre");
    c.bench_function("wasmtime: p2 multitool hello", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let state = P2 {
                    ctx: wasmtime_wasi::WasiCtxBuilder::new().args(&args).build(),
                    table: wasmtime::component::ResourceTable::new(),
                };
                let mut store = wasmtime::Store::new(engine.engine(), state);
                store.set_epoch_deadline(1_000_000);
                let command = pre.instantiate_async(&mut store).await.expect("instance");
                command
                    .wasi_cli_run()
                    .call_run(&mut store)
                    .await
                    .expect("call")
                    .expect("exit 0");
            })
        })
    });
}

criterion_group!(benches, hot_path, multitool);
criterion_main!(benches);
