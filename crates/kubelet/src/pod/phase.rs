//! The pod phase, conditions and QoS class from container statuses (the kubelet's `getPhase`,
//! `generateAPIPodStatus` and `qos.GetPodQOS`).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Whether a container run terminated with exit code 0.
fn succeeded(status: &ContainerStatus) -> bool {
    status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0)
}

/// The pod phase. `init` are the statuses of the regular (run-to-completion) init containers,
/// `app` of the app containers; `restart_policy` is the pod's.
pub fn phase(
    init: &[ContainerStatus],
    app: &[ContainerStatus],
    restart_policy: &str,
    expected_init: usize,
) -> &'static str {
    let init_failed_for_good = restart_policy == "Never"
        && init.iter().any(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code != 0)
        });
    if init_failed_for_good {
        return "Failed";
    }
    if init.len() < expected_init || !init.iter().all(succeeded) {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut ok) = (0, 0, 0, 0);
    for status in app {
        let state = status.state.clone().unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = state.terminated {
            stopped += 1;
            ok += usize::from(t.exit_code == 0);
        } else if let Some(t) = status
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
        {
            // Waiting to restart after a run: counts as stopped, as upstream does.
            stopped += 1;
            ok += usize::from(t.exit_code == 0);
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 || app.is_empty() {
        "Pending"
    } else if running > 0 || restart_policy == "Always" {
        // Stopped containers under `Always` will restart.
        "Running"
    } else if stopped == ok {
        "Succeeded"
    } else if restart_policy == "Never" {
        "Failed"
    } else {
        "Running"
    }
}

/// Builds the pod conditions, keeping a condition's `lastTransitionTime` from `previous` while
/// its status holds.
pub fn conditions(
    sandbox_ready: bool,
    initialized: bool,
    containers_ready: bool,
    previous: &[PodCondition],
    now: &Time,
) -> Vec<PodCondition> {
    let reason = |ok: bool, why: &str| (!ok).then(|| why.to_string());
    [
        ("PodReadyToStartContainers", sandbox_ready, None),
        (
            "Initialized",
            initialized,
            reason(initialized, "ContainersNotInitialized"),
        ),
        (
            "ContainersReady",
            containers_ready,
            reason(containers_ready, "ContainersNotReady"),
        ),
        (
            "Ready",
            containers_ready,
            reason(containers_ready, "ContainersNotReady"),
        ),
    ]
    .into_iter()
    .map(|(type_, ok, reason)| {
        let status = if ok { "True" } else { "False" };
        let transition = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            reason,
            last_transition_time: Some(transition),
            ..Default::default()
        }
    })
    .collect()
}

/// The QoS class: Guaranteed when every container limits cpu and memory at its requests,
/// BestEffort when none requests or limits anything, Burstable otherwise.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let containers: Vec<_> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let resources = c.resources.clone().unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        // Requests default to limits when only limits are given.
        let requests = resources.requests.unwrap_or_else(|| limits.clone());
        any |= !limits.is_empty() || !requests.is_empty();
        for resource in ["cpu", "memory"] {
            let limit = limits.get(resource);
            if limit.is_none() || requests.get(resource).or(limit) != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };

    fn running() -> ContainerStatus {
        ContainerStatus {
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn exited(code: i32) -> ContainerStatus {
        ContainerStatus {
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn backing_off(code: i32) -> ContainerStatus {
        ContainerStatus {
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting::default()),
                ..Default::default()
            }),
            last_state: exited(code).state,
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(phase(&[], &[running()], "Always", 0), "Running");
        assert_eq!(phase(&[], &[exited(0)], "Never", 0), "Succeeded");
        assert_eq!(phase(&[], &[exited(3)], "Never", 0), "Failed");
        assert_eq!(
            phase(&[], &[exited(0), exited(1)], "OnFailure", 0),
            "Running"
        );
        assert_eq!(phase(&[], &[backing_off(1)], "OnFailure", 0), "Running");
        assert_eq!(phase(&[], &[exited(0)], "Always", 0), "Running");
        assert_eq!(phase(&[exited(0)], &[], "Never", 2), "Pending");
        assert_eq!(phase(&[exited(1)], &[], "Never", 2), "Failed");
        assert_eq!(phase(&[exited(1)], &[], "OnFailure", 2), "Pending");
        assert_eq!(
            phase(&[], &[ContainerStatus::default()], "Never", 0),
            "Pending"
        );
    }

    #[test]
    fn qos_classes() {
        let pod = |resources: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({"spec": {"containers": [{"name": "c", "resources": resources}]}}))
                .expect("pod")
        };
        assert_eq!(qos_class(&pod(serde_json::json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&pod(
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}})
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(serde_json::json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
    }
}
