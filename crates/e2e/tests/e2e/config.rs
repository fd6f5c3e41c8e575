//! Pod configuration: environment from ConfigMaps and Secrets (so far; volumes come next).

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use krustlet_e2e::node::shared_node;
use krustlet_e2e::pods::{
    container_status, create, for_node, terminated, wait_for, wait_for_phase, waiting, waiting_with,
};
use krustlet_e2e::{TestNamespace, kubectl, workloads};
use kube::api::PostParams;
use serde_json::json;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);
/// Within this of an awaited object's creation the pod runs: the node watches the object, and
/// its fallback retry comes only after 60 s.
const WATCHED: Duration = Duration::from_secs(30);

fn env_pod(
    name: &str,
    args: &[&str],
    env: serde_json::Value,
    env_from: serde_json::Value,
) -> serde_json::Value {
    for_node(
        json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": workloads::multitool(), "args": args, "env": env, "envFrom": env_from}]
            }
        }),
        shared_node(KRUSTLET),
    )
}

async fn create_config_map(ns: &TestNamespace, name: &str, data: serde_json::Value) {
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}, "data": data}))
        .expect("configmap");
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
}

async fn create_secret(ns: &TestNamespace, name: &str, string_data: serde_json::Value) {
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": string_data}))
            .expect("secret");
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
}

#[tokio::test]
async fn env_from_config_maps_and_secrets_with_prefix_and_optional() {
    let ns = TestNamespace::new("envsrc").await.expect("namespace");
    create_config_map(
        &ns,
        "settings",
        json!({"greeting": "hello", "colour": "blue"}),
    )
    .await;
    create_secret(&ns, "creds", json!({"password": "s3cret"})).await;
    let pods = ns.api::<Pod>();
    let pod = env_pod(
        "env",
        &[
            "getenv",
            "CFG_greeting",
            "getenv",
            "CFG_colour",
            "getenv",
            "PASSWORD",
            "getenv",
            "MAYBE",
            "getenv",
            "GREETING",
        ],
        json!([
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "x", "optional": true}}},
            {"name": "GREETING", "value": "$(CFG_greeting), $(PASSWORD)"}
        ]),
        json!([
            {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
            {"secretRef": {"name": "no-such-secret", "optional": true}}
        ]),
    );
    create(&pods, pod).await.expect("create");
    wait_for_phase(&pods, "env", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    let out = kubectl(&["logs", "-n", ns.name(), "env"]).expect("logs");
    assert_eq!(
        out,
        "CFG_greeting=hello\nCFG_colour=blue\nPASSWORD=s3cret\nMAYBE is unset\nGREETING=hello, s3cret\n"
    );
}

#[tokio::test]
async fn a_missing_config_map_waits_with_create_container_config_error_then_runs() {
    let ns = TestNamespace::new("envwait").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let pod = env_pod(
        "waits",
        &["getenv", "MODE"],
        json!([{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "mode"}}}]),
        json!([]),
    );
    create(&pods, pod).await.expect("create");
    let stuck = wait_for(
        &pods,
        "waits",
        LONG,
        "waiting with CreateContainerConfigError",
        |p| waiting_with(p, "main", "CreateContainerConfigError"),
    )
    .await
    .expect("waiting");
    let message = waiting(&stuck, "main").and_then(|w| w.message.clone());
    assert_eq!(message.as_deref(), Some("configmap \"later\" not found"));
    create_config_map(&ns, "later", json!({"mode": "ready"})).await;
    // The node watches the ConfigMap: it starts well before the 60 s fallback retry.
    wait_for_phase(&pods, "waits", "Succeeded", WATCHED)
        .await
        .expect("runs once the ConfigMap exists");
    assert_eq!(
        kubectl(&["logs", "-n", ns.name(), "waits"]).expect("logs"),
        "MODE=ready\n"
    );
}

/// A container that restarts reads the pod as it is then: upstream's `syncPod` starts
/// containers from the latest pod, so a label changed since the first start shows in the
/// restarted container's downward-API environment.
#[tokio::test]
async fn a_restarted_container_reads_the_pods_current_labels() {
    let ns = TestNamespace::new("relabel").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let pod = for_node(
        json!({
            "metadata": {"name": "relabel", "labels": {"tier": "one"}},
            "spec": {
                "restartPolicy": "OnFailure",
                "containers": [{
                    "name": "main", "image": workloads::multitool(),
                    "args": ["getenv", "TIER", "sleep", "1", "exit", "1"],
                    "env": [{"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}}]
                }]
            }
        }),
        shared_node(KRUSTLET),
    );
    create(&pods, pod).await.expect("create");
    // Waits until the pod's current logs contain `text`.
    let logs_show = |text: &'static str, what: &'static str| {
        let ns = ns.name().to_string();
        async move {
            let deadline = std::time::Instant::now() + LONG;
            loop {
                let logs = kubectl(&["logs", "-n", &ns, "relabel"]).unwrap_or_default();
                if logs.contains(text) {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "{what}: {logs:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    logs_show("TIER=one", "the first run never printed its label").await;
    // The restart comes after a back-off of 10 s: the label lands well before it.
    kubectl(&[
        "label",
        "-n",
        ns.name(),
        "pod",
        "relabel",
        "tier=two",
        "--overwrite",
    ])
    .expect("kubectl label");
    wait_for(&pods, "relabel", LONG, "a restart", |p| {
        container_status(p, "main").is_some_and(|s| s.restart_count >= 1)
    })
    .await
    .expect("restarted");
    // Until the new run prints, the logs are the first run's.
    logs_show("TIER=two", "the restarted run did not see the new label").await;
}

#[tokio::test]
async fn config_map_secret_downward_api_and_service_account_volumes() {
    let ns = TestNamespace::new("vols").await.expect("namespace");
    create_config_map(
        &ns,
        "files",
        json!({"app.conf": "level=debug", "other": "x"}),
    )
    .await;
    create_secret(&ns, "keys", json!({"api-key": "k3y"})).await;
    let pods = ns.api::<Pod>();
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let pod = for_node(
        json!({
            "metadata": {"name": "vols", "labels": {"tier": "edge"}},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "files", "items": [{"key": "app.conf", "path": "conf/app.conf"}]}},
                    {"name": "sec", "secret": {"secretName": "keys"}},
                    {"name": "info", "downwardAPI": {"items": [{"path": "labels-tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}}]}}
                ],
                "containers": [{
                    "name": "main", "image": workloads::multitool(),
                    "args": ["cat", "/etc/cfg/conf/app.conf", "print", "", "cat", "/etc/sec/api-key", "print", "",
                             "cat", "/etc/info/labels-tier", "print", "", "cat", &format!("{sa}/namespace"), "print", "",
                             "ls", "/etc/cfg", "write", "/etc/cfg/new", "no"],
                    "volumeMounts": [
                        {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true},
                        {"name": "sec", "mountPath": "/etc/sec"},
                        {"name": "info", "mountPath": "/etc/info"}
                    ]
                }]
            }
        }),
        shared_node(KRUSTLET),
    );
    create(&pods, pod).await.expect("create");
    // The last command writes to a read-only mount: it must fail (exit 1) after the reads.
    let done = wait_for_phase(&pods, "vols", "Failed", LONG)
        .await
        .expect("Failed on the read-only write");
    let code = terminated(&done, "main").map(|t| t.exit_code);
    assert_eq!(code, Some(1));
    let out = kubectl(&["logs", "-n", ns.name(), "vols"]).expect("logs");
    let expected = format!(
        "level=debug\nk3y\nedge\n{}\nconf\nmultitool: write: /etc/cfg/new: Operation not permitted\n",
        ns.name()
    );
    assert_eq!(out, expected);

    // The service account token authenticates as the pod's service account.
    let token_pod = for_node(
        json!({
            "metadata": {"name": "token"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": workloads::multitool(),
                "args": ["cat", &format!("{sa}/token"), "print", "", "cat", &format!("{sa}/ca.crt")]
            }]}
        }),
        shared_node(KRUSTLET),
    );
    create(&pods, token_pod).await.expect("create");
    wait_for_phase(&pods, "token", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    let out = kubectl(&["logs", "-n", ns.name(), "token"]).expect("logs");
    let (token, ca) = out.split_once('\n').expect("token line");
    assert!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    let review: k8s_openapi::api::authentication::v1::TokenReview =
        serde_json::from_value(json!({"spec": {"token": token}})).expect("review");
    let reviews: kube::Api<k8s_openapi::api::authentication::v1::TokenReview> =
        kube::Api::all(ns.client());
    let reviewed = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("token review");
    let user = reviewed
        .status
        .and_then(|s| s.user)
        .and_then(|u| u.username);
    assert_eq!(
        user,
        Some(format!("system:serviceaccount:{}:default", ns.name()))
    );
}

#[tokio::test]
async fn a_volume_of_a_missing_config_map_fails_mount_until_it_exists() {
    let ns = TestNamespace::new("volwait").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let pod = for_node(
        json!({
            "metadata": {"name": "mountwait"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "cfg", "configMap": {"name": "later"}}],
                "containers": [{"name": "main", "image": workloads::multitool(), "args": ["cat", "/cfg/mode"],
                                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]
            }
        }),
        shared_node(KRUSTLET),
    );
    create(&pods, pod).await.expect("create");
    let events = ns.api::<k8s_openapi::api::core::v1::Event>();
    let deadline = std::time::Instant::now() + LONG;
    while !krustlet_e2e::pods::event_reasons(&events, "mountwait")
        .await
        .expect("events")
        .iter()
        .any(|r| r == "FailedMount")
    {
        assert!(std::time::Instant::now() < deadline, "no FailedMount event");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    create_config_map(&ns, "later", json!({"mode": "ready"})).await;
    wait_for_phase(&pods, "mountwait", "Succeeded", WATCHED)
        .await
        .expect("runs once the ConfigMap exists");
    assert_eq!(
        kubectl(&["logs", "-n", ns.name(), "mountwait"]).expect("logs"),
        "ready\n"
    );
}

#[tokio::test]
async fn a_running_pod_sees_an_updated_config_map_within_90_seconds() {
    let ns = TestNamespace::new("live").await.expect("namespace");
    create_config_map(&ns, "live", json!({"value": "one"})).await;
    let pods = ns.api::<Pod>();
    let pod = for_node(
        json!({
            "metadata": {"name": "reader"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "cfg", "configMap": {"name": "live"}}],
                "containers": [{"name": "main", "image": workloads::multitool(),
                                "args": ["cat", "/cfg/value", "print", "", "sleep", "75", "cat", "/cfg/value"],
                                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]
            }
        }),
        shared_node(KRUSTLET),
    );
    create(&pods, pod).await.expect("create");
    wait_for_phase(&pods, "reader", "Running", LONG)
        .await
        .expect("Running");
    let patch = json!({"data": {"value": "two"}});
    ns.api::<ConfigMap>()
        .patch(
            "live",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("update configmap");
    wait_for_phase(&pods, "reader", "Succeeded", Duration::from_secs(180))
        .await
        .expect("Succeeded");
    assert_eq!(
        kubectl(&["logs", "-n", ns.name(), "reader"]).expect("logs"),
        "one\ntwo\n"
    );
}
