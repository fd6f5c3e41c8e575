//! The pod lifecycle where Krustlet follows the upstream kubelet's semantics: Jobs, sidecars
//! that stop with their pod, Krustlet restarts (`kill -9`), deletion during a failing mount,
//! `activeDeadlineSeconds`, termination messages, readiness gates, `kubectl set image`.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use krustlet_e2e::node::shared_node;
use krustlet_e2e::pods::{
    container_status, create, event_reasons, for_node, phase, terminated, wait_for, wait_for_event,
    wait_for_phase, wait_gone,
};
use krustlet_e2e::{KrustletNode, TestNamespace, kubectl, workloads};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);

fn ready_condition(pod: &Pod) -> Option<(String, Option<String>, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn a_job_with_four_completions_completes() {
    let ns = TestNamespace::new("job").await.expect("namespace");
    let template = for_node(
        json!({
            "metadata": {"labels": {"app": "job"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": workloads::multitool(), "args": ["print", "done"]}]
            }
        }),
        shared_node(KRUSTLET),
    );
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "four"},
        "spec": {"completions": 4, "parallelism": 2, "backoffLimit": 0, "template": template}
    }))
    .expect("job");
    let jobs = ns.api::<Job>();
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let job = jobs.get("four").await.expect("get job");
        let status = job.status.unwrap_or_default();
        if status.succeeded == Some(4) {
            let complete = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True");
            if complete {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "job not complete: succeeded={:?} failed={:?}",
            status.succeeded,
            status.failed
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = kubectl(&["get", "job", "four", "-n", ns.name(), "-o", "wide"]).expect("get");
    assert!(out.contains("4/4"), "{out}");
}

#[tokio::test]
async fn a_pod_with_a_sidecar_succeeds_when_its_app_exits() {
    let ns = TestNamespace::new("sidecar").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let image = workloads::multitool();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": "with-sidecar"},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 3,
                    "initContainers": [
                        {"name": "first", "image": image, "restartPolicy": "Always", "args": ["tick", "0", "500"]},
                        {"name": "second", "image": image, "restartPolicy": "Always", "args": ["tick", "0", "500"]}
                    ],
                    "containers": [{"name": "app", "image": image, "args": ["sleep", "2", "print", "app done"]}]
                }
            }),
            shared_node(KRUSTLET),
        ),
    )
    .await
    .expect("create");
    // The phase follows the app (sidecars do not count); the sidecars stop right after.
    let pod = wait_for(
        &pods,
        "with-sidecar",
        LONG,
        "Succeeded, sidecars stopped",
        |p| {
            phase(p) == "Succeeded"
                && ["first", "second"].iter().all(|c| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.init_container_statuses.as_ref())
                        .and_then(|l| l.iter().find(|s| s.name == *c))
                        .and_then(|s| s.state.as_ref())
                        .is_some_and(|st| st.terminated.is_some())
                })
        },
    )
    .await
    .expect("Succeeded once the app exits");
    let status = pod.status.expect("status");
    for sidecar in status.init_container_statuses.unwrap_or_default() {
        assert!(
            sidecar
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some(),
            "sidecar {} not stopped: {:?}",
            sidecar.name,
            sidecar.state
        );
    }
    // Sidecars stop in reverse order: the second is killed before the first. Events are
    // published in the background, so wait for both.
    let events = ns.api::<Event>();
    let deadline = Instant::now() + Duration::from_secs(60);
    let killing = loop {
        let list = events
            .list(
                &kube::api::ListParams::default()
                    .fields("involvedObject.name=with-sidecar,reason=Killing"),
            )
            .await
            .expect("events");
        let mut killing: Vec<(String, String)> = list
            .items
            .into_iter()
            .map(|e| {
                let when = e
                    .event_time
                    .map(|t| t.0.to_string())
                    .or(e.first_timestamp.map(|t| t.0.to_string()))
                    .unwrap_or_default();
                (when, e.involved_object.field_path.unwrap_or_default())
            })
            .collect();
        killing.sort();
        if killing.len() >= 2 || Instant::now() > deadline {
            break killing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let order: Vec<&str> = killing.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(
        order,
        ["spec.initContainers{second}", "spec.initContainers{first}"],
        "{killing:?}"
    );
}

#[tokio::test]
async fn a_krustlet_killed_mid_run_resumes_its_pods_by_their_restart_policy() {
    let mut node = KrustletNode::start(KRUSTLET, "resume", &[]).expect("start");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready");
    let ns = TestNamespace::new("resume").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let image = workloads::multitool();
    let pod = |name: &str, policy: &str, containers: serde_json::Value| {
        for_node(
            json!({
                "metadata": {"name": name},
                "spec": {"restartPolicy": policy, "terminationGracePeriodSeconds": 2, "containers": containers}
            }),
            node.name(),
        )
    };
    // Never: one container has finished, the other is still running when Krustlet dies.
    create(
        &pods,
        pod(
            "never",
            "Never",
            json!([
                {"name": "done", "image": image, "args": ["print", "ran once"]},
                {"name": "running", "image": image, "args": ["sleep", "3600"]}
            ]),
        ),
    )
    .await
    .expect("create");
    create(
        &pods,
        pod(
            "always",
            "Always",
            json!([{"name": "tick", "image": image, "args": ["tick", "0", "500"]}]),
        ),
    )
    .await
    .expect("create");
    wait_for(
        &pods,
        "never",
        LONG,
        "done finished, running running",
        |p| {
            terminated(p, "done").is_some_and(|t| t.exit_code == 0)
                && container_status(p, "running")
                    .is_some_and(|s| s.state.as_ref().is_some_and(|s| s.running.is_some()))
        },
    )
    .await
    .expect("never pod half done");
    let before = wait_for_phase(&pods, "always", "Running", LONG)
        .await
        .expect("always Running");
    let count_before = container_status(&before, "tick")
        .map(|s| s.restart_count)
        .expect("status");

    node.signal(Signal::SIGKILL).expect("kill -9");
    node.wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    node.restart().expect("restart");

    let never = wait_for_phase(&pods, "never", "Failed", LONG)
        .await
        .expect("a Never pod whose container was running ends Failed");
    let killed = terminated(&never, "running").expect("running terminated");
    assert_eq!(
        (killed.exit_code, killed.reason.as_deref()),
        (137, Some("ContainerStatusUnknown")),
        "{killed:?}"
    );
    let done = terminated(&never, "done").expect("done terminated");
    assert_eq!(done.exit_code, 0);
    assert_eq!(
        container_status(&never, "done").map(|s| s.restart_count),
        Some(0)
    );
    // One run of the finished container, on the node and through the API.
    let logs = kubectl(&["logs", "-n", ns.name(), "never", "-c", "done"]).expect("logs");
    assert_eq!(logs.matches("ran once").count(), 1, "{logs}");
    let uid = never.metadata.uid.clone().expect("uid");
    let dir = node
        .data_dir()
        .join("logs/pods")
        .join(format!("{}_never_{uid}", ns.name()))
        .join("done");
    let runs: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".log"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        runs,
        ["0.log"],
        "runs of the finished container in {}",
        dir.display()
    );

    let always = wait_for(&pods, "always", LONG, "restarted and running", |p| {
        container_status(p, "tick").is_some_and(|s| {
            s.restart_count == count_before + 1
                && s.state.as_ref().is_some_and(|s| s.running.is_some())
        })
    })
    .await
    .expect("always restarted once");
    let last = container_status(&always, "tick")
        .and_then(|s| s.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(last.reason.as_deref(), Some("ContainerStatusUnknown"));
    node.terminate(Duration::from_secs(30)).await.expect("stop");
}

#[tokio::test]
async fn deleting_a_pod_stuck_in_failed_mount_finishes_within_its_grace_period() {
    let ns = TestNamespace::new("stuck").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": "stuck"},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "volumes": [{"name": "missing", "configMap": {"name": "does-not-exist"}}],
                    "containers": [{
                        "name": "main", "image": workloads::multitool(), "args": ["sleep", "3600"],
                        "volumeMounts": [{"name": "missing", "mountPath": "/config"}]
                    }]
                }
            }),
            shared_node(KRUSTLET),
        ),
    )
    .await
    .expect("create");
    let events = ns.api::<Event>();
    let deadline = Instant::now() + LONG;
    while !event_reasons(&events, "stuck")
        .await
        .expect("events")
        .iter()
        .any(|r| r == "FailedMount")
    {
        assert!(Instant::now() < deadline, "no FailedMount event");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pods.delete("stuck", &DeleteParams::default())
        .await
        .expect("delete");
    // Grace 5 s, plus the API round trips on a slow machine.
    let took = wait_gone(&pods, "stuck", Duration::from_secs(20))
        .await
        .expect("deleted within its grace period");
    eprintln!("pod stuck in FailedMount gone {took:?} after delete");
}

#[tokio::test]
async fn active_deadline_seconds_ends_the_pod_deadline_exceeded() {
    let ns = TestNamespace::new("deadline").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": "deadline"},
                "spec": {
                    "activeDeadlineSeconds": 5,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": workloads::multitool(), "args": ["sleep", "3600"]}]
                }
            }),
            shared_node(KRUSTLET),
        ),
    )
    .await
    .expect("create");
    let pod = wait_for_phase(&pods, "deadline", "Failed", LONG)
        .await
        .expect("Failed");
    let status = pod.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
    wait_for_event(&ns.api::<Event>(), "DeadlineExceeded", "", LONG)
        .await
        .expect("a DeadlineExceeded event");
}

#[tokio::test]
async fn an_active_deadline_set_on_a_running_pod_applies() {
    let ns = TestNamespace::new("deadline-late")
        .await
        .expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": "late"},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": workloads::multitool(), "args": ["sleep", "3600"]}]
                }
            }),
            shared_node(KRUSTLET),
        ),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "late", "Running", LONG)
        .await
        .expect("Running");
    pods.patch(
        "late",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"activeDeadlineSeconds": 3}})),
    )
    .await
    .expect("patch");
    let pod = wait_for_phase(&pods, "late", "Failed", LONG)
        .await
        .expect("Failed");
    assert_eq!(
        pod.status.and_then(|s| s.reason).as_deref(),
        Some("DeadlineExceeded")
    );
}

#[tokio::test]
async fn termination_messages_reach_the_status() {
    let ns = TestNamespace::new("message").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let image = workloads::multitool();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": "message"},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "file", "image": image, "args": ["write", "/dev/termination-log", "all done here", "print", "bye"]},
                        {"name": "custom", "image": image, "terminationMessagePath": "/tmp/status/why",
                         "args": ["write", "/tmp/status/why", "custom path", "exit", "3"]},
                        {"name": "fallback", "image": image, "terminationMessagePolicy": "FallbackToLogsOnError",
                         "args": ["print", "first line", "print", "it went wrong", "exit", "2"]},
                        {"name": "quiet", "image": image, "terminationMessagePolicy": "FallbackToLogsOnError",
                         "args": ["print", "fine"]}
                    ]
                }
            }),
            shared_node(KRUSTLET),
        ),
    )
    .await
    .expect("create");
    let pod = wait_for_phase(&pods, "message", "Failed", LONG)
        .await
        .expect("Failed (custom and fallback exit non-zero)");
    let message = |c: &str| terminated(&pod, c).and_then(|t| t.message.clone());
    // `write` adds a newline; the message is the file as written.
    assert_eq!(message("file").as_deref(), Some("all done here\n"));
    assert_eq!(message("custom").as_deref(), Some("custom path\n"));
    assert_eq!(
        message("fallback").as_deref(),
        Some("first line\nit went wrong\n")
    );
    assert_eq!(message("quiet"), None, "no fallback on success");
    let described = kubectl(&["describe", "pod", "-n", ns.name(), "message"]).expect("describe");
    assert!(described.contains("all done here"), "{described}");
}

#[tokio::test]
async fn a_readiness_gate_holds_ready_until_its_condition_is_true() {
    let ns = TestNamespace::new("gate").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": "gated"},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "readinessGates": [{"conditionType": "example.com/load-balancer"}],
                    "containers": [{"name": "main", "image": workloads::multitool(), "args": ["sleep", "3600"]}]
                }
            }),
            shared_node(KRUSTLET),
        ),
    )
    .await
    .expect("create");
    let pod = wait_for(&pods, "gated", LONG, "running, not Ready", |p| {
        phase(p) == "Running"
            && ready_condition(p).is_some_and(|(s, r, _)| {
                s == "False" && r.as_deref() == Some("ReadinessGatesNotReady")
            })
    })
    .await
    .expect("held back by its gate");
    let (_, _, message) = ready_condition(&pod).expect("Ready");
    assert_eq!(
        message.as_deref(),
        Some(
            "corresponding condition of pod readiness gate \"example.com/load-balancer\" does not exist."
        )
    );
    // What a load-balancer controller does: set the gate's condition on the status.
    kubectl(&[
        "patch",
        "pod",
        "gated",
        "-n",
        ns.name(),
        "--subresource=status",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"example.com/load-balancer","status":"True"}]}}"#,
    ])
    .expect("patch the gate");
    wait_for(&pods, "gated", LONG, "Ready", |p| {
        ready_condition(p).is_some_and(|(s, _, _)| s == "True")
    })
    .await
    .expect("Ready once the gate is True");
}

#[tokio::test]
async fn kubectl_set_image_restarts_the_container_with_the_new_image() {
    let ns = TestNamespace::new("setimage").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let old = workloads::multitool();
    let new = workloads::multitool_component();
    create(
        &pods,
        for_node(
            json!({
                "metadata": {"name": "swap"},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": old, "args": ["tick", "0", "500"]}]
                }
            }),
            shared_node(KRUSTLET),
        ),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "swap", "Running", LONG)
        .await
        .expect("Running");
    kubectl(&[
        "set",
        "image",
        "-n",
        ns.name(),
        "pod/swap",
        &format!("main={new}"),
    ])
    .expect("set image");
    let pod = wait_for(&pods, "swap", LONG, "running the new image", |p| {
        container_status(p, "main").is_some_and(|s| {
            s.image == new
                && s.restart_count == 1
                && s.state.as_ref().is_some_and(|st| st.running.is_some())
        })
    })
    .await
    .expect("restarted with the new image");
    assert_eq!(phase(&pod), "Running");
    // Events are published asynchronously: on a busy machine the Killing event can follow
    // the restart it announced by a few seconds.
    let mut described = String::new();
    for _ in 0..30 {
        described = kubectl(&["describe", "pod", "-n", ns.name(), "swap"]).expect("describe");
        if described.contains("Container main definition changed, will be restarted") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        described.contains("Container main definition changed, will be restarted"),
        "{described}"
    );
}

#[tokio::test]
async fn containers_get_hostname_and_service_variables_as_from_a_container_runtime() {
    use k8s_openapi::api::core::v1::Service;
    let ns = TestNamespace::new("svcenv").await.expect("namespace");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "my-db"},
        "spec": {"ports": [{"port": 5432, "name": "pg"}], "selector": {"app": "db"}}
    }))
    .expect("service");
    let created = ns
        .api::<Service>()
        .create(&PostParams::default(), &service)
        .await
        .expect("create service");
    let ip = created.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
    let pods = ns.api::<Pod>();
    let image = workloads::multitool();
    for (name, links) in [("linked", true), ("unlinked", false)] {
        create(
            &pods,
            for_node(
                json!({
                    "metadata": {"name": name},
                    "spec": {
                        "restartPolicy": "Never",
                        "enableServiceLinks": links,
                        "containers": [{"name": "main", "image": image, "args": ["env"],
                                        "env": [{"name": "DB", "value": "$(MY_DB_SERVICE_HOST):$(MY_DB_SERVICE_PORT)"}]}]
                    }
                }),
                shared_node(KRUSTLET),
            ),
        )
        .await
        .expect("create");
    }
    for name in ["linked", "unlinked"] {
        wait_for_phase(&pods, name, "Succeeded", LONG)
            .await
            .expect("Succeeded");
    }
    let linked = kubectl(&["logs", "-n", ns.name(), "linked"]).expect("logs");
    assert!(linked.lines().any(|l| l == "HOSTNAME=linked"), "{linked}");
    assert!(
        linked
            .lines()
            .any(|l| l.starts_with("KUBERNETES_SERVICE_HOST=")),
        "{linked}"
    );
    assert!(
        linked
            .lines()
            .any(|l| l == format!("MY_DB_SERVICE_HOST={ip}")),
        "{linked}"
    );
    assert!(
        linked.lines().any(|l| l == "MY_DB_SERVICE_PORT_PG=5432"),
        "{linked}"
    );
    assert!(
        linked.lines().any(|l| l == format!("DB={ip}:5432")),
        "{linked}"
    );
    let unlinked = kubectl(&["logs", "-n", ns.name(), "unlinked"]).expect("logs");
    assert!(
        unlinked
            .lines()
            .any(|l| l.starts_with("KUBERNETES_SERVICE_HOST=")),
        "the kubernetes Service is always there: {unlinked}"
    );
    assert!(
        !unlinked
            .lines()
            .any(|l| l.starts_with("MY_DB_SERVICE_HOST=")),
        "{unlinked}"
    );
    // Unresolvable references stay as written, as upstream.
    assert!(
        unlinked
            .lines()
            .any(|l| l == "DB=$(MY_DB_SERVICE_HOST):$(MY_DB_SERVICE_PORT)"),
        "{unlinked}"
    );
}

#[tokio::test]
async fn a_runtime_class_schedules_wasm_pods_and_an_unknown_handler_is_refused() {
    use k8s_openapi::api::node::v1::RuntimeClass;
    let ns = TestNamespace::new("rtclass").await.expect("namespace");
    let node = shared_node(KRUSTLET);
    let classes: kube::Api<RuntimeClass> =
        kube::Api::all(krustlet_e2e::cluster::client().await.expect("client"));
    let class = |name: &str, handler: &str| -> RuntimeClass {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "handler": handler,
            "scheduling": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": [
                    {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoExecute"},
                    {"key": "kubernetes.io/arch", "operator": "Equal", "value": "wasm32-wasi", "effect": "NoSchedule"}
                ]
            }
        }))
        .expect("runtime class")
    };
    let (good, bad) = (format!("wasm-{}", ns.name()), format!("runc-{}", ns.name()));
    classes
        .create(&PostParams::default(), &class(&good, "wasmtime"))
        .await
        .expect("create class");
    classes
        .create(&PostParams::default(), &class(&bad, "runc"))
        .await
        .expect("create class");
    let pods = ns.api::<Pod>();
    // No tolerations or selector of its own: the RuntimeClass brings them.
    for (name, class) in [("classy", &good), ("wrong-handler", &bad)] {
        create(
            &pods,
            json!({
                "metadata": {"name": name},
                "spec": {
                    "runtimeClassName": class,
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": workloads::multitool(), "args": ["hello"]}]
                }
            }),
        )
        .await
        .expect("create");
    }
    wait_for_phase(&pods, "classy", "Succeeded", LONG)
        .await
        .expect("the wasm RuntimeClass runs here");
    let events = ns.api::<Event>();
    let deadline = Instant::now() + LONG;
    loop {
        let list = events
            .list(&kube::api::ListParams::default().fields("involvedObject.name=wrong-handler"))
            .await
            .expect("events");
        if let Some(e) = list
            .items
            .iter()
            .find(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox"))
        {
            let note = e.message.clone().unwrap_or_default();
            assert!(
                note.contains("no runtime for \"runc\" is configured"),
                "{note}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no FailedCreatePodSandBox event");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pod = pods.get("wrong-handler").await.expect("get");
    assert_eq!(phase(&pod), "Pending");
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
        kube::Api::all(krustlet_e2e::cluster::client().await.expect("client"));
    let handlers: Vec<String> = nodes
        .get(node)
        .await
        .expect("node")
        .status
        .and_then(|s| s.runtime_handlers)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|h| h.name)
        .collect();
    assert!(handlers.iter().any(|h| h == "wasmtime"), "{handlers:?}");
    for name in [good, bad] {
        let _ = classes.delete(&name, &DeleteParams::default()).await;
    }
}

#[tokio::test]
async fn a_container_restart_rule_retries_its_exit_code_in_a_never_pod() {
    let ns = TestNamespace::new("rules").await.expect("namespace");
    let pods = ns.api::<Pod>();
    // restartPolicy Never, and a container that restarts only on exit code 42 (KEP-5307).
    let pod_with = |name: &str, code: &str| {
        for_node(
            json!({
                "metadata": {"name": name},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "main", "image": workloads::multitool(), "args": ["exit", code],
                        "restartPolicy": "Never",
                        "restartPolicyRules": [{"action": "Restart", "exitCodes": {"operator": "In", "values": [42]}}]
                    }]
                }
            }),
            shared_node(KRUSTLET),
        )
    };
    create(&pods, pod_with("retried", "42")).await.expect(
        "create (the API server must accept container restartPolicy and restartPolicyRules)",
    );
    create(&pods, pod_with("final", "3")).await.expect("create");
    // Exit 42 matches the rule: the container runs again and the pod is not Failed.
    let retried = wait_for(&pods, "retried", LONG, "restarted by its rule", |p| {
        container_status(p, "main").is_some_and(|c| c.restart_count >= 1)
    })
    .await
    .expect("restarted");
    assert_eq!(phase(&retried), "Running", "{:?}", retried.status);
    // Exit 3 matches no rule and the container says Never: the pod fails, not restarted.
    let failed = wait_for_phase(&pods, "final", "Failed", LONG)
        .await
        .expect("failed");
    let main = container_status(&failed, "main").expect("status");
    assert_eq!(main.restart_count, 0);
    assert_eq!(terminated(&failed, "main").map(|t| t.exit_code), Some(3));
}
