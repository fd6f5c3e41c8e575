//! Node events with the kubelet's reasons (`pkg/kubelet/events`, `nodestatus/setters.go`):
//! `Starting` when the kubelet starts, and one event per condition transition
//! (`NodeHasSufficientMemory`, `NodeHasDiskPressure`, `NodeReady`, ...), each "Node <name>
//! status is now: <reason>", so `kubectl describe node` reads as it does for a kubelet.

use k8s_openapi::api::core::v1::{NodeCondition, ObjectReference};
use kube::runtime::events::EventType;

use crate::events::EventPublisher;

/// Publishes events about this node as `kubelet`. Best effort: a lost event never stops the
/// node.
pub struct NodeEvents {
    publisher: EventPublisher,
    reference: ObjectReference,
    node: String,
}

impl NodeEvents {
    /// Events about `node`, through the node's broadcaster.
    pub fn new(publisher: EventPublisher, node: &str) -> Self {
        Self {
            publisher,
            // Upstream's nodeRef uses the node's name as its UID.
            reference: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.into()),
                uid: Some(node.into()),
                ..Default::default()
            },
            node: node.into(),
        }
    }

    /// The `Starting` event ("Starting kubelet.").
    pub async fn starting(&self) {
        self.publish(EventType::Normal, "Starting", "Starting kubelet.".into())
            .await;
    }

    /// One event per condition whose status differs from `previous` (or that is new).
    pub async fn transitions(&self, previous: &[NodeCondition], current: &[NodeCondition]) {
        for (reason, type_) in transitions(previous, current) {
            let note = format!("Node {} status is now: {reason}", self.node);
            self.publish(type_, reason, note).await;
        }
    }

    async fn publish(&self, type_: EventType, reason: &str, note: String) {
        self.publisher
            .publish(type_, reason, note, self.reference.clone());
    }
}

/// The event reasons for the conditions that changed status, as `setters.go` names them.
pub fn transitions(
    previous: &[NodeCondition],
    current: &[NodeCondition],
) -> Vec<(&'static str, EventType)> {
    let mut events = Vec::new();
    for c in current {
        let before = previous
            .iter()
            .find(|p| p.type_ == c.type_)
            .map(|p| p.status.as_str());
        if before == Some(c.status.as_str()) {
            continue;
        }
        let truth = c.status == "True";
        let reason = match (c.type_.as_str(), truth) {
            ("MemoryPressure", false) => "NodeHasSufficientMemory",
            ("MemoryPressure", true) => "NodeHasInsufficientMemory",
            ("DiskPressure", false) => "NodeHasNoDiskPressure",
            ("DiskPressure", true) => "NodeHasDiskPressure",
            ("PIDPressure", false) => "NodeHasSufficientPID",
            ("PIDPressure", true) => "NodeHasInsufficientPID",
            ("Ready", true) => "NodeReady",
            ("Ready", false) => "NodeNotReady",
            _ => continue,
        };
        events.push((reason, EventType::Normal));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, status: &str) -> NodeCondition {
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn one_event_per_changed_condition() {
        let first = [
            condition("MemoryPressure", "False"),
            condition("DiskPressure", "False"),
            condition("PIDPressure", "False"),
            condition("Ready", "True"),
        ];
        let reasons: Vec<&str> = transitions(&[], &first)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(
            reasons,
            [
                "NodeHasSufficientMemory",
                "NodeHasNoDiskPressure",
                "NodeHasSufficientPID",
                "NodeReady"
            ]
        );
        assert!(transitions(&first, &first).is_empty());
        let mut pressure = first.clone();
        pressure[1] = condition("DiskPressure", "True");
        pressure[3] = condition("Ready", "False");
        let reasons: Vec<&str> = transitions(&first, &pressure)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(reasons, ["NodeHasDiskPressure", "NodeNotReady"]);
    }
}
