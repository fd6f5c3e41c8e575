//! Volumes beyond ConfigMaps and Secrets: hostPath (type checks, symlinks), subPath and
//! subPathExpr (no escape), PersistentVolumeClaims on local PersistentVolumes, and
//! `resourceFieldRef` in env and downwardAPI volumes; and attacks on them: a guest rewriting
//! `..data` of its ConfigMap, Secret and projected volumes, a sibling swapping a subPath for a
//! symlink while pods start, writes to a read-only claim.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Node, PersistentVolume, PersistentVolumeClaim, Pod,
};
use krustlet_e2e::node::shared_node;
use krustlet_e2e::pods::{create, for_node, wait_for, wait_for_phase, waiting_with};
use krustlet_e2e::{KrustletNode, TestNamespace, kubectl, workloads};
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams, PostParams};
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

/// Whether a guest's error message is a refused write (wasmtime reports a write to a read-only
/// preopen as EPERM; the kernel would say EROFS or EACCES).
fn refused(message: &str) -> bool {
    [
        "Operation not permitted",
        "Read-only file system",
        "Permission denied",
    ]
    .iter()
    .any(|reason| message.contains(reason))
}

async fn container_log(pods: &Api<Pod>, pod: &str, container: &str) -> String {
    pods.logs(
        pod,
        &LogParams {
            container: Some(container.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("logs of {pod}/{container}: {e}"))
}

/// The regular file `dir/name`'s content, if `dir/..data` is a link to a timestamped directory
/// inside `dir` (the atomic writer's layout, intact).
fn intact_volume_file(dir: &std::path::Path, name: &str) -> Option<String> {
    let data = std::fs::read_link(dir.join("..data")).ok()?;
    let data = data.to_str()?;
    if !data.starts_with("..2") || data.contains('/') {
        return None;
    }
    std::fs::read_to_string(dir.join(name)).ok()
}

#[tokio::test]
async fn api_data_volumes_are_read_only_and_their_refresh_follows_no_planted_link() {
    // A node of its own: the test looks at its data dir.
    let node = KrustletNode::start(KRUSTLET, "rovol", &[]).expect("start node");
    node.wait_ready("True", LONG).await.expect("node Ready");
    let ns = TestNamespace::new("rovol").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let configs = ns.api::<ConfigMap>();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "app"}, "data": {"key": "v1"}}))
            .expect("cm");
    configs
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
    // Mounted without readOnly: upstream mounts these types read-only regardless.
    let mounts = json!([
        {"name": "cfg", "mountPath": "/cfg"},
        {"name": "sec", "mountPath": "/sec"},
        {"name": "proj", "mountPath": "/proj"}
    ]);
    let container = |name: &str, args: &[&str]| json!({"name": name, "image": workloads::multitool(), "args": args, "volumeMounts": mounts});
    let attacker = for_node(
        json!({
            "metadata": {"name": "attacker"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "app"}},
                    {"name": "sec", "secret": {"secretName": "creds"}},
                    {"name": "proj", "projected": {"sources": [
                        {"configMap": {"name": "app"}},
                        {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}
                    ]}}
                ],
                "containers": [
                    container("swap-cfg", &["rename", "/cfg/..data", "/cfg/..old"]),
                    container("swap-sec", &["rename", "/sec/..data", "/sec/..old"]),
                    container("swap-proj", &["rename", "/proj/..data", "/proj/..old"]),
                    container("plant", &["symlink", "../../../..", "/cfg/..data_tmp"]),
                    container("unlink", &["rm", "/proj/..data"]),
                    container("write", &["write", "/sec/user", "mine"]),
                    // Outlives two refresh periods (30 s each), then reads through the volumes.
                    container("keeper", &["sleep", "75", "cat", "/cfg/key", "print", "", "cat", "/proj/key"])
                ]
            }
        }),
        node.name(),
    );
    let attacker = create(&pods, attacker).await.expect("create attacker");
    let bystander = for_node(
        json!({
            "metadata": {"name": "bystander"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "cfg", "configMap": {"name": "app"}}],
                "containers": [{"name": "main", "image": workloads::multitool(),
                                "args": ["sleep", "75", "cat", "/cfg/key"],
                                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]
            }
        }),
        node.name(),
    );
    let bystander = create(&pods, bystander).await.expect("create bystander");
    let pod_volumes = |pod: &Pod| {
        node.data_dir()
            .join("pods")
            .join(pod.metadata.uid.as_deref().expect("uid"))
            .join("volumes")
    };
    let attacker_volumes = pod_volumes(&attacker);
    let bystander_cfg = pod_volumes(&bystander).join("kubernetes.io~configmap/cfg");
    wait_for(&pods, "attacker", LONG, "keeper running", |p| {
        krustlet_e2e::pods::container_status(p, "keeper")
            .and_then(|s| s.state.as_ref())
            .is_some_and(|s| s.running.is_some())
    })
    .await
    .expect("keeper running");
    // Canaries beside the data directory and beside the volume: a refresh that followed a
    // planted `..data` would remove them.
    let cfg_dir = attacker_volumes.join("kubernetes.io~configmap/cfg");
    for canary in [
        cfg_dir.join("canary"),
        attacker_volumes.join("kubernetes.io~configmap/canary"),
    ] {
        std::fs::create_dir_all(&canary).expect("canary dir");
        std::fs::write(canary.join("file"), "canary").expect("canary file");
    }
    // A changed ConfigMap makes the next refresh rewrite the volumes (and remove the old data).
    configs
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"key": "v2"}})),
        )
        .await
        .expect("update cm");

    let done = wait_for_phase(&pods, "attacker", "Failed", Duration::from_secs(240))
        .await
        .expect("attacker done");
    for (name, expected) in [
        ("swap-cfg", "multitool: rename: /cfg/..data: "),
        ("swap-sec", "multitool: rename: /sec/..data: "),
        ("swap-proj", "multitool: rename: /proj/..data: "),
        ("plant", "multitool: symlink: /cfg/..data_tmp: "),
        ("unlink", "multitool: rm: /proj/..data: "),
        ("write", "multitool: write: /sec/user: "),
    ] {
        let exit = krustlet_e2e::pods::terminated(&done, name).map(|t| t.exit_code);
        let log = container_log(&pods, "attacker", name).await;
        assert_eq!(exit, Some(1), "{name}: {log}");
        assert!(log.starts_with(expected) && refused(&log), "{name}: {log}");
    }
    assert_eq!(
        krustlet_e2e::pods::terminated(&done, "keeper").map(|t| t.exit_code),
        Some(0)
    );
    // The refreshes went on: the volumes show the updated ConfigMap.
    assert_eq!(
        container_log(&pods, "attacker", "keeper").await.trim_end(),
        "v2\nv2"
    );
    for canary in [
        cfg_dir.join("canary"),
        attacker_volumes.join("kubernetes.io~configmap/canary"),
    ] {
        assert_eq!(
            std::fs::read_to_string(canary.join("file")).ok().as_deref(),
            Some("canary"),
            "{} after the refreshes",
            canary.display()
        );
    }
    for (dir, name, want) in [
        (cfg_dir.clone(), "key", "v2"),
        (
            attacker_volumes.join("kubernetes.io~secret/sec"),
            "user",
            "wasm",
        ),
        (
            attacker_volumes.join("kubernetes.io~projected/proj"),
            "name",
            "attacker",
        ),
        (bystander_cfg.clone(), "key", "v2"),
    ] {
        assert_eq!(
            intact_volume_file(&dir, name).as_deref(),
            Some(want),
            "{}",
            dir.display()
        );
    }
    wait_for_phase(&pods, "bystander", "Succeeded", LONG)
        .await
        .expect("bystander Succeeded");
    assert_eq!(logs(&ns, "bystander").trim_end(), "v2");
}

#[tokio::test]
async fn a_sub_path_swapped_for_a_symlink_never_reaches_the_host() {
    // At least this many container starts race the flipper; pods run a few at a time.
    const STARTS: usize = 200;
    const CONTAINERS: usize = 10;
    const PARALLEL: usize = 4;
    let budget = Duration::from_secs(420);
    let ns = TestNamespace::new("subrace").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let host = tempfile::tempdir().expect("tempdir");
    let vol = host.path().join("vol");
    let canary = host.path().join("canary");
    let secret = format!("CANARY-{}", ns.name());
    std::fs::create_dir_all(vol.join("sub/inner")).expect("sub");
    std::fs::write(vol.join("sub/inner/ok.txt"), "inside").expect("ok.txt");
    std::os::unix::fs::symlink("../canary", vol.join("sub.link")).expect("sub.link");
    std::fs::create_dir_all(canary.join("inner")).expect("canary");
    std::fs::write(canary.join("inner/ok.txt"), &secret).expect("canary file");
    let host_volume = json!([{"name": "shared", "hostPath": {"path": vol.to_str().expect("utf-8"), "type": "Directory"}}]);
    // The sibling: swaps `sub` between the directory and a link out of the volume, bounded
    // in count and time.
    create(
        &pods,
        volume_pod(
            "flipper",
            &["flip", "/vol", "50000000", "400"],
            host_volume.clone(),
            json!([{"name": "shared", "mountPath": "/vol"}]),
        ),
    )
    .await
    .expect("create flipper");
    wait_for_phase(&pods, "flipper", "Running", LONG)
        .await
        .expect("flipper running");

    let started = Instant::now();
    let (mut inside, mut empty, mut refused_starts, mut breaches) =
        (0usize, 0usize, 0usize, Vec::new());
    let mut round = 0;
    while inside + empty + refused_starts < STARTS {
        assert!(
            started.elapsed() < budget,
            "only {} of {STARTS} starts within {budget:?} ({inside} inside, {empty} empty, {refused_starts} refused)",
            inside + empty + refused_starts
        );
        let names: Vec<String> = (0..PARALLEL)
            .map(|i| format!("racer-{round}-{i}"))
            .collect();
        round += 1;
        for name in &names {
            let containers: Vec<_> = (0..CONTAINERS)
                .map(|c| json!({"name": format!("c{c}"), "image": workloads::multitool(),
                                "args": ["cat", "/m/ok.txt"],
                                "volumeMounts": [{"name": "shared", "mountPath": "/m", "subPath": "sub/inner"}]}))
                .collect();
            let pod = for_node(
                json!({"metadata": {"name": name},
                       "spec": {"restartPolicy": "Never", "volumes": host_volume, "containers": containers}}),
                shared_node(KRUSTLET),
            );
            create(&pods, pod).await.expect("create racer");
        }
        let settled = futures::future::try_join_all(names.iter().map(|name| {
            // Every container either ran, or was refused before it started.
            wait_for(&pods, name, LONG, "settled", |p| {
                (0..CONTAINERS).all(|c| {
                    let c = format!("c{c}");
                    krustlet_e2e::pods::terminated(p, &c).is_some()
                        || waiting_with(p, &c, "CreateContainerConfigError")
                })
            })
        }))
        .await
        .expect("racers settle");
        for pod in settled {
            let name = pod.metadata.name.clone().unwrap_or_default();
            for c in (0..CONTAINERS).map(|c| format!("c{c}")) {
                if let Some(waiting) = krustlet_e2e::pods::waiting(&pod, &c) {
                    refused_starts += 1;
                    let message = waiting.message.clone().unwrap_or_default();
                    if message.contains(&secret) {
                        breaches.push(format!("{name}/{c} refused with {message}"));
                    }
                    continue;
                }
                let log = container_log(&pods, &name, &c).await;
                if log.contains(&secret) {
                    breaches.push(format!("{name}/{c} read {log:?}"));
                } else if log.trim_end() == "inside" {
                    inside += 1;
                } else {
                    empty += 1;
                }
            }
            let _ = pods
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
        }
    }
    eprintln!(
        "subPath race: {} starts in {:?}: {inside} read the volume, {empty} found a directory made while the name was missing, {refused_starts} refused (link out of the volume)",
        inside + empty + refused_starts,
        started.elapsed()
    );
    assert!(breaches.is_empty(), "host file reached: {breaches:#?}");
    assert!(inside > 0, "no start ever read the volume");
    assert_eq!(
        std::fs::read_to_string(canary.join("inner/ok.txt")).expect("canary"),
        secret
    );
    let _ = pods
        .delete("flipper", &DeleteParams::default().grace_period(0))
        .await;
}

#[tokio::test]
async fn a_read_only_claim_cannot_be_written() {
    let ns = TestNamespace::new("pvcro").await.expect("namespace");
    let node = shared_node(KRUSTLET);
    let pods = ns.api::<Pod>();
    let disk = tempfile::tempdir().expect("tempdir");
    std::fs::write(disk.path().join("seed.txt"), "seeded\n").expect("seed");
    let pv_name = format!("ro-local-{}", ns.name());
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
    // The claim is read-only; the volumeMount does not say so.
    create(
        &pods,
        volume_pod(
            "reader",
            &["cat", "/data/seed.txt", "write", "/data/new.txt", "not allowed"],
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data", "readOnly": true}}]),
            json!([{"name": "data", "mountPath": "/data"}]),
        ),
    )
    .await
    .expect("create");
    let done = wait_for_phase(&pods, "reader", "Failed", LONG)
        .await
        .expect("Failed on the write");
    assert_eq!(
        krustlet_e2e::pods::terminated(&done, "main").map(|t| t.exit_code),
        Some(1)
    );
    let out = logs(&ns, "reader");
    assert!(
        out.starts_with("seeded\nmultitool: write: /data/new.txt: ") && refused(&out),
        "{out}"
    );
    assert!(!disk.path().join("new.txt").exists());
    let _ = volumes.delete(&pv_name, &DeleteParams::default()).await;
}
