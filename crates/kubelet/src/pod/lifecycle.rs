//! The pod lifecycle as one explicit state machine (the kubelet's `pod_workers.go`: SyncPod ->
//! TerminatingPod -> TerminatedPod), with one transition function.
//!
//! ```text
//!             Prepared              last init done
//! Preparing ───────────▶ Initializing{next} ───────────▶ Running
//!     │                     │  init failed for good         │ every app container done for good
//!     │                     ▼                               ▼
//!     │  Stop{cause}     Terminating{cause, Regular} ◀──── Stop{cause} (delete, removal, node
//!     │                     │ every regular container        shutdown, eviction, deadline)
//!     │                     ▼ stopped
//!     │                  Terminating{cause, Sidecars[..]}   sidecars stopped in reverse order
//!     │                     │ last sidecar stopped
//!     └────────────────────▶▼
//!                        Terminated{cause} ── Finish: final status, delete (grace 0), clean up
//! ```
//!
//! The worker (`pod/worker.rs`) turns what happens (setup finished, a container runner ended,
//! the desired state changed, a timer fired) into [`Input`]s and carries out the [`Action`]s
//! that [`transition`] returns. Nothing here does I/O, so every transition has a unit test.

use std::time::Duration;

use tokio::time::Instant;

/// Why a pod stops (or stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Every app container is done for good (restart policy); the sidecars stop after them.
    Completed,
    /// A regular init container failed for good (`restartPolicy: Never`).
    InitFailed,
    /// The pod has a `deletionTimestamp`: graceful deletion.
    Deleted,
    /// The pod is gone from the API server (force deletion, or it vanished while we were away).
    Removed,
    /// Graceful node shutdown.
    NodeShutdown,
    /// The eviction manager picked it; the message is upstream's.
    Evicted(String),
    /// `activeDeadlineSeconds` passed (upstream's `activeDeadlineHandler`).
    DeadlineExceeded,
    /// Admission turned it away (`OutOfcpu`, ...): it never runs.
    Rejected {
        /// The status reason.
        reason: String,
        /// Upstream's message, without the "Pod was rejected: " prefix.
        message: String,
    },
}

impl Cause {
    /// The pod status `reason` and `message` this cause leaves on a stopped pod, if any.
    pub fn status_reason(&self) -> Option<(String, String)> {
        match self {
            Self::NodeShutdown => Some((
                "Terminated".into(),
                "Pod was terminated in response to imminent node shutdown.".into(),
            )),
            Self::Evicted(message) => Some(("Evicted".into(), message.clone())),
            // pkg/kubelet/active_deadline.go
            Self::DeadlineExceeded => Some((
                "DeadlineExceeded".into(),
                "Pod was active on the node longer than the specified deadline".into(),
            )),
            // pkg/kubelet/kubelet.go rejectPod
            Self::Rejected { reason, message } => {
                Some((reason.clone(), format!("Pod was rejected: {message}")))
            }
            _ => None,
        }
    }

    /// Whether the pod must end Failed whatever its containers did.
    pub fn fails_pod(&self) -> bool {
        matches!(
            self,
            Self::NodeShutdown
                | Self::Evicted(_)
                | Self::DeadlineExceeded
                | Self::InitFailed
                | Self::Rejected { .. }
        )
    }

    /// Whether the pod is deleted from the API server once it has stopped.
    pub fn deletes_pod(&self) -> bool {
        matches!(self, Self::Deleted)
    }

    /// Whether the worker ends once the pod has stopped for this cause; otherwise the stopped
    /// pod stays (Succeeded, Failed, Evicted) until it is deleted.
    pub fn ends_worker(&self) -> bool {
        matches!(self, Self::Deleted | Self::Removed | Self::NodeShutdown)
    }
}

/// Which containers are being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStep {
    /// Regular containers (apps and a running regular init container).
    Regular,
    /// Sidecars, by init-container index; the last one is stopping now, the others wait.
    /// (`kuberuntime_termination_order.go`: sidecars stop after the regular containers, in
    /// reverse order of their start.)
    Sidecars(Vec<usize>),
}

/// Where a pod is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Directories and volumes are being set up.
    Preparing,
    /// Init container `next` runs (a sidecar: until it has started); those before it are done
    /// (sidecars among them keep running).
    Initializing {
        /// The init container index that runs now.
        next: usize,
    },
    /// Every init container is done; the app containers run.
    Running,
    /// Containers are stopping; `deadline` is when the grace period ends.
    Terminating {
        /// Why.
        cause: Cause,
        /// When the last container must have stopped.
        deadline: Instant,
        /// What stops now.
        step: StopStep,
    },
    /// Every container has stopped.
    Terminated {
        /// Why.
        cause: Cause,
    },
}

/// The role of each init container, from the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    /// Runs to success before the next one starts.
    Regular,
    /// `restartPolicy: Always`: a native sidecar, running until the pod stops.
    Sidecar,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Setup finished; containers may start.
    Prepared,
    /// Regular init container `index` ended for good.
    InitExited {
        /// Its index among the init containers.
        index: usize,
        /// Exit code 0.
        success: bool,
    },
    /// Sidecar `index` has started.
    SidecarStarted {
        /// Its index among the init containers.
        index: usize,
    },
    /// Every app container is done for good (its restart policy runs it no more).
    AppsFinished {
        /// The pod's termination grace period (the sidecars get it).
        grace: Duration,
    },
    /// No regular container runs any more; `sidecars` are the indexes of those still running.
    RegularStopped {
        /// Running sidecars.
        sidecars: Vec<usize>,
    },
    /// Sidecar `index` has stopped.
    SidecarStopped {
        /// Its index among the init containers.
        index: usize,
    },
    /// Stop the pod within `grace` (a later, shorter grace shortens a termination underway).
    Stop {
        /// Why.
        cause: Cause,
        /// The grace period.
        grace: Duration,
    },
}

/// What the worker must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start init container `index`.
    StartInit(usize),
    /// Start every app container.
    StartApps,
    /// Stop every regular container, each within `grace`.
    StopRegular(Duration),
    /// Stop sidecar `index` within `grace`.
    StopSidecar(usize, Duration),
    /// Everything has stopped: send the final status, then delete or clean up.
    Finish,
}

/// The next state and what to do, from the current state, what happened, the init containers'
/// kinds and the current time.
pub fn transition(
    state: &PodState,
    input: Input,
    inits: &[InitKind],
    now: Instant,
) -> (PodState, Vec<Action>) {
    use PodState as S;
    let stay = || (state.clone(), Vec::new());
    match (state, input) {
        // A pod that ended by itself waits for its deletion (or removal) to be cleaned up.
        (
            S::Terminated { cause },
            Input::Stop {
                cause: new_cause @ (Cause::Deleted | Cause::Removed | Cause::NodeShutdown),
                ..
            },
        ) if !cause.ends_worker() => (S::Terminated { cause: new_cause }, vec![Action::Finish]),
        (S::Terminated { .. }, _) => stay(),

        (S::Preparing, Input::Prepared) => start_init(0, inits),
        (S::Preparing, Input::Stop { cause, .. }) => {
            (S::Terminated { cause }, vec![Action::Finish])
        }
        (S::Preparing, _) => stay(),

        (S::Initializing { next }, Input::InitExited { index, success }) if index == *next => {
            if success {
                start_init(index + 1, inits)
            } else {
                // An init container that failed for good fails the pod; the sidecars that
                // started before it stop (upstream: the pod is Failed, kill all).
                terminate(Cause::InitFailed, Duration::ZERO, now, None)
            }
        }
        (S::Initializing { next }, Input::SidecarStarted { index })
            if index == *next && inits.get(index) == Some(&InitKind::Sidecar) =>
        {
            start_init(index + 1, inits)
        }
        (S::Initializing { .. } | S::Running, Input::Stop { cause, grace }) => {
            terminate(cause, grace, now, None)
        }
        (S::Initializing { .. }, _) => stay(),

        (S::Running, Input::AppsFinished { grace }) => {
            terminate(Cause::Completed, grace, now, None)
        }
        (S::Running, _) => stay(),

        (
            S::Terminating {
                cause,
                deadline,
                step,
            },
            input,
        ) => match input {
            Input::Stop {
                cause: new_cause,
                grace,
            } => {
                // A later, shorter grace period shortens the termination underway; a longer
                // one never lengthens it (pod_workers.go calculateEffectiveGracePeriod).
                let new_deadline = now + grace;
                if new_deadline >= *deadline {
                    return stay();
                }
                let cause = if matches!(cause, Cause::Completed | Cause::InitFailed) {
                    new_cause
                } else {
                    cause.clone()
                };
                let deadline = new_deadline.min(*deadline);
                let remaining = deadline.saturating_duration_since(now);
                let actions = match step {
                    StopStep::Regular => vec![Action::StopRegular(remaining)],
                    StopStep::Sidecars(list) => list
                        .last()
                        .map(|i| vec![Action::StopSidecar(*i, remaining)])
                        .unwrap_or_default(),
                };
                (
                    S::Terminating {
                        cause,
                        deadline,
                        step: step.clone(),
                    },
                    actions,
                )
            }
            Input::RegularStopped { mut sidecars } if *step == StopStep::Regular => {
                sidecars.sort_unstable();
                stop_next_sidecar(cause.clone(), *deadline, sidecars, now)
            }
            Input::SidecarStopped { index } => match step {
                StopStep::Sidecars(list) if list.last() == Some(&index) => {
                    let mut rest = list.clone();
                    rest.pop();
                    stop_next_sidecar(cause.clone(), *deadline, rest, now)
                }
                StopStep::Sidecars(list) => {
                    // One that was not asked to stop ended by itself: drop it from the queue.
                    let rest = list.iter().copied().filter(|i| *i != index).collect();
                    (
                        S::Terminating {
                            cause: cause.clone(),
                            deadline: *deadline,
                            step: StopStep::Sidecars(rest),
                        },
                        Vec::new(),
                    )
                }
                StopStep::Regular => stay(),
            },
            _ => stay(),
        },
    }
}

/// Starts init container `index`, skipping to the apps after the last one.
fn start_init(index: usize, inits: &[InitKind]) -> (PodState, Vec<Action>) {
    if index < inits.len() {
        (
            PodState::Initializing { next: index },
            vec![Action::StartInit(index)],
        )
    } else {
        (PodState::Running, vec![Action::StartApps])
    }
}

/// Enters termination: regular containers first.
fn terminate(
    cause: Cause,
    grace: Duration,
    now: Instant,
    step: Option<StopStep>,
) -> (PodState, Vec<Action>) {
    (
        PodState::Terminating {
            cause,
            deadline: now + grace,
            step: step.unwrap_or(StopStep::Regular),
        },
        vec![Action::StopRegular(grace)],
    )
}

/// Stops the highest-index sidecar still running with what is left of the grace period, or
/// finishes when none is left.
fn stop_next_sidecar(
    cause: Cause,
    deadline: Instant,
    sidecars: Vec<usize>,
    now: Instant,
) -> (PodState, Vec<Action>) {
    match sidecars.last() {
        None => (PodState::Terminated { cause }, vec![Action::Finish]),
        Some(&last) => {
            let remaining = deadline.saturating_duration_since(now);
            (
                PodState::Terminating {
                    cause,
                    deadline,
                    step: StopStep::Sidecars(sidecars),
                },
                vec![Action::StopSidecar(last, remaining)],
            )
        }
    }
}

/// The effective grace period of a deletion: the pod's `deletionGracePeriodSeconds`, else its
/// `terminationGracePeriodSeconds`, else 30 s; never below 1 s
/// (`pod_workers.go` calculateEffectiveGracePeriod).
pub fn deletion_grace(
    deletion_grace_seconds: Option<i64>,
    spec_grace_seconds: Option<i64>,
) -> Duration {
    let seconds = deletion_grace_seconds
        .or(spec_grace_seconds)
        .unwrap_or(30)
        .max(1);
    Duration::from_secs(seconds as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_secs(30);

    fn run(state: PodState, input: Input, inits: &[InitKind]) -> (PodState, Vec<Action>) {
        transition(&state, input, inits, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn prepared_starts_the_first_init_container_or_the_apps() {
        let (s, a) = run(PodState::Preparing, Input::Prepared, &[]);
        assert_eq!((s, a), (PodState::Running, vec![Action::StartApps]));
        let (s, a) = run(PodState::Preparing, Input::Prepared, &[InitKind::Regular]);
        assert_eq!(
            (s, a),
            (
                PodState::Initializing { next: 0 },
                vec![Action::StartInit(0)]
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn init_containers_run_in_order_and_sidecars_go_on_once_started() {
        let inits = [InitKind::Sidecar, InitKind::Regular];
        let (s, a) = run(
            PodState::Initializing { next: 0 },
            Input::SidecarStarted { index: 0 },
            &inits,
        );
        assert_eq!(
            (s.clone(), a),
            (
                PodState::Initializing { next: 1 },
                vec![Action::StartInit(1)]
            )
        );
        // A stale report of an earlier container changes nothing.
        assert_eq!(
            run(s.clone(), Input::SidecarStarted { index: 0 }, &inits).1,
            vec![]
        );
        let (s, a) = run(
            s,
            Input::InitExited {
                index: 1,
                success: true,
            },
            &inits,
        );
        assert_eq!((s, a), (PodState::Running, vec![Action::StartApps]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_init_container_fails_the_pod_and_stops_everything() {
        let (s, a) = run(
            PodState::Initializing { next: 0 },
            Input::InitExited {
                index: 0,
                success: false,
            },
            &[InitKind::Regular],
        );
        assert!(matches!(
            s,
            PodState::Terminating {
                cause: Cause::InitFailed,
                step: StopStep::Regular,
                ..
            }
        ));
        assert_eq!(a, vec![Action::StopRegular(Duration::ZERO)]);
    }

    #[tokio::test(start_paused = true)]
    async fn deletion_while_preparing_finishes_at_once() {
        // A pod stuck in FailedMount that is deleted must not wait for its volumes.
        let (s, a) = run(
            PodState::Preparing,
            Input::Stop {
                cause: Cause::Deleted,
                grace: G,
            },
            &[],
        );
        assert_eq!(
            (s, a),
            (
                PodState::Terminated {
                    cause: Cause::Deleted
                },
                vec![Action::Finish]
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn apps_finished_stops_sidecars_in_reverse_order_then_finishes() {
        let inits = [InitKind::Sidecar, InitKind::Sidecar];
        let (s, a) = run(PodState::Running, Input::AppsFinished { grace: G }, &inits);
        assert_eq!(a, vec![Action::StopRegular(G)]);
        let (s, a) = run(
            s,
            Input::RegularStopped {
                sidecars: vec![1, 0],
            },
            &inits,
        );
        assert_eq!(a, vec![Action::StopSidecar(1, G)]);
        let (s, a) = run(s, Input::SidecarStopped { index: 1 }, &inits);
        assert_eq!(a, vec![Action::StopSidecar(0, G)]);
        let (s, a) = run(s, Input::SidecarStopped { index: 0 }, &inits);
        assert_eq!(
            (s, a),
            (
                PodState::Terminated {
                    cause: Cause::Completed
                },
                vec![Action::Finish]
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sidecars_share_what_is_left_of_the_grace_period() {
        let inits = [InitKind::Sidecar];
        let (s, _) = run(
            PodState::Running,
            Input::Stop {
                cause: Cause::Deleted,
                grace: G,
            },
            &inits,
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        let (_, a) = run(s, Input::RegularStopped { sidecars: vec![0] }, &inits);
        assert_eq!(a, vec![Action::StopSidecar(0, Duration::from_secs(10))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_grace_shortens_termination_and_a_longer_one_does_not() {
        let (s, _) = run(
            PodState::Running,
            Input::Stop {
                cause: Cause::Deleted,
                grace: G,
            },
            &[],
        );
        let (s2, a) = run(
            s.clone(),
            Input::Stop {
                cause: Cause::Deleted,
                grace: Duration::from_secs(60),
            },
            &[],
        );
        assert_eq!((s2, a), (s.clone(), vec![]));
        let (_, a) = run(
            s,
            Input::Stop {
                cause: Cause::Deleted,
                grace: Duration::from_secs(1),
            },
            &[],
        );
        assert_eq!(a, vec![Action::StopRegular(Duration::from_secs(1))]);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_and_eviction_keep_their_cause_through_termination() {
        let (s, a) = run(
            PodState::Running,
            Input::Stop {
                cause: Cause::DeadlineExceeded,
                grace: G,
            },
            &[],
        );
        assert_eq!(a, vec![Action::StopRegular(G)]);
        let (s, _) = run(
            s,
            Input::Stop {
                cause: Cause::Deleted,
                grace: Duration::from_secs(1),
            },
            &[],
        );
        let (s, a) = run(s, Input::RegularStopped { sidecars: vec![] }, &[]);
        assert_eq!(a, vec![Action::Finish]);
        assert_eq!(
            s,
            PodState::Terminated {
                cause: Cause::DeadlineExceeded
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_pod_waits_for_its_deletion_and_nothing_else() {
        let done = PodState::Terminated {
            cause: Cause::Completed,
        };
        for input in [Input::Prepared, Input::AppsFinished { grace: G }] {
            assert_eq!(run(done.clone(), input, &[]), (done.clone(), vec![]));
        }
        let deleted = run(
            done,
            Input::Stop {
                cause: Cause::Deleted,
                grace: G,
            },
            &[],
        );
        let gone = PodState::Terminated {
            cause: Cause::Deleted,
        };
        assert_eq!(deleted, (gone.clone(), vec![Action::Finish]));
        let again = Input::Stop {
            cause: Cause::Removed,
            grace: Duration::ZERO,
        };
        assert_eq!(run(gone.clone(), again, &[]), (gone, vec![]));
    }

    #[test]
    fn deletion_grace_follows_upstream() {
        assert_eq!(deletion_grace(None, None), Duration::from_secs(30));
        assert_eq!(deletion_grace(Some(5), Some(30)), Duration::from_secs(5));
        assert_eq!(deletion_grace(None, Some(0)), Duration::from_secs(1));
        assert_eq!(deletion_grace(Some(0), None), Duration::from_secs(1));
    }
}
