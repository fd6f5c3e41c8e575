//! Pods for wasm nodes: manifests that land on a given Krustlet node, and waiting on them.

use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::core::v1::{
    ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Event, Pod,
};
use kube::api::{Api, ListParams, PostParams};

/// Adds what a pod needs to land on `node`: the wasm tolerations and a hostname selector.
pub fn for_node(mut pod: serde_json::Value, node: &str) -> serde_json::Value {
    let spec = &mut pod["spec"];
    spec["nodeSelector"] = serde_json::json!({"kubernetes.io/hostname": node});
    spec["tolerations"] = serde_json::json!([
        {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"},
        {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoSchedule"}
    ]);
    pod
}

/// Creates a pod from JSON in `api`'s namespace.
pub async fn create(api: &Api<Pod>, pod: serde_json::Value) -> anyhow::Result<Pod> {
    let pod: Pod = serde_json::from_value(pod)?;
    Ok(api.create(&PostParams::default(), &pod).await?)
}

/// Waits until `check` holds for the pod (polling), or fails with the pod's status and events.
pub async fn wait_for(
    api: &Api<Pod>,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    let deadline = Instant::now() + timeout;
    loop {
        let pod = api.get_opt(name).await?;
        if let Some(pod) = &pod
            && check(pod)
        {
            return Ok(pod.clone());
        }
        if Instant::now() > deadline {
            let status = pod
                .and_then(|p| p.status)
                .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default());
            bail!(
                "pod {name}: not {what} within {timeout:?}; status: {}",
                status.unwrap_or_else(|| "gone".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pod's phase.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Waits for a phase.
pub async fn wait_for_phase(
    api: &Api<Pod>,
    name: &str,
    want: &str,
    timeout: Duration,
) -> anyhow::Result<Pod> {
    wait_for(api, name, timeout, want, |p| phase(p) == want).await
}

/// A container's status by name (app or init).
pub fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

/// A container's current waiting state, if it is waiting.
pub fn waiting<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStateWaiting> {
    container_status(pod, container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()
}

/// A container's current terminated state, if it has terminated.
pub fn terminated<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStateTerminated> {
    container_status(pod, container)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// Whether a container waits with `reason`.
pub fn waiting_with(pod: &Pod, container: &str, reason: &str) -> bool {
    waiting(pod, container).is_some_and(|w| w.reason.as_deref() == Some(reason))
}

/// Waits until the pod is gone from the API.
pub async fn wait_gone(api: &Api<Pod>, name: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while api.get_opt(name).await?.is_some() {
        if started.elapsed() > timeout {
            bail!("pod {name} still exists after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(started.elapsed())
}

/// Waits until an event in the namespace has `reason` and a message containing `text` (events
/// are written in the background, after the status that they go with).
pub async fn wait_for_event(
    events: &Api<Event>,
    reason: &str,
    text: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let notes: Vec<(String, String)> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect();
        if notes.iter().any(|(r, m)| r == reason && m.contains(text)) {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("no {reason} event with {text:?} after {timeout:?}: {notes:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The reasons of the events about a pod, oldest first.
pub async fn event_reasons(events: &Api<Event>, pod: &str) -> anyhow::Result<Vec<String>> {
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
        .await?;
    let mut items = list.items;
    items.sort_by_key(|e| {
        e.event_time
            .as_ref()
            .map(|t| t.0)
            .or(e.first_timestamp.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    Ok(items.into_iter().filter_map(|e| e.reason).collect())
}
