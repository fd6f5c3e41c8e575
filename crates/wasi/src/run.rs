//! Running a program to completion with a container's host resources.

use std::path::PathBuf;

use kubelet::log::writer::{CriLogWriter, Stream};

use wasmtime::Store;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::{
    FsPerms, I32Exit, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use crate::engine::WasmEngine;
use crate::log::CriStream;
use crate::module::Program;

/// A host directory made visible to the guest (a volume mount).
#[derive(Debug, Clone)]
pub struct Mount {
    /// The directory on the host.
    pub host_path: PathBuf,
    /// Where the guest sees it (the container's `mountPath`).
    pub guest_path: String,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// Everything a run needs besides the program: what the kubelet resolved from the pod spec.
pub struct RunSpec {
    /// argv, including argv\[0\].
    pub args: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Preopened directories.
    pub mounts: Vec<Mount>,
    /// Where stdout and stderr go; unterminated output is written out when the run ends.
    pub log: CriLogWriter,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The program returned or called `exit` with this code.
    Code(i32),
    /// The program trapped; the text is wasmtime's description, with the wasm backtrace.
    Trap(String),
}

/// Errors that keep a program from starting (as opposed to it failing once started).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A mount's host directory could not be opened.
    #[error("cannot preopen {host_path} at {guest_path}: {source:#}")]
    Preopen {
        /// The host directory.
        host_path: PathBuf,
        /// The guest path.
        guest_path: String,
        /// Why it failed.
        #[source]
        source: wasmtime::Error,
    },
    /// The program imports something this runtime does not provide, or does not export an
    /// entry point (`_start` for modules, `wasi:cli/run` for components).
    #[error("cannot instantiate the program: {0:#}")]
    Instantiate(#[source] wasmtime::Error),
}

/// Store state for components: the WASI context and its resource table.
struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasmEngine {
    /// Runs `program` until it exits or traps.
    ///
    /// The returned future yields to the executor at every epoch tick, so dropping it (a
    /// timeout, a force-stop) stops the guest promptly even in a busy loop.
    ///
    /// # Errors
    /// [`RunError`] when the guest cannot start; a guest that starts and then fails is an
    /// `Ok(Exit::Code(..))` or `Ok(Exit::Trap(..))`.
    pub async fn run(&self, program: &Program, spec: RunSpec) -> Result<Exit, RunError> {
        let mut builder = WasiCtxBuilder::new();
        builder
            .args(&spec.args)
            .envs(&spec.env)
            .stdout(CriStream::new(spec.log.clone(), Stream::Stdout))
            .stderr(CriStream::new(spec.log.clone(), Stream::Stderr));
        for mount in &spec.mounts {
            let perms = if mount.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            builder
                .preopened_dir(&mount.host_path, &mount.guest_path, perms)
                .map_err(|source| RunError::Preopen {
                    host_path: mount.host_path.clone(),
                    guest_path: mount.guest_path.clone(),
                    source,
                })?;
        }
        let outcome = match program {
            Program::Module(module) => {
                let mut store = Store::new(self.engine(), builder.build_p1());
                store.epoch_deadline_async_yield_and_update(1);
                let mut linker = wasmtime::Linker::<WasiP1Ctx>::new(self.engine());
                wasmtime_wasi::p1::add_to_linker_async(&mut linker, |ctx| ctx)
                    .map_err(RunError::Instantiate)?;
                let instance = linker
                    .instantiate_async(&mut store, module)
                    .await
                    .map_err(RunError::Instantiate)?;
                let start = instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .map_err(RunError::Instantiate)?;
                start.call_async(&mut store, ()).await
            }
            Program::Component(component) => {
                let state = ComponentState {
                    ctx: builder.build(),
                    table: ResourceTable::new(),
                };
                let mut store = Store::new(self.engine(), state);
                store.epoch_deadline_async_yield_and_update(1);
                let mut linker = wasmtime::component::Linker::new(self.engine());
                wasmtime_wasi::p2::add_to_linker_async(&mut linker)
                    .map_err(RunError::Instantiate)?;
                let command = Command::instantiate_async(&mut store, component, &linker)
                    .await
                    .map_err(RunError::Instantiate)?;
                // `Err(())` is a `wasi:cli/exit` with failure, i.e. exit code 1.
                match command.wasi_cli_run().call_run(&mut store).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(())) => return Ok(Exit::Code(1)),
                    Err(error) => Err(error),
                }
            }
        };
        let _ = spec.log.finish();
        Ok(match outcome {
            Ok(()) => Exit::Code(0),
            Err(error) => match error.downcast_ref::<I32Exit>() {
                Some(I32Exit(code)) => Exit::Code(*code),
                None => Exit::Trap(format!("{error:?}")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    struct Outcome {
        exit: Exit,
        stdout: String,
        stderr: String,
    }

    async fn run(wasm: &Path, args: &[&str], mounts: Vec<Mount>) -> Outcome {
        let engine = WasmEngine::new().expect("engine");
        let bytes = std::fs::read(wasm).expect("read workload");
        let program = Program::compile(&engine, &bytes).expect("compile");
        let logs = tempfile::tempdir().expect("tempdir");
        let path = logs.path().join("0.log");
        let spec = RunSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("GREETING".into(), "hi there".into())],
            mounts,
            log: CriLogWriter::create(&path).expect("log"),
        };
        let exit = engine.run(&program, spec).await.expect("run");
        let text = std::fs::read_to_string(path).expect("log");
        // CRI lines: "<time> <stream> <F|P> <content>"; keep each stream's content.
        let stream = |name: &str| -> String {
            text.lines()
                .filter_map(|l| {
                    l.splitn(4, ' ')
                        .collect::<Vec<_>>()
                        .get(1..)
                        .map(|p| p.to_vec())
                })
                .filter(|p| p[0] == name)
                .map(|p| format!("{}\n", p.get(2).unwrap_or(&"")))
                .collect()
        };
        Outcome {
            exit,
            stdout: stream("stdout"),
            stderr: stream("stderr"),
        }
    }

    fn multitool() -> PathBuf {
        krustlet_test_workloads::multitool().unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn module_exit_code_stdout_and_preopened_dir() {
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::write(data.path().join("in.txt"), "from the host\n").expect("write");
        let mounts = vec![Mount {
            host_path: data.path().to_owned(),
            guest_path: "/data".into(),
            read_only: false,
        }];
        let args = [
            "multitool",
            "print",
            "hello",
            "getenv",
            "GREETING",
            "cat",
            "/data/in.txt",
            "write",
            "/data/out.txt",
            "from the guest",
            "eprint",
            "oops",
            "exit",
            "3",
        ];
        let outcome = run(&multitool(), &args, mounts).await;
        assert_eq!(outcome.exit, Exit::Code(3));
        assert_eq!(outcome.stdout, "hello\nGREETING=hi there\nfrom the host\n");
        assert_eq!(outcome.stderr, "oops\n");
        let written = std::fs::read_to_string(data.path().join("out.txt")).expect("out.txt");
        assert_eq!(written, "from the guest\n");
    }

    #[tokio::test]
    async fn read_only_mount_refuses_writes() {
        let data = tempfile::tempdir().expect("tempdir");
        let mounts = vec![Mount {
            host_path: data.path().to_owned(),
            guest_path: "/ro".into(),
            read_only: true,
        }];
        let outcome = run(&multitool(), &["multitool", "write", "/ro/x", "no"], mounts).await;
        assert_eq!(outcome.exit, Exit::Code(1));
        assert!(
            outcome.stderr.contains("multitool: write: /ro/x"),
            "{}",
            outcome.stderr
        );
        assert!(!data.path().join("x").exists());
    }

    #[tokio::test]
    async fn trap_is_reported_with_its_reason() {
        let outcome = run(
            &multitool(),
            &["multitool", "print", "before", "trap"],
            vec![],
        )
        .await;
        assert_eq!(outcome.stdout, "before\n");
        match outcome.exit {
            Exit::Trap(text) => assert!(text.contains("unreachable"), "{text}"),
            other => panic!("expected a trap, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn component_behaves_like_the_module() {
        let component =
            krustlet_test_workloads::multitool_component().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            crate::ProgramKind::detect(&std::fs::read(&component).expect("read")),
            Some(crate::ProgramKind::Component)
        );
        let outcome = run(&component, &["multitool", "args", "exit", "0"], vec![]).await;
        assert_eq!(outcome.exit, Exit::Code(0));
        assert_eq!(
            outcome.stdout,
            "argv[0]=multitool\nargv[1]=args\nargv[2]=exit\nargv[3]=0\n"
        );
        // WASI 0.2's `wasi:cli/exit` carries only success or failure (`exit-with-code` is
        // unstable and the preview-1 adapter does not use it), so any failure reads as 1.
        let outcome = run(&component, &["multitool", "exit", "4"], vec![]).await;
        assert_eq!(outcome.exit, Exit::Code(1));
    }

    #[tokio::test]
    async fn dropping_the_run_stops_a_busy_loop() {
        let started = std::time::Instant::now();
        let engine = WasmEngine::new().expect("engine");
        let program =
            Program::compile(&engine, &std::fs::read(multitool()).expect("read")).expect("compile");
        let spec = RunSpec {
            args: vec!["multitool".into(), "spin".into(), "0".into()],
            env: vec![],
            mounts: vec![],
            log: CriLogWriter::create(&tempfile::tempdir().expect("tmp").path().join("0.log"))
                .expect("log"),
        };
        let run = engine.run(&program, spec);
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(300), run).await;
        assert!(timed_out.is_err(), "a spin loop cannot finish by itself");
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }

    #[test]
    fn garbage_is_not_wasm() {
        let engine = WasmEngine::new().expect("engine");
        let error = Program::compile(&engine, b"#!/bin/sh\necho hi\n")
            .err()
            .expect("error");
        assert!(
            matches!(error, crate::module::CompileError::NotWasm),
            "{error}"
        );
    }
}
