//! In-place pod resize (KEP-1287, `kubectl patch pod --subresource resize`): a running wasm
//! instance takes new `resources` where the engine allows it, as upstream's
//! `computePodResizeAction` and the allocation manager do for a container.
//!
//! wasmtime reads a guest's memory limit at each growth and its CPU share at each epoch (both
//! live, [`LiveLimits`](crate::runtime::LiveLimits)), so CPU limits and requests change both
//! ways and the memory limit grows at once. A linear memory never shrinks: a memory limit below
//! what the guest holds now is refused (`PodResizeInProgress`, reason `Error`), as upstream
//! refuses a memory limit decrease below current usage. A resize that does not fit the node's
//! allocatable is `PodResizePending`, reason `Infeasible`. A container whose `resizePolicy`
//! says `RestartContainer` for a changed resource is restarted with the new resources.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::node::allocatable::NodeResources;
use crate::quantity::amount;
use crate::runtime::{Limits, Usage};

/// The limits a container's runs get, for the runtime; without a memory limit it may use up
/// to what all pods may hold (`memory_bound`), as the kubelet's pods cgroup bounds it.
pub fn container_limits(c: &Container, memory_bound: u64) -> Limits {
    let resources = c.resources.as_ref();
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    Limits {
        memory_bytes: Some(amount(limits, "memory").unwrap_or(memory_bound)),
        cpu_millis: amount(limits, "cpu"),
        cpu_request_millis: amount(requests, "cpu"),
    }
}

/// The CPU and memory of a container's resources (what resize and its status compare).
pub fn cpu_and_memory(c: &Container) -> ResourceRequirements {
    type List = std::collections::BTreeMap<String, Quantity>;
    let keep = |list: Option<&List>| -> Option<List> {
        let kept: List = list?
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "cpu" | "memory"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!kept.is_empty()).then_some(kept)
    };
    let r = c.resources.as_ref();
    ResourceRequirements {
        limits: keep(r.and_then(|r| r.limits.as_ref())),
        requests: keep(r.and_then(|r| r.requests.as_ref())),
        ..Default::default()
    }
}

/// The resources a container runs with, shared by its runner (each run starts with them and
/// attaches its live limits) and its pod worker (which resizes); cheap to clone.
#[derive(Clone, Default)]
pub struct Allocated(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    /// Set once resized: later runs start with these instead of the spec they were given.
    limits: Option<Limits>,
    /// The current run's usage and live limits.
    live: Option<Arc<Usage>>,
}

impl Allocated {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits for the next run: the resized ones, else `initial`.
    pub fn limits_or(&self, initial: Limits) -> Limits {
        self.inner().limits.unwrap_or(initial)
    }

    /// A run started with `usage` (its live limits).
    pub fn attach(&self, usage: Arc<Usage>) {
        self.inner().live = Some(usage);
    }

    /// The run ended.
    pub fn detach(&self) {
        self.inner().live = None;
    }

    /// Applies `limits` to the running instance (if any) and to later runs.
    pub fn apply(&self, limits: Limits) -> Result<(), ResizeError> {
        let mut inner = self.inner();
        if let Some(usage) = &inner.live
            && let Some(limit) = limits.memory_bytes
            && usage.memory_bytes() > limit
        {
            return Err(ResizeError::MemoryBelowUsage {
                limit,
                usage: usage.memory_bytes(),
            });
        }
        if let Some(usage) = &inner.live {
            usage.limits.set(limits);
        }
        inner.limits = Some(limits);
        Ok(())
    }
}

/// Why a resize cannot be applied to the running instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    /// A wasm linear memory never shrinks.
    #[error(
        "attempting to set the memory limit ({limit} bytes) below current usage ({usage} bytes): \
         a WebAssembly memory cannot shrink; raise the limit, or restart the container \
         (resizePolicy RestartContainer) to apply it"
    )]
    MemoryBelowUsage {
        /// The requested limit.
        limit: u64,
        /// What the guest holds now.
        usage: u64,
    },
}

/// What the worker does with a container whose resources changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing changed.
    None,
    /// Apply in place.
    InPlace(Limits),
    /// Its resize policy asks for a restart.
    Restart,
    /// It cannot fit the node (`PodResizePending`, `Infeasible`).
    Infeasible(String),
}

/// Decides a resize of `old` to `new` (same container), given the pod's total requests with
/// the new resources (`pod_cpu_millis`, `pod_memory_bytes`) and the node's allocatable.
pub fn decide(
    old: &Container,
    new: &Container,
    pod_cpu_millis: u64,
    pod_memory_bytes: u64,
    allocatable: &NodeResources,
    memory_bound: u64,
) -> Action {
    let (before, after) = (cpu_and_memory(old), cpu_and_memory(new));
    if before == after {
        return Action::None;
    }
    // Upstream's message for a resize the node can never hold (allocation/feasibility).
    for (resource, wanted, capacity) in [
        ("cpu", pod_cpu_millis, allocatable.cpu_millis),
        ("memory", pod_memory_bytes, allocatable.memory_bytes),
    ] {
        if wanted > capacity {
            return Action::Infeasible(format!(
                "Node didn't have enough capacity: {resource}, requested: {wanted}, capacity: {capacity}"
            ));
        }
    }
    let changed = |resource: &str| {
        let get = |r: &ResourceRequirements| {
            (
                r.limits.as_ref().and_then(|l| l.get(resource)).cloned(),
                r.requests.as_ref().and_then(|l| l.get(resource)).cloned(),
            )
        };
        get(&before) != get(&after)
    };
    let restart = new
        .resize_policy
        .iter()
        .flatten()
        .any(|p| p.restart_policy == "RestartContainer" && changed(p.resource_name.as_str()));
    if restart {
        Action::Restart
    } else {
        Action::InPlace(container_limits(new, memory_bound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(resources: serde_json::Value, policy: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({
            "name": "c", "resources": resources, "resizePolicy": policy
        }))
        .expect("container")
    }

    fn node() -> NodeResources {
        NodeResources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            ephemeral_storage_bytes: 0,
            pods: 110,
        }
    }

    #[test]
    fn cpu_and_memory_changes_apply_in_place_unless_the_policy_restarts() {
        let old = container(
            serde_json::json!({"limits": {"cpu": "100m", "memory": "64Mi"}}),
            serde_json::json!([]),
        );
        let new = container(
            serde_json::json!({"limits": {"cpu": "200m", "memory": "128Mi"}}),
            serde_json::json!([]),
        );
        assert_eq!(
            decide(&old, &new, 200, 128 << 20, &node(), 1 << 30),
            Action::InPlace(Limits {
                memory_bytes: Some(128 << 20),
                cpu_millis: Some(200),
                cpu_request_millis: None,
            })
        );
        assert_eq!(
            decide(&old, &old, 100, 64 << 20, &node(), 1 << 30),
            Action::None
        );
        let restart = container(
            serde_json::json!({"limits": {"cpu": "100m", "memory": "128Mi"}}),
            serde_json::json!([{"resourceName": "memory", "restartPolicy": "RestartContainer"}]),
        );
        assert_eq!(
            decide(&old, &restart, 100, 128 << 20, &node(), 1 << 30),
            Action::Restart
        );
        let too_big = container(
            serde_json::json!({"requests": {"cpu": "64"}}),
            serde_json::json!([]),
        );
        assert!(matches!(
            decide(&old, &too_big, 64_000, 0, &node(), 1 << 30),
            Action::Infeasible(m) if m == "Node didn't have enough capacity: cpu, requested: 64000, capacity: 2000"
        ));
    }

    #[test]
    fn a_memory_limit_below_what_the_guest_holds_is_refused() {
        let allocated = Allocated::default();
        let usage = Arc::new(Usage::default());
        usage.set_memory_bytes(100 << 20);
        allocated.attach(usage.clone());
        let limits = |mib: u64| Limits {
            memory_bytes: Some(mib << 20),
            ..Default::default()
        };
        assert!(matches!(
            allocated.apply(limits(64)),
            Err(ResizeError::MemoryBelowUsage { .. })
        ));
        allocated
            .apply(limits(256))
            .expect("a larger limit applies");
        assert_eq!(usage.limits.get(), limits(256));
        allocated.detach();
        assert_eq!(allocated.limits_or(limits(1)), limits(256));
    }
}
