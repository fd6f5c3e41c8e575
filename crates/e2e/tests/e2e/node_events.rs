//! What the node agent tells operators beyond its status: the kubelet's node events, and labels
//! that belong to the operators after registration.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node};
use krustlet_e2e::cluster::client;
use krustlet_e2e::{KrustletNode, kubectl};
use kube::api::{Api, ListParams};

use crate::KRUSTLET;

async fn node_event_reasons(node: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client().await.expect("client"), "default");
    events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Node,involvedObject.name={node}"
        )))
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn a_starting_node_records_the_kubelet_events_and_keeps_operator_labels() {
    let mut node =
        KrustletNode::start(KRUSTLET, "events", &["--node-labels=team=wasm"]).expect("start");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready");
    let expected = [
        "Starting",
        "NodeHasSufficientMemory",
        "NodeHasNoDiskPressure",
        "NodeHasSufficientPID",
        "NodeReady",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reasons = node_event_reasons(node.name()).await;
        if expected.iter().all(|r| reasons.iter().any(|x| x == r)) {
            break;
        }
        assert!(Instant::now() < deadline, "node events: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let described = kubectl(&["describe", "node", node.name()]).expect("describe");
    assert!(
        described.contains(&format!("Node {} status is now: NodeReady", node.name())),
        "{described}"
    );

    // An operator removes a --node-labels label; a restart does not put it back, while the
    // kubelet's own labels are kept true.
    kubectl(&["label", "node", node.name(), "team-", "type-"]).expect("unlabel");
    node.restart().expect("restart");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready again");
    let nodes: Api<Node> = Api::all(client().await.expect("client"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let labels = nodes
            .get(node.name())
            .await
            .expect("node")
            .metadata
            .labels
            .unwrap_or_default();
        if labels.get("type").map(String::as_str) == Some("krustlet") {
            assert!(
                !labels.contains_key("team"),
                "--node-labels reapplied: {labels:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "default label not reconciled: {labels:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    node.terminate(Duration::from_secs(30)).await.expect("stop");
}
