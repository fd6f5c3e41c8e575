//! The hot path of a pod start: a cached, compiled module to a finished instance, with and
//! without the WASI context and stdio the runtime gives every container; beside it, wasmtime's
//! own bare instantiation of the same module for comparison.
//!
//! `cargo bench -p krustlet-wasi --bench hot_path`

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use krustlet_wasi::run::Stdio;
use krustlet_wasi::{Program, RunSpec, WasmEngine};
use kubelet::log::writer::CriLogWriter;
use kubelet::runtime::{Limits, Usage};

/// A module that does nothing: what is measured is the runtime around it.
const EMPTY: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

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
        b.iter(|| {
            let spec = RunSpec {
                args: vec!["empty".into()],
                env: vec![("POD_NAME".into(), "bench".into())],
                mounts: vec![],
                stdio: Stdio::Log(log.clone()),
                limits: Limits::default(),
                usage: Arc::new(Usage::default()),
                network: None,
            };
            runtime.block_on(engine.run(&program, spec)).expect("run")
        })
    });

    let Program::Module(module) = &program else {
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

criterion_group!(benches, hot_path);
criterion_main!(benches);
