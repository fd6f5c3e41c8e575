//! The node agent: registration, TLS bootstrap, lease, status, re-registration, shutdown and
//! config errors, against the real control plane.

use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use krustlet_e2e::node::ready_status;
use krustlet_e2e::{KrustletNode, cluster, kubectl};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use nix::sys::signal::Signal;

use crate::KRUSTLET;

async fn nodes() -> Api<Node> {
    Api::all(krustlet_e2e::cluster::client().await.expect("client"))
}

#[tokio::test]
async fn node_registers_ready_with_labels_taints_capacity_and_node_info() {
    let started = Instant::now();
    let node = KrustletNode::start(
        KRUSTLET,
        "reg",
        &["--max-pods=42", "--node-labels=team=wasm,tier=edge"],
    )
    .expect("start");
    let registered = node
        .wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready");
    eprintln!("node Ready {:?} after start", started.elapsed());

    let labels = registered.metadata.labels.clone().unwrap_or_default();
    for (key, value) in [
        ("kubernetes.io/arch", "wasm32-wasi"),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/hostname", node.name()),
        ("type", "krustlet"),
        ("team", "wasm"),
        ("tier", "edge"),
    ] {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some(value),
            "label {key}: {labels:?}"
        );
    }
    let taints = registered
        .spec
        .clone()
        .and_then(|s| s.taints)
        .unwrap_or_default();
    let mut effects: Vec<_> = taints
        .iter()
        .filter(|t| t.key == "kubernetes.io/arch" && t.value.as_deref() == Some("wasm32-wasi"))
        .map(|t| t.effect.as_str())
        .collect();
    effects.sort();
    assert_eq!(effects, ["NoExecute", "NoSchedule"], "{taints:?}");

    let status = registered.status.clone().expect("status");
    let capacity = status.capacity.clone().expect("capacity");
    assert_eq!(capacity["pods"].0, "42");
    for resource in ["cpu", "memory", "ephemeral-storage"] {
        assert!(
            capacity.contains_key(resource),
            "capacity lacks {resource}: {capacity:?}"
        );
        assert!(
            status
                .allocatable
                .as_ref()
                .expect("allocatable")
                .contains_key(resource)
        );
    }
    let info = status.node_info.clone().expect("nodeInfo");
    assert!(
        info.container_runtime_version.starts_with("wasmtime://48."),
        "{info:?}"
    );
    assert!(
        info.kubelet_version.starts_with("v1.35.0-krustlet."),
        "{info:?}"
    );
    assert_eq!(info.architecture, "wasm32-wasi");
    assert_eq!(info.operating_system, "linux");
    assert!(
        !info.boot_id.is_empty() && !info.kernel_version.is_empty(),
        "{info:?}"
    );
    let addresses = status.addresses.clone().unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1"),
        "{addresses:?}"
    );
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "Hostname" && a.address == node.name())
    );
    let port = status
        .daemon_endpoints
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port);
    assert_eq!(port, Some(i32::from(node.port())));
    let conditions = status.conditions.unwrap_or_default();
    for (kind, reason) in [
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "KubeletHasSufficientPID"),
        ("Ready", "KubeletReady"),
    ] {
        let c = conditions
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap_or_else(|| panic!("no {kind}"));
        assert_eq!(c.reason.as_deref(), Some(reason), "{c:?}");
    }

    // `kubectl get nodes` shows it Ready, as a user sees it.
    let out = kubectl(&["get", "node", node.name(), "--no-headers"]).expect("kubectl get node");
    assert!(out.split_whitespace().nth(1) == Some("Ready"), "{out}");
}

#[tokio::test]
async fn tls_bootstrap_issues_client_cert_through_csr_and_node_restriction_applies() {
    let node = KrustletNode::start(KRUSTLET, "boot", &[]).expect("start");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready");
    let info = cluster();
    let token_id = info.bootstrap_token.split('.').next().expect("token id");

    // The client CSR: made with the bootstrap token, auto-approved, issued.
    let csrs: Api<CertificateSigningRequest> =
        Api::all(krustlet_e2e::cluster::client().await.expect("client"));
    let all = csrs
        .list(&ListParams::default())
        .await
        .expect("list CSRs")
        .items;
    let pem = std::fs::read_to_string(node.data_dir().join("pki/kubelet-client-current.pem"))
        .expect("client certificate in --cert-dir");
    let client_csr = all
        .iter()
        .find(|c| {
            c.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet"
                && c.status
                    .as_ref()
                    .and_then(|s| s.certificate.as_ref())
                    .is_some_and(|cert| pem.starts_with(String::from_utf8_lossy(&cert.0).trim()))
        })
        .expect("a CSR that issued the stored client certificate");
    assert_eq!(
        client_csr.spec.username.as_deref(),
        Some(format!("system:bootstrap:{token_id}").as_str())
    );
    let approved = client_csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Approved" && c.status == "True")
        });
    assert!(approved, "{client_csr:?}");
    let listed = kubectl(&[
        "get",
        "csr",
        client_csr.metadata.name.as_deref().expect("name"),
    ])
    .expect("kubectl get csr");
    assert!(listed.contains("Approved,Issued"), "{listed}");

    // The serving CSR: from the node's own identity, approved by the dev cluster's approver.
    let node_user = format!("system:node:{}", node.name());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = csrs
            .list(&ListParams::default())
            .await
            .expect("list CSRs")
            .items;
        let serving = all.iter().find(|c| {
            c.spec.signer_name == "kubernetes.io/kubelet-serving"
                && c.spec.username.as_deref() == Some(&node_user)
        });
        if serving
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.certificate.as_ref())
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no issued serving CSR for {node_user}; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The node's own credentials are subject to NodeRestriction: it may not touch other nodes.
    let own = krustlet_e2e::cluster::client_from(&node.data_dir().join("kubeconfig"))
        .await
        .expect("node client");
    let own_nodes: Api<Node> = Api::all(own);
    let patch = serde_json::json!({"metadata": {"labels": {"e2e-touched": "yes"}}});
    own_nodes
        .patch(node.name(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("a node may update itself");
    let other = KrustletNode::start(KRUSTLET, "other", &[]).expect("start other");
    other
        .wait_ready("True", Duration::from_secs(90))
        .await
        .expect("other Ready");
    let refused = own_nodes
        .patch(other.name(), &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    match refused {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("NodeRestriction let a node modify another: {other:?}"),
    }
}

#[tokio::test]
async fn lease_renews_and_node_controller_notices_death_and_return() {
    let mut node = KrustletNode::start(KRUSTLET, "lease", &[]).expect("start");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready");
    let leases: Api<Lease> = Api::namespaced(
        krustlet_e2e::cluster::client().await.expect("client"),
        "kube-node-lease",
    );
    let renew_time = |lease: Lease| lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 3 && Instant::now() < deadline {
        if let Some(t) = leases
            .get_opt(node.name())
            .await
            .expect("get lease")
            .and_then(renew_time)
            && seen.last() != Some(&t)
        {
            seen.push(t);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        seen.len() >= 3,
        "lease renewTime did not advance twice in 60 s: {seen:?}"
    );
    let gaps: Vec<_> = seen
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs())
        .collect();
    eprintln!("lease renewal gaps (s): {gaps:?}");
    assert!(
        gaps.iter().all(|g| (5..=20).contains(g)),
        "renewals every ~10 s expected: {gaps:?}"
    );
    let lease = leases.get(node.name()).await.expect("lease");
    assert_eq!(
        lease.spec.as_ref().and_then(|s| s.lease_duration_seconds),
        Some(40)
    );
    assert_eq!(
        lease
            .metadata
            .owner_references
            .unwrap_or_default()
            .first()
            .map(|o| o.kind.as_str()),
        Some("Node")
    );

    // SIGKILL: no goodbye; the node lifecycle controller marks it Unknown after its grace period.
    node.signal(Signal::SIGKILL).expect("kill");
    node.wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    node.wait_ready("Unknown", Duration::from_secs(120))
        .await
        .expect("Unknown after the grace period");
    node.restart().expect("restart");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready again after restart");
}

#[tokio::test]
async fn deleted_node_object_is_recreated() {
    let node = KrustletNode::start(KRUSTLET, "del", &[]).expect("start");
    let first = node
        .wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready");
    nodes()
        .await
        .delete(node.name(), &DeleteParams::default())
        .await
        .expect("delete node");
    let deleted_at = Instant::now();
    let deadline = deleted_at + Duration::from_secs(60);
    loop {
        if let Some(again) = nodes().await.get_opt(node.name()).await.expect("get")
            && again.metadata.uid != first.metadata.uid
        {
            assert_eq!(ready_status(&again).as_deref().unwrap_or("True"), "True");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node not re-registered; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "node re-registered {:?} after deletion",
        deleted_at.elapsed()
    );
    node.wait_ready("True", Duration::from_secs(60))
        .await
        .expect("Ready after re-registration");
}

#[tokio::test]
async fn sigterm_reports_not_ready_and_exits_zero() {
    let mut node =
        KrustletNode::start(KRUSTLET, "term", &["--shutdown-grace-period=10s"]).expect("start");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready");
    node.terminate(Duration::from_secs(30))
        .await
        .expect("clean exit after SIGTERM");
    let gone = nodes().await.get(node.name()).await.expect("node");
    let ready = gone
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.message.as_deref(), Some("node is shutting down"));
}

/// Runs the binary to completion with `args` and returns (exit code, stderr).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(KRUSTLET)
        .args(args)
        .arg(format!("--data-dir={}", data.path().display()))
        .output()
        .expect("run krustlet");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_config_is_refused_with_one_line_and_registers_nothing() {
    let info = cluster();
    let bootstrap = format!(
        "--bootstrap-kubeconfig={}",
        info.bootstrap_kubeconfig.display()
    );
    let cases: [(&[&str], &str); 5] = [
        (&["--no-such-flag"], "--no-such-flag"),
        (&["--node-ip=not-an-ip"], "--node-ip"),
        (&["--max-pods=-1"], "--max-pods"),
        (
            &["--kubeconfig=/nonexistent/kubeconfig"],
            "/nonexistent/kubeconfig",
        ),
        (&["--node-name=Bad_Name", bootstrap.as_str()], "--node-name"),
    ];
    for (args, named) in cases {
        let mut all = vec!["--node-name=badcfg"];
        all.extend_from_slice(args);
        let (code, stderr) = run_to_exit(&all);
        assert!(
            code.is_some_and(|c| c != 0),
            "{args:?} exited {code:?}: {stderr}"
        );
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: expected one line, got:\n{stderr}"
        );
        assert!(
            lines[0].contains(named),
            "{args:?}: {:?} does not name {named}",
            lines[0]
        );
    }
    // An unreadable kubeconfig is named too.
    let dir = tempfile::tempdir().expect("tempdir");
    let unreadable = dir.path().join("kubeconfig");
    std::fs::write(&unreadable, "{not: [valid").expect("write");
    let (code, stderr) = run_to_exit(&[
        "--node-name=badcfg",
        &format!("--kubeconfig={}", unreadable.display()),
    ]);
    assert!(
        code.is_some_and(|c| c != 0) && stderr.contains(&*unreadable.to_string_lossy()),
        "{stderr}"
    );
    assert!(
        nodes()
            .await
            .get_opt("badcfg")
            .await
            .expect("get")
            .is_none(),
        "a node was registered"
    );
}

/// A long-running multitool pod on `node`.
fn ticker_on(node: &str, name: &str, grace: i64) -> serde_json::Value {
    krustlet_e2e::pods::for_node(
        serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "terminationGracePeriodSeconds": grace,
                "containers": [{"name": "tick", "image": krustlet_e2e::workloads::multitool(), "args": ["tick", "0", "500"]}]
            }
        }),
        node,
    )
}

#[tokio::test]
async fn sigterm_with_running_pods_reports_their_final_status_and_exits_zero() {
    use krustlet_e2e::pods::{create, wait_for, wait_for_phase};
    let mut node =
        KrustletNode::start(KRUSTLET, "drain", &["--shutdown-grace-period=10s"]).expect("start");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready");
    let ns = krustlet_e2e::TestNamespace::new("drain")
        .await
        .expect("namespace");
    let pods = ns.api::<k8s_openapi::api::core::v1::Pod>();
    for name in ["a", "b"] {
        create(&pods, ticker_on(node.name(), name, 3))
            .await
            .expect("create");
    }
    for name in ["a", "b"] {
        wait_for_phase(&pods, name, "Running", Duration::from_secs(120))
            .await
            .expect("Running");
    }
    let signalled = Instant::now();
    node.terminate(Duration::from_secs(30))
        .await
        .expect("clean exit after SIGTERM");
    eprintln!("node exited {:?} after SIGTERM", signalled.elapsed());
    for name in ["a", "b"] {
        let pod = wait_for(
            &pods,
            name,
            Duration::from_secs(10),
            "terminated by node shutdown",
            |p| p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Terminated"),
        )
        .await
        .expect("final status");
        let status = pod.status.expect("status");
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        let tick = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .next()
            .expect("container");
        assert!(
            tick.state.and_then(|s| s.terminated).is_some(),
            "container not terminated"
        );
    }
}

#[tokio::test]
async fn pods_deleted_while_the_node_was_down_are_cleaned_up_on_return() {
    use krustlet_e2e::pods::{create, wait_for_phase, wait_gone};
    let mut node = KrustletNode::start(KRUSTLET, "away", &[]).expect("start");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready");
    let ns = krustlet_e2e::TestNamespace::new("away")
        .await
        .expect("namespace");
    let pods = ns.api::<k8s_openapi::api::core::v1::Pod>();
    create(&pods, ticker_on(node.name(), "left-behind", 30))
        .await
        .expect("create");
    wait_for_phase(&pods, "left-behind", "Running", Duration::from_secs(120))
        .await
        .expect("Running");
    node.signal(Signal::SIGKILL).expect("kill");
    node.wait_exit(Duration::from_secs(10))
        .await
        .expect("exited");
    pods.delete("left-behind", &DeleteParams::default())
        .await
        .expect("delete");
    // The API server keeps it (terminating) until its kubelet confirms.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(pods.get_opt("left-behind").await.expect("get").is_some());
    node.restart().expect("restart");
    let took = wait_gone(&pods, "left-behind", Duration::from_secs(90))
        .await
        .expect("cleaned up");
    eprintln!("pod deleted while away was gone {took:?} after restart");
}

#[tokio::test]
async fn a_node_with_a_tight_api_rate_limit_still_runs_pods_and_keeps_its_lease() {
    use krustlet_e2e::pods::{create, for_node};
    // Far below the default 50/100: pod status and events queue behind it, while the Lease and
    // node status go through the heartbeat client, which has no limit (upstream's
    // `heartbeatClientConfig.QPS = -1`).
    let node = KrustletNode::start(KRUSTLET, "qps", &["--kube-api-qps=1", "--kube-api-burst=1"])
        .expect("start");
    node.wait_ready("True", Duration::from_secs(90))
        .await
        .expect("Ready");
    let ns = krustlet_e2e::TestNamespace::new("qps")
        .await
        .expect("namespace");
    let pods = ns.api::<k8s_openapi::api::core::v1::Pod>();
    // Ten pods cost the node about 50 limited writes (status patches, events): 50 s at 1/s.
    const PODS: usize = 10;
    for i in 0..PODS {
        create(
            &pods,
            for_node(
                serde_json::json!({
                    "metadata": {"name": format!("hello-{i}")},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": krustlet_e2e::workloads::multitool(), "args": ["hello"]}]
                    }
                }),
                node.name(),
            ),
        )
        .await
        .expect("create");
    }
    let client = cluster::client().await.expect("client");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    // The lease is renewed every 10 s (a quarter of its 40 s); watch it while the pods run.
    let started = Instant::now();
    let (mut last_renew, mut last_change, mut longest_gap) = (None, started, Duration::ZERO);
    let (mut done, mut not_ready) = (0, Vec::new());
    while started.elapsed() < Duration::from_secs(240) {
        let ready = ready_status(&nodes.get(node.name()).await.expect("node"));
        if ready.as_deref() != Some("True") {
            not_ready.push((started.elapsed(), ready));
        }
        let renew = leases
            .get(node.name())
            .await
            .expect("lease")
            .spec
            .and_then(|s| s.renew_time);
        if renew != last_renew {
            longest_gap = longest_gap.max(last_change.elapsed());
            (last_renew, last_change) = (renew, Instant::now());
        }
        done = pods
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
            .count();
        if done == PODS {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    longest_gap = longest_gap.max(last_change.elapsed());
    eprintln!(
        "{done} of {PODS} pods Succeeded in {:?} at 1 write/s; longest lease renewal gap {longest_gap:?}",
        started.elapsed()
    );
    assert_eq!(done, PODS, "every pod Succeeded under --kube-api-qps=1");
    // Renewals every 10 s, so a gap near the 40 s lease would mean they queued behind pod writes.
    assert!(
        longest_gap < Duration::from_secs(25),
        "the lease went {longest_gap:?} without renewal under --kube-api-qps=1"
    );
    assert!(not_ready.is_empty(), "the node left Ready: {not_ready:?}");
}
