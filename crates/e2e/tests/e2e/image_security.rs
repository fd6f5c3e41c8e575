//! Image security (issue 15, findings 3, 5 and 6), each hole attacked as a tenant or a registry
//! would: references that once shared a store record, private images reused without their pull
//! secret, a gzip bomb, and a tampered compile cache entry.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use krustlet_e2e::node::shared_node;
use krustlet_e2e::pods::{create, for_node, wait_for, wait_for_event, wait_for_phase, waiting};
use krustlet_e2e::registry;
use krustlet_e2e::{KrustletNode, TestNamespace, cluster, kubectl};
use kube::api::{ListParams, PostParams};
use oci_client::secrets::RegistryAuth;
use serde_json::json;

use crate::KRUSTLET;

const LONG: Duration = Duration::from_secs(180);

fn multitool() -> Vec<u8> {
    let path = krustlet_test_workloads::multitool().unwrap_or_else(|e| panic!("{e}"));
    std::fs::read(path).expect("read multitool")
}

/// The multitool under a digest of its own (a custom section named after `tag`): other code.
fn distinct_multitool(tag: &str) -> Vec<u8> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{tag}-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    registry::padded(multitool(), &name, 64)
}

/// A wasi/wasm image (format 3) whose default command prints `says`.
async fn push_printer(reference: &str, tag: &str, says: &str, auth: &RegistryAuth) -> String {
    let wasm = distinct_multitool(tag);
    let digest = registry::sha256(&wasm);
    let layer = registry::tar_gz(&[("app.wasm", &wasm)]).expect("layer");
    registry::push_oci_image(
        reference,
        vec![layer],
        ("wasi", "wasm"),
        &["/app.wasm"],
        &["print", says],
        auth,
    )
    .await
    .unwrap_or_else(|e| panic!("pushing {reference}: {e:#}"));
    digest
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

/// Runs `pod` to Succeeded and returns what it printed.
async fn run_to_end(ns: &TestNamespace, manifest: serde_json::Value) -> String {
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let pods = ns.api::<Pod>();
    create(&pods, manifest).await.expect("create");
    if let Err(e) = wait_for_phase(&pods, &name, "Succeeded", LONG).await {
        panic!("{name}: {e:#}\nevents: {:?}", events(ns, &name).await)
    }
    logs(ns, &name)
}

/// Waits for the pull of `name` to be refused; returns (reason, message).
async fn pull_refused(ns: &TestNamespace, name: &str) -> (String, String) {
    let pods = ns.api::<Pod>();
    let refused = |p: &Pod| {
        waiting(p, "main").is_some_and(|w| {
            matches!(
                w.reason.as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull")
            )
        })
    };
    let p = match wait_for(&pods, name, LONG, "a refused pull", refused).await {
        Ok(p) => p,
        Err(e) => panic!(
            "{name}: {e:#}\nlogs: {}\nevents: {:?}",
            kubectl(&["logs", "-n", ns.name(), name]).unwrap_or_default(),
            events(ns, name).await
        ),
    };
    let w = waiting(&p, "main").expect("waiting");
    (
        w.reason.clone().unwrap_or_default(),
        w.message.clone().unwrap_or_default(),
    )
}

#[tokio::test]
async fn aliasing_references_each_run_their_own_code() {
    let info = cluster();
    let node = shared_node(KRUSTLET);
    // `/` and `_` were one record once: team/app:v1 and team_app:v1 ran the same code.
    let (slash, underscore) = (
        format!("{}/team/app:v1", info.registry),
        format!("{}/team_app:v1", info.registry),
    );
    push_printer(
        &slash,
        "alias-a",
        "code of tenant A",
        &RegistryAuth::Anonymous,
    )
    .await;
    push_printer(
        &underscore,
        "alias-b",
        "code of tenant B",
        &RegistryAuth::Anonymous,
    )
    .await;
    let tenant_a = TestNamespace::new("alias-a").await.expect("namespace");
    let tenant_b = TestNamespace::new("alias-b").await.expect("namespace");
    let if_not_present = json!({"imagePullPolicy": "IfNotPresent"});

    let a = run_to_end(&tenant_a, pod("a", &slash, node, if_not_present.clone())).await;
    assert!(a.contains("code of tenant A"), "tenant A printed {a:?}");
    let b = run_to_end(
        &tenant_b,
        pod("b", &underscore, node, if_not_present.clone()),
    )
    .await;
    assert!(
        b.contains("code of tenant B") && !b.contains("tenant A"),
        "tenant B ran {b:?} (its image is {underscore}, stored after {slash})"
    );
    let again = run_to_end(&tenant_a, pod("a-again", &slash, node, if_not_present)).await;
    assert!(
        again.contains("code of tenant A") && !again.contains("tenant B"),
        "tenant A then ran {again:?}"
    );
}

/// Creates a `kubernetes.io/dockerconfigjson` secret `name` in `ns` for `registry`.
async fn pull_secret(ns: &TestNamespace, name: &str, registry: &str, user: &str, password: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config_json = json!({"auths": {registry: {"auth": auth}}});
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config_json.to_string()}
    }))
    .expect("secret");
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
}

#[tokio::test]
async fn private_images_need_their_pull_secret_even_when_stored() {
    let info = cluster();
    let node = shared_node(KRUSTLET);
    let auth = RegistryAuth::Basic(
        info.auth_registry_user.clone(),
        info.auth_registry_password.clone(),
    );
    let (slash, underscore) = (
        format!("{}/team/app:v1", info.auth_registry),
        format!("{}/team_app:v1", info.auth_registry),
    );
    push_printer(&slash, "private-a", "private code of tenant A", &auth).await;
    let owner = TestNamespace::new("private-owner")
        .await
        .expect("namespace");
    let other = TestNamespace::new("private-other")
        .await
        .expect("namespace");
    pull_secret(
        &owner,
        "regcred",
        &info.auth_registry,
        &info.auth_registry_user,
        &info.auth_registry_password,
    )
    .await;
    let with_secret = |name: &str| {
        let mut p = pod(
            name,
            &slash,
            node,
            json!({"imagePullPolicy": "IfNotPresent"}),
        );
        p["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
        p
    };

    // The owner pulls it onto the node.
    let out = run_to_end(&owner, with_secret("owner")).await;
    assert!(out.contains("private code of tenant A"), "{out:?}");

    // Another tenant, without the secret, names it (and its alias) with IfNotPresent and
    // Never: the stored copy is not theirs to run. Nor is the node's registry client that
    // pulled it (kept for reuse, `image/clients.rs`): the owner's user name with a wrong
    // password is refused, as if that client had never been made.
    pull_secret(
        &other,
        "guessed",
        &info.auth_registry,
        &info.auth_registry_user,
        "not-the-password",
    )
    .await;
    let other_pods = other.api::<Pod>();
    for (name, image, policy) in [
        ("stored", &slash, "IfNotPresent"),
        ("alias", &underscore, "IfNotPresent"),
        ("never", &slash, "Never"),
        ("guessed", &slash, "Always"),
    ] {
        let mut manifest = pod(name, image, node, json!({"imagePullPolicy": policy}));
        if name == "guessed" {
            manifest["spec"]["imagePullSecrets"] = json!([{"name": "guessed"}]);
        }
        create(&other_pods, manifest).await.expect("create");
    }
    for name in ["stored", "alias", "guessed"] {
        let (reason, message) = pull_refused(&other, name).await;
        assert!(
            matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff")
                && message.contains("unauthorized")
                && message.contains(&info.auth_registry),
            "{name}: {reason}: {message}"
        );
    }
    let (reason, message) = pull_refused(&other, "never").await;
    assert_eq!(reason, "ErrImageNeverPull", "{message}");
    for name in ["stored", "alias", "never", "guessed"] {
        let p = other_pods.get(name).await.expect("pod");
        let ran = p
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
            .iter()
            .any(|c| c.state.as_ref().is_some_and(|s| s.waiting.is_none()));
        assert!(!ran, "{name} started a container");
    }

    // The owner's next pod reuses the stored image without a pull.
    let out = run_to_end(&owner, with_secret("owner-again")).await;
    assert!(out.contains("private code of tenant A"), "{out:?}");
    // Events are written in the background, after the status they go with.
    wait_for_event(
        &owner.api::<Event>(),
        "Pulled",
        "already present on machine and can be accessed by the pod",
        LONG,
    )
    .await
    .expect("the stored image is reused");
}

/// Resident set size of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Deflates `input` with `flush`, appending to `out`.
fn deflate(
    c: &mut flate2::Compress,
    input: &[u8],
    flush: flate2::FlushCompress,
    out: &mut Vec<u8>,
) {
    let mut consumed = 0;
    loop {
        out.reserve(64 << 10);
        let before = c.total_in();
        let status = c
            .compress_vec(&input[consumed..], out, flush)
            .expect("deflate");
        consumed += (c.total_in() - before) as usize;
        let done = match flush {
            flate2::FlushCompress::Finish => status == flate2::Status::StreamEnd,
            _ => out.len() < out.capacity(),
        };
        if consumed == input.len() && done {
            return;
        }
    }
}

/// A gzip tar layer holding `files` files of `each` zero bytes (a multiple of 1 MiB), streamed
/// through flate2 and never held uncompressed. After a full flush deflate starts afresh, so
/// every 1 MiB block of zeros compresses to the same bytes: one is compressed, checked against a
/// second, and repeated (compressing 8 GiB would take minutes of this shared machine's CPU).
fn gzip_bomb(files: usize, each: u64) -> Vec<u8> {
    use flate2::FlushCompress::{Finish, Full};
    const BLOCK: usize = 1 << 20;
    assert_eq!(each % BLOCK as u64, 0);
    let zeros = vec![0u8; BLOCK];
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 0xff];
    let mut crc = crc32fast::Hasher::new();
    let mut block_crc = crc32fast::Hasher::new();
    block_crc.update(&zeros);
    let mut total: u64 = 0;
    for i in 0..files {
        let mut header = tar::Header::new_gnu();
        header.set_path(format!("data/zeros-{i}")).expect("path");
        header.set_size(each);
        header.set_mode(0o644);
        header.set_cksum();
        deflate(&mut c, header.as_bytes(), Full, &mut out);
        crc.update(header.as_bytes());
        total += 512;
        let (mut first, mut second) = (Vec::new(), Vec::new());
        deflate(&mut c, &zeros, Full, &mut first);
        deflate(&mut c, &zeros, Full, &mut second);
        assert_eq!(
            first, second,
            "deflate is not deterministic after a full flush"
        );
        out.extend_from_slice(&first);
        for _ in 1..each / BLOCK as u64 {
            out.extend_from_slice(&second);
        }
        for _ in 0..each / BLOCK as u64 {
            crc.combine(&block_crc);
        }
        total += each;
    }
    // The end of the archive: two zero blocks.
    deflate(&mut c, &zeros[..1024], Finish, &mut out);
    crc.update(&zeros[..1024]);
    total += 1024;
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out
}

#[test]
fn the_bomb_is_a_valid_gzip_tar() {
    use std::io::Read;
    // 4 MiB in two files: decompressed and read back whole, CRC and all.
    let bomb = gzip_bomb(2, 2 << 20);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bomb[..]));
    let mut sizes = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let read = entry.read(&mut buf).expect("read");
            if read == 0 {
                break;
            }
            assert!(buf[..read].iter().all(|b| *b == 0));
            n += read as u64;
        }
        sizes.push(n);
    }
    assert_eq!(sizes, [2 << 20, 2 << 20]);
    let mut rest = Vec::new();
    flate2::read::GzDecoder::new(&bomb[..])
        .read_to_end(&mut rest)
        .expect("the CRC and size check");
}

#[tokio::test]
async fn a_gzip_bomb_fails_its_pod_and_spares_the_node() {
    let info = cluster();
    let node = KrustletNode::start(KRUSTLET, "bomb", &[]).expect("start krustlet");
    node.wait_ready("True", LONG).await.expect("node Ready");
    let pid = node.pid().expect("pid");
    let ns = TestNamespace::new("bomb").await.expect("namespace");
    let pods = ns.api::<Pod>();

    // A neighbour that must keep running.
    let neighbour = format!(
        "{}/images/neighbour-{}:v1",
        info.registry,
        std::process::id()
    );
    registry::push_wasm(
        &neighbour,
        distinct_multitool("neighbour"),
        &RegistryAuth::Anonymous,
    )
    .await
    .expect("push neighbour");
    create(
        &pods,
        pod(
            "neighbour",
            &neighbour,
            node.name(),
            json!({"args": ["sleep", "3600"]}),
        ),
    )
    .await
    .expect("create");
    wait_for_phase(&pods, "neighbour", "Running", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.log()));

    // 8 GiB of zeros in two files: about 8 MiB of gzip.
    let started = Instant::now();
    let bomb = tokio::task::spawn_blocking(|| gzip_bomb(2, 4 << 30))
        .await
        .expect("bomb");
    eprintln!(
        "measure: gzip bomb of 8 GiB is {} bytes compressed, made in {:?}",
        bomb.len(),
        started.elapsed()
    );
    assert!(bomb.len() < 12 << 20, "{} bytes", bomb.len());
    let image = format!("{}/images/bomb-{}:v1", info.registry, std::process::id());
    registry::push_oci_image(
        &image,
        vec![bomb],
        ("wasi", "wasm"),
        &["/app.wasm"],
        &[],
        &RegistryAuth::Anonymous,
    )
    .await
    .expect("push bomb");

    // The node's usual figure: its RSS while idle with the neighbour running.
    let mut usual = 0;
    for _ in 0..10 {
        usual = usual.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(usual > 0, "cannot read /proc/{pid}/status");

    create(&pods, pod("bomb", &image, node.name(), json!({})))
        .await
        .expect("create");
    let deadline = Instant::now() + LONG;
    let mut peak = 0;
    let (reason, message) = loop {
        peak = peak.max(rss_bytes(pid));
        let p = pods.get("bomb").await.expect("pod");
        if let Some(w) = waiting(&p, "main")
            && let Some(message) = w.message.as_deref()
            && message.contains("too large")
        {
            break (w.reason.clone().unwrap_or_default(), message.to_string());
        }
        assert!(
            Instant::now() < deadline,
            "the bomb was not refused within {LONG:?}; status {:?}\n{}",
            p.status,
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "measure: node RSS usual {} MiB, peak during the bomb's pull {} MiB",
        usual >> 20,
        peak >> 20
    );
    assert!(
        matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff"),
        "{reason}: {message}"
    );
    assert!(
        message.contains("--image-max-unpacked-size") && message.contains("1Gi"),
        "{message}"
    );
    assert!(
        peak < usual + (100 << 20),
        "RSS rose from {usual} to {peak} bytes"
    );
    let failed = events(&ns, "bomb")
        .await
        .into_iter()
        .any(|(r, m)| r == "Failed" && m.contains("--image-max-unpacked-size"));
    assert!(failed, "no Failed event naming the flag");
    let n = pods.get("neighbour").await.expect("neighbour");
    assert_eq!(krustlet_e2e::pods::phase(&n), "Running");
    let restarts = n
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.first().map(|c| c.restart_count));
    assert_eq!(restarts, Some(0), "the neighbour restarted");
}

#[tokio::test]
async fn tampered_compile_cache_entries_are_rejected_and_recompiled() {
    let info = cluster();
    let mut node = KrustletNode::start(KRUSTLET, "tamper", &[]).expect("start krustlet");
    node.wait_ready("True", LONG).await.expect("node Ready");
    let ns = TestNamespace::new("tamper").await.expect("namespace");
    let wasm = distinct_multitool("tamper");
    let digest = registry::sha256(&wasm);
    let image = format!("{}/images/tamper-{}:v1", info.registry, std::process::id());
    registry::push_wasm(&image, wasm, &RegistryAuth::Anonymous)
        .await
        .expect("push");
    let node_name = node.name().to_string();
    let run = |name: &'static str| {
        pod(
            name,
            &image,
            &node_name,
            json!({"args": ["print", "the genuine program"]}),
        )
    };
    let out = run_to_end(&ns, run("first")).await;
    assert!(out.contains("the genuine program"), "{out:?}");
    // The first start ran Winch's code; Cranelift's goes to the disk cache in the background.
    let cranelift = ["compiled", digest.as_str(), "with Cranelift"];
    node.wait_log(&cranelift, 1, LONG).await.expect("stored");

    let key = node.data_dir().join("compile-cache.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key)
            .unwrap_or_else(|e| panic!("{}: {e}", key.display()))
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the key is private");
    let hex = digest.trim_start_matches("sha256:");
    let compiled = node.data_dir().join("images/compiled");
    let entry = std::fs::read_dir(&compiled)
        .expect("compiled dir")
        .flatten()
        .map(|e| e.path().join(format!("{hex}.cwasm")))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no cache entry for {digest} under {}", compiled.display()));
    node.terminate(Duration::from_secs(60)).await.expect("stop");

    // Change the code and recompute a SHA-256 trailer, as an attacker who knows the format
    // of a checksummed cache would.
    let mut bytes = std::fs::read(&entry).expect("read entry");
    let artifact = bytes.len() - 32;
    for b in &mut bytes[artifact / 2..artifact / 2 + 64] {
        *b ^= 0xa5;
    }
    let sum = <sha2::Sha256 as sha2::Digest>::digest(&bytes[..artifact]);
    bytes[artifact..].copy_from_slice(&sum);
    std::fs::write(&entry, &bytes).expect("tamper");

    node.restart().expect("restart");
    node.wait_ready("True", LONG).await.expect("Ready again");
    let out = run_to_end(&ns, run("second")).await;
    assert!(out.contains("the genuine program"), "{out:?}");
    node.wait_log(&cranelift, 2, LONG)
        .await
        .expect("stored again");
    let log = node.log();
    let lines = |parts: &[&str]| {
        log.lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    };
    assert_eq!(
        lines(&["rejected a compile cache entry", &digest]),
        1,
        "{log}"
    );
    assert_eq!(
        lines(&["compile cache hit (disk) for", &digest]),
        0,
        "{log}"
    );
    assert_eq!(lines(&["compiled", &digest, "cache miss"]), 2, "{log}");
    assert_ne!(
        std::fs::read(&entry).expect("rewritten"),
        bytes,
        "the rejected entry was replaced"
    );
}

#[tokio::test]
async fn compiled_code_goes_with_its_image() {
    let info = cluster();
    // Any disk use is over 1 %: every unused image goes at once.
    let node = KrustletNode::start(
        KRUSTLET,
        "compiled-gc",
        &[
            "--image-gc-high-threshold=1",
            "--image-gc-low-threshold=0",
            "--image-minimum-gc-age=0s",
        ],
    )
    .expect("start krustlet");
    node.wait_ready("True", LONG).await.expect("node Ready");
    let ns = TestNamespace::new("compiled-gc").await.expect("namespace");
    let wasm = distinct_multitool("compiled-gc");
    let hex = registry::sha256(&wasm)
        .trim_start_matches("sha256:")
        .to_string();
    let image = format!(
        "{}/images/compiled-gc-{}:v1",
        info.registry,
        std::process::id()
    );
    registry::push_wasm(&image, wasm, &RegistryAuth::Anonymous)
        .await
        .expect("push");
    run_to_end(
        &ns,
        pod("once", &image, node.name(), json!({"args": ["hello"]})),
    )
    .await;
    let compiled = node.data_dir().join("images/compiled");
    let entries = || {
        std::fs::read_dir(&compiled)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(format!("{hex}.cwasm")).exists())
            .count()
    };
    let blob = node.data_dir().join("images/blobs/sha256").join(&hex);
    let deadline = Instant::now() + Duration::from_secs(90);
    while blob.exists() || entries() > 0 {
        assert!(
            Instant::now() < deadline,
            "image blob present: {}, compiled entries: {}\n{}",
            blob.exists(),
            entries(),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
