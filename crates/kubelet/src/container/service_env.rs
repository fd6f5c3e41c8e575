//! Service environment variables (upstream's `getServiceEnvVarMap` in `kubelet_pods.go` and
//! `pkg/kubelet/envvars`): `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<PORT>]` and the
//! Docker-link variables for the `kubernetes` Service of the `default` namespace always, and
//! for the Services of the pod's namespace when `enableServiceLinks` is not false.
//!
//! The Services come from one watch of all Services (kube-runtime's watcher), as the
//! kubelet's service informer; until it has listed once, containers wait with
//! `CreateContainerConfigError` like upstream's "services have not yet been read at least once".

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// All Services, keyed by (namespace, name), as the last (re)list and the events since left
/// them; `None` until the first list is complete.
type Services = Arc<RwLock<Option<BTreeMap<(String, String), Service>>>>;

/// The Services the node has seen, or none (standalone mode).
#[derive(Clone, Default)]
pub struct ServiceEnv {
    services: Option<(Services, watch::Receiver<bool>)>,
}

/// The Services have not been listed yet.
#[derive(Debug, Clone, thiserror::Error)]
#[error("services have not yet been read at least once, cannot construct envvars")]
pub struct NotSynced;

fn key(service: &Service) -> (String, String) {
    (
        service.metadata.namespace.clone().unwrap_or_default(),
        service.metadata.name.clone().unwrap_or_default(),
    )
}

impl ServiceEnv {
    /// No Services (standalone mode): only the pod's own variables.
    pub fn none() -> Self {
        Self::default()
    }

    /// Watches all Services with the newest client from `clients` until `stop` (a rotated
    /// client certificate starts the watch again with the new client).
    pub fn watch(clients: watch::Receiver<kube::Client>, stop: CancellationToken) -> Self {
        let services: Services = Arc::default();
        let (ready_tx, ready) = watch::channel(false);
        let store = services.clone();
        tokio::spawn(async move {
            let mut clients = clients;
            loop {
                let api: Api<Service> = Api::all(clients.borrow_and_update().clone());
                let mut events = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .boxed();
                let mut relist: BTreeMap<(String, String), Service> = BTreeMap::new();
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = clients.changed() => {
                            if changed.is_err() { return; }
                            break;
                        }
                        event = events.next() => event,
                    };
                    let mut guard = store.write().unwrap_or_else(|e| e.into_inner());
                    match event {
                        Some(Ok(watcher::Event::Init)) => relist.clear(),
                        Some(Ok(watcher::Event::InitApply(s))) => {
                            relist.insert(key(&s), s);
                        }
                        Some(Ok(watcher::Event::InitDone)) => {
                            *guard = Some(std::mem::take(&mut relist));
                            ready_tx.send_replace(true);
                        }
                        Some(Ok(watcher::Event::Apply(s))) => {
                            if let Some(map) = guard.as_mut() {
                                map.insert(key(&s), s);
                            }
                        }
                        Some(Ok(watcher::Event::Delete(s))) => {
                            if let Some(map) = guard.as_mut() {
                                map.remove(&key(&s));
                            }
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%error, "service watch failed; retrying")
                        }
                        None => return,
                    }
                }
            }
        });
        Self {
            services: Some((services, ready)),
        }
    }

    /// The variables for a pod in `namespace`; waits up to `wait` for the first list.
    pub async fn vars(
        &self,
        namespace: &str,
        enable_service_links: bool,
        wait: Duration,
    ) -> Result<Vec<(String, String)>, NotSynced> {
        let Some((services, ready)) = &self.services else {
            return Ok(Vec::new());
        };
        let mut ready = ready.clone();
        if tokio::time::timeout(wait, ready.wait_for(|r| *r))
            .await
            .map_or(true, |r| r.is_err())
        {
            return Err(NotSynced);
        }
        let all: Vec<Service> = services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|m| m.values().cloned())
            .collect();
        Ok(service_vars(&all, namespace, enable_service_links))
    }
}

/// The variables of `services` for a pod in `namespace` (`getServiceEnvVarMap` +
/// `envvars.FromServices`), sorted by name.
pub fn service_vars(
    services: &[Service],
    namespace: &str,
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for service in services {
        let ip = service
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = service.metadata.name.clone().unwrap_or_default();
        let ns = service.metadata.namespace.as_deref().unwrap_or_default();
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(service);
        } else if ns == namespace && enable_service_links {
            chosen.insert(name, service);
        }
    }
    let mut vars = BTreeMap::new();
    for (name, service) in chosen {
        let spec = service.spec.clone().unwrap_or_default();
        let ip = spec.cluster_ip.unwrap_or_default();
        let ports = spec.ports.unwrap_or_default();
        let Some(first) = ports.first() else {
            continue;
        };
        let prefix = env_name(&name);
        vars.insert(format!("{prefix}_SERVICE_HOST"), ip.clone());
        vars.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
        for port in &ports {
            if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                vars.insert(
                    format!("{prefix}_SERVICE_PORT_{}", env_name(port_name)),
                    port.port.to_string(),
                );
            }
        }
        // Docker-link variables (makeLinkVariables).
        let host_port = |port: i32| {
            if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        };
        for (i, port) in ports.iter().enumerate() {
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            let lower = protocol.to_lowercase();
            let url = format!("{lower}://{}", host_port(port.port));
            if i == 0 {
                vars.insert(format!("{prefix}_PORT"), url.clone());
            }
            let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
            vars.insert(port_prefix.clone(), url);
            vars.insert(format!("{port_prefix}_PROTO"), lower);
            vars.insert(format!("{port_prefix}_PORT"), port.port.to_string());
            vars.insert(format!("{port_prefix}_ADDR"), ip.clone());
        }
    }
    vars.into_iter().collect()
}

/// A Service or port name as a variable name (`makeEnvVariableName`).
fn env_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(namespace: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .expect("service")
    }

    #[test]
    fn kubernetes_always_and_own_namespace_with_service_links() {
        let services = [
            service(
                "default",
                "kubernetes",
                "10.0.0.1",
                serde_json::json!([{"name": "https", "port": 443}]),
            ),
            service(
                "app",
                "my-db",
                "10.0.0.7",
                serde_json::json!([{"port": 5432}, {"name": "metrics", "port": 9090, "protocol": "TCP"}]),
            ),
            service("app", "headless", "None", serde_json::json!([{"port": 80}])),
            service(
                "other",
                "elsewhere",
                "10.0.0.9",
                serde_json::json!([{"port": 80}]),
            ),
        ];
        let vars: BTreeMap<String, String> =
            service_vars(&services, "app", true).into_iter().collect();
        assert_eq!(vars["KUBERNETES_SERVICE_HOST"], "10.0.0.1");
        assert_eq!(vars["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(vars["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(vars["KUBERNETES_PORT"], "tcp://10.0.0.1:443");
        assert_eq!(vars["MY_DB_SERVICE_HOST"], "10.0.0.7");
        assert_eq!(vars["MY_DB_SERVICE_PORT"], "5432");
        assert_eq!(vars["MY_DB_SERVICE_PORT_METRICS"], "9090");
        assert_eq!(vars["MY_DB_PORT_9090_TCP_ADDR"], "10.0.0.7");
        assert_eq!(vars["MY_DB_PORT_5432_TCP_PROTO"], "tcp");
        assert!(
            !vars
                .keys()
                .any(|k| k.starts_with("HEADLESS") || k.starts_with("ELSEWHERE"))
        );
        let without: BTreeMap<String, String> =
            service_vars(&services, "app", false).into_iter().collect();
        assert!(without.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!without.contains_key("MY_DB_SERVICE_HOST"));
    }
}
