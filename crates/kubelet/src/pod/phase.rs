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

/// Whether a container that stopped with an exit code runs again (its restart rules).
pub type Restarts<'a> = &'a dyn Fn(&ContainerStatus, i32) -> bool;

/// The pod phase (upstream's `getPhase`). `init` are the statuses of the regular
/// (run-to-completion) init containers, `app` of the app containers; `restarts` says whether a
/// stopped container runs again, by its own restart rules over the pod's policy (KEP-5307).
///
/// A container that will run again counts as running, as upstream's phase is `Running` while
/// containers restart under `Always` or `OnFailure`; with per-container rules that is decided
/// per container, so a `Never` pod whose container is restarted by a rule does not go `Failed`
/// (terminal) while it restarts.
pub fn phase(
    init: &[ContainerStatus],
    app: &[ContainerStatus],
    restarts: Restarts<'_>,
    expected_init: usize,
) -> &'static str {
    let init_failed_for_good = init.iter().any(|s| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code != 0 && !restarts(s, t.exit_code))
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
            if restarts(status, t.exit_code) {
                running += 1;
            } else {
                stopped += 1;
                ok += usize::from(t.exit_code == 0);
            }
        } else if status
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some())
        {
            // Waiting to run again after a run (back-off).
            running += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 || app.is_empty() {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped == ok {
        "Succeeded"
    } else {
        "Failed"
    }
}

/// What the pod's readiness conditions are computed from.
pub struct Readiness<'a> {
    /// The pod has its sandbox (false once it has stopped).
    pub sandbox_ready: bool,
    /// Every init container is done.
    pub initialized: bool,
    /// Every app container is ready.
    pub containers_ready: bool,
    /// The app containers that are not ready (for the message).
    pub unready_containers: Vec<&'a str>,
    /// The condition types of `spec.readinessGates`.
    pub gates: &'a [String],
    /// The pod's conditions as the API server has them (readiness gates are set by others).
    pub current: &'a [PodCondition],
    /// The pod phase is `Succeeded` (conditions then say `PodCompleted`).
    pub completed: bool,
    /// The pod's `metadata.generation`, reported as each condition's `observedGeneration`.
    pub generation: Option<i64>,
}

/// Why a readiness gate holds Ready back, as upstream's `GeneratePodReadyCondition`
/// (`pkg/kubelet/status/generate.go`) words it.
fn gates_message(gates: &[String], current: &[PodCondition]) -> Option<String> {
    let unready: Vec<String> = gates
        .iter()
        .filter_map(|gate| match current.iter().find(|c| &c.type_ == gate) {
            None => Some(format!(
                "corresponding condition of pod readiness gate {gate:?} does not exist."
            )),
            Some(c) if c.status != "True" => Some(format!(
                "the status of pod readiness gate {gate:?} is not \"True\", but {}",
                c.status
            )),
            Some(_) => None,
        })
        .collect();
    (!unready.is_empty()).then(|| unready.join(", "))
}

/// Builds the pod conditions (upstream's `status/generate.go`), keeping a condition's
/// `lastTransitionTime` from `previous` while its status holds.
pub fn conditions(r: &Readiness<'_>, previous: &[PodCondition], now: &Time) -> Vec<PodCondition> {
    let not_ready = || -> (Option<String>, Option<String>) {
        if r.completed {
            (Some("PodCompleted".into()), None)
        } else {
            (
                Some("ContainersNotReady".into()),
                (!r.unready_containers.is_empty()).then(|| {
                    format!(
                        "containers with unready status: [{}]",
                        r.unready_containers.join(" ")
                    )
                }),
            )
        }
    };
    let initialized = if r.initialized {
        (true, None, None)
    } else {
        (false, Some("ContainersNotInitialized".to_string()), None)
    };
    let containers_ready = if r.containers_ready {
        (true, None, None)
    } else {
        let (reason, message) = not_ready();
        (false, reason, message)
    };
    let ready = if !r.containers_ready {
        containers_ready.clone()
    } else if let Some(message) = gates_message(r.gates, r.current) {
        (false, Some("ReadinessGatesNotReady".into()), Some(message))
    } else {
        (true, None, None)
    };
    [
        ("PodReadyToStartContainers", (r.sandbox_ready, None, None)),
        ("Initialized", initialized),
        ("ContainersReady", containers_ready),
        ("Ready", ready),
    ]
    .into_iter()
    .map(|(type_, (ok, reason, message))| {
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
            message,
            last_transition_time: Some(transition),
            observed_generation: r.generation,
            ..Default::default()
        }
    })
    .collect()
}

/// The QoS class the API server assigned at creation (`status.qosClass`, immutable), else
/// computed as upstream's `ComputePodQOS` (`pkg/apis/core/v1/helper/qos/qos.go`): only cpu and
/// memory count, zero quantities are ignored, quantities are compared as numbers, and
/// pod-level `spec.resources` replace the containers' when given.
pub fn qos_class(pod: &Pod) -> &'static str {
    match pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        Some("Guaranteed") => "Guaranteed",
        Some("Burstable") => "Burstable",
        Some("BestEffort") => "BestEffort",
        _ => compute_qos(pod),
    }
}

/// `ComputePodQOS`, ignoring what the API server stored.
pub fn compute_qos(pod: &Pod) -> &'static str {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;
    type List = BTreeMap<String, Quantity>;
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    // Adds the positive cpu/memory quantities of `list` to `sum`; returns which were found.
    fn add(sum: &mut BTreeMap<&'static str, f64>, list: Option<&List>) -> (bool, bool) {
        let mut found = (false, false);
        for (name, flag) in [("cpu", 0), ("memory", 1)] {
            let value = list
                .and_then(|l| l.get(name))
                .and_then(|q| crate::quantity::parse(&q.0).ok())
                .unwrap_or(0.0);
            if value > 0.0 {
                *sum.entry(name).or_default() += value;
                if flag == 0 {
                    found.0 = true;
                } else {
                    found.1 = true;
                }
            }
        }
        found
    }
    // The API server defaults requests to limits (static pods are defaulted the same way);
    // do it here too, so an undefaulted pod is classed as the API would class it.
    let defaulted = |requests: Option<&List>, limits: Option<&List>| -> List {
        let mut merged = limits.cloned().unwrap_or_default();
        for (k, v) in requests.into_iter().flatten() {
            merged.insert(k.clone(), v.clone());
        }
        merged
    };
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let mut guaranteed = true;
    if let Some(resources) = &spec.resources {
        let reqs = defaulted(resources.requests.as_ref(), resources.limits.as_ref());
        add(&mut requests, Some(&reqs));
        if resources.limits.as_ref().is_some_and(|l| !l.is_empty()) {
            let (cpu, memory) = add(&mut limits, resources.limits.as_ref());
            guaranteed &= cpu && memory;
        }
    } else {
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let resources = c.resources.as_ref();
            let lims = resources.and_then(|r| r.limits.as_ref());
            let reqs = defaulted(resources.and_then(|r| r.requests.as_ref()), lims);
            add(&mut requests, Some(&reqs));
            let (cpu, memory) = add(&mut limits, lims);
            guaranteed &= cpu && memory;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    guaranteed &= requests
        .iter()
        .all(|(name, req)| limits.get(name).is_some_and(|lim| (lim - req).abs() < 1e-9));
    if guaranteed && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
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

    /// Every container follows the pod's `policy`.
    fn by(policy: &str) -> impl Fn(&ContainerStatus, i32) -> bool {
        let policy = crate::pod::restart::RestartPolicy::parse(Some(policy));
        move |_, code| policy.restarts_after(code)
    }

    #[test]
    fn a_never_pod_restarted_by_a_container_rule_stays_running() {
        // restartPolicy Never, container rule "restart on 42": neither Failed nor Succeeded
        // while it restarts, Failed once it exits with another code.
        let rule = |_: &ContainerStatus, code: i32| code == 42;
        assert_eq!(phase(&[], &[exited(42)], &rule, 0), "Running");
        assert_eq!(phase(&[], &[backing_off(42)], &rule, 0), "Running");
        assert_eq!(phase(&[], &[exited(1)], &rule, 0), "Failed");
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(phase(&[], &[running()], &by("Always"), 0), "Running");
        assert_eq!(phase(&[], &[exited(0)], &by("Never"), 0), "Succeeded");
        assert_eq!(phase(&[], &[exited(3)], &by("Never"), 0), "Failed");
        assert_eq!(
            phase(&[], &[exited(0), exited(1)], &by("OnFailure"), 0),
            "Running"
        );
        assert_eq!(
            phase(&[], &[backing_off(1)], &by("OnFailure"), 0),
            "Running"
        );
        assert_eq!(phase(&[], &[exited(0)], &by("Always"), 0), "Running");
        assert_eq!(phase(&[exited(0)], &[], &by("Never"), 2), "Pending");
        assert_eq!(phase(&[exited(1)], &[], &by("Never"), 2), "Failed");
        assert_eq!(phase(&[exited(1)], &[], &by("OnFailure"), 2), "Pending");
        assert_eq!(
            phase(&[], &[ContainerStatus::default()], &by("Never"), 0),
            "Pending"
        );
    }

    #[test]
    fn readiness_gates_hold_ready_until_true() {
        let gates = vec!["example.com/gate".to_string()];
        let now = Time(jiff::Timestamp::now());
        let mut r = Readiness {
            sandbox_ready: true,
            initialized: true,
            containers_ready: true,
            unready_containers: vec![],
            gates: &gates,
            current: &[],
            completed: false,
            generation: Some(3),
        };
        let ready = |c: &[PodCondition]| {
            c.iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .expect("Ready")
        };
        let missing = ready(&conditions(&r, &[], &now));
        assert_eq!(missing.status, "False");
        assert_eq!(missing.observed_generation, Some(3));
        assert_eq!(missing.reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert_eq!(
            missing.message.as_deref(),
            Some(
                "corresponding condition of pod readiness gate \"example.com/gate\" does not exist."
            )
        );
        let set = [PodCondition {
            type_: "example.com/gate".into(),
            status: "True".into(),
            ..Default::default()
        }];
        r.current = &set;
        assert_eq!(ready(&conditions(&r, &[], &now)).status, "True");
        r.containers_ready = false;
        r.unready_containers = vec!["a", "b"];
        let unready = ready(&conditions(&r, &[], &now));
        assert_eq!(unready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            unready.message.as_deref(),
            Some("containers with unready status: [a b]")
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
        // The API server defaults requests to limits; equal amounts in other units match.
        assert_eq!(
            qos_class(&pod(serde_json::json!({
                "limits": {"cpu": "1", "memory": "1Gi"},
                "requests": {"cpu": "1000m", "memory": "1073741824"}
            }))),
            "Guaranteed"
        );
        // Zero quantities and other resources do not count.
        assert_eq!(
            qos_class(&pod(
                serde_json::json!({"requests": {"cpu": "0", "ephemeral-storage": "1Gi"}})
            )),
            "BestEffort"
        );
        // Pod-level resources win over the containers'.
        let pod_level: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}},
            "containers": [{"name": "c"}]
        }}))
        .expect("pod");
        assert_eq!(qos_class(&pod_level), "Guaranteed");
        // What the API server stored is kept.
        let mut stored = pod(serde_json::json!({}));
        stored.status = Some(k8s_openapi::api::core::v1::PodStatus {
            qos_class: Some("Burstable".into()),
            ..Default::default()
        });
        assert_eq!(qos_class(&stored), "Burstable");
    }
}
