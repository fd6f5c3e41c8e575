//! Volumes beyond ConfigMaps and Secrets: hostPath (type checks, symlinks), subPath and
//! subPathExpr (no escape), PersistentVolumeClaims on local PersistentVolumes, and
//! `resourceFieldRef` in env and downwardAPI volumes.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Node, PersistentVolume, PersistentVolumeClaim, Pod,
};
use krustlet_e2e::node::shared_node;
use krustlet_e2e::pods::{create, for_node, wait_for, wait_for_phase, waiting_with};
use krustlet_e2e::{TestNamespace, kubectl, workloads};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);

/// A multitool pod with `args`, `volumes` and `mounts` on the shared node.
fn volume_pod(
    name: &str,
    args: &[&str],
    volumes: serde_json::Value,
    mounts: serde_json::Value,
) -> serde_json::Value {
    for_node(
        json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "volumes": volumes,
                "containers": [{"name": "main", "image": workloads::multitool(), "args": args,
                                "volumeMounts": mounts, "env": [{"name": "UP", "value": ".."}, {"name": "LEAF", "value": "two"}]}]
            }
        }),
        shared_node(KRUSTLET),
    )
}

fn logs(ns: &TestNamespace, pod: &str) -> String {
    kubectl(&["logs", "-n", ns.name(), pod]).expect("kubectl logs")
}

/// Waits for the pod's `main` container to wait with `CreateContainerConfigError`; its message.
async fn config_error_message(pods: &Api<Pod>, name: &str) -> String {
    let pod = wait_for(pods, name, LONG, "CreateContainerConfigError", |p| {
        waiting_with(p, "main", "CreateContainerConfigError")
    })
    .await
    .expect("refused");
    krustlet_e2e::pods::waiting(&pod, "main")
        .and_then(|w| w.message.clone())
        .unwrap_or_default()
}

async fn warning_messages(ns: &TestNamespace, pod: &str, reason: &str) -> Vec<String> {
    let events = ns.api::<Event>();
    let list = events.list(&Default::default()).await.expect("events");
    list.items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.message)
        .collect()
}

#[tokio::test]
async fn host_path_directories_files_and_type_checks() {
    let ns = TestNamespace::new("hostpath").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let host = tempfile::tempdir().expect("tempdir");
    std::fs::write(host.path().join("greeting.txt"), "hello from the host\n").expect("write");
    std::os::unix::fs::symlink("/etc", host.path().join("escape")).expect("symlink");
    let dir = host.path().to_str().expect("utf-8").to_string();
    let file = format!("{dir}/greeting.txt");
    create(
        &pods,
        volume_pod(
            "reader",
            &[
                "cat",
                "/host/greeting.txt",
                "cat",
                "/one/greeting.txt",
                "write",
                "/host/from-pod.txt",
                "written by the pod",
                "cat",
                "/host/escape/hostname",
            ],
            json!([
                {"name": "host", "hostPath": {"path": dir, "type": "Directory"}},
                {"name": "one", "hostPath": {"path": file, "type": "File"}}
            ]),
            json!([
                {"name": "host", "mountPath": "/host"},
                {"name": "one", "mountPath": "/one/greeting.txt"}
            ]),
        ),
    )
    .await
    .expect("create");
    // The last command follows a symlink out of the volume: the sandbox refuses it.
    wait_for_phase(&pods, "reader", "Failed", LONG)
        .await
        .expect("Failed on the escaping symlink");
    let out = logs(&ns, "reader");
    assert!(
        out.starts_with(
            "hello from the host\nhello from the host\nmultitool: cat: /host/escape/hostname: "
        ),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("from-pod.txt")).expect("file on the host"),
        "written by the pod\n"
    );

    // A subPath through the same symlink is refused before the container starts.
    create(
        &pods,
        volume_pod(
            "escape",
            &["ls", "/x"],
            json!([{"name": "host", "hostPath": {"path": dir}}]),
            json!([{"name": "host", "mountPath": "/x", "subPath": "escape"}]),
        ),
    )
    .await
    .expect("create");
    let message = config_error_message(&pods, "escape").await;
    assert!(
        message.contains("resolves to /etc, outside the volume"),
        "{message}"
    );

    // Type checks: a missing Directory fails the mount with upstream's message.
    let missing = format!("{dir}/not-there");
    create(
        &pods,
        volume_pod(
            "typed",
            &["hello"],
            json!([{"name": "host", "hostPath": {"path": missing, "type": "Directory"}}]),
            json!([{"name": "host", "mountPath": "/x"}]),
        ),
    )
    .await
    .expect("create");
    let expected = format!("hostPath type check failed: {missing} is not a directory");
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let messages = warning_messages(&ns, "typed", "FailedMount").await;
        if messages.iter().any(|m| m.contains(&expected)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no FailedMount with {expected:?}: {messages:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn sub_paths_and_read_only_mounts() {
    let ns = TestNamespace::new("subpath").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "app"}, "data": {"config.json": "{\"debug\": true}", "other": "x"}
    }))
    .expect("cm");
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    create(
        &pods,
        volume_pod(
            "subpaths",
            &["write", "/work/a/note", "init wrote this", "cat", "/other/note", "cat", "/etc/app/config.json",
              "ls", "/etc/app", "write", "/ro/nope", "x"],
            json!([{"name": "scratch", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "app"}}]),
            json!([
                {"name": "scratch", "mountPath": "/work/a", "subPath": "one/two"},
                {"name": "scratch", "mountPath": "/other", "subPathExpr": "one/$(LEAF)"},
                {"name": "cfg", "mountPath": "/etc/app/config.json", "subPath": "config.json"},
                {"name": "scratch", "mountPath": "/ro", "readOnly": true}
            ]),
        ),
    )
    .await
    .expect("create");
    let done = wait_for_phase(&pods, "subpaths", "Failed", LONG)
        .await
        .expect("Failed on the read-only write");
    assert_eq!(
        krustlet_e2e::pods::terminated(&done, "main").map(|t| t.exit_code),
        Some(1)
    );
    assert_eq!(
        logs(&ns, "subpaths"),
        "init wrote this\n{\"debug\": true}config.json\nmultitool: write: /ro/nope: Operation not permitted\n"
    );

    // The API server refuses a literal `..`; a subPathExpr can still produce one at run time.
    let error = create(
        &pods,
        volume_pod(
            "dots",
            &["hello"],
            json!([{"name": "scratch", "emptyDir": {}}]),
            json!([{"name": "scratch", "mountPath": "/x", "subPath": "../../etc"}]),
        ),
    )
    .await
    .expect_err("the API server validates subPath");
    assert!(
        error.to_string().contains("must not contain '..'"),
        "{error}"
    );
    create(
        &pods,
        volume_pod(
            "dots-expr",
            &["hello"],
            json!([{"name": "scratch", "emptyDir": {}}]),
            json!([{"name": "scratch", "mountPath": "/x", "subPathExpr": "$(UP)/$(UP)/etc"}]),
        ),
    )
    .await
    .expect("create");
    let message = config_error_message(&pods, "dots-expr").await;
    assert!(
        message.contains("must be a relative path that does not contain '..'"),
        "{message}"
    );
}

#[tokio::test]
async fn a_claim_on_a_local_volume_keeps_data_for_the_next_pod() {
    let ns = TestNamespace::new("pvc").await.expect("namespace");
    let node = shared_node(KRUSTLET);
    let pods = ns.api::<Pod>();
    let disk = tempfile::tempdir().expect("tempdir");
    let pv_name = format!("local-{}", ns.name());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "e2e-local",
            "local": {"path": disk.path().to_str().expect("utf-8")},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}}
        }
    }))
    .expect("pv");
    let volumes: Api<PersistentVolume> = Api::all(ns.client());
    volumes
        .create(&PostParams::default(), &pv)
        .await
        .expect("create pv");
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "e2e-local", "volumeName": pv_name,
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .expect("pvc");
    ns.api::<PersistentVolumeClaim>()
        .create(&PostParams::default(), &claim)
        .await
        .expect("create pvc");
    let volume = json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]);
    let mount = json!([{"name": "data", "mountPath": "/data"}]);
    create(
        &pods,
        volume_pod(
            "writer",
            &["write", "/data/kept.txt", "first pod was here"],
            volume.clone(),
            mount.clone(),
        ),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "writer", "Succeeded", LONG)
        .await
        .expect("writer Succeeded");
    create(
        &pods,
        volume_pod("reader", &["cat", "/data/kept.txt"], volume, mount),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "reader", "Succeeded", LONG)
        .await
        .expect("reader Succeeded");
    assert_eq!(logs(&ns, "reader"), "first pod was here\n");
    assert_eq!(
        std::fs::read_to_string(disk.path().join("kept.txt")).expect("on the node's disk"),
        "first pod was here\n"
    );
    let _ = volumes.delete(&pv_name, &DeleteParams::default()).await;
}

#[tokio::test]
async fn resource_field_refs_in_env_and_downward_volumes() {
    let ns = TestNamespace::new("resfield").await.expect("namespace");
    let node_name = shared_node(KRUSTLET);
    let pods = ns.api::<Pod>();
    let field = |container: &str, resource: &str, divisor: &str| json!({"resourceFieldRef": {"containerName": container, "resource": resource, "divisor": divisor}});
    let pod = for_node(
        json!({
            "metadata": {"name": "res"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "info", "downwardAPI": {"items": [
                    {"path": "mem", "resourceFieldRef": {"containerName": "limited", "resource": "limits.memory", "divisor": "1Mi"}}
                ]}}],
                "containers": [
                    {"name": "limited", "image": workloads::multitool(),
                     "args": ["getenv", "CPU_LIMIT", "getenv", "CPU_REQUEST", "getenv", "MEM_LIMIT", "cat", "/info/mem"],
                     "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "32Mi"}},
                     "volumeMounts": [{"name": "info", "mountPath": "/info"}],
                     "env": [
                        {"name": "CPU_LIMIT", "valueFrom": field("limited", "limits.cpu", "1m")},
                        {"name": "CPU_REQUEST", "valueFrom": field("limited", "requests.cpu", "1m")},
                        {"name": "MEM_LIMIT", "valueFrom": field("limited", "limits.memory", "1Mi")}
                     ]},
                    {"name": "open", "image": workloads::multitool(),
                     "args": ["getenv", "MEM_LIMIT", "getenv", "CPU_LIMIT"],
                     "env": [
                        {"name": "MEM_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Ki"}}},
                        {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}
                     ]}
                ]
            }
        }),
        node_name,
    );
    create(&pods, pod).await.expect("create");
    wait_for_phase(&pods, "res", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    let limited = kubectl(&["logs", "-n", ns.name(), "res", "-c", "limited"]).expect("logs");
    assert_eq!(
        limited.trim_end(),
        "CPU_LIMIT=500\nCPU_REQUEST=250\nMEM_LIMIT=64\n64"
    );
    // Without limits: the node's allocatable, as the kubelet reports it.
    let node = Api::<Node>::all(ns.client())
        .get(node_name)
        .await
        .expect("node");
    let allocatable = node
        .status
        .and_then(|s| s.allocatable)
        .expect("allocatable");
    let open = kubectl(&["logs", "-n", ns.name(), "res", "-c", "open"]).expect("logs");
    let expected_cpu = kubelet::quantity::parse_millis(&allocatable["cpu"].0).expect("cpu");
    assert_eq!(
        open,
        format!(
            "MEM_LIMIT={}\nCPU_LIMIT={expected_cpu}\n",
            allocatable["memory"].0.trim_end_matches("Ki")
        )
    );
}

#[tokio::test]
async fn a_projected_volume_combines_all_four_sources() {
    let ns = TestNamespace::new("projected").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"mode": "fast"}}))
            .expect("cm");
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
        json!({"metadata": {"name": "creds"}, "stringData": {"user": "wasm"}}),
    )
    .expect("secret");
    ns.api::<k8s_openapi::api::core::v1::Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let mut pod = volume_pod(
        "projected",
        &[
            "cat",
            "/all/mode",
            "print",
            "",
            "cat",
            "/all/auth/user",
            "print",
            "",
            "cat",
            "/all/name",
            "print",
            "",
            "cat",
            "/all/token",
        ],
        json!([{"name": "all", "projected": {"sources": [
            {"configMap": {"name": "settings"}},
            {"secret": {"name": "creds", "items": [{"key": "user", "path": "auth/user"}]}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"serviceAccountToken": {"path": "token", "audience": "e2e-audience", "expirationSeconds": 3600}}
        ]}}]),
        json!([{"name": "all", "mountPath": "/all", "readOnly": true}]),
    );
    pod["metadata"]["name"] = json!("projected");
    create(&pods, pod).await.expect("create");
    wait_for_phase(&pods, "projected", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    let out = logs(&ns, "projected");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("fast"));
    assert_eq!(lines.next(), Some("wasm"));
    assert_eq!(lines.next(), Some("projected"));
    let token = lines.next().expect("token");
    // The token is for the requested audience and the pod's service account.
    let review: k8s_openapi::api::authentication::v1::TokenReview = serde_json::from_value(json!({
        "spec": {"token": token, "audiences": ["e2e-audience"]}
    }))
    .expect("review");
    let reviewed = Api::<k8s_openapi::api::authentication::v1::TokenReview>::all(ns.client())
        .create(&PostParams::default(), &review)
        .await
        .expect("token review");
    let status = reviewed.status.expect("status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(
        status.user.and_then(|u| u.username),
        Some(format!("system:serviceaccount:{}:default", ns.name()))
    );
}
