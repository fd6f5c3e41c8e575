//! Resources: memory limits end in `OOMKilled`, CPU limits throttle, admission rejects pods
//! that do not fit, and hostile modules never take the node down.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use krustlet_e2e::node::{KrustletNode, shared_node};
use krustlet_e2e::pods::{
    container_status, create, for_node, terminated, wait_for, wait_for_event, wait_for_phase,
};
use krustlet_e2e::{TestNamespace, kubectl, workloads};
use serde_json::json;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);

/// A multitool pod with `args` and `resources` on `node`.
fn pod(name: &str, node: &str, args: &[&str], resources: serde_json::Value) -> serde_json::Value {
    pod_of(name, node, &workloads::multitool(), args, resources)
}

fn pod_of(
    name: &str,
    node: &str,
    image: &str,
    args: &[&str],
    resources: serde_json::Value,
) -> serde_json::Value {
    for_node(
        json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": image, "args": args, "resources": resources}]
            }
        }),
        node,
    )
}

/// The status of the node's MemoryPressure condition.
fn memory_pressure(node: &k8s_openapi::api::core::v1::Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "MemoryPressure")
        .map(|c| c.status.clone())
}

fn running(pod: &Pod) -> bool {
    container_status(pod, "main")
        .and_then(|s| s.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

#[tokio::test]
async fn memory_limit_ends_in_oomkilled_and_the_restart_policy_applies() {
    let node = shared_node(KRUSTLET);
    let ns = TestNamespace::new("oom").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(&pods, pod("neighbour", node, &["sleep", "600"], json!({})))
        .await
        .expect("create");
    let mut hog = pod(
        "hog",
        node,
        &["print", "allocating", "alloc", "256"],
        json!({"limits": {"memory": "32Mi"}}),
    );
    hog["spec"]["restartPolicy"] = json!("OnFailure");
    create(&pods, hog).await.expect("create");

    // OnFailure restarts it; the first run's end is in lastState.
    let hog = wait_for(&pods, "hog", LONG, "restarted after OOMKilled", |p| {
        container_status(p, "main").is_some_and(|s| s.restart_count >= 1)
    })
    .await
    .expect("restart");
    let status = container_status(&hog, "main").expect("status");
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(
        (last.reason.as_deref(), last.exit_code),
        (Some("OOMKilled"), 137),
        "{status:?}"
    );
    let message = last.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("memory limit exceeded") && message.contains(&(32u64 << 20).to_string()),
        "{message}"
    );
    let logs = kubectl(&["logs", "-n", ns.name(), "hog", "--previous"]).expect("logs");
    assert_eq!(logs, "allocating\n");

    let neighbour = pods.get("neighbour").await.expect("neighbour");
    assert!(running(&neighbour), "{:?}", neighbour.status);
    assert_eq!(
        container_status(&neighbour, "main").map(|s| s.restart_count),
        Some(0)
    );
}

/// CPU time of a process in seconds (utime + stime from /proc/<pid>/stat).
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    ticks / 100.0
}

#[tokio::test]
async fn cpu_limits_throttle_busy_loops_and_a_ticker_keeps_its_cadence() {
    // Its own node, so the process's CPU time is these pods' alone.
    let node = KrustletNode::start(KRUSTLET, "cpu", &[]).expect("node");
    node.wait_ready("True", LONG).await.expect("ready");
    let ns = TestNamespace::new("cpu").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let limit = json!({"limits": {"cpu": "250m"}});
    for name in ["spin-a", "spin-b"] {
        create(&pods, pod(name, node.name(), &["spin", "0"], limit.clone()))
            .await
            .expect("create");
    }
    create(
        &pods,
        pod("ticker", node.name(), &["tick", "0", "1000"], json!({})),
    )
    .await
    .expect("create");
    for name in ["spin-a", "spin-b", "ticker"] {
        wait_for(&pods, name, LONG, "running", running)
            .await
            .expect("running");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = node.pid().expect("pid");
    let (cpu_before, started) = (process_cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cores = (process_cpu_seconds(pid) - cpu_before) / started.elapsed().as_secs_f64();
    eprintln!("two busy loops limited to 250m each used {cores:.2} cores together");
    // Two guests at 250m each: 0.5 core. Unthrottled they would take both cores (2.0). The
    // tolerance allows for the node's own work and for a machine too busy to give even 0.5.
    assert!(
        (0.2..=0.8).contains(&cores),
        "two 250m busy loops used {cores:.2} cores in total"
    );

    // Per pod, as /stats/summary reports it (the rate over the last 10 s sample period).
    let summary: serde_json::Value = serde_json::from_str(
        &krustlet_e2e::kubelet_api::kubelet_get(&node, "/stats/summary").await,
    )
    .expect("summary");
    for name in ["spin-a", "spin-b"] {
        let pod = summary["pods"]
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["podRef"]["name"] == name))
            .unwrap_or_else(|| panic!("{name} not in {summary}"));
        let cores = pod["containers"][0]["cpu"]["usageNanoCores"]
            .as_f64()
            .unwrap_or_default()
            / 1e9;
        eprintln!("{name} used {cores:.2} cores");
        assert!(
            (0.1..=0.45).contains(&cores),
            "{name} limited to 250m used {cores:.2} cores"
        );
    }

    // The ticker printed about once a second throughout.
    let logs = kubectl(&["logs", "-n", ns.name(), "ticker", "--timestamps"]).expect("logs");
    let stamps: Vec<jiff::Timestamp> = logs
        .lines()
        .filter_map(|l| l.split_once(' ')?.0.parse().ok())
        .collect();
    assert!(stamps.len() >= 8, "{logs}");
    // Cadence, not punctuality: on a shared 2-core machine a single tick can be late by a
    // second, but a ticker starved by its throttled neighbours would drift every tick.
    let mut gaps: Vec<f64> = stamps
        .windows(2)
        .map(|pair| pair[1].duration_since(pair[0]).as_secs_f64())
        .collect();
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    let longest = gaps[gaps.len() - 1];
    assert!(
        (0.8..=1.4).contains(&median) && longest <= 4.0,
        "tick gaps: median {median:.2}s, longest {longest:.2}s in\n{logs}"
    );
}

#[tokio::test]
async fn admission_rejects_pods_that_do_not_fit() {
    let node = KrustletNode::start(KRUSTLET, "admit", &["--max-pods=5"]).expect("node");
    node.wait_ready("True", LONG).await.expect("ready");
    let ns = TestNamespace::new("admit").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let events = ns.api::<Event>();
    // `nodeName` set directly: the scheduler would never place these.
    let direct = |mut pod: serde_json::Value| {
        pod["spec"]["nodeName"] = json!(node.name());
        pod
    };

    create(
        &pods,
        direct(pod(
            "huge",
            node.name(),
            &["hello"],
            json!({"requests": {"memory": "100Ti"}}),
        )),
    )
    .await
    .expect("create");
    let huge = wait_for_phase(&pods, "huge", "Failed", LONG)
        .await
        .expect("Failed");
    let status = huge.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("OutOfmemory"));
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with("Pod was rejected: Node didn't have enough resource: memory, requested: 109951162777600,"),
        "{message}"
    );
    // Events are written in the background, after the status they go with.
    wait_for_event(&events, "OutOfmemory", "memory", LONG)
        .await
        .expect("event");

    for i in 0..5 {
        create(
            &pods,
            direct(pod(
                &format!("sleeper-{i}"),
                node.name(),
                &["sleep", "600"],
                json!({}),
            )),
        )
        .await
        .expect("create");
    }
    for i in 0..5 {
        wait_for(&pods, &format!("sleeper-{i}"), LONG, "running", running)
            .await
            .expect("running");
    }
    create(
        &pods,
        direct(pod("sixth", node.name(), &["hello"], json!({}))),
    )
    .await
    .expect("create");
    let sixth = wait_for_phase(&pods, "sixth", "Failed", LONG)
        .await
        .expect("Failed");
    let status = sixth.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("OutOfpods"));
    assert_eq!(
        status.message.as_deref(),
        Some(
            "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: 5, capacity: 5"
        )
    );
    // The admitted pods were not disturbed.
    for i in 0..5 {
        assert!(running(
            &pods.get(&format!("sleeper-{i}")).await.expect("get")
        ));
    }
}

#[tokio::test]
async fn hostile_modules_never_take_the_node_down() {
    let node = shared_node(KRUSTLET);
    let ns = TestNamespace::new("hostile").await.expect("namespace");
    let pods = ns.api::<Pod>();
    // A table of 2^32-1 elements (32 GiB of host memory): more than any node's allocatable.
    let table = workloads::publish("hostile-table", || {
        wat::parse_str(
            r#"(module (table 4294967295 funcref) (memory 1) (export "memory" (memory 0))
                       (func (export "_start")))"#,
        )
        .expect("wat")
    });
    create(&pods, pod_of("table", node, &table, &[], json!({})))
        .await
        .expect("create");
    create(
        &pods,
        pod(
            "grow",
            node,
            &["grow", "1000"],
            json!({"limits": {"memory": "16Mi"}}),
        ),
    )
    .await
    .expect("create");
    // Unbounded recursion of wasm calls: wasmtime's stack limit, not the host's, ends it.
    let recursion = workloads::publish("hostile-recursion", || {
        wat::parse_str(r#"(module (func $f (call $f)) (func (export "_start") (call $f)) (memory 1) (export "memory" (memory 0)))"#)
            .expect("wat")
    });
    create(&pods, pod_of("recursion", node, &recursion, &[], json!({})))
        .await
        .expect("create");
    create(&pods, pod("recurse", node, &["recurse"], json!({})))
        .await
        .expect("create");

    for name in ["table", "grow"] {
        let failed = wait_for_phase(&pods, name, "Failed", LONG)
            .await
            .expect("Failed");
        let t = terminated(&failed, "main").expect("terminated");
        assert_eq!(
            (t.reason.as_deref(), t.exit_code),
            (Some("OOMKilled"), 137),
            "{name}: {t:?}"
        );
    }
    // C keeps its stack in linear memory: overflowing it is an out-of-bounds access.
    for (name, trap) in [
        ("recursion", "call stack exhausted"),
        ("recurse", "out of bounds memory access"),
    ] {
        let failed = wait_for_phase(&pods, name, "Failed", LONG)
            .await
            .expect("Failed");
        let t = terminated(&failed, "main").expect("terminated");
        assert_eq!(t.reason.as_deref(), Some("Error"), "{name}: {t:?}");
        let message = t.message.as_deref().unwrap_or_default();
        assert!(message.contains(trap), "{name}: {message}");
    }

    // The node is still there and runs the next pod.
    create(&pods, pod("after", node, &["hello"], json!({})))
        .await
        .expect("create");
    wait_for_phase(&pods, "after", "Succeeded", LONG)
        .await
        .expect("Succeeded");
}

#[tokio::test]
async fn memory_pressure_evicts_best_effort_before_burstable() {
    let mut node = KrustletNode::start(KRUSTLET, "evict", &[]).expect("node");
    node.wait_ready("True", LONG).await.expect("ready");
    let ns = TestNamespace::new("evict").await.expect("namespace");
    let pods = ns.api::<Pod>();
    // `Always`: the node restarts below, and a Never pod whose container was running when
    // Krustlet died ends Failed (its instance died with the process).
    let always = |mut p: serde_json::Value| {
        p["spec"]["restartPolicy"] = json!("Always");
        p
    };
    create(
        &pods,
        always(pod(
            "best-effort",
            node.name(),
            &["sleep", "600"],
            json!({}),
        )),
    )
    .await
    .expect("create");
    create(
        &pods,
        always(pod(
            "burstable",
            node.name(),
            &["sleep", "600"],
            json!({"requests": {"memory": "100Mi"}}),
        )),
    )
    .await
    .expect("create");
    for name in ["best-effort", "burstable"] {
        wait_for(&pods, name, LONG, "running", running)
            .await
            .expect("running");
    }
    // A threshold no host can meet: the node is under memory pressure from now on.
    node.restart_with(&["--eviction-hard=memory.available<1000Ti"])
        .expect("restart");
    let evicted = wait_for_phase(&pods, "best-effort", "Failed", LONG)
        .await
        .expect("evicted");
    let status = evicted.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: ")
            && message.contains("Container main was using ")
            && message.contains("request is 0, has larger consumption of memory."),
        "{message}"
    );
    // The Burstable pod, within its request, is still running when the BestEffort one goes.
    let burstable = pods.get("burstable").await.expect("burstable");
    assert!(
        !matches!(krustlet_e2e::pods::phase(&burstable), "Failed"),
        "{:?}",
        burstable.status
    );
    let events = ns.api::<Event>();
    wait_for_event(&events, "Evicted", "", LONG)
        .await
        .expect("event");
    // With the pressure still on, it is next.
    let next = wait_for_phase(&pods, "burstable", "Failed", LONG)
        .await
        .expect("evicted");
    assert_eq!(
        next.status.and_then(|s| s.reason).as_deref(),
        Some("Evicted")
    );
    let node_object = node.wait_ready("True", LONG).await.expect("node");
    assert_eq!(memory_pressure(&node_object).as_deref(), Some("True"));

    // Under memory pressure a new BestEffort pod is turned away at admission.
    let mut late = pod("late", node.name(), &["hello"], json!({}));
    late["spec"]["nodeName"] = json!(node.name());
    create(&pods, late).await.expect("create");
    let late = wait_for_phase(&pods, "late", "Failed", LONG)
        .await
        .expect("rejected");
    let status = late.status.expect("status");
    assert_eq!(
        (status.reason.as_deref(), status.message.as_deref()),
        (
            Some("Evicted"),
            Some("Pod was rejected: The node had condition: [MemoryPressure]. ")
        )
    );
}

#[tokio::test]
async fn an_empty_dir_over_its_size_limit_is_evicted() {
    let node = shared_node(KRUSTLET);
    let ns = TestNamespace::new("sizelimit").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let mut filler = pod(
        "filler",
        node,
        &["fill", "/scratch/big", "2048", "sleep", "600"],
        json!({}),
    );
    filler["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}]);
    filler["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "scratch", "mountPath": "/scratch"}]);
    create(&pods, filler).await.expect("create");
    let evicted = wait_for_phase(&pods, "filler", "Failed", LONG)
        .await
        .expect("evicted");
    let status = evicted.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        status.message.as_deref(),
        Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
    );
}

#[tokio::test]
async fn a_soft_threshold_raises_pressure_at_once_and_evicts_after_its_grace_period() {
    // A soft threshold no host can meet, with a 20 s grace period: MemoryPressure at once,
    // evictions only after 20 s, each pod with at most 2 s of grace.
    let node = KrustletNode::start(
        KRUSTLET,
        "soft",
        &[
            "--eviction-soft=memory.available<1000Ti",
            "--eviction-soft-grace-period=memory.available=20s",
            "--eviction-max-pod-grace-period=2",
        ],
    )
    .expect("node");
    let started = Instant::now();
    let ns = TestNamespace::new("soft").await.expect("namespace");
    let pods = ns.api::<Pod>();
    // Under pressure within a few monitoring rounds, long before the grace period ends.
    let deadline = Instant::now() + LONG;
    loop {
        let object = node.wait_ready("True", LONG).await.expect("ready");
        let pressure = memory_pressure(&object);
        if pressure.as_deref() == Some("True") {
            break;
        }
        assert!(Instant::now() < deadline, "no MemoryPressure: {pressure:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Burstable (requests memory) so that admission under memory pressure takes it; bound
    // directly, as the scheduler keeps pods off a node with the memory-pressure taint.
    let mut victim = pod(
        "victim",
        node.name(),
        &["sleep", "600"],
        json!({"requests": {"memory": "1Mi"}}),
    );
    victim["spec"]["nodeName"] = json!(node.name());
    create(&pods, victim).await.expect("create");
    wait_for(&pods, "victim", LONG, "running", running)
        .await
        .expect("running");
    let evicted = wait_for_phase(&pods, "victim", "Failed", LONG)
        .await
        .expect("evicted");
    assert!(
        started.elapsed() >= Duration::from_secs(20),
        "evicted before the 20 s grace period: {:?}",
        started.elapsed()
    );
    let status = evicted.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert!(
        status
            .message
            .unwrap_or_default()
            .starts_with("The node was low on resource: memory. Threshold quantity: "),
    );
}

/// `kubectl patch pod NAME --subresource resize` with the container `main`'s new resources.
fn resize(ns: &str, name: &str, resources: serde_json::Value) -> anyhow::Result<String> {
    let patch = json!({"spec": {"containers": [{"name": "main", "resources": resources}]}});
    kubectl(&[
        "patch",
        "pod",
        name,
        "-n",
        ns,
        "--subresource",
        "resize",
        "--patch",
        &patch.to_string(),
    ])
}

#[tokio::test]
async fn an_in_place_resize_raises_a_running_guests_memory_limit_without_a_restart() {
    let node = shared_node(KRUSTLET);
    let ns = TestNamespace::new("resize").await.expect("namespace");
    let pods = ns.api::<Pod>();
    // 40 s to resize before the guest allocates 96 MiB, over its 64Mi limit: without the
    // resize it would be OOMKilled.
    let limits = |memory: &str, cpu: &str| json!({"limits": {"memory": memory, "cpu": cpu}, "requests": {"memory": memory, "cpu": cpu}});
    create(
        &pods,
        pod(
            "grower",
            node,
            &["sleep", "40", "alloc", "96", "sleep", "600"],
            limits("64Mi", "100m"),
        ),
    )
    .await
    .expect("create");
    wait_for(&pods, "grower", LONG, "running", running)
        .await
        .expect("running");
    resize(ns.name(), "grower", limits("256Mi", "200m"))
        .expect("kubectl patch --subresource resize");
    // The status shows what the container now has, and it never restarted.
    let resized = wait_for(&pods, "grower", LONG, "resized", |p| {
        container_status(p, "main")
            .and_then(|c| c.resources.as_ref())
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .is_some_and(|q| q.0 == "256Mi")
    })
    .await
    .expect("resized");
    let main = container_status(&resized, "main").expect("status");
    assert_eq!(main.restart_count, 0);
    assert_eq!(
        main.allocated_resources
            .as_ref()
            .and_then(|a| a.get("cpu"))
            .map(|q| q.0.as_str()),
        Some("200m")
    );
    // The guest allocates past the old limit and keeps running.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let logs = kubectl(&["logs", "-n", ns.name(), "grower"]).unwrap_or_default();
        if logs.contains("alloc") || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = pods.get("grower").await.expect("pod");
    let main = container_status(&after, "main").expect("status");
    assert!(
        main.state.as_ref().is_some_and(|s| s.running.is_some()) && main.restart_count == 0,
        "not running at 256Mi after allocating 96 MiB: {:?}",
        after.status
    );

    // A resize the node can never hold is pending, Infeasible, and changes nothing.
    resize(ns.name(), "grower", limits("256Mi", "1000"))
        .expect("kubectl patch --subresource resize");
    let pending = wait_for(&pods, "grower", LONG, "PodResizePending", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "PodResizePending" && c.reason.as_deref() == Some("Infeasible")
                })
            })
    })
    .await
    .expect("infeasible");
    let main = container_status(&pending, "main").expect("status");
    let cpu = main
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("cpu"))
        .map(|q| q.0.clone());
    assert_eq!(cpu.as_deref(), Some("200m"));
}
