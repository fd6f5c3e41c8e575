//! Ephemeral containers (`kubectl debug`): what one runs as.
//!
//! Upstream (`pkg/kubelet/kuberuntime`, `computePodActions`) starts each ephemeral container
//! of `spec.ephemeralContainers` once, never restarts it, and reports it in
//! `status.ephemeralContainerStatuses`; with `targetContainerName` it shares the target's
//! process namespace, which is how a Linux debugger sees the target's files and environment
//! (`/proc/1/root`, `/proc/1/environ`). A wasm guest has no processes to share, so here the
//! target's view is given directly: the ephemeral container runs with the target's volume
//! mounts (same preopens, same read-only rules) and environment, then its own on top, and
//! the target's resources (its limits bound the debugger as the pod's cgroup would).
//! Without a target it gets only what it names itself, and the pod-level resources.

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, PodSpec};

/// Why an ephemeral container cannot be turned into a container to run.
#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    /// The object could not be read as a container (an API server of another version).
    #[error(
        "ephemeral container {name:?} cannot be read as a container: {source}; check the \
         API server and kubectl versions"
    )]
    Shape {
        /// Its name.
        name: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

/// The container `ec` runs as in a pod with `spec`: its own fields (without probes or
/// lifecycle hooks, which the API refuses on ephemeral containers anyway), after the target's
/// env, envFrom and volume mounts (its own replace the target's of the same name or path).
///
/// # Errors
/// [`EphemeralError::Shape`] when the object cannot be read as a container.
pub fn effective(ec: &EphemeralContainer, spec: &PodSpec) -> Result<Container, EphemeralError> {
    let shape = |source| EphemeralError::Shape {
        name: ec.name.clone(),
        source,
    };
    let mut value = serde_json::to_value(ec).map_err(shape)?;
    if let Some(object) = value.as_object_mut() {
        for key in [
            "targetContainerName",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
            "restartPolicy",
            "restartPolicyRules",
        ] {
            object.remove(key);
        }
    }
    let mut container: Container = serde_json::from_value(value).map_err(shape)?;
    let target = ec.target_container_name.as_deref().and_then(|name| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
    });
    match target {
        Some(target) => {
            let own_env = container.env.take().unwrap_or_default();
            let mut env: Vec<_> = target
                .env
                .iter()
                .flatten()
                .filter(|e| !own_env.iter().any(|o| o.name == e.name))
                .cloned()
                .collect();
            env.extend(own_env);
            container.env = (!env.is_empty()).then_some(env);
            let own_from = container.env_from.take().unwrap_or_default();
            let mut from: Vec<_> = target.env_from.iter().flatten().cloned().collect();
            from.extend(own_from);
            container.env_from = (!from.is_empty()).then_some(from);
            let own_mounts = container.volume_mounts.take().unwrap_or_default();
            let mut mounts: Vec<_> = target
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| !own_mounts.iter().any(|o| o.mount_path == m.mount_path))
                .cloned()
                .collect();
            mounts.extend(own_mounts);
            container.volume_mounts = (!mounts.is_empty()).then_some(mounts);
            container.resources = target.resources.clone();
        }
        None => container.resources = spec.resources.clone(),
    }
    Ok(container)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodSpec {
        serde_json::from_value(serde_json::json!({
            "containers": [{
                "name": "app", "image": "app",
                "env": [{"name": "A", "value": "app"}, {"name": "B", "value": "app"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true},
                                 {"name": "cache", "mountPath": "/cache"}],
                "resources": {"limits": {"memory": "64Mi"}}
            }],
            "resources": {"limits": {"memory": "128Mi"}}
        }))
        .expect("spec")
    }

    fn ephemeral(value: serde_json::Value) -> EphemeralContainer {
        serde_json::from_value(value).expect("ephemeral container")
    }

    #[test]
    fn a_targeted_debugger_gets_the_targets_mounts_env_and_limits_under_its_own() {
        let ec = ephemeral(serde_json::json!({
            "name": "debugger", "image": "tool", "targetContainerName": "app",
            "stdin": true, "tty": true,
            "env": [{"name": "B", "value": "mine"}],
            "volumeMounts": [{"name": "other", "mountPath": "/cache"}]
        }));
        let c = effective(&ec, &spec()).expect("container");
        assert_eq!(c.name, "debugger");
        assert_eq!(c.image.as_deref(), Some("tool"));
        assert_eq!((c.stdin, c.tty), (Some(true), Some(true)));
        let env: Vec<(String, Option<String>)> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        let expected = vec![
            ("A".to_string(), Some("app".to_string())),
            ("B".to_string(), Some("mine".to_string())),
        ];
        assert_eq!(env, expected);
        let mounts: Vec<(&str, &str, Option<bool>)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
            .collect();
        // The target's read-only rule travels with its mount.
        assert_eq!(
            mounts,
            [("data", "/data", Some(true)), ("other", "/cache", None)]
        );
        let memory = c
            .resources
            .and_then(|r| r.limits)
            .and_then(|l| l.get("memory").cloned());
        assert_eq!(memory.map(|q| q.0), Some("64Mi".to_string()));
    }

    #[test]
    fn without_a_target_only_its_own_mounts_and_the_pods_resources() {
        let ec = ephemeral(serde_json::json!({
            "name": "debugger", "image": "tool",
            "volumeMounts": [{"name": "data", "mountPath": "/d"}]
        }));
        let c = effective(&ec, &spec()).expect("container");
        assert_eq!(c.env, None);
        assert_eq!(c.volume_mounts.as_ref().map(Vec::len), Some(1));
        let memory = c
            .resources
            .and_then(|r| r.limits)
            .and_then(|l| l.get("memory").cloned());
        assert_eq!(memory.map(|q| q.0), Some("128Mi".to_string()));
    }
}
