//! Running a program to completion with a container's host resources.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use kubelet::log::writer::{CriLogWriter, Stream};
use kubelet::network::netns::{InNamespace, NetNs};
use kubelet::network::outbound::{GuestNetwork, Protocol, Use};
use kubelet::network::resolver::Resolver;
use kubelet::runtime::{ExecIo, Limits, Usage};

use wasmtime::{Store, TypedFunc};
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::{FsPerms, I32Exit, ResourceTable, WasiCtxBuilder};

use crate::cpu::{self, CpuClock, Throttle};
use crate::engine::WasmEngine;
use crate::exec_io::{ChannelIn, ChannelOut};
use crate::link::{ComponentState, Limited, Linked, ModuleState};
use crate::log::CriStream;
use crate::memory::{MemoryLimitExceeded, MemoryLimiter, is_memory_limit};
use crate::module::{Code, Program};
use crate::name_lookup::NameLookups;

/// A host directory made visible to the guest (a volume mount).
#[derive(Debug, Clone)]
pub struct Mount {
    /// The directory, opened by the caller: the guest gets exactly this directory (preopened
    /// through `/proc/self/fd/N`), whatever its path leads to by now. Held until the run's
    /// preopens are made: wasmtime holds its own descriptor for each from then on.
    pub dir: Arc<OwnedFd>,
    /// Where the directory was on the host; for messages only.
    pub host_path: PathBuf,
    /// Where the guest sees it (the container's `mountPath`).
    pub guest_path: String,
    /// Whether the guest may only read.
    pub read_only: bool,
}

impl Mount {
    /// Opens the directory at `host_path` (following links) as a mount at `guest_path`.
    ///
    /// # Errors
    /// When it cannot be opened or is not a directory.
    pub fn open(host_path: &Path, guest_path: &str, read_only: bool) -> std::io::Result<Self> {
        let dir = std::fs::File::open(host_path)?;
        if !dir.metadata()?.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", host_path.display()),
            ));
        }
        Ok(Self {
            dir: Arc::new(OwnedFd::from(dir)),
            host_path: host_path.to_path_buf(),
            guest_path: guest_path.to_string(),
            read_only,
        })
    }
}

/// Everything a run needs besides the program: what the kubelet resolved from the pod spec.
pub struct RunSpec {
    /// argv, including argv\[0\].
    pub args: Vec<String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Preopened directories.
    pub mounts: Vec<Mount>,
    /// Where stdin comes from and stdout and stderr go.
    pub stdio: Stdio,
    /// Memory and CPU limits (and the CPU request, which sets the guest's time slice).
    pub limits: Limits,
    /// Kept current with the run's memory and CPU use.
    pub usage: Arc<Usage>,
    /// What the guest's own sockets (`wasi:sockets`, components only) get; `None`: no sockets.
    pub network: Option<GuestNetwork>,
}

/// A run's stdio.
pub enum Stdio {
    /// No stdin; output to the container's CRI log (unterminated output is written out when
    /// the run ends).
    Log(CriLogWriter),
    /// Stdin from a channel (`kubectl attach -i`), output to the container's CRI log.
    Attached {
        /// Where stdout and stderr go.
        log: CriLogWriter,
        /// Where stdin comes from; end of file once the sender is gone.
        stdin: tokio::sync::mpsc::Receiver<bytes::Bytes>,
        /// What `isatty(0)` answers.
        tty: bool,
    },
    /// Streamed over channels (exec).
    Streams(ExecIo),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The program returned or called `exit` with this code.
    Code(i32),
    /// The program trapped; the text is wasmtime's description, with the wasm backtrace.
    Trap(String),
    /// The program needed more memory than its limit.
    OomKilled(MemoryLimitExceeded),
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
    /// The pod's network namespace cannot be used for the guest's sockets.
    #[error("{0}")]
    Network(String),
    /// The program imports something this runtime does not provide, or does not export an
    /// entry point (`_start` for modules, `wasi:cli/run` for components).
    #[error("cannot instantiate the program: {0:#}")]
    Instantiate(#[source] wasmtime::Error),
}

/// A guest instantiated and ready to run: its store and its entry point.
enum Guest {
    /// A module and its `_start`.
    Module(Store<ModuleState>, TypedFunc<(), ()>),
    /// A command component, whose `wasi:cli/run` is its entry point.
    Command(Store<ComponentState>, Command),
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
    ///
    /// Not an `async fn`: the future keeps only what a running guest needs (the spec and the
    /// instantiation are in a box that is freed once the guest starts), since it lives as long
    /// as the guest, and a sleeping pod's guest may live for days.
    pub fn run(
        &self,
        program: &Program,
        spec: RunSpec,
    ) -> impl Future<Output = Result<Exit, RunError>> + Send + 'static {
        let clock = CpuClock::new(spec.usage.clone());
        let log = match &spec.stdio {
            Stdio::Log(log) | Stdio::Attached { log, .. } => Some(log.clone()),
            Stdio::Streams(_) => None,
        };
        // A component's sockets are made on the thread that polls it: poll it inside the pod's
        // namespace (a module has no way to make sockets). Name lookups follow the pod's DNS.
        let sockets = match (&spec.network, program.code()) {
            (Some(network), Code::Component(_)) => guest_sockets(network),
            _ => Ok((None, None)),
        };
        let start = sockets.map(|(namespace, lookups)| {
            let instantiating = Box::pin(instantiate(
                self.clone(),
                program.clone(),
                spec,
                lookups,
                clock.clone(),
            ));
            (namespace, instantiating)
        });
        async move {
            let (namespace, instantiating) = start?;
            // Made where it is awaited: a future kept in a local first would take room in
            // this one twice (rustc keeps a moved-from local's slot).
            let outcome = match namespace {
                Some(namespace) => {
                    InNamespace::new(namespace, cpu::metered(clock, call(instantiating)))
                        .await
                        .unwrap_or_else(|e| {
                            Err(RunError::Network(format!(
                                "cannot enter the pod's network namespace: {e}"
                            )))
                        })
                }
                None => cpu::metered(clock, call(instantiating)).await,
            };
            if let Some(log) = log {
                let _ = log.finish();
            }
            match outcome {
                Err(RunError::Instantiate(error)) if is_memory_limit(&error) => {
                    Ok(Exit::OomKilled(memory_limit_of(&error)))
                }
                other => other,
            }
        }
    }
}

/// Instantiates the guest (`instantiating`, boxed: freed before the guest runs), then runs it
/// to its end.
async fn call(
    instantiating: Pin<Box<impl Future<Output = Result<Guest, RunError>>>>,
) -> Result<Exit, RunError> {
    let outcome = match instantiating.await? {
        Guest::Module(mut store, start) => start.call_async(&mut store, ()).await,
        // `Err(())` is a `wasi:cli/exit` with failure, i.e. exit code 1.
        // Boxed: a component's call takes far more room than a module's, which would
        // otherwise keep that room too.
        Guest::Command(mut store, command) => {
            match Box::pin(command.wasi_cli_run().call_run(&mut store)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(())) => return Ok(Exit::Code(1)),
                Err(error) => Err(error),
            }
        }
    };
    Ok(match outcome {
        Ok(()) => Exit::Code(0),
        Err(error) => match error.downcast_ref::<I32Exit>() {
            Some(I32Exit(code)) => Exit::Code(*code),
            None if is_memory_limit(&error) => Exit::OomKilled(memory_limit_of(&error)),
            None => Exit::Trap(format!("{error:?}")),
        },
    })
}

/// `program` instantiated in a store of its own with the WASI of `spec`, metered by `clock`,
/// from its linked imports (resolved at its first run).
async fn instantiate(
    engine: WasmEngine,
    program: Program,
    spec: RunSpec,
    lookups: Option<NameLookups>,
    clock: Arc<CpuClock>,
) -> Result<Guest, RunError> {
    let mut builder = WasiCtxBuilder::new();
    builder.args(&spec.args).envs(&spec.env);
    match spec.stdio {
        Stdio::Log(log) => {
            builder
                .stdout(CriStream::new(log.clone(), Stream::Stdout))
                .stderr(CriStream::new(log, Stream::Stderr));
        }
        Stdio::Attached { log, stdin, tty } => {
            builder
                .stdin(ChannelIn::new(stdin, tty))
                .stdout(CriStream::new(log.clone(), Stream::Stdout))
                .stderr(CriStream::new(log, Stream::Stderr));
        }
        Stdio::Streams(io) => {
            if let Some(stdin) = io.stdin {
                builder.stdin(ChannelIn::new(stdin, io.tty));
            }
            if let Some(stdout) = io.stdout {
                builder.stdout(ChannelOut::new(stdout, io.tty));
            }
            if let Some(stderr) = io.stderr {
                builder.stderr(ChannelOut::new(stderr, io.tty));
            }
        }
    }
    preopen(&mut builder, &spec.mounts)?;
    // wasmtime opened each preopen itself: ours would only double a sleeping container's
    // descriptors (the kubelet re-opens them for an exec).
    drop(spec.mounts);
    if let Some(network) = spec.network {
        grant_sockets(&mut builder, network);
    }
    // The runtime publishes a run's limits before it starts; a bare run (tests, benches)
    // publishes its own here. Either way they are read live from then on.
    if spec.usage.limits.get() == Limits::default() {
        spec.usage.limits.set(spec.limits);
    }
    let limiter = MemoryLimiter::new(spec.usage.clone());
    let throttle = Throttle::new(clock);
    let linkers = engine
        .linkers(program.engine())
        .map_err(|e| RunError::Instantiate(wasmtime::Error::msg(e)))?;
    match program.linked(linkers).map_err(RunError::Instantiate)? {
        Linked::Module(pre) => {
            let state = ModuleState {
                wasi: builder.build_p1(),
                limiter,
            };
            let mut store = metered_store(program.engine(), state, throttle);
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(RunError::Instantiate)?;
            let start = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .map_err(RunError::Instantiate)?;
            Ok(Guest::Module(store, start))
        }
        Linked::Command(pre) => {
            let state = ComponentState {
                ctx: builder.build(),
                table: ResourceTable::new(),
                limiter,
                lookups,
            };
            let mut store = metered_store(program.engine(), state, throttle);
            let command = pre
                .instantiate_async(&mut store)
                .await
                .map_err(RunError::Instantiate)?;
            Ok(Guest::Command(store, command))
        }
    }
}

/// A store of `state` on `engine`, limited by its memory limiter and yielding at every epoch
/// tick to `throttle` (which enforces the CPU limit).
fn metered_store<T: Limited>(
    engine: &wasmtime::Engine,
    state: T,
    mut throttle: Throttle,
) -> Store<T> {
    let mut store = Store::new(engine, state);
    store.limiter(|state| state.limiter());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| Ok(throttle.on_epoch()));
    store
}

/// Preopens `mounts` in `builder`, read-only ones with read-only permissions.
pub(crate) fn preopen(builder: &mut WasiCtxBuilder, mounts: &[Mount]) -> Result<(), RunError> {
    for mount in mounts {
        let perms = if mount.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        // wasmtime opens a path; this one names the descriptor the kubelet holds, so a
        // component swapped for a symlink since the kubelet resolved it changes nothing.
        let held = format!("/proc/self/fd/{}", mount.dir.as_raw_fd());
        builder
            .preopened_dir(&held, &mount.guest_path, perms)
            .map_err(|source| RunError::Preopen {
                host_path: mount.host_path.clone(),
                guest_path: mount.guest_path.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The [`MemoryLimitExceeded`] inside an error that [`is_memory_limit`].
fn memory_limit_of(error: &wasmtime::Error) -> MemoryLimitExceeded {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<MemoryLimitExceeded>())
        .cloned()
        .unwrap_or(MemoryLimitExceeded {
            limit: 0,
            needed: 0,
        })
}

/// What a component's sockets need besides the grants: the pod's namespace, open (`None` on
/// the node's network), and name lookups with the pod's DNS (`None` without DNS).
///
/// # Errors
/// [`RunError::Network`] when the pod's namespace cannot be opened.
pub(crate) fn guest_sockets(
    network: &GuestNetwork,
) -> Result<(Option<Arc<NetNs>>, Option<NameLookups>), RunError> {
    let namespace = match &network.namespace {
        Some(path) => Some(Arc::new(NetNs::open(path).map_err(|e| {
            RunError::Network(format!("cannot open the pod's network namespace: {e}"))
        })?)),
        None => None,
    };
    let lookups = network.dns.as_ref().map(|dns| NameLookups {
        resolver: Resolver::new(dns.config.clone(), namespace.clone()),
        guest: network.clone(),
    });
    Ok((namespace, lookups))
}

/// Gives the guest TCP and UDP sockets, every address they use checked by the pod's outbound
/// policy (a denied connection is the WASI `access-denied` error, and an event). wasmtime-wasi's
/// name lookups stay off (the node's resolver is not the pod's DNS): [`name_lookup`] shadows
/// them with the pod's.
pub(crate) fn grant_sockets(builder: &mut WasiCtxBuilder, network: GuestNetwork) {
    use wasmtime_wasi::sockets::SocketAddrUse;
    builder
        .allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(false);
    builder.socket_addr_check(move |addr, use_| {
        let what = match use_ {
            // An explicit bind before listening is checked at listen; an implicit one before
            // a connect uses the wildcard address.
            SocketAddrUse::TcpBind | SocketAddrUse::TcpAccept => Use::Accept,
            SocketAddrUse::TcpListen => Use::Listen(Protocol::Tcp),
            SocketAddrUse::TcpConnect => Use::Connect(Protocol::Tcp),
            // A UDP socket bound to a port receives from anyone: it is a listener; port 0 is
            // the implicit bind before sending. Receiving is like accepting.
            SocketAddrUse::UdpBind if addr.port() == 0 => Use::Accept,
            SocketAddrUse::UdpBind => Use::Listen(Protocol::Udp),
            SocketAddrUse::UdpReceive => Use::Receive,
            SocketAddrUse::UdpSend => Use::Connect(Protocol::Udp),
        };
        let allowed = network.check(addr, what);
        Box::pin(async move { allowed })
    });
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
        run_limited(wasm, args, mounts, Limits::default()).await
    }

    async fn run_limited(
        wasm: &Path,
        args: &[&str],
        mounts: Vec<Mount>,
        limits: Limits,
    ) -> Outcome {
        let engine = WasmEngine::new().expect("engine");
        let bytes = std::fs::read(wasm).expect("read workload");
        let program = Program::compile(&engine, &bytes).expect("compile");
        let logs = tempfile::tempdir().expect("tempdir");
        let path = logs.path().join("0.log");
        let spec = RunSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("GREETING".into(), "hi there".into())],
            mounts,
            stdio: Stdio::Log(CriLogWriter::create(&path).expect("log")),
            limits,
            usage: Arc::default(),
            network: None,
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
    async fn the_preopen_is_the_held_directory_not_its_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(&vol).expect("vol");
        std::fs::write(vol.join("ok.txt"), "inside\n").expect("ok");
        std::fs::create_dir_all(tmp.path().join("canary")).expect("canary");
        std::fs::write(tmp.path().join("canary/ok.txt"), "CANARY\n").expect("canary file");
        let mounts = vec![Mount::open(&vol, "/m", true).expect("open")];
        // The path is swapped for a link to the canary after the kubelet opened it.
        std::fs::rename(&vol, tmp.path().join("vol.moved")).expect("move");
        std::os::unix::fs::symlink("canary", &vol).expect("link");
        let outcome = run(&multitool(), &["multitool", "cat", "/m/ok.txt"], mounts).await;
        assert_eq!(outcome.exit, Exit::Code(0), "{}", outcome.stderr);
        assert_eq!(outcome.stdout, "inside\n");
    }

    /// How many of this process's descriptors are open on `path`.
    fn descriptors_on(path: &Path) -> usize {
        let path = std::fs::canonicalize(path).expect("canonical");
        std::fs::read_dir("/proc/self/fd")
            .expect("fds")
            .filter_map(Result::ok)
            .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
            .count()
    }

    #[tokio::test]
    async fn a_running_guest_holds_each_mount_once_through_wasmtime_not_ours() {
        let data = tempfile::tempdir().expect("tempdir");
        let mount = Mount::open(data.path(), "/data", false).expect("open");
        let ours = Arc::downgrade(&mount.dir);
        let engine = WasmEngine::new().expect("engine");
        let bytes = std::fs::read(multitool()).expect("read workload");
        let program = Program::compile(&engine, &bytes).expect("compile");
        let logs = tempfile::tempdir().expect("tempdir");
        let path = logs.path().join("0.log");
        let spec = RunSpec {
            args: ["multitool", "write", "/data/up", "1", "sleep", "60"]
                .map(String::from)
                .to_vec(),
            env: vec![],
            mounts: vec![mount],
            stdio: Stdio::Log(CriLogWriter::create(&path).expect("log")),
            limits: Limits::default(),
            usage: Arc::default(),
            network: None,
        };
        let run = engine.run(&program, spec);
        // Kept alive past the select: the guest must still be running when we look.
        tokio::pin!(run);
        let sleeping = async {
            while !data.path().join("up").exists() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            ended = &mut run => panic!("the guest ended early: {ended:?}"),
            () = sleeping => {}
        }
        assert!(
            ours.upgrade().is_none(),
            "the kubelet's descriptor outlived the preopen"
        );
        assert_eq!(descriptors_on(data.path()), 1, "wasmtime's preopen, only");
    }

    #[tokio::test]
    async fn module_exit_code_stdout_and_preopened_dir() {
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::write(data.path().join("in.txt"), "from the host\n").expect("write");
        let mounts = vec![Mount::open(data.path(), "/data", false).expect("open")];
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
        let mounts = vec![Mount::open(data.path(), "/ro", true).expect("open")];
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
    async fn memory_limit_ends_the_run_as_oom_killed() {
        let limits = Limits {
            memory_bytes: Some(32 << 20),
            ..Limits::default()
        };
        let outcome = run_limited(
            &multitool(),
            &["multitool", "print", "start", "alloc", "256"],
            vec![],
            limits,
        )
        .await;
        assert_eq!(outcome.stdout, "start\n");
        match outcome.exit {
            Exit::OomKilled(exceeded) => assert_eq!(exceeded.limit, 32 << 20),
            other => panic!("expected OOMKilled, got {other:?}"),
        }
        // C's stack lives in linear memory: overflowing it is an out-of-bounds access.
        let outcome = run(&multitool(), &["multitool", "recurse"], vec![]).await;
        match outcome.exit {
            Exit::Trap(text) => assert!(text.contains("out of bounds memory access"), "{text}"),
            other => panic!("expected a trap, got {other:?}"),
        }
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
            stdio: Stdio::Log(
                CriLogWriter::create(&tempfile::tempdir().expect("tmp").path().join("0.log"))
                    .expect("log"),
            ),
            limits: Limits::default(),
            usage: Arc::default(),
            network: None,
        };
        let run = engine.run(&program, spec);
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(300), run).await;
        assert!(timed_out.is_err(), "a spin loop cannot finish by itself");
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }

    #[tokio::test]
    async fn winch_code_runs_modules_and_components_and_yields_at_epochs() {
        let engine = WasmEngine::new().expect("engine");
        let winch = engine.baseline().expect("Winch on x86-64");
        let spec = |args: &[&str], log: &Path| RunSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            mounts: vec![],
            stdio: Stdio::Log(CriLogWriter::create(log).expect("log")),
            limits: Limits::default(),
            usage: Arc::default(),
            network: None,
        };
        let logs = tempfile::tempdir().expect("tempdir");
        let component =
            krustlet_test_workloads::multitool_component().unwrap_or_else(|e| panic!("{e}"));
        for (i, wasm) in [multitool(), component].iter().enumerate() {
            let program =
                Program::compile_on(winch, &std::fs::read(wasm).expect("read")).expect("compile");
            assert!(engine.is_baseline(program.engine()));
            let log = logs.path().join(format!("{i}.log"));
            let exit = engine
                .run(&program, spec(&["multitool", "exit", "3"], &log))
                .await
                .expect("run");
            let expected = if i == 0 { Exit::Code(3) } else { Exit::Code(1) };
            assert_eq!(exit, expected, "{}", wasm.display());
            // A busy loop on Winch's code still yields at every epoch tick, so dropping the
            // run stops it.
            let spin = engine.run(&program, spec(&["multitool", "spin", "0"], &log));
            let timed_out = tokio::time::timeout(std::time::Duration::from_millis(300), spin).await;
            assert!(timed_out.is_err(), "a spin loop cannot finish by itself");
        }
    }

    #[tokio::test]
    async fn attached_stdin_reaches_the_program_and_its_output_the_log() {
        let engine = WasmEngine::new().expect("engine");
        let program =
            Program::compile(&engine, &std::fs::read(multitool()).expect("read")).expect("compile");
        let logs = tempfile::tempdir().expect("tempdir");
        let path = logs.path().join("0.log");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(bytes::Bytes::from_static(b"typed\n"))
            .await
            .expect("send");
        drop(tx);
        let spec = RunSpec {
            args: vec!["multitool".into(), "readline".into(), "isatty".into()],
            env: vec![],
            mounts: vec![],
            stdio: Stdio::Attached {
                log: CriLogWriter::create(&path).expect("log"),
                stdin: rx,
                tty: true,
            },
            limits: Limits::default(),
            usage: Arc::default(),
            network: None,
        };
        let exit = engine.run(&program, spec).await.expect("run");
        assert_eq!(exit, Exit::Code(0));
        let text = std::fs::read_to_string(path).expect("log");
        assert!(text.contains("read: typed"), "{text}");
        // A container with `tty: true` has a terminal on stdin; its output is a log file.
        assert!(text.contains("isatty stdin=1 stdout=0"), "{text}");
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
