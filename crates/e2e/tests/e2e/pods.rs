//! The pod lifecycle on a Krustlet node: phases, exit codes, argv and `$(VAR)` expansion, init
//! containers, restarts with back-off, deletion of stuck guests, scale, components, events.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use krustlet_e2e::node::shared_node;
use krustlet_e2e::pods::{
    container_status, create, event_reasons, for_node, phase, terminated, wait_for, wait_for_phase,
    wait_gone, waiting, waiting_with,
};
use krustlet_e2e::{TestNamespace, kubectl, workloads};
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);

/// A one-container pod of the multitool with `args`, on the shared node.
fn multitool_pod(name: &str, args: &[&str], restart_policy: &str) -> serde_json::Value {
    for_node(
        json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": restart_policy,
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "main", "image": workloads::multitool(), "args": args}]
            }
        }),
        shared_node(KRUSTLET),
    )
}

fn logs(ns: &TestNamespace, pod: &str, container: &str) -> String {
    kubectl(&["logs", "-n", ns.name(), pod, "-c", container]).expect("kubectl logs")
}

/// The writes nodes made to one pod, from the control plane's audit log
/// ([`krustlet_e2e::audit`]): `<verb> <resource>[/<subresource>]` each.
fn node_writes_to(namespace: &str, pod: &str) -> Vec<String> {
    let log = krustlet_e2e::audit::log_path();
    let file = std::fs::File::open(&log)
        .unwrap_or_else(|e| panic!("prerequisite missing: the audit log {}: {e}", log.display()));
    krustlet_e2e::audit::writes(std::io::BufReader::new(file))
        .filter(|w| w.namespace == namespace && w.name == pod)
        .map(|w| w.request)
        .collect()
}

/// A short pod's whole life costs its node at most one status patch per phase (Pending is
/// skipped when the pod starts within the first status's hold, which the bench measures), and
/// its deletion costs the node nothing: the API server removes a finished pod itself, so a
/// delete from the node would only be a 404.
#[tokio::test]
async fn a_short_pods_life_costs_the_node_a_patch_per_phase_and_no_delete() {
    let ns = TestNamespace::new("writes").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(&pods, multitool_pod("short", &["hello"], "Never"))
        .await
        .expect("create");
    wait_for_phase(&pods, "short", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    pods.delete("short", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&pods, "short", LONG).await.expect("gone");
    // Whatever the node still had to send about the pod is sent by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = node_writes_to(ns.name(), "short");
    assert!(
        !writes.iter().any(|w| w.starts_with("delete")),
        "the node deleted a pod the API server had removed: {writes:?}"
    );
    let patches = writes.iter().filter(|w| *w == "patch pods/status").count();
    assert!((1..=3).contains(&patches), "{writes:?}");
}

#[tokio::test]
async fn hello_world_succeeds_and_exit_3_fails() {
    let ns = TestNamespace::new("hello").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(&pods, multitool_pod("hello", &["hello"], "Never"))
        .await
        .expect("create");
    create(
        &pods,
        multitool_pod("three", &["print", "bye", "exit", "3"], "Never"),
    )
    .await
    .expect("create");

    let hello = wait_for_phase(&pods, "hello", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    let main = container_status(&hello, "main").expect("status");
    let terminated = terminated(&hello, "main").expect("terminated");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert!(
        main.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("wasi://")),
        "{main:?}"
    );
    assert!(main.image_id.contains("@sha256:"), "{main:?}");
    let status = hello.status.clone().expect("status");
    assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    assert!(status.start_time.is_some());
    assert_eq!(logs(&ns, "hello", "main"), "Hello from WebAssembly!\n");

    let three = wait_for_phase(&pods, "three", "Failed", LONG)
        .await
        .expect("Failed");
    let terminated = container_status(&three, "main")
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .expect("terminated");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (3, Some("Error"))
    );
    assert_eq!(logs(&ns, "three", "main"), "bye\n");
}

#[tokio::test]
async fn argv_and_variable_expansion_follow_kubernetes() {
    let ns = TestNamespace::new("argv").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let mut pod = multitool_pod("argv", &[], "Never");
    pod["spec"]["containers"][0]["command"] = json!(["tool.wasm", "getenv", "COMBINED", "args"]);
    pod["spec"]["containers"][0]["args"] =
        json!(["--flag", "$(GREETING)", "$$(GREETING)", "$(MISSING)"]);
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "GREETING", "value": "hi"},
        {"name": "COMBINED", "value": "$(GREETING)-there"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]);
    create(&pods, pod).await.expect("create");
    wait_for_phase(&pods, "argv", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    let out = logs(&ns, "argv", "main");
    let expected = "COMBINED=hi-there\nargv[0]=tool.wasm\nargv[1]=getenv\nargv[2]=COMBINED\nargv[3]=args\n\
                    argv[4]=--flag\nargv[5]=hi\nargv[6]=$(GREETING)\nargv[7]=$(MISSING)\n";
    assert_eq!(out, expected);
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_app() {
    let ns = TestNamespace::new("init").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let image = workloads::multitool();
    let pod = for_node(
        json!({
            "metadata": {"name": "ordered"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "work", "emptyDir": {}}],
                "initContainers": [
                    {"name": "first", "image": image, "args": ["append", "/work/trail", "first"],
                     "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                    {"name": "second", "image": image, "args": ["append", "/work/trail", "second"],
                     "volumeMounts": [{"name": "work", "mountPath": "/work"}]}
                ],
                "containers": [{"name": "app", "image": image, "args": ["cat", "/work/trail"],
                                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}]
            }
        }),
        shared_node(KRUSTLET),
    );
    create(&pods, pod).await.expect("create");
    let done = wait_for_phase(&pods, "ordered", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    assert_eq!(logs(&ns, "ordered", "app"), "first\nsecond\n");
    let initialized = done.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        initialized
            .iter()
            .any(|c| c.type_ == "Initialized" && c.status == "True"),
        "{initialized:?}"
    );

    let failing = for_node(
        json!({
            "metadata": {"name": "failing"},
            "spec": {
                "restartPolicy": "Never",
                "initContainers": [{"name": "broken", "image": image, "args": ["exit", "7"]}],
                "containers": [{"name": "app", "image": image, "args": ["hello"]}]
            }
        }),
        shared_node(KRUSTLET),
    );
    create(&pods, failing).await.expect("create");
    let failed = wait_for_phase(&pods, "failing", "Failed", LONG)
        .await
        .expect("Failed");
    let broken = terminated(&failed, "broken");
    assert_eq!(broken.map(|t| t.exit_code), Some(7));
    let app = container_status(&failed, "app");
    assert!(
        app.is_none_or(|s| s
            .state
            .as_ref()
            .is_none_or(|st| st.running.is_none() && st.terminated.is_none())),
        "the app container must never start: {app:?}"
    );
}

#[tokio::test]
async fn on_failure_restarts_with_crash_loop_back_off() {
    let ns = TestNamespace::new("crash").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        multitool_pod("crash", &["print", "failing", "exit", "1"], "OnFailure"),
    )
    .await
    .expect("create");
    let pod = wait_for(
        &pods,
        "crash",
        Duration::from_secs(180),
        "restarted twice",
        |p| container_status(p, "main").is_some_and(|s| s.restart_count >= 2),
    )
    .await
    .expect("restarts");
    let status = container_status(&pod, "main").expect("status");
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 1);
    assert_eq!(phase(&pod), "Running");
    let backing_off = wait_for(
        &pods,
        "crash",
        Duration::from_secs(60),
        "in CrashLoopBackOff",
        |p| waiting_with(p, "main", "CrashLoopBackOff"),
    )
    .await;
    assert!(backing_off.is_ok(), "{backing_off:?}");
    // Events are published in the background, behind the shared node's other pods' events.
    krustlet_e2e::pods::wait_for_event(
        &ns.api::<Event>(),
        "BackOff",
        "Back-off restarting failed container",
        Duration::from_secs(60),
    )
    .await
    .expect("a BackOff event");
    // Each restart's BackOff is the same event: one object with a growing series, not one
    // each (upstream's correlator), although the pod changed between them.
    let events = ns.api::<Event>();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = events
            .list(&kube::api::ListParams::default().fields("involvedObject.name=crash"))
            .await
            .expect("events");
        let backoffs: Vec<&Event> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("BackOff"))
            .collect();
        assert!(backoffs.len() <= 1, "{backoffs:#?}");
        let count = backoffs
            .first()
            .and_then(|e| e.series.as_ref())
            .map_or(1, |s| s.count.unwrap_or(1));
        if count >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two restarts, yet BackOff's series counts {count}: {backoffs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn deleting_busy_and_sleeping_pods_finishes_within_the_grace_period() {
    let ns = TestNamespace::new("delete").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(&pods, multitool_pod("busy", &["spin", "0"], "Always"))
        .await
        .expect("create");
    create(&pods, multitool_pod("sleepy", &["sleep", "3600"], "Always"))
        .await
        .expect("create");
    for name in ["busy", "sleepy"] {
        wait_for_phase(&pods, name, "Running", LONG)
            .await
            .expect("Running");
    }
    for name in ["busy", "sleepy"] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["busy", "sleepy"] {
        // Grace is 2 s; the bound is generous for a loaded 2-core machine.
        let took = wait_gone(&pods, name, Duration::from_secs(60))
            .await
            .expect("gone");
        eprintln!("{name}: gone {took:?} after delete");
    }
}

#[tokio::test]
async fn fifty_pods_at_once_and_a_deployment_of_ten() {
    let ns = TestNamespace::new("scale").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let started = Instant::now();
    let creations = (0..50).map(|i| {
        let pods = pods.clone();
        async move {
            create(
                &pods,
                multitool_pod(&format!("p{i}"), &["print", &format!("pod {i}")], "Never"),
            )
            .await
        }
    });
    for created in futures::future::join_all(creations).await {
        created.expect("create");
    }
    for i in 0..50 {
        wait_for_phase(
            &pods,
            &format!("p{i}"),
            "Succeeded",
            Duration::from_secs(300),
        )
        .await
        .expect("Succeeded");
    }
    eprintln!(
        "50 pods Succeeded {:?} after the first create",
        started.elapsed()
    );

    let node = shared_node(KRUSTLET);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "ticker"},
        "spec": {
            "replicas": 10,
            "selector": {"matchLabels": {"app": "ticker"}},
            "template": for_node(json!({
                "metadata": {"labels": {"app": "ticker"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "tick", "image": workloads::multitool(), "args": ["tick", "0", "1000"]}]}
            }), node)
        }
    }))
    .expect("deployment");
    let deployments = ns.api::<Deployment>();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let d = deployments.get("ticker").await.expect("get");
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        if ready == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deployment has {ready}/10 ready replicas"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_component_behaves_like_the_module() {
    let ns = TestNamespace::new("component").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let mut pod = multitool_pod(
        "component",
        &["print", "from a component", "getenv", "X"],
        "Never",
    );
    pod["spec"]["containers"][0]["image"] = json!(workloads::multitool_component());
    pod["spec"]["containers"][0]["env"] = json!([{"name": "X", "value": "y"}]);
    create(&pods, pod).await.expect("create");
    wait_for_phase(&pods, "component", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    assert_eq!(logs(&ns, "component", "main"), "from a component\nX=y\n");
    let mut failing = multitool_pod("component-fails", &["exit", "5"], "Never");
    failing["spec"]["containers"][0]["image"] = json!(workloads::multitool_component());
    create(&pods, failing).await.expect("create");
    let failed = wait_for_phase(&pods, "component-fails", "Failed", LONG)
        .await
        .expect("Failed");
    // WASI 0.2 components report failure without its code: exit code 1.
    let code = terminated(&failed, "main").map(|t| t.exit_code);
    assert_eq!(code, Some(1));
}

#[tokio::test]
async fn describe_shows_the_kubelet_events_in_order() {
    let ns = TestNamespace::new("events").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(&pods, multitool_pod("described", &["hello"], "Never"))
        .await
        .expect("create");
    wait_for_phase(&pods, "described", "Succeeded", LONG)
        .await
        .expect("Succeeded");
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected = ["Scheduled", "Pulled", "Created", "Started"];
    loop {
        let reasons = event_reasons(&ns.api::<Event>(), "described")
            .await
            .expect("events");
        let positions: Vec<Option<usize>> = expected
            .iter()
            .map(|r| reasons.iter().position(|x| x == r))
            .collect();
        if positions.iter().all(Option::is_some) {
            let positions: Vec<usize> = positions.into_iter().flatten().collect();
            assert!(
                positions.windows(2).all(|w| w[0] < w[1]),
                "events out of order: {reasons:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "missing events: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let described = kubectl(&["describe", "pod", "-n", ns.name(), "described"]).expect("describe");
    for reason in expected {
        assert!(
            described.contains(reason),
            "describe lacks {reason}:\n{described}"
        );
    }
}

#[tokio::test]
async fn an_invalid_module_is_a_create_container_error_and_disturbs_nobody() {
    let ns = TestNamespace::new("invalid").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let broken = workloads::publish("broken", || b"\0asm\x01\0\0\0\x01\xffgarbage".to_vec());
    let mut pod = multitool_pod("invalid", &[], "Never");
    pod["spec"]["containers"][0]["image"] = json!(broken);
    create(&pods, pod).await.expect("create");
    create(&pods, multitool_pod("neighbour", &["hello"], "Never"))
        .await
        .expect("create");
    let stuck = wait_for(&pods, "invalid", LONG, "CreateContainerError", |p| {
        waiting_with(p, "main", "CreateContainerError")
    })
    .await
    .expect("waiting");
    let message = waiting(&stuck, "main")
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(message.contains("invalid WebAssembly"), "{message}");
    wait_for_phase(&pods, "neighbour", "Succeeded", LONG)
        .await
        .expect("neighbour unaffected");
}
