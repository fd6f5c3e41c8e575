//! `kubectl debug` (ephemeral containers) and `kubectl attach -i` into wasm pods through the
//! real API server: a debugger aimed at a container with `--target` runs the tool image's
//! program with the target's volume and environment and is reported in
//! `ephemeralContainerStatuses`; `-i` reaches its stdin; a container with `stdin: true` and
//! `stdinOnce` gets what `kubectl attach -i` pipes and then end of file.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use krustlet_e2e::kubectl::{kubectl, kubectl_run};
use krustlet_e2e::node::shared_node;
use krustlet_e2e::pods::{container_status, create, for_node, wait_for, wait_for_phase};
use krustlet_e2e::{TestNamespace, workloads};
use serde_json::json;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);

/// A running multitool pod with an emptyDir at /data holding `hello.txt`, and `GREETING` set.
async fn target_pod(ns: &TestNamespace, name: &str) {
    let pods = ns.api::<Pod>();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": name},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "containers": [{
                        "name": "main",
                        "image": workloads::multitool(),
                        "args": ["write", "/data/hello.txt", "from the container", "sleep", "600"],
                        "env": [{"name": "GREETING", "value": "hi there"}],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                    }]
                }
            }),
            shared_node(KRUSTLET),
        ),
    )
    .await
    .expect("create");
    wait_for(&pods, name, LONG, "running", |p| {
        container_status(p, "main")
            .and_then(|s| s.state.as_ref())
            .is_some_and(|s| s.running.is_some())
    })
    .await
    .expect("running");
}

fn ephemeral_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .ephemeral_container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == name)
}

fn terminated_exit(pod: &Pod, name: &str) -> Option<i32> {
    ephemeral_status(pod, name)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

#[tokio::test]
async fn kubectl_debug_target_runs_an_ephemeral_container_that_reads_the_targets_volume() {
    let ns = TestNamespace::new("debug").await.expect("namespace");
    target_pod(&ns, "tool").await;
    let image = workloads::multitool();
    let run = kubectl_run(
        &[
            "debug",
            "-n",
            ns.name(),
            "tool",
            "--image",
            &image,
            "--target",
            "main",
            "-c",
            "debugger",
            "--",
            "multitool",
            "cat",
            "/data/hello.txt",
            "getenv",
            "GREETING",
        ],
        &[],
        None,
        LONG,
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let pods = ns.api::<Pod>();
    let done = wait_for(&pods, "tool", LONG, "debugger terminated", |p| {
        terminated_exit(p, "debugger").is_some()
    })
    .await
    .expect("the ephemeral container ran");
    let status = ephemeral_status(&done, "debugger").expect("status");
    let terminated = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated");
    assert_eq!(terminated.exit_code, 0, "{status:?}");
    assert_eq!(terminated.reason.as_deref(), Some("Completed"));
    assert_eq!(status.restart_count, 0);
    assert!(
        status.container_id.is_some() && status.image_id.contains("@sha256:"),
        "{status:?}"
    );
    // What the debugger printed: the target's file and environment.
    let logs = kubectl(&["logs", "-n", ns.name(), "tool", "-c", "debugger"]).expect("logs");
    assert_eq!(logs, "from the container\nGREETING=hi there\n");
    // The target runs on, the pod stays Running, and the debugger is never run again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = pods.get("tool").await.expect("pod");
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    let main = container_status(&pod, "main").expect("main");
    assert!(main.state.as_ref().is_some_and(|s| s.running.is_some()));
    assert_eq!(main.restart_count, 0);
    assert_eq!(
        ephemeral_status(&pod, "debugger").map(|s| s.restart_count),
        Some(0)
    );
    // `kubectl describe` lists it with its state, as for any pod.
    let described = kubectl(&["describe", "pod", "-n", ns.name(), "tool"]).expect("describe");
    assert!(
        described.contains("Ephemeral Containers:") && described.contains("debugger:"),
        "{described}"
    );
}

#[tokio::test]
async fn kubectl_debug_i_attaches_to_the_debuggers_stdin() {
    let ns = TestNamespace::new("debug-i").await.expect("namespace");
    target_pod(&ns, "tool").await;
    let image = workloads::multitool();
    // kubectl creates the container with `stdin: true`, waits for it to run, attaches and
    // pipes what it reads; the program answers once it has read a line.
    let run = kubectl_run(
        &[
            "debug",
            "-i",
            "-n",
            ns.name(),
            "tool",
            "--image",
            &image,
            "--target",
            "main",
            "-c",
            "reader",
            "--",
            "multitool",
            "readline",
            "cat",
            "/data/hello.txt",
        ],
        &[],
        Some("typed words\n"),
        LONG,
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("read: typed words\nfrom the container\n"),
        "stdout: {:?}, stderr: {:?}",
        run.stdout,
        run.stderr
    );
    let pods = ns.api::<Pod>();
    let done = wait_for(&pods, "tool", LONG, "reader terminated", |p| {
        terminated_exit(p, "reader").is_some()
    })
    .await
    .expect("terminated");
    assert_eq!(terminated_exit(&done, "reader"), Some(0));
}

#[tokio::test]
async fn kubectl_attach_i_feeds_stdin_and_stdin_once_closes_it() {
    let ns = TestNamespace::new("attach-i").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": "echo"},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main",
                        "image": workloads::multitool(),
                        "args": ["catin", "print", "end"],
                        "stdin": true,
                        "stdinOnce": true
                    }]
                }
            }),
            shared_node(KRUSTLET),
        ),
    )
    .await
    .expect("create");
    wait_for(&pods, "echo", LONG, "running", |p| {
        container_status(p, "main")
            .and_then(|s| s.state.as_ref())
            .is_some_and(|s| s.running.is_some())
    })
    .await
    .expect("running");
    // The program waits on its stdin: nothing arrives until an attach sends it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pod = pods.get("echo").await.expect("pod");
    assert!(
        container_status(&pod, "main")
            .and_then(|s| s.state.as_ref())
            .is_some_and(|s| s.running.is_some()),
        "{:?}",
        pod.status
    );
    let run = kubectl_run(
        &["attach", "-i", "-n", ns.name(), "echo", "-c", "main"],
        &[],
        Some("one\ntwo\n"),
        LONG,
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("one\ntwo\nend\n"),
        "stdout: {:?}, stderr: {:?}",
        run.stdout,
        run.stderr
    );
    // stdinOnce: the end of the session's input is the program's end of file.
    let done = wait_for_phase(&pods, "echo", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    let logs = kubectl(&["logs", "-n", ns.name(), "echo"]).expect("logs");
    assert_eq!(logs, "one\ntwo\nend\n", "{:?}", done.status);
}
