//! What an operator's monitoring tools see: cAdvisor's `container_*` series on
//! `/metrics/cadvisor` with the kubelet's labels, exec probe results on `/metrics/probes`, and
//! every metrics endpoint passing Prometheus' linter (`promlint`, what `promtool check metrics`
//! runs).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use krustlet_e2e::kubelet_api::kubelet_get;
use krustlet_e2e::pods::{create, for_node, wait_for_phase};
use krustlet_e2e::{KrustletNode, TestNamespace, cluster, kubectl, workloads};

use crate::KRUSTLET;
use crate::api::{parse_prometheus, sample_value, wait_schedulable};

/// Runs `.bin/promlint` (built by `test/cluster/build.sh` from test/tools) on `text`; returns
/// its complaints, empty when the exposition is clean.
fn promlint(text: &str) -> String {
    let tool = cluster::bin_dir().join("promlint");
    assert!(
        tool.exists(),
        "prerequisite missing: {} (Prometheus' linter); build it with `test/cluster/build.sh`",
        tool.display()
    );
    let mut child = Command::new(&tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promlint");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promlint");
    let out = child.wait_with_output().expect("promlint output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn cadvisor_series_carry_kubelet_labels_and_every_metrics_endpoint_passes_promlint() {
    let node = KrustletNode::start(KRUSTLET, "cadvisor", &[]).expect("node");
    wait_schedulable(&node).await;
    let ns = TestNamespace::new("cadvisor").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let image = workloads::multitool();
    let pod = for_node(
        serde_json::json!({
            "metadata": {"name": "spin"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main", "image": image, "args": ["spin", "0"],
                    "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}
                }]
            }
        }),
        node.name(),
    );
    create(&pods, pod).await.expect("create");
    let running = wait_for_phase(&pods, "spin", "Running", Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}; node log:\n{}", node.log()));
    let uid = running.metadata.uid.clone().expect("uid");
    let id = running
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].container_id.clone())
        .expect("containerID");
    let run_id = id.trim_start_matches("wasi://");
    // Let the spinning guest run into its CPU limit for a few periods.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let text = kubelet_get(&node, "/metrics/cadvisor").await;
    let scrape = parse_prometheus(&text);
    let labels = [
        ("container", "main"),
        ("namespace", ns.name()),
        ("pod", "spin"),
        ("image", image.as_str()),
        ("name", run_id),
    ];
    let cpu = sample_value(&scrape, "container_cpu_usage_seconds_total", &labels)
        .unwrap_or_else(|| panic!("no container_cpu_usage_seconds_total for {labels:?}:\n{text}"));
    assert!(cpu > 0.0, "spinning guest used no CPU:\n{text}");
    assert!(
        sample_value(&scrape, "container_memory_working_set_bytes", &labels) > Some(0.0),
        "{text}"
    );
    assert!(
        sample_value(&scrape, "container_memory_rss", &labels) > Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample_value(&scrape, "container_spec_memory_limit_bytes", &labels),
        Some(64.0 * 1024.0 * 1024.0)
    );
    let periods = sample_value(&scrape, "container_cpu_cfs_periods_total", &labels).unwrap_or(0.0);
    let throttled = sample_value(
        &scrape,
        "container_cpu_cfs_throttled_periods_total",
        &labels,
    )
    .unwrap_or(0.0);
    let throttled_seconds = sample_value(
        &scrape,
        "container_cpu_cfs_throttled_seconds_total",
        &labels,
    )
    .unwrap_or(0.0);
    eprintln!(
        "spin under 250m: {cpu:.2} s CPU, {throttled}/{periods} periods throttled, \
         {throttled_seconds:.2} s throttled"
    );
    assert!(
        throttled > 0.0 && throttled <= periods && throttled_seconds > 0.0,
        "a busy loop under limits.cpu=250m is throttled in most periods:\n{text}"
    );
    assert!(
        sample_value(&scrape, "container_fs_usage_bytes", &labels).is_some(),
        "{text}"
    );
    assert!(
        sample_value(&scrape, "container_last_seen", &labels) > Some(0.0),
        "{text}"
    );
    let expected_id = format!("/kubepods/pod{uid}/{run_id}");
    assert!(
        sample_value(&scrape, "container_last_seen", &[("id", &expected_id)]).is_some(),
        "no series with id {expected_id}:\n{text}"
    );
    // The pod-level and root series that dashboards aggregate over.
    assert!(
        sample_value(
            &scrape,
            "container_memory_working_set_bytes",
            &[
                ("container", ""),
                ("pod", "spin"),
                ("id", &format!("/kubepods/pod{uid}"))
            ]
        ) > Some(0.0),
        "{text}"
    );
    assert!(
        sample_value(&scrape, "container_cpu_usage_seconds_total", &[("id", "/")]) > Some(0.0),
        "{text}"
    );
    assert!(sample_value(&scrape, "machine_memory_bytes", &[]) > Some(0.0));

    for path in ["/metrics", "/metrics/cadvisor", "/metrics/resource"] {
        let text = kubelet_get(&node, path).await;
        let problems = promlint(&text);
        assert!(
            problems.is_empty(),
            "promlint finds problems in {path}:\n{problems}\n--- exposition:\n{text}"
        );
    }
}

/// The row of `kubectl top` output whose first column is `name`, split into columns.
fn top_row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name))
}

/// Millicores from a `kubectl top` CPU column (`250m`, or whole cores such as `1`).
fn millicores(cpu: &str) -> f64 {
    match cpu.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or(f64::NAN),
        None => cpu.parse::<f64>().map_or(f64::NAN, |c| c * 1000.0),
    }
}

#[tokio::test]
async fn kubectl_top_shows_the_node_and_a_spinning_pod_at_its_cpu_limit() {
    let node = KrustletNode::start(KRUSTLET, "top", &[]).expect("node");
    wait_schedulable(&node).await;
    let started = std::time::Instant::now();
    let ns = TestNamespace::new("top").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let spin = for_node(
        serde_json::json!({
            "metadata": {"name": "spin"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main", "image": workloads::multitool(), "args": ["spin", "0"],
                    "resources": {"limits": {"cpu": "250m"}}
                }]
            }
        }),
        node.name(),
    );
    create(&pods, spin).await.expect("create");
    wait_for_phase(&pods, "spin", "Running", Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}; node log:\n{}", node.log()));

    // metrics-server scrapes every 10 s and needs two scrapes for a rate.
    let deadline = started + Duration::from_secs(90);
    let (mut node_row, mut pod_row, mut all_row) = (None, None, None);
    let (mut last, mut last_node) = (String::new(), String::new());
    while std::time::Instant::now() < deadline {
        match kubectl(&["top", "node", node.name(), "--no-headers"]) {
            Ok(out) => node_row = node_row.or(top_row(&out, node.name())),
            Err(e) => last_node = e.to_string(),
        }
        match kubectl(&["top", "pod", "-A", "--no-headers"]) {
            Ok(out) => {
                // -A prints the namespace first.
                all_row = out
                    .lines()
                    .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                    .find(|c| c.len() >= 4 && c[0] == ns.name() && c[1] == "spin");
                if let Some(row) = &all_row {
                    let cpu = millicores(&row[2]);
                    // The first rate may span the container's start; wait for a settled one.
                    if (200.0..=300.0).contains(&cpu) {
                        pod_row = Some(row.clone());
                    }
                }
                last = out;
            }
            Err(e) => last = e.to_string(),
        }
        if node_row.is_some() && pod_row.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let node_row = node_row.unwrap_or_else(|| {
        panic!(
            "`kubectl top node` did not list {} within 90 s of its start (is metrics-server \
             running? see the cluster's logs/metrics-server.log); last error: {last_node}",
            node.name()
        )
    });
    eprintln!("kubectl top node: {node_row:?}; top pod -A: {all_row:?}");
    assert!(millicores(&node_row[1]) > 0.0, "{node_row:?}");
    assert!(
        node_row[3].ends_with("Mi") || node_row[3].ends_with("Gi"),
        "{node_row:?}"
    );
    let pod_row = pod_row.unwrap_or_else(|| {
        panic!("`kubectl top pod -A` did not show spin at 200-300m (limit 250m) within 90 s; last row {all_row:?}; last output: {last}")
    });
    assert!(
        pod_row[3].ends_with("Mi") || pod_row[3].ends_with("Ki"),
        "{pod_row:?}"
    );
}

#[tokio::test]
async fn the_api_servers_node_proxy_reaches_a_node_with_a_real_address() {
    let node = KrustletNode::start_addressed(KRUSTLET, "proxy", &[])
        .unwrap_or_else(|e| panic!("cannot give the node an address: {e:#}"));
    assert!(!node.ip().is_loopback(), "{}", node.ip());
    wait_schedulable(&node).await;
    let path = format!("/api/v1/nodes/{}/proxy/stats/summary", node.name());
    // The API server proxies with the node's InternalIP; the serving certificate may still be
    // the self-signed one for a moment, which the API server does not mind.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let summary = loop {
        match kubectl(&["get", "--raw", &path]) {
            Ok(out) => break out,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("retrying {path}: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("kubectl get --raw {path}: {e}; node log:\n{}", node.log()),
        }
    };
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("summary JSON");
    assert_eq!(summary["node"]["nodeName"], node.name());
    let cadvisor = kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/metrics/cadvisor", node.name()),
    ])
    .expect("cadvisor through the proxy");
    assert!(cadvisor.contains("# TYPE container_cpu_usage_seconds_total counter"));
}

#[tokio::test]
async fn container_logs_are_where_host_log_shippers_look() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pods_dir, links_dir) = (dir.path().join("pods"), dir.path().join("containers"));
    let node = KrustletNode::start(
        KRUSTLET,
        "varlog",
        &[
            &format!("--pod-logs-dir={}", pods_dir.display()),
            &format!("--container-log-links-dir={}", links_dir.display()),
        ],
    )
    .expect("node");
    wait_schedulable(&node).await;
    let ns = TestNamespace::new("varlog").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let pod = for_node(
        serde_json::json!({
            "metadata": {"name": "hello"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": workloads::multitool(),
                                "args": ["print", "shipped"]}]
            }
        }),
        node.name(),
    );
    create(&pods, pod).await.expect("create");
    let done = wait_for_phase(&pods, "hello", "Succeeded", Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}; node log:\n{}", node.log()));
    let uid = done.metadata.uid.clone().expect("uid");
    let id = done
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].container_id.clone())
        .expect("containerID");
    let file = pods_dir.join(format!("{}_hello_{uid}/main/0.log", ns.name()));
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}; node log:\n{}", file.display(), node.log()));
    assert!(text.contains(" stdout F shipped"), "{text}");
    let link = links_dir.join(format!(
        "hello_{}_main-{}.log",
        ns.name(),
        id.trim_start_matches("wasi://")
    ));
    assert_eq!(
        std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display())),
        file
    );
    // `kubectl logs` reads the same files.
    assert_eq!(
        kubectl(&["logs", "-n", ns.name(), "hello"]).expect("kubectl logs"),
        "shipped\n"
    );

    pods.delete("hello", &Default::default())
        .await
        .expect("delete");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::symlink_metadata(&link).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the link outlived its pod by a minute: {}",
            link.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!file.exists(), "the pod's log stays after deletion");
}

/// The value of the `prober_probe_total` sample with exactly these labels, if present.
fn probe_total(text: &str, labels: &str) -> Option<f64> {
    let prefix = format!("prober_probe_total{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_probes_counts_exec_probe_results_and_passes_promlint() {
    let node = KrustletNode::start(KRUSTLET, "probes", &[]).expect("node");
    wait_schedulable(&node).await;
    let ns = TestNamespace::new("probes").await.expect("namespace");
    let pods = ns.api::<Pod>();
    // Liveness always passes; readiness always fails (the pod stays unready, never restarts).
    let pod = for_node(
        serde_json::json!({
            "metadata": {"name": "probed"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main", "image": workloads::multitool(), "args": ["sleep", "600"],
                    "livenessProbe": {"exec": {"command": ["multitool", "exit", "0"]}, "periodSeconds": 1},
                    "readinessProbe": {"exec": {"command": ["multitool", "exit", "1"]}, "periodSeconds": 1}
                }]
            }
        }),
        node.name(),
    );
    create(&pods, pod).await.expect("create");
    let running = wait_for_phase(&pods, "probed", "Running", Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}; node log:\n{}", node.log()));
    let uid = running.metadata.uid.clone().expect("uid");
    let labels = |probe: &str, result: &str| {
        format!(
            "probe_type=\"{probe}\",result=\"{result}\",container=\"main\",pod=\"probed\",namespace=\"{}\",pod_uid=\"{uid}\"",
            ns.name()
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = kubelet_get(&node, "/metrics/probes").await;
        let live = probe_total(&text, &labels("Liveness", "successful"));
        let unready = probe_total(&text, &labels("Readiness", "failed"));
        if live >= Some(2.0) && unready >= Some(2.0) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no probe counts on /metrics/probes:\n{text}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(text.contains("# TYPE prober_probe_total counter"), "{text}");
    let problems = promlint(&text);
    assert!(
        problems.is_empty(),
        "promlint finds problems in /metrics/probes:\n{problems}\n--- exposition:\n{text}"
    );
}
