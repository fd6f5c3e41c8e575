//! Cold start: the first pod of a new image (pull + compile) against a cached one, and the
//! first pod after a Krustlet restart (in-memory caches gone; what is on disk remains).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use krustlet_e2e::{TestNamespace, workloads};
use kube::api::Api;
use serde::Serialize;

use crate::harness::{Observer, create, pod, start_node};
use crate::report::print_table;

/// The cold-start result, create returned → Succeeded observed, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Cold {
    /// The image's size in bytes.
    pub image_bytes: usize,
    /// First pod of a new image: pull, verify, compile, run.
    pub first_ms: f64,
    /// Second pod of the same image on the same node.
    pub cached_ms: f64,
    /// First pod after the node restarted (same data dir).
    pub after_restart_ms: f64,
}

/// Runs the scenario.
pub async fn run() -> anyhow::Result<Cold> {
    let mut node = start_node("bench-cold", &[]).await?;
    let ns = TestNamespace::new("bench-cold").await?;
    let api = ns.api::<Pod>();
    let observer = Observer::start(api.clone());
    // A new digest every run: the multitool plus a custom section holding a nonce.
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut bytes = std::fs::read(krustlet_test_workloads::multitool()?)?;
    append_custom_section(
        &mut bytes,
        "krustlet-bench-nonce",
        nonce.to_string().as_bytes(),
    );
    let image_bytes = bytes.len();
    let image = workloads::publish(&format!("cold-{}-{nonce}", std::process::id()), move || {
        bytes
    });

    let first = run_one(&api, &observer, "first", node.name(), &image).await?;
    let cached = run_one(&api, &observer, "cached", node.name(), &image).await?;
    node.restart()?;
    node.wait_ready("True", Duration::from_secs(120)).await?;
    let restarted = run_one(&api, &observer, "restarted", node.name(), &image).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let result = Cold {
        image_bytes,
        first_ms: ms(first),
        cached_ms: ms(cached),
        after_restart_ms: ms(restarted),
    };
    print_table(
        &format!(
            "cold start: a new {} KiB image, create → Succeeded",
            image_bytes / 1024
        ),
        &[
            (
                "first pod (pull + compile)".into(),
                format!("{:.1} ms", result.first_ms),
            ),
            (
                "second pod (cached)".into(),
                format!("{:.1} ms", result.cached_ms),
            ),
            (
                "after a Krustlet restart".into(),
                format!("{:.1} ms", result.after_restart_ms),
            ),
        ],
    );
    Ok(result)
}

async fn run_one(
    api: &Api<Pod>,
    observer: &Observer,
    name: &str,
    node: &str,
    image: &str,
) -> anyhow::Result<Duration> {
    let manifest = pod(name, node, image, &["hello"], "Never")?;
    let created = create(api, &manifest).await?;
    observer
        .wait_all(
            &[name.to_string()],
            Duration::from_secs(180),
            "Succeeded",
            |s| s.succeeded.is_some(),
        )
        .await?;
    Ok(observer
        .get(name)
        .succeeded
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(created))
}

/// Appends a wasm custom section (id 0) named `name` holding `payload`.
fn append_custom_section(module: &mut Vec<u8>, name: &str, payload: &[u8]) {
    let mut content = Vec::new();
    leb128(&mut content, name.len() as u64);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    module.push(0);
    leb128(module, content.len() as u64);
    module.extend_from_slice(&content);
}

fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
