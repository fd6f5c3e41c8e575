//! A scripted [`Runtime`] for tests of the pod worker: each container run follows the next
//! step scripted for its container (exit after a delay, fail to start, or run until killed),
//! and every start and kill is recorded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::runtime::{
    ContainerSpec, ExecSpec, RunningContainer, Runtime, RuntimeError, Termination, Usage,
};

/// What one run of a container does.
#[derive(Debug, Clone)]
pub enum Step {
    /// Runs for `after`, then exits with `code`.
    Exit {
        /// How long it runs.
        after: Duration,
        /// Its exit code.
        code: i32,
    },
    /// Runs until killed.
    RunUntilKilled,
    /// The runtime refuses to start it.
    FailStart(String),
}

/// One recorded start.
#[derive(Debug, Clone)]
pub struct Started {
    /// The container's name.
    pub container: String,
    /// Its argv.
    pub args: Vec<String>,
    /// The run's ID (`<uid8>-<container>-<restart count>`).
    pub id: String,
}

/// A scripted runtime.
#[derive(Default, Clone)]
pub struct FakeRuntime {
    scripts: Arc<Mutex<HashMap<String, VecDeque<Step>>>>,
    started: Arc<Mutex<Vec<Started>>>,
    killed: Arc<Mutex<Vec<String>>>,
}

/// The container name in a run ID `<uid8>-<container>-<n>`.
fn container_of(id: &str) -> &str {
    let rest = id.split_once('-').map_or(id, |(_, r)| r);
    rest.rsplit_once('-').map_or(rest, |(c, _)| c)
}

impl FakeRuntime {
    /// Runs of `container` follow `steps` in order; once they are used up, runs last until
    /// killed.
    pub fn script(&self, container: &str, steps: impl IntoIterator<Item = Step>) {
        self.scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(container.into(), steps.into_iter().collect());
    }

    /// Every start so far.
    pub fn started(&self) -> Vec<Started> {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How often `container` started.
    pub fn starts_of(&self, container: &str) -> usize {
        self.started()
            .iter()
            .filter(|s| s.container == container)
            .count()
    }

    /// The containers killed, in order.
    pub fn killed(&self) -> Vec<String> {
        self.killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Runtime for FakeRuntime {
    fn version(&self) -> String {
        "fake://0".into()
    }

    /// An exec echoes: it writes its argv (after argv\[0\]) joined by spaces and a newline to
    /// stdout, copies stdin to stdout, writes `err` to stderr, and exits with the code of a
    /// last argument `exit=N` (else 0). `sleep` as argv\[1\] runs until killed.
    fn exec(&self, spec: ExecSpec) -> BoxFuture<'_, Result<RunningContainer, RuntimeError>> {
        async move {
            let (exit_tx, exit) = oneshot::channel();
            let (kill, killed) = oneshot::channel::<()>();
            let mut io = spec.io;
            let args = spec.args;
            tokio::spawn(async move {
                let run = async {
                    if args.get(1).is_some_and(|a| a == "sleep") {
                        std::future::pending::<()>().await;
                    }
                    if let Some(out) = &io.stdout {
                        let line = format!("{}\n", args[1..].join(" "));
                        let _ = out.send(bytes::Bytes::from(line)).await;
                        if let Some(stdin) = &mut io.stdin {
                            while let Some(chunk) = stdin.recv().await {
                                let _ = out.send(chunk).await;
                            }
                        }
                    }
                    if let Some(err) = &io.stderr {
                        let _ = err.send(bytes::Bytes::from_static(b"err\n")).await;
                    }
                    args.last()
                        .and_then(|a| a.strip_prefix("exit="))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0)
                };
                let termination = tokio::select! {
                    code = run => Termination::Exited(code),
                    Ok(()) = killed => Termination::Killed,
                };
                drop(io);
                let _ = exit_tx.send(termination);
            });
            Ok(RunningContainer {
                exit,
                kill,
                stop: None,
                usage: Arc::new(Usage::default()),
            })
        }
        .boxed()
    }

    fn start(&self, spec: ContainerSpec) -> BoxFuture<'_, Result<RunningContainer, RuntimeError>> {
        let container = container_of(&spec.id).to_string();
        let step = self
            .scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&container)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Step::RunUntilKilled);
        async move {
            if let Step::FailStart(message) = &step {
                return Err(RuntimeError {
                    reason: "CreateContainerError",
                    message: message.clone(),
                });
            }
            self.started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Started {
                    container: container.clone(),
                    args: spec.args.clone(),
                    id: spec.id.clone(),
                });
            let (exit_tx, exit) = oneshot::channel();
            let (kill, killed) = oneshot::channel::<()>();
            let log = self.killed.clone();
            tokio::spawn(async move {
                let run = async {
                    match step {
                        Step::Exit { after, code } => {
                            tokio::time::sleep(after).await;
                            code
                        }
                        _ => std::future::pending().await,
                    }
                };
                let termination = tokio::select! {
                    code = run => Termination::Exited(code),
                    Ok(()) = killed => {
                        log.lock().unwrap_or_else(|e| e.into_inner()).push(container);
                        Termination::Killed
                    }
                };
                let _ = exit_tx.send(termination);
            });
            Ok(RunningContainer {
                exit,
                kill,
                stop: None,
                usage: Arc::new(Usage::default()),
            })
        }
        .boxed()
    }
}
