//! Choosing the pod to evict under pressure (upstream's `rankMemoryPressure` and
//! `rankDiskPressureFunc`): pods whose usage exceeds their request first, then lower
//! priority, then the larger excess over the request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::eviction::disk_usage;
use crate::pod::admission::Requests;
use crate::quantity;
use crate::stats::Stats;

/// The starved resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `memory`.
    Memory,
    /// `ephemeral-storage`.
    EphemeralStorage,
}

impl Resource {
    /// The resource's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::EphemeralStorage => "ephemeral-storage",
        }
    }
}

/// One running pod's usage, per container (memory) or for the whole pod (storage).
#[derive(Debug, Clone, Default)]
pub struct PodUsage {
    /// Memory bytes per running container.
    pub memory: Vec<(String, u64)>,
    /// Ephemeral storage bytes: its logs and emptyDirs.
    pub storage: u64,
}

/// Usage of the `active` pods that have running containers, by UID.
pub fn usage_by_pod(
    stats: &Stats,
    active: &[Arc<Pod>],
    pods_dir: &Path,
) -> HashMap<String, PodUsage> {
    let mut usage: HashMap<String, PodUsage> = HashMap::new();
    for entry in stats.running() {
        let pod = usage.entry(entry.pod.uid.clone()).or_default();
        pod.memory
            .push((entry.container.clone(), entry.usage.memory_bytes()));
        pod.storage += disk_usage(&entry.log_dir);
    }
    for pod in active {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            continue;
        };
        if let Some(usage) = usage.get_mut(uid) {
            usage.storage +=
                disk_usage(&pods_dir.join(uid).join("volumes/kubernetes.io~empty-dir"));
        }
    }
    usage
}

fn request(pod: &Pod, resource: Resource) -> u64 {
    match resource {
        Resource::Memory => Requests::of_pod(pod).memory_bytes,
        Resource::EphemeralStorage => pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .filter_map(|c| {
                quantity::amount(c.resources.as_ref()?.requests.as_ref(), "ephemeral-storage")
            })
            .sum(),
    }
}

/// The priority from which a pod is system-critical (`scheduling.SystemCriticalPriority`).
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// Static, mirror and system-critical pods are never evicted (`kubelettypes.IsCriticalPod`).
pub fn is_critical(pod: &Pod) -> bool {
    let annotations = pod.metadata.annotations.as_ref();
    let source = annotations.and_then(|a| a.get("kubernetes.io/config.source"));
    let mirror = annotations.is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
    mirror || source.is_some_and(|s| s != "api") || priority >= SYSTEM_CRITICAL_PRIORITY
}

/// The pod to evict for `resource` and upstream's per-container sentence about it; critical
/// pods are never chosen.
pub fn victim(
    active: &[Arc<Pod>],
    usage: &HashMap<String, PodUsage>,
    resource: Resource,
) -> Option<(Arc<Pod>, String)> {
    let used = |u: &PodUsage| match resource {
        Resource::Memory => u.memory.iter().map(|(_, b)| b).sum(),
        Resource::EphemeralStorage => u.storage,
    };
    let candidates = active.iter().filter(|p| !is_critical(p)).filter_map(|pod| {
        let usage = usage.get(pod.metadata.uid.as_deref()?)?;
        let used = used(usage);
        let request = request(pod, resource);
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        Some((pod, usage, used, request, priority))
    });
    let (pod, usage, used, request, _) =
        candidates.max_by_key(|(_, _, used, request, priority)| {
            (
                used > request,
                -i64::from(*priority),
                used.saturating_sub(*request),
            )
        })?;
    let (container, container_used) = match resource {
        Resource::Memory => usage
            .memory
            .iter()
            .max_by_key(|(_, bytes)| *bytes)
            .map(|(name, bytes)| (name.clone(), *bytes))
            .unwrap_or_default(),
        Resource::EphemeralStorage => (
            usage
                .memory
                .first()
                .map(|(n, _)| n.clone())
                .unwrap_or_default(),
            used,
        ),
    };
    let message = format!(
        "Container {container} was using {}Ki, request is {}, has larger consumption of {}. ",
        container_used / 1024,
        if request == 0 {
            "0".to_string()
        } else {
            format!("{}Ki", request / 1024)
        },
        resource.name()
    );
    Some((pod.clone(), message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, memory_request: Option<&str>, priority: i32) -> Arc<Pod> {
        let resources = memory_request
            .map(|m| serde_json::json!({"requests": {"memory": m}}))
            .unwrap_or(serde_json::json!({}));
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": uid, "uid": uid},
                "spec": {"priority": priority, "containers": [{"name": "main", "resources": resources}]}
            }))
            .expect("pod"),
        )
    }

    fn using(bytes: u64) -> PodUsage {
        PodUsage {
            memory: vec![("main".into(), bytes)],
            storage: 0,
        }
    }

    #[test]
    fn best_effort_goes_before_burstable_within_request() {
        let pods = vec![
            pod("within", Some("100Mi"), 0),
            pod("best-effort", None, 0),
            pod("over", Some("1Mi"), 0),
        ];
        let mut usage = HashMap::from([
            ("within".to_string(), using(50 << 20)),
            ("best-effort".to_string(), using(2 << 20)),
            ("over".to_string(), using(10 << 20)),
        ]);
        // Both exceed their requests; "over" exceeds by 9 MiB, the best-effort pod by 2 MiB.
        let (victim, message) = victim(&pods, &usage, Resource::Memory).expect("victim");
        assert_eq!(victim.metadata.name.as_deref(), Some("over"));
        assert_eq!(
            message,
            "Container main was using 10240Ki, request is 1024Ki, has larger consumption of memory. "
        );
        usage.remove("over");
        let (victim, message) = victim_of(&pods, &usage);
        assert_eq!(victim, "best-effort");
        assert!(message.contains("request is 0,"), "{message}");
        usage.remove("best-effort");
        assert_eq!(victim_of(&pods, &usage).0, "within");
    }

    #[test]
    fn lower_priority_goes_first_among_pods_over_their_requests() {
        let pods = vec![pod("important", None, 1000), pod("batch", None, 0)];
        let usage = HashMap::from([
            ("important".to_string(), using(50 << 20)),
            ("batch".to_string(), using(1 << 20)),
        ]);
        assert_eq!(victim_of(&pods, &usage).0, "batch");
    }

    #[test]
    fn critical_static_and_mirror_pods_are_never_evicted() {
        let critical = pod("critical", None, 2_000_000_000);
        let mut static_pod = (*pod("static", None, 0)).clone();
        static_pod.metadata.annotations = Some(
            [(
                "kubernetes.io/config.source".to_string(),
                "file".to_string(),
            )]
            .into(),
        );
        let pods = vec![critical, Arc::new(static_pod), pod("plain", None, 0)];
        let usage = HashMap::from([
            ("critical".to_string(), using(500 << 20)),
            ("static".to_string(), using(400 << 20)),
            ("plain".to_string(), using(1 << 20)),
        ]);
        assert_eq!(victim_of(&pods, &usage).0, "plain");
        assert!(victim(&pods[..2], &usage, Resource::Memory).is_none());
    }

    fn victim_of(pods: &[Arc<Pod>], usage: &HashMap<String, PodUsage>) -> (String, String) {
        let (pod, message) = victim(pods, usage, Resource::Memory).expect("victim");
        (pod.metadata.name.clone().unwrap_or_default(), message)
    }
}
