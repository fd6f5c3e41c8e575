//! Standalone mode: static pods from a manifest directory, with no API server.

use std::time::Duration;

use krustlet_e2e::standalone::{StandaloneKrustlet, pod_row};
use krustlet_e2e::workloads;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(90);

fn manifest(name: &str, restart_policy: &str, args: &[&str]) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": workloads::multitool(), "args": args}]
        }
    })
    .to_string()
}

fn phase_of(table: &str, pod: &str) -> Option<String> {
    pod_row(table, pod).and_then(|row| row.get(2).cloned())
}

fn restarts_of(table: &str, pod: &str) -> Option<u32> {
    pod_row(table, pod).and_then(|row| row.get(3)?.parse().ok())
}

#[tokio::test]
async fn static_pods_follow_their_manifests_and_survive_a_restart() {
    let node = format!("standalone-{}", std::process::id());
    let mut krustlet = StandaloneKrustlet::start(KRUSTLET, &node).expect("start standalone");
    let hello = krustlet.pod_name("hello");
    let file = krustlet.manifests().join("hello.yaml");
    // A dotfile is ignored (editors' swap files).
    std::fs::write(krustlet.manifests().join(".hello.yaml.swp"), "not: a pod").expect("write");

    // Added: it runs, and `krustlet pods` / `krustlet logs` show it from another process.
    std::fs::write(
        &file,
        manifest(
            "hello",
            "Always",
            &["print", "version-one", "tick", "0", "200"],
        ),
    )
    .expect("write manifest");
    let table = krustlet
        .wait_output(&["pods"], "hello Running", LONG, |t| {
            phase_of(t, &hello).as_deref() == Some("Running")
        })
        .await
        .expect("krustlet output");
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(
        pod_row(&table, &hello)
            .expect("krustlet output")
            .iter()
            .any(|c| c == "app=Running"),
        "{table}"
    );
    assert_eq!(
        pod_row(&table, &hello).expect("krustlet output")[0],
        "default",
        "{table}"
    );
    krustlet
        .wait_output(&["logs", &hello], "hello's output", LONG, |out| {
            out.contains("version-one") && out.contains("tick 1")
        })
        .await
        .expect("krustlet output");

    // Edited: the old pod stops, the new version runs under the same name.
    std::fs::write(
        &file,
        manifest(
            "hello",
            "Always",
            &["print", "version-two", "tick", "0", "200"],
        ),
    )
    .expect("edit manifest");
    krustlet
        .wait_output(
            &["logs", &hello, "-c", "app"],
            "the new version's output",
            LONG,
            |out| out.contains("version-two") && !out.contains("version-one"),
        )
        .await
        .expect("krustlet output");
    krustlet
        .wait_output(&["pods"], "only the new hello", LONG, |t| {
            t.lines().filter(|l| l.contains(&hello)).count() == 1
                && phase_of(t, &hello).as_deref() == Some("Running")
        })
        .await
        .expect("krustlet output");

    // restartPolicy: a failing container is restarted (OnFailure), a succeeding one is not.
    let crash = krustlet.pod_name("crash");
    std::fs::write(
        krustlet.manifests().join("crash.json"),
        manifest("crash", "OnFailure", &["print", "crashing", "exit", "3"]),
    )
    .expect("write crash");
    let done = krustlet.pod_name("done");
    std::fs::write(
        krustlet.manifests().join("done.yaml"),
        manifest("done", "OnFailure", &["print", "finished"]),
    )
    .expect("write done");
    krustlet
        .wait_output(&["pods"], "crash restarted, done Succeeded", LONG, |t| {
            restarts_of(t, &crash).is_some_and(|n| n >= 1)
                && phase_of(t, &done).as_deref() == Some("Succeeded")
        })
        .await
        .expect("krustlet output");
    let out = krustlet.command(&["logs", &done]).expect("krustlet output");
    assert_eq!(out, "finished\n");
    // -f on a finished run prints it and ends.
    let out = krustlet
        .command(&["logs", "-f", &done])
        .expect("krustlet output");
    assert_eq!(out, "finished\n");

    // A pod that needs the API server says so instead of hanging silently.
    let needs_api = krustlet.pod_name("needs-api");
    let with_secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "needs-api"},
        "spec": {"containers": [{"name": "app", "image": workloads::multitool(),
            "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}
    });
    std::fs::write(
        krustlet.manifests().join("needs-api.yaml"),
        with_secret.to_string(),
    )
    .expect("write needs-api");
    krustlet
        .wait_output(
            &["pods"],
            "needs-api CreateContainerConfigError",
            LONG,
            |t| {
                pod_row(t, &needs_api).is_some_and(|row| {
                    row.iter()
                        .any(|c| c == "app=Waiting(CreateContainerConfigError)")
                })
            },
        )
        .await
        .expect("krustlet output");
    assert!(
        krustlet.log().contains("needs the API server"),
        "the log should say why:\n{}",
        krustlet.log()
    );
    std::fs::remove_file(krustlet.manifests().join("needs-api.yaml")).expect("rm");

    // Krustlet killed outright and started again: the static pods resume, counting the restart.
    krustlet.kill_and_restart().expect("restart");
    krustlet
        .wait_output(&["pods"], "hello resumed", LONG, |t| {
            phase_of(t, &hello).as_deref() == Some("Running")
                && restarts_of(t, &hello).is_some_and(|n| n >= 1)
                && phase_of(t, &done).as_deref() == Some("Succeeded")
                && pod_row(t, &needs_api).is_none()
        })
        .await
        .expect("krustlet output");
    krustlet
        .wait_output(
            &["logs", &hello],
            "hello's output after the restart",
            LONG,
            |out| out.contains("version-two") && out.contains("tick 2"),
        )
        .await
        .expect("krustlet output");

    // Removed: the pod stops and is gone from `krustlet pods`; its logs go with it.
    std::fs::remove_file(&file).expect("remove manifest");
    krustlet
        .wait_output(&["pods"], "hello gone", LONG, |t| {
            pod_row(t, &hello).is_none()
        })
        .await
        .expect("krustlet output");
    let error = krustlet
        .command(&["logs", &hello])
        .expect_err("should fail");
    assert!(error.to_string().contains("no static pod"), "{error}");
}

#[tokio::test]
async fn krustlet_pods_without_a_standalone_krustlet_says_what_to_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(KRUSTLET)
        .args(["pods", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run krustlet pods");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("krustlet standalone --data-dir"),
        "{stderr}"
    );
}

/// A connected node with `--manifests`: static pods run from the directory and appear in the
/// API as mirror pods, which come back when deleted and go when the file does.
#[tokio::test]
async fn static_pods_of_a_connected_node_appear_as_mirror_pods() {
    use k8s_openapi::api::core::v1::Pod;
    use krustlet_e2e::pods::{phase, wait_for, wait_gone};
    use krustlet_e2e::{KrustletNode, TestNamespace, kubectl};
    use kube::api::DeleteParams;

    let ns = TestNamespace::new("mirror").await.expect("namespace");
    let manifests = tempfile::tempdir().expect("tempdir");
    let dir = manifests.path().display().to_string();
    let node = KrustletNode::start(KRUSTLET, "mirror", &["--manifests", &dir]).expect("start node");
    node.wait_ready("True", LONG).await.expect("node ready");
    let file = manifests.path().join("web.yaml");
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": ns.name(), "labels": {"app": "web"}},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": workloads::multitool(), "args": ["print", "static", "tick", "0", "300"]}]}
    });
    std::fs::write(&file, manifest.to_string()).expect("write manifest");
    let name = format!("web-{}", node.name());
    let pods = ns.api::<Pod>();
    let mirror = wait_for(&pods, &name, LONG, "a Running mirror pod", |p| {
        phase(p) == "Running"
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nnode log:\n{}", node.log()));
    let annotations = mirror.metadata.annotations.clone().unwrap_or_default();
    let hash = annotations
        .get("kubernetes.io/config.mirror")
        .expect("config.mirror annotation");
    assert_eq!(annotations.get("kubernetes.io/config.hash"), Some(hash));
    assert_eq!(
        annotations
            .get("kubernetes.io/config.source")
            .map(String::as_str),
        Some("file")
    );
    assert_ne!(
        mirror.metadata.uid.as_ref(),
        Some(hash),
        "the API gives the mirror its own UID"
    );
    let owner = &mirror.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Node", node.name())
    );
    assert_eq!(
        mirror.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(node.name())
    );
    // kubectl logs works through the kubelet API, as for any pod.
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let out = kubectl(&["-n", ns.name(), "logs", &name]).unwrap_or_default();
        if out.contains("static") && out.contains("tick 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "kubectl logs: {out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Deleted in the API: the node creates it again (a new UID), the static pod runs on.
    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete mirror");
    let old_uid = mirror.metadata.uid.clone();
    wait_for(&pods, &name, LONG, "re-created and Running", |p| {
        p.metadata.uid != old_uid
            && p.metadata.deletion_timestamp.is_none()
            && phase(p) == "Running"
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nnode log:\n{}", node.log()));

    // The file removed: the mirror pod goes.
    std::fs::remove_file(&file).expect("remove manifest");
    wait_gone(&pods, &name, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nnode log:\n{}", node.log()));
}
