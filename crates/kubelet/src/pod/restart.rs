//! Restart policies as types, and what a restarted Krustlet does with a container that its
//! pod's last reported status shows.
//!
//! Wasm instances live in the Krustlet process, so a Krustlet restart ends them all. The pod's
//! status in the API server is what survives: a container that had finished is not run again
//! unless its restart policy says so, and one that was running is recorded as terminated (exit
//! 137, reason `ContainerStatusUnknown`, as upstream's `convertToAPIContainerStatuses` does for
//! a container that vanished) before its restart policy decides.

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus,
};

/// A pod's or container's restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart after every exit.
    Always,
    /// Restart after a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// From the API's string; anything unknown is the API default, `Always`.
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("Never") => Self::Never,
            Some("OnFailure") => Self::OnFailure,
            _ => Self::Always,
        }
    }

    /// The API's string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::OnFailure => "OnFailure",
            Self::Never => "Never",
        }
    }

    /// Whether a run that ended with `exit_code` is followed by another.
    pub fn restarts_after(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// One `restartPolicyRules` entry (action `Restart`): matches exit codes in, or not in, a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitCodeRule {
    /// Operator `NotIn` (else `In`).
    pub not_in: bool,
    /// The exit codes.
    pub values: Vec<i32>,
}

impl ExitCodeRule {
    fn matches(&self, exit_code: i32) -> bool {
        self.values.contains(&exit_code) != self.not_in
    }
}

/// Whether one container runs again after it exits (KEP-5307, upstream's
/// `podutil.ContainerShouldRestart`): the first of its `restartPolicyRules` that matches the
/// exit code restarts it; else its own `restartPolicy`; else the pod's. Rules count only on a
/// container that sets its own policy, as upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartRules {
    /// The container's policy, or the one it inherits from the pod.
    pub policy: RestartPolicy,
    /// Its restart rules, in order.
    pub rules: Vec<ExitCodeRule>,
}

impl From<RestartPolicy> for RestartRules {
    fn from(policy: RestartPolicy) -> Self {
        Self {
            policy,
            rules: Vec::new(),
        }
    }
}

impl RestartRules {
    /// The rules of `container` in a pod whose policy is `pod_policy`. Restartable init
    /// containers (sidecars) always restart; regular init containers restart on failure unless
    /// the pod says `Never` (upstream's `computeInitContainerActions`), or as their own policy
    /// says.
    pub fn of(container: &Container, init: bool, pod_policy: RestartPolicy) -> Self {
        let own = container.restart_policy.as_deref();
        if init && own == Some("Always") {
            return RestartPolicy::Always.into();
        }
        let Some(own) = own else {
            return match (init, pod_policy) {
                (true, RestartPolicy::Never) => RestartPolicy::Never,
                (true, _) => RestartPolicy::OnFailure,
                (false, policy) => policy,
            }
            .into();
        };
        let rules = container
            .restart_policy_rules
            .iter()
            .flatten()
            .filter(|r| r.action == "Restart")
            .filter_map(|r| r.exit_codes.as_ref())
            .map(|codes| ExitCodeRule {
                not_in: codes.operator == "NotIn",
                values: codes.values.clone().unwrap_or_default(),
            })
            .collect();
        Self {
            policy: RestartPolicy::parse(Some(own)),
            rules,
        }
    }

    /// Whether a run that ended with `exit_code` is followed by another.
    pub fn restarts_after(&self, exit_code: i32) -> bool {
        self.rules.iter().any(|r| r.matches(exit_code)) || self.policy.restarts_after(exit_code)
    }
}

/// The waiting/terminated reason of a container that was running when Krustlet stopped.
pub const STATUS_UNKNOWN: &str = "ContainerStatusUnknown";

/// How a container continues after a Krustlet restart.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Never ran: start it as new.
    Fresh,
    /// Ran before: start run `restart_count` with `last_state`.
    Again {
        /// The new run's restart count.
        restart_count: i32,
        /// The previous run's end.
        last_state: Box<ContainerState>,
    },
    /// Done for good: keep this status and do not run it.
    Done(Box<ContainerStatus>),
}

/// Decides how a container continues from its last reported status under its restart rules.
pub fn resume(previous: Option<&ContainerStatus>, rules: &RestartRules) -> Resume {
    let Some(previous) = previous else {
        return Resume::Fresh;
    };
    let state = previous.state.clone().unwrap_or_default();
    let (ended, restart_count) = if let Some(t) = state.terminated {
        (t, previous.restart_count)
    } else if let Some(running) = state.running {
        // Its instance died with the old process: record that, as upstream records a
        // container it can no longer find.
        let ended = ContainerStateTerminated {
            exit_code: 137,
            reason: Some(STATUS_UNKNOWN.into()),
            message: Some(
                "The container was running when krustlet stopped; its WebAssembly instance \
                 ended with the process"
                    .into(),
            ),
            started_at: running.started_at,
            finished_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now(),
            )),
            container_id: previous.container_id.clone(),
            ..Default::default()
        };
        (ended, previous.restart_count)
    } else if let Some(t) = previous
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.clone())
    {
        // Waiting in back-off after a run: that run's end decides.
        (t, previous.restart_count)
    } else {
        return Resume::Fresh;
    };
    if rules.restarts_after(ended.exit_code) {
        Resume::Again {
            restart_count: restart_count + 1,
            last_state: Box::new(ContainerState {
                terminated: Some(ended),
                ..Default::default()
            }),
        }
    } else {
        let mut done = previous.clone();
        done.ready = false;
        done.started = Some(false);
        done.state = Some(ContainerState {
            terminated: Some(ended),
            ..Default::default()
        });
        Resume::Done(Box::new(done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerStateRunning, ContainerStateWaiting};

    fn status(state: ContainerState, restart_count: i32) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            state: Some(state),
            restart_count,
            ..Default::default()
        }
    }
    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }
    fn exited(code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_finished_container_is_not_run_again_unless_its_policy_says_so() {
        let done = status(exited(0), 0);
        assert!(matches!(
            resume(Some(&done), &RestartPolicy::Never.into()),
            Resume::Done(_)
        ));
        assert!(matches!(
            resume(Some(&done), &RestartPolicy::OnFailure.into()),
            Resume::Done(_)
        ));
        assert!(matches!(
            resume(Some(&done), &RestartPolicy::Always.into()),
            Resume::Again {
                restart_count: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_running_container_is_recorded_as_killed_then_its_policy_decides() {
        let was_running = status(running(), 2);
        let Resume::Done(done) = resume(Some(&was_running), &RestartPolicy::Never.into()) else {
            panic!("a Never container that was running must not run again");
        };
        let t = done.state.and_then(|s| s.terminated).expect("terminated");
        assert_eq!(
            (t.exit_code, t.reason.as_deref()),
            (137, Some(STATUS_UNKNOWN))
        );
        let Resume::Again {
            restart_count,
            last_state,
        } = resume(Some(&was_running), &RestartPolicy::Always.into())
        else {
            panic!("an Always container restarts");
        };
        assert_eq!(restart_count, 3);
        assert_eq!(last_state.terminated.map(|t| t.exit_code), Some(137));
    }

    #[test]
    fn container_rules_come_first_then_its_policy_then_the_pods() {
        use k8s_openapi::api::core::v1::{ContainerRestartRule, ContainerRestartRuleOnExitCodes};
        let rule = |operator: &str, values: Vec<i32>| ContainerRestartRule {
            action: "Restart".into(),
            exit_codes: Some(ContainerRestartRuleOnExitCodes {
                operator: operator.into(),
                values: Some(values),
            }),
        };
        // A Never container restarted on exit code 42 only (the KEP's "retriable" example).
        let retriable = Container {
            name: "c".into(),
            restart_policy: Some("Never".into()),
            restart_policy_rules: Some(vec![rule("In", vec![42])]),
            ..Default::default()
        };
        let rules = RestartRules::of(&retriable, false, RestartPolicy::Always);
        assert!(rules.restarts_after(42));
        assert!(!rules.restarts_after(1));
        assert!(!rules.restarts_after(0));
        // NotIn: restart on every failure but 3.
        let not_in = Container {
            restart_policy: Some("Never".into()),
            restart_policy_rules: Some(vec![rule("NotIn", vec![0, 3])]),
            ..Default::default()
        };
        let rules = RestartRules::of(&not_in, false, RestartPolicy::Never);
        assert!(rules.restarts_after(1));
        assert!(!rules.restarts_after(3));
        // Its own policy over the pod's.
        let always = Container {
            restart_policy: Some("Always".into()),
            ..Default::default()
        };
        assert!(RestartRules::of(&always, false, RestartPolicy::Never).restarts_after(0));
        // Without one, the pod's; rules without an own policy do not count, as upstream.
        let plain = Container {
            restart_policy_rules: Some(vec![rule("In", vec![7])]),
            ..Default::default()
        };
        assert!(!RestartRules::of(&plain, false, RestartPolicy::Never).restarts_after(7));
        assert!(RestartRules::of(&plain, false, RestartPolicy::OnFailure).restarts_after(7));
        // Init containers: sidecars always; regular ones on failure unless the pod says Never.
        assert!(RestartRules::of(&always, true, RestartPolicy::Never).restarts_after(0));
        assert!(!RestartRules::of(&plain, true, RestartPolicy::Always).restarts_after(0));
        assert!(RestartRules::of(&plain, true, RestartPolicy::Always).restarts_after(1));
        assert!(!RestartRules::of(&plain, true, RestartPolicy::Never).restarts_after(1));
    }

    #[test]
    fn a_container_in_back_off_continues_from_its_last_run() {
        let mut backing_off = status(
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            4,
        );
        backing_off.last_state = Some(exited(1));
        assert!(matches!(
            resume(Some(&backing_off), &RestartPolicy::OnFailure.into()),
            Resume::Again {
                restart_count: 5,
                ..
            }
        ));
        let never_ran = status(
            ContainerState {
                waiting: Some(ContainerStateWaiting::default()),
                ..Default::default()
            },
            0,
        );
        assert_eq!(
            resume(Some(&never_ran), &RestartPolicy::Never.into()),
            Resume::Fresh
        );
        assert_eq!(resume(None, &RestartPolicy::Never.into()), Resume::Fresh);
    }
}
