//! Images: the four layouts, platforms, pull secrets, digest verification, the compile cache,
//! crash safety of pulls, deduplicated downloads, image GC, insecure registries.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Secret, ServiceAccount};
use krustlet_e2e::node::shared_node;
use krustlet_e2e::pods::{
    container_status, create, for_node, wait_for, wait_for_phase, waiting, waiting_with,
};
use krustlet_e2e::registry;
use krustlet_e2e::{KrustletNode, TestNamespace, cluster, kubectl};
use kube::api::{Api, ListParams, PostParams};
use oci_client::secrets::RegistryAuth;
use serde_json::json;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(120);

/// The multitool's bytes.
fn multitool() -> Vec<u8> {
    let path = krustlet_test_workloads::multitool().unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(path).expect("read multitool")
}

/// The multitool under a digest no other test (or earlier run) has used.
fn unique_multitool(padding: usize) -> Vec<u8> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "e2e-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    registry::padded(multitool(), &name, padding)
}

/// `<registry>/images/<name>-<pid>:v1`.
fn reference(registry: &str, name: &str) -> String {
    tagged(registry, name, "v1")
}

/// `<registry>/images/<name>-<pid>:<tag>` (an index and its images share one repository).
fn tagged(registry: &str, name: &str, tag: &str) -> String {
    format!("{registry}/images/{name}-{}:{tag}", std::process::id())
}

fn pod(name: &str, image: &str, node: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut container = json!({"name": "main", "image": image});
    if let (Some(c), Some(extra)) = (container.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    for_node(
        json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [container]
            }
        }),
        node,
    )
}

fn logs(ns: &TestNamespace, pod: &str) -> String {
    kubectl(&["logs", "-n", ns.name(), pod, "-c", "main"]).expect("kubectl logs")
}

/// (reason, message) of the events about `pod`.
async fn events(ns: &TestNamespace, pod: &str) -> Vec<(String, String)> {
    let list = ns
        .api::<Event>()
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
        .await
        .expect("events");
    list.items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

async fn started_node(prefix: &str, args: &[&str]) -> KrustletNode {
    let node = KrustletNode::start(KRUSTLET, prefix, args).expect("start krustlet");
    node.wait_ready("True", LONG).await.expect("node Ready");
    node
}

/// How many lines of the node's log contain every one of `parts`.
fn count_log_lines(node: &KrustletNode, parts: &[&str]) -> usize {
    node.log()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

#[tokio::test]
async fn formats_1_to_4_run_to_succeeded() {
    let info = cluster();
    let node = shared_node(KRUSTLET);
    let ns = TestNamespace::new("formats").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let wasm = multitool();

    // 1: the CNCF wasm artifact; 2: wasm-to-oci.
    let f1 = reference(&info.registry, "format1");
    registry::push_wasm(&f1, wasm.clone(), &RegistryAuth::Anonymous)
        .await
        .expect("push format 1");
    let f2 = reference(&info.registry, "format2");
    registry::push_wasm_to_oci(&f2, wasm.clone())
        .await
        .expect("push format 2");
    // 3: an OCI image for wasi/wasm, its program named by the entrypoint, two wasm files.
    let layer = registry::tar_gz(&[
        ("app/multitool.wasm", &wasm),
        ("bin/tool.wasm", &wasm),
        ("etc/readme.txt", b"not wasm"),
    ])
    .expect("layer");
    let f3 = reference(&info.registry, "format3");
    registry::push_oci_image(
        &f3,
        vec![layer.clone()],
        ("wasi", "wasm"),
        &["/app/multitool.wasm"],
        &["print", "from-cmd"],
        &RegistryAuth::Anonymous,
    )
    .await
    .expect("push format 3");
    // The same image again in the index's repository.
    let f3_pushed = registry::push_oci_image(
        &tagged(&info.registry, "format4", "wasm"),
        vec![layer.clone()],
        ("wasi", "wasm"),
        &["/app/multitool.wasm"],
        &["print", "from-cmd"],
        &RegistryAuth::Anonymous,
    )
    .await
    .expect("push format 3 for the index");
    // 4: an index with a Linux image and the wasm one.
    let linux = registry::push_oci_image(
        &tagged(&info.registry, "format4", "linux"),
        vec![registry::tar_gz(&[("bin/sh", b"\x7fELF")]).expect("layer")],
        ("linux", "amd64"),
        &["/bin/sh"],
        &[],
        &RegistryAuth::Anonymous,
    )
    .await
    .expect("push linux image");
    let f4 = reference(&info.registry, "format4");
    registry::push_index(
        &f4,
        &[
            (linux, "linux", "amd64"),
            (f3_pushed.clone(), "wasi", "wasm"),
        ],
    )
    .await
    .expect("push index");

    let cases: Vec<(&str, &str, serde_json::Value, &str)> = vec![
        (
            "f1",
            &f1,
            json!({"args": ["print", "format one"]}),
            "format one",
        ),
        (
            "f2",
            &f2,
            json!({"args": ["print", "format two"]}),
            "format two",
        ),
        ("f3-cmd", &f3, json!({}), "from-cmd"),
        (
            "f3-args",
            &f3,
            json!({"args": ["print", "from-args"]}),
            "from-args",
        ),
        (
            "f3-command",
            &f3,
            json!({"command": ["/bin/tool.wasm", "args"]}),
            "argv[0]=/bin/tool.wasm",
        ),
        ("f4", &f4, json!({}), "from-cmd"),
    ];
    for (name, image, extra, _) in &cases {
        create(&pods, pod(name, image, node, extra.clone()))
            .await
            .expect("create");
    }
    for (name, image, _, output) in &cases {
        let done = wait_for_phase(&pods, name, "Succeeded", LONG)
            .await
            .unwrap_or_else(|e| panic!("{image}: {e:#}"));
        let out = logs(&ns, name);
        assert!(out.contains(output), "{name} ({image}) printed {out:?}");
        let status = container_status(&done, "main").expect("status");
        assert!(
            status.image_id.contains("@sha256:"),
            "{name}: imageID {:?}",
            status.image_id
        );
    }
    let f4_status = pods.get("f4").await.expect("f4");
    let image_id = &container_status(&f4_status, "main")
        .expect("status")
        .image_id;
    assert!(
        image_id.starts_with(&format!("{}/images/format4-", info.registry)),
        "{image_id}"
    );

    // Pulled events carry size and duration, as the kubelet's do.
    let pulled: Vec<String> = events(&ns, "f1")
        .await
        .into_iter()
        .filter(|(r, _)| r == "Pulled")
        .map(|(_, m)| m)
        .collect();
    let fresh = pulled.iter().any(|m| {
        m.starts_with(&format!("Successfully pulled image \"{f1}\" in "))
            && m.ends_with(&format!("Image size: {} bytes.", wasm.len()))
    });
    let cached = pulled
        .iter()
        .any(|m| m.contains("already present on machine"));
    assert!(fresh || cached, "Pulled events: {pulled:?}");

    // The node lists its images as kubelets do: repo@digest and the tag, with a size.
    let nodes: Api<Node> = Api::all(ns.client());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = nodes.get(node).await.expect("node");
        let images = n.status.and_then(|s| s.images).unwrap_or_default();
        let listed = images.iter().find(|i| {
            i.names.as_ref().is_some_and(|names| {
                names.contains(&f3) && names.iter().any(|x| x.contains("@sha256:"))
            })
        });
        if let Some(listed) = listed {
            assert_eq!(
                listed.size_bytes,
                Some(f3_pushed.content_size),
                "{listed:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node status images do not list {f3}: {images:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn linux_images_back_off_naming_their_platform() {
    let info = cluster();
    let node = shared_node(KRUSTLET);
    let ns = TestNamespace::new("linux").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let sh = registry::tar_gz(&[("bin/sh", b"\x7fELF")]).expect("layer");
    let amd64 = registry::push_oci_image(
        &tagged(&info.registry, "kube-proxy-like", "amd64"),
        vec![sh.clone()],
        ("linux", "amd64"),
        &["/bin/sh"],
        &[],
        &RegistryAuth::Anonymous,
    )
    .await
    .expect("push");
    let arm64 = registry::push_oci_image(
        &tagged(&info.registry, "kube-proxy-like", "arm64"),
        vec![sh],
        ("linux", "arm64"),
        &["/bin/sh"],
        &[],
        &RegistryAuth::Anonymous,
    )
    .await
    .expect("push");
    let index = reference(&info.registry, "kube-proxy-like");
    registry::push_index(
        &index,
        &[(amd64, "linux", "amd64"), (arm64, "linux", "arm64")],
    )
    .await
    .expect("index");
    let single = tagged(&info.registry, "kube-proxy-like", "amd64");
    create(&pods, pod("index", &index, node, json!({})))
        .await
        .expect("create");
    create(&pods, pod("single", &single, node, json!({})))
        .await
        .expect("create");
    let invalid = format!("{}/images/UPPER/case:v1", info.registry);
    create(&pods, pod("invalid", &invalid, node, json!({})))
        .await
        .expect("create");

    for (name, platform) in [
        ("index", "linux/amd64, linux/arm64"),
        ("single", "linux/amd64"),
    ] {
        let p = wait_for(&pods, name, LONG, "ImagePullBackOff", |p| {
            waiting_with(p, "main", "ImagePullBackOff")
        })
        .await
        .expect("ImagePullBackOff");
        let message = waiting(&p, "main")
            .and_then(|w| w.message.clone())
            .unwrap_or_default();
        assert!(
            message.contains(&format!("is for {platform}, not wasi/wasm"))
                && message.contains("Krustlet runs only WebAssembly images"),
            "{name}: {message}"
        );
        // Events are published in the background: they may land after the status.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let failed = events(&ns, name)
                .await
                .into_iter()
                .any(|(r, m)| r == "Failed" && m.contains(platform));
            if failed {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: no Failed event naming {platform}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    wait_for(&pods, "invalid", LONG, "InvalidImageName", |p| {
        waiting_with(p, "main", "InvalidImageName")
    })
    .await
    .expect("InvalidImageName");

    // Back-off, not a tight loop: over 15 s, at most two pull attempts (at 0 s and 10 s).
    tokio::time::sleep(Duration::from_secs(15)).await;
    let pulls = events(&ns, "single")
        .await
        .into_iter()
        .filter(|(r, _)| r == "Pulling")
        .count();
    assert!(pulls <= 3, "{pulls} Pulling events in about 15 s");
}

#[tokio::test]
async fn private_images_run_with_pull_secrets_only() {
    let info = cluster();
    let node = shared_node(KRUSTLET);
    let ns = TestNamespace::new("private").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let image = reference(&info.auth_registry, "private");
    let auth = RegistryAuth::Basic(
        info.auth_registry_user.clone(),
        info.auth_registry_password.clone(),
    );
    registry::push_wasm(&image, multitool(), &auth)
        .await
        .expect("push to the htpasswd registry");

    // A dockerconfigjson secret on the pod, and a dockercfg one through a service account.
    let basic = format!(
        "{}:{}",
        info.auth_registry_user, info.auth_registry_password
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(basic);
    let config_json = json!({"auths": {info.auth_registry.clone(): {"auth": encoded}}});
    let cfg = json!({format!("https://{}", info.auth_registry): {
        "username": info.auth_registry_user, "password": info.auth_registry_password}});
    let secrets = ns.api::<Secret>();
    for (name, type_, key, value) in [
        (
            "regcred",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            config_json,
        ),
        ("legacy", "kubernetes.io/dockercfg", ".dockercfg", cfg),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "type": type_,
            "stringData": {key: value.to_string()}
        }))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("create secret");
    }
    let account: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "puller"},
        "imagePullSecrets": [{"name": "legacy"}]
    }))
    .expect("sa");
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &account)
        .await
        .expect("create sa");

    // `Always`: an image another pod pulled with credentials is otherwise reused, as kubelets do.
    create(
        &pods,
        pod(
            "anonymous",
            &image,
            node,
            json!({"args": ["hello"], "imagePullPolicy": "Always"}),
        ),
    )
    .await
    .expect("create");
    let mut with_secret = pod("with-secret", &image, node, json!({"args": ["hello"]}));
    with_secret["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    create(&pods, with_secret).await.expect("create");
    let mut with_sa = pod("with-sa", &image, node, json!({"args": ["hello"]}));
    with_sa["spec"]["serviceAccountName"] = json!("puller");
    create(&pods, with_sa).await.expect("create");

    for name in ["with-secret", "with-sa"] {
        wait_for_phase(&pods, name, "Succeeded", LONG)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
    let p = match wait_for(&pods, "anonymous", LONG, "ErrImagePull or back-off", |p| {
        waiting_with(p, "main", "ErrImagePull") || waiting_with(p, "main", "ImagePullBackOff")
    })
    .await
    {
        Ok(p) => p,
        Err(e) => {
            let spec = pods.get("anonymous").await.ok().and_then(|p| p.spec);
            panic!(
                "pull not refused: {e:#}\nspec: {spec:?}\nevents: {:?}",
                events(&ns, "anonymous").await
            )
        }
    };
    let message = waiting(&p, "main")
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("unauthorized") && message.contains(&info.auth_registry),
        "{message}"
    );
}

#[tokio::test]
async fn corrupted_blobs_are_rejected_by_digest() {
    let info = cluster();
    let node = shared_node(KRUSTLET);
    let ns = TestNamespace::new("corrupt").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let wasm = unique_multitool(1024);
    let digest = registry::sha256(&wasm);
    let image = reference(&info.registry, "corrupt");
    registry::push_wasm(&image, wasm, &RegistryAuth::Anonymous)
        .await
        .expect("push");
    // Flip bytes of the stored blob, keeping its size.
    let data = registry::blob_data_path(&info.registry_dir, &digest);
    let mut bytes =
        std::fs::read(&data).unwrap_or_else(|e| panic!("registry storage {}: {e}", data.display()));
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&data, bytes).expect("corrupt the blob");

    create(&pods, pod("corrupt", &image, node, json!({})))
        .await
        .expect("create");
    let p = wait_for(&pods, "corrupt", LONG, "rejected", |p| {
        waiting(p, "main").is_some_and(|w| {
            w.message
                .as_deref()
                .is_some_and(|m| m.contains("digest verification"))
        })
    })
    .await
    .expect("digest check");
    let message = waiting(&p, "main")
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(message.contains(&digest), "{message}");
}

#[tokio::test]
async fn compiled_programs_are_reused_across_pods_and_restarts() {
    let info = cluster();
    let mut node = started_node("compile-cache", &[]).await;
    let ns = TestNamespace::new("compile").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let wasm = unique_multitool(64);
    let digest = registry::sha256(&wasm);
    let image = reference(&info.registry, "compile-cache");
    registry::push_wasm(&image, wasm, &RegistryAuth::Anonymous)
        .await
        .expect("push");

    let node_name = node.name().to_string();
    let run = |name: &'static str| {
        let (pods, image, node_name) = (pods.clone(), image.clone(), node_name.clone());
        async move {
            create(
                &pods,
                pod(name, &image, &node_name, json!({"args": ["hello"]})),
            )
            .await
            .expect("create");
            wait_for_phase(&pods, name, "Succeeded", LONG)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    };
    let compiled =
        |node: &KrustletNode| count_log_lines(node, &["compiled", &digest, "cache miss"]);

    run("first").await;
    assert_eq!(compiled(&node), 1, "first start compiles:\n{}", node.log());
    // A first start runs Winch's code (`--first-start-compiler` defaults to winch); Cranelift
    // compiles the program in the background, for the disk cache and later starts.
    assert_eq!(
        count_log_lines(&node, &["compiled", &digest, "with Winch"]),
        1,
        "{}",
        node.log()
    );
    run("second").await;
    assert_eq!(compiled(&node), 1, "second start compiles nothing");
    assert!(
        count_log_lines(&node, &["compile cache hit (memory) for", &digest]) >= 1,
        "{}",
        node.log()
    );
    node.wait_log(&["compiled", &digest, "with Cranelift"], 1, LONG)
        .await
        .expect("Cranelift compiles it in the background");

    node.terminate(Duration::from_secs(60)).await.expect("stop");
    node.restart().expect("restart");
    node.wait_ready("True", LONG).await.expect("Ready again");
    run("third").await;
    assert_eq!(compiled(&node), 1, "a restarted node compiles nothing");
    assert!(
        count_log_lines(&node, &["compile cache hit (disk) for", &digest]) >= 1,
        "{}",
        node.log()
    );
    // For the record (visible with --nocapture): what compiling and loading took.
    for line in node
        .log()
        .lines()
        .filter(|l| l.contains(&digest) && l.contains("compile"))
    {
        eprintln!("measure: {line}");
    }
}

#[tokio::test]
async fn killing_krustlet_mid_pull_leaves_no_corrupt_blob() {
    let info = cluster();
    let mut node = started_node("mid-pull", &[]).await;
    let ns = TestNamespace::new("midpull").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let wasm = unique_multitool(96 << 20);
    let digest = registry::sha256(&wasm);
    let image = reference(&info.registry, "big");
    registry::push_wasm(&image, wasm, &RegistryAuth::Anonymous)
        .await
        .expect("push");
    create(
        &pods,
        pod("big", &image, node.name(), json!({"args": ["hello"]})),
    )
    .await
    .expect("create");

    let blobs = node.data_dir().join("images/blobs/sha256");
    let hex = digest.trim_start_matches("sha256:").to_string();
    let partial = || {
        std::fs::read_dir(&blobs).is_ok_and(|dir| {
            dir.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{hex}.tmp."))
            })
        })
    };
    // Kill once the download is writing its temporary file (the log line comes a moment
    // before the file exists).
    let deadline = Instant::now() + LONG;
    while !partial() {
        assert!(
            Instant::now() < deadline && !blobs.join(&hex).exists(),
            "no download caught in progress:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.signal(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL");
    node.wait_exit(Duration::from_secs(10)).await.expect("exit");
    let partial = partial();
    assert!(
        partial && !blobs.join(&hex).exists(),
        "the kill did not land mid-download (make the image bigger)"
    );

    node.restart().expect("restart");
    wait_for_phase(&pods, "big", "Succeeded", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.log()));
    for (_, message) in events(&ns, "big")
        .await
        .into_iter()
        .filter(|(r, _)| r == "Pulled")
    {
        eprintln!("measure: {message}");
    }
    let stored = std::fs::read(blobs.join(&hex)).expect("blob stored");
    assert_eq!(
        registry::sha256(&stored),
        digest,
        "the stored blob is whole"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&blobs)
        .expect("blob dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[tokio::test]
async fn twenty_pods_of_one_new_image_download_it_once() {
    let info = cluster();
    let node = started_node("dedup", &[]).await;
    let ns = TestNamespace::new("dedup").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let wasm = unique_multitool(4 << 20);
    let digest = registry::sha256(&wasm);
    // `:latest`, so every pod's policy is Always and each resolves the reference itself.
    let image = format!(
        "{}/images/dedup-{}:latest",
        info.registry,
        std::process::id()
    );
    registry::push_wasm(&image, wasm, &RegistryAuth::Anonymous)
        .await
        .expect("push");
    let names: Vec<String> = (0..20).map(|i| format!("dedup-{i}")).collect();
    futures::future::try_join_all(names.iter().map(|name| {
        create(
            &pods,
            pod(name, &image, node.name(), json!({"args": ["hello"]})),
        )
    }))
    .await
    .expect("create 20 pods");
    for name in &names {
        wait_for_phase(&pods, name, "Succeeded", LONG)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
    assert_eq!(
        count_log_lines(&node, &["downloading blob", &digest]),
        1,
        "{}",
        node.log()
    );
}

#[tokio::test]
async fn image_gc_removes_unused_images_and_keeps_used_ones() {
    let info = cluster();
    // Any disk use is over 1 %: every unused image goes at once.
    let node = started_node(
        "image-gc",
        &[
            "--image-gc-high-threshold=1",
            "--image-gc-low-threshold=0",
            "--image-minimum-gc-age=0s",
        ],
    )
    .await;
    let ns = TestNamespace::new("imagegc").await.expect("namespace");
    let pods = ns.api::<Pod>();
    let (used, unused) = (unique_multitool(64), unique_multitool(64));
    let (used_digest, unused_digest) = (registry::sha256(&used), registry::sha256(&unused));
    let (used_ref, unused_ref) = (
        reference(&info.registry, "gc-used"),
        reference(&info.registry, "gc-unused"),
    );
    registry::push_wasm(&used_ref, used, &RegistryAuth::Anonymous)
        .await
        .expect("push");
    registry::push_wasm(&unused_ref, unused, &RegistryAuth::Anonymous)
        .await
        .expect("push");
    create(
        &pods,
        pod(
            "runs",
            &used_ref,
            node.name(),
            json!({"args": ["sleep", "600"]}),
        ),
    )
    .await
    .expect("create");
    create(
        &pods,
        pod("done", &unused_ref, node.name(), json!({"args": ["hello"]})),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "runs", "Running", LONG)
        .await
        .expect("Running");
    wait_for_phase(&pods, "done", "Succeeded", LONG)
        .await
        .expect("Succeeded");

    let blob = |d: &str| {
        node.data_dir()
            .join("images/blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while blob(&unused_digest).exists() {
        assert!(
            Instant::now() < deadline,
            "unused image not collected:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        blob(&used_digest).exists(),
        "the running pod's image was collected"
    );
    let nodes: Api<Node> = Api::all(ns.client());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let images = nodes
            .get(node.name())
            .await
            .expect("node")
            .status
            .and_then(|s| s.images)
            .unwrap_or_default();
        let names: Vec<String> = images
            .into_iter()
            .flat_map(|i| i.names.unwrap_or_default())
            .collect();
        if names.contains(&used_ref) && !names.contains(&unused_ref) {
            break;
        }
        assert!(Instant::now() < deadline, "node status images: {names:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn insecure_registries_need_the_flag() {
    let info = cluster();
    let ip = kubelet::node::host::primary_ip();
    assert!(
        !ip.is_loopback(),
        "prerequisite missing: a non-loopback IPv4 address on this host (to reach a registry that is not on loopback)"
    );
    // A forwarder on the non-loopback address makes the loopback registry a remote one.
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .expect("bind forwarder");
    let remote = format!("{ip}:{}", listener.local_addr().expect("addr").port());
    let target = info.registry.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let image = reference(&info.registry, "insecure");
    registry::push_wasm(&image, multitool(), &RegistryAuth::Anonymous)
        .await
        .expect("push");
    let remote_image = image.replacen(&info.registry, &remote, 1);

    let secure = started_node("secure", &[]).await;
    let insecure_flag = format!("--insecure-registry={remote}");
    let insecure = started_node("insecure", &[&insecure_flag]).await;
    let ns = TestNamespace::new("insecure").await.expect("namespace");
    let pods = ns.api::<Pod>();
    create(
        &pods,
        pod(
            "tls",
            &remote_image,
            secure.name(),
            json!({"args": ["hello"]}),
        ),
    )
    .await
    .expect("create");
    create(
        &pods,
        pod(
            "plain",
            &remote_image,
            insecure.name(),
            json!({"args": ["hello"]}),
        ),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "plain", "Succeeded", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", insecure.log()));
    let p = wait_for(&pods, "tls", LONG, "ErrImagePull", |p| {
        waiting_with(p, "main", "ErrImagePull") || waiting_with(p, "main", "ImagePullBackOff")
    })
    .await
    .expect("TLS required");
    let message = waiting(&p, "main")
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(message.contains(&remote), "{message}");
}
