//! Pod admission (the kubelet's `lifecycle/predicate.go`): before a pod bound to this node
//! starts, check that it fits next to the pods already admitted — the pod count against
//! `--max-pods`, the sum of CPU and memory requests against allocatable. A pod that does not
//! fit is rejected the kubelet's way: phase Failed, reason `OutOfpods`/`OutOfcpu`/
//! `OutOfmemory`, and a message naming the shortfall.
//!
//! The scheduler makes the same checks, so rejections happen when it is bypassed (a pod with
//! `spec.nodeName` set) or when its view was stale.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::node::allocatable::NodeResources;
use crate::quantity::amount;

/// Why a pod was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The pod status reason, e.g. `OutOfmemory`.
    pub reason: String,
    /// What was short, as upstream words it.
    pub message: String,
}

/// CPU (millicores) and memory (bytes) a pod requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl Requests {
    fn of(container: &Container) -> Self {
        let requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref());
        Self {
            cpu_millis: amount(requests, "cpu").unwrap_or(0),
            memory_bytes: amount(requests, "memory").unwrap_or(0),
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis + other.cpu_millis,
            memory_bytes: self.memory_bytes + other.memory_bytes,
        }
    }

    fn max(self, other: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
        }
    }

    /// A pod's effective requests (upstream's `PodRequests`): app containers and sidecars run
    /// together; each regular init container runs alone beside the sidecars started before it;
    /// the larger of the two, plus the pod's `overhead`.
    pub fn of_pod(pod: &Pod) -> Self {
        Self::of_pod_with(pod, Self::of)
    }

    /// An admitted pod's requests: per container what the node allocated to it (its status's
    /// `allocatedResources`), else its spec. A resize the node has not accepted (pending,
    /// infeasible) changes the spec but not the allocation, and must not count (upstream
    /// admits against the allocation manager's `GetAllocatedPods`).
    pub fn of_admitted(pod: &Pod) -> Self {
        let statuses = pod.status.as_ref().map(|s| {
            let inits = s.init_container_statuses.iter().flatten();
            inits.chain(s.container_statuses.iter().flatten())
        });
        let allocated: Vec<(&str, Self)> = statuses
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let list = s.allocated_resources.as_ref()?;
                let requests = Self {
                    cpu_millis: amount(Some(list), "cpu").unwrap_or(0),
                    memory_bytes: amount(Some(list), "memory").unwrap_or(0),
                };
                Some((s.name.as_str(), requests))
            })
            .collect();
        if allocated.is_empty() {
            return Self::of_pod(pod);
        }
        Self::of_pod_with(pod, |container| {
            allocated
                .iter()
                .find(|(name, _)| *name == container.name)
                .map_or_else(|| Self::of(container), |(_, requests)| *requests)
        })
    }

    /// [`Self::of_pod`] with each container's requests from `of`.
    fn of_pod_with(pod: &Pod, of: impl Fn(&Container) -> Self) -> Self {
        let Some(spec) = &pod.spec else {
            return Self::default();
        };
        let mut sidecars = Self::default();
        let mut init_peak = Self::default();
        for init in spec.init_containers.iter().flatten() {
            if init.restart_policy.as_deref() == Some("Always") {
                sidecars = sidecars.add(of(init));
                init_peak = init_peak.max(sidecars);
            } else {
                init_peak = init_peak.max(sidecars.add(of(init)));
            }
        }
        let apps = spec.containers.iter().map(&of).fold(sidecars, Self::add);
        let mut containers = apps.max(init_peak);
        // Pod-level resources replace the containers' sum for what they name (upstream's
        // PodRequests with the PodLevelResources feature).
        let pod_level = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
        if let Some(cpu) = amount(pod_level, "cpu") {
            containers.cpu_millis = cpu;
        }
        if let Some(memory) = amount(pod_level, "memory") {
            containers.memory_bytes = memory;
        }
        let overhead = spec.overhead.as_ref();
        containers.add(Self {
            cpu_millis: amount(overhead, "cpu").unwrap_or(0),
            memory_bytes: amount(overhead, "memory").unwrap_or(0),
        })
    }
}

/// Whether `pod` fits next to `admitted` (the node's other active pods) within `allocatable`.
pub fn admit<'a>(
    pod: &Pod,
    admitted: impl IntoIterator<Item = &'a Pod>,
    allocatable: &NodeResources,
) -> Result<(), Rejection> {
    let mut count = 0u64;
    let mut used = Requests::default();
    for other in admitted {
        count += 1;
        used = used.add(Requests::of_admitted(other));
    }
    let insufficient = |resource: &str, requested: u64, used: u64, capacity: u64| Rejection {
        reason: format!("OutOf{resource}"),
        message: format!(
            "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
        ),
    };
    if count + 1 > allocatable.pods {
        return Err(insufficient("pods", 1, count, allocatable.pods));
    }
    let wanted = Requests::of_pod(pod);
    if wanted.cpu_millis > 0 && used.cpu_millis + wanted.cpu_millis > allocatable.cpu_millis {
        return Err(insufficient(
            "cpu",
            wanted.cpu_millis,
            used.cpu_millis,
            allocatable.cpu_millis,
        ));
    }
    if wanted.memory_bytes > 0 && used.memory_bytes + wanted.memory_bytes > allocatable.memory_bytes
    {
        return Err(insufficient(
            "memory",
            wanted.memory_bytes,
            used.memory_bytes,
            allocatable.memory_bytes,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: serde_json::Value, inits: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": containers, "initContainers": inits}
        }))
        .expect("pod")
    }

    fn requesting(cpu: &str, memory: &str) -> serde_json::Value {
        serde_json::json!({"name": format!("c{cpu}{memory}"), "resources": {"requests": {"cpu": cpu, "memory": memory}}})
    }

    const NODE: NodeResources = NodeResources {
        cpu_millis: 2000,
        memory_bytes: 1 << 30,
        ephemeral_storage_bytes: 1 << 40,
        pods: 3,
    };

    #[test]
    fn an_admitted_pod_counts_what_was_allocated_not_a_pending_resize() {
        let mut resized = pod(
            serde_json::json!([{"name": "main", "resources": {"requests": {"cpu": "1000"}}}]),
            serde_json::json!([]),
        );
        resized.status = serde_json::from_value(serde_json::json!({
            "containerStatuses": [{
                "name": "main", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "allocatedResources": {"cpu": "200m", "memory": "64Mi"}
            }]
        }))
        .expect("status");
        assert_eq!(Requests::of_pod(&resized).cpu_millis, 1_000_000);
        let admitted = Requests::of_admitted(&resized);
        assert_eq!(
            (admitted.cpu_millis, admitted.memory_bytes),
            (200, 64 << 20)
        );
        let newcomer = pod(
            serde_json::json!([requesting("250m", "1Mi")]),
            serde_json::json!([]),
        );
        assert_eq!(admit(&newcomer, [&resized], &NODE), Ok(()));
    }

    #[test]
    fn pod_requests_follow_upstream() {
        let p = pod(
            serde_json::json!([requesting("100m", "10Mi"), requesting("200m", "20Mi")]),
            serde_json::json!([
                requesting("1", "1Mi"),
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}}
            ]),
        );
        // Apps + sidecar = 350m; the init container alone = 1000m.
        let r = Requests::of_pod(&p);
        assert_eq!(r.cpu_millis, 1000);
        assert_eq!(r.memory_bytes, 30 << 20);
        // Pod-level requests replace the containers' for what they name.
        let mut pod_level = p.clone();
        pod_level.spec.as_mut().expect("spec").resources = Some(
            serde_json::from_value(serde_json::json!({"requests": {"cpu": "300m"}}))
                .expect("resources"),
        );
        let r = Requests::of_pod(&pod_level);
        assert_eq!((r.cpu_millis, r.memory_bytes), (300, 30 << 20));
    }

    #[test]
    fn rejections_name_the_shortfall() {
        let small = pod(
            serde_json::json!([requesting("1", "512Mi")]),
            serde_json::json!([]),
        );
        let big = pod(
            serde_json::json!([requesting("100m", "600Mi")]),
            serde_json::json!([]),
        );
        assert_eq!(
            admit(&big, [&small], &NODE),
            Err(Rejection {
                reason: "OutOfmemory".into(),
                message: format!(
                    "Node didn't have enough resource: memory, requested: {}, used: {}, capacity: {}",
                    600u64 << 20,
                    512u64 << 20,
                    1u64 << 30
                ),
            })
        );
        let cpu = pod(
            serde_json::json!([requesting("1500m", "1Mi")]),
            serde_json::json!([]),
        );
        assert_eq!(
            admit(&cpu, [&small], &NODE).expect_err("cpu").reason,
            "OutOfcpu"
        );
        let none = pod(serde_json::json!([{"name": "c"}]), serde_json::json!([]));
        assert_eq!(
            admit(&none, [&small, &small, &small], &NODE)
                .expect_err("pods")
                .message,
            "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3"
        );
        assert!(admit(&none, [&small, &small], &NODE).is_ok());
    }
}
