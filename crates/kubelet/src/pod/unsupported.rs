//! Pod and container fields where the upstream kubelet would act and a wasm node cannot:
//! each is named in an `UnsupportedFeature` warning event, so no field is ignored silently
//! (the full list, with what is supported, is `docs/pod-spec.md`).

use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::network::HostPorts;

/// What of the pod itself this node does not honour.
pub fn pod_fields(spec: &PodSpec) -> Vec<&'static str> {
    let mut found = Vec::new();
    let on = |flag: Option<bool>| flag.unwrap_or(false);
    if on(spec.host_pid) || on(spec.host_ipc) || on(spec.share_process_namespace) {
        found
            .push("hostPID/hostIPC/shareProcessNamespace (wasm guests have no processes to share)");
    }
    if spec.host_aliases.as_ref().is_some_and(|h| !h.is_empty()) {
        found.push("hostAliases (guests have no /etc/hosts)");
    }
    if spec.dns_config.is_some() || spec.dns_policy.as_deref() == Some("None") {
        found.push("dnsConfig (guests have no resolver configuration)");
    }
    if spec.resource_claims.as_ref().is_some_and(|c| !c.is_empty()) {
        found.push("resourceClaims (no devices for wasm guests)");
    }
    if let Some(sc) = &spec.security_context {
        let ids = sc.run_as_user.is_some()
            || sc.run_as_group.is_some()
            || sc.fs_group.is_some()
            || sc
                .supplemental_groups
                .as_ref()
                .is_some_and(|g| !g.is_empty());
        if ids {
            found.push("securityContext user and group IDs (files are created by the node)");
        }
        if sc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
            found.push("securityContext.sysctls (no kernel namespace per pod)");
        }
    }
    found
}

/// What of a container this node does not honour; `host_ports` says how the pod's network
/// treats `hostPort`s.
pub fn container_fields(c: &Container, host_ports: HostPorts) -> Vec<&'static str> {
    let mut found = Vec::new();
    if let Some(sc) = &c.security_context {
        if sc.privileged.unwrap_or(false) {
            found.push("privileged mode (wasm has no privileges to grant)");
        }
        if sc.run_as_user.is_some() || sc.run_as_group.is_some() {
            found.push("securityContext user and group IDs");
        }
        if sc
            .capabilities
            .as_ref()
            .is_some_and(|caps| caps.add.as_ref().is_some_and(|a| !a.is_empty()))
        {
            found.push("added capabilities (wasm guests have only what WASI grants)");
        }
    }
    if c.lifecycle.is_some() {
        found.push("lifecycle hooks");
    }
    if c.working_dir.is_some() {
        found.push("workingDir");
    }
    let ports = c.ports.iter().flatten();
    if ports
        .clone()
        .any(|p| p.protocol.as_deref().is_some_and(|p| p != "TCP"))
    {
        found.push("UDP and SCTP ports (only TCP containerPorts are served)");
    }
    let host_port =
        |p: &k8s_openapi::api::core::v1::ContainerPort| p.host_port.is_some_and(|h| h != 0);
    match host_ports {
        HostPorts::NodeNetwork => {
            if ports
                .clone()
                .any(|p| host_port(p) && p.host_port != Some(p.container_port))
            {
                found.push("hostPort other than containerPort (the pod shares the node's network: the containerPort is the node's port)");
            }
        }
        HostPorts::Unmapped => {
            if ports.clone().any(host_port) {
                found.push("hostPort (no plugin of the node's CNI network has the portMappings capability, e.g. portmap)");
            }
        }
        HostPorts::Mapped => {}
    }
    if c.volume_devices.as_ref().is_some_and(|d| !d.is_empty()) {
        found.push("volumeDevices (no block devices for wasm guests)");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_upstream_acts_on_are_named() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "hostNetwork": true,
            "hostAliases": [{"ip": "1.2.3.4", "hostnames": ["x"]}],
            "securityContext": {"runAsUser": 1000},
            "containers": [{"name": "c", "ports": [{"containerPort": 80}], "tty": true,
                            "securityContext": {"privileged": true}}]
        }))
        .expect("spec");
        let pod = pod_fields(&spec);
        // hostNetwork is honoured: the pod uses the node's network.
        assert_eq!(pod.len(), 2, "{pod:?}");
        // A TCP containerPort is served (an HTTP component), and stdin and tty are honoured
        // (`kubectl attach -i`): neither is named; only `privileged` is.
        let container = container_fields(&spec.containers[0], HostPorts::NodeNetwork);
        assert_eq!(
            container,
            ["privileged mode (wasm has no privileges to grant)"]
        );
        let host_port: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]
        }))
        .expect("container");
        assert_eq!(
            container_fields(&host_port, HostPorts::NodeNetwork).len(),
            1
        );
        assert_eq!(container_fields(&host_port, HostPorts::Unmapped).len(), 1);
        assert!(container_fields(&host_port, HostPorts::Mapped).is_empty());
        let plain: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "c", "image": "x"}]
        }))
        .expect("spec");
        assert!(pod_fields(&plain).is_empty());
        assert!(container_fields(&plain.containers[0], HostPorts::Unmapped).is_empty());
    }
}
