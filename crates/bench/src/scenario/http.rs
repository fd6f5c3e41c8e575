//! HTTP: one http component pod under `connections` concurrent keep-alive connections for a
//! while (requests/s, latency percentiles), next to `wasmtime serve` of the same component in
//! the same run, loaded the same way from the same process.
//!
//! The pod runs on a node without CNI, so it answers on the node's address (a loopback alias
//! of this machine's, as every test node's); `wasmtime serve` listens on 127.0.0.1. Each side
//! gets a second of warm-up, then the measured window.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use krustlet_e2e::pods::for_node;
use serde::Serialize;

use crate::harness::{create, start_node};
use crate::report::{Latency, latency_cell, print_table};

/// Requests one connection may make in a window (bounds the samples kept).
const MAX_REQUESTS_PER_CONNECTION: usize = 2_000_000;

/// The port the pod serves on.
const POD_PORT: u16 = 8080;

/// One server under load.
#[derive(Debug, Serialize)]
pub struct Load {
    /// Requests answered 200 per second over the window.
    pub requests_per_second: f64,
    /// Latency of the answered requests.
    pub latency: Latency,
    /// Requests that failed or were not answered 200.
    pub errors: u64,
}

/// The HTTP result.
#[derive(Debug, Serialize)]
pub struct Http {
    /// Concurrent connections.
    pub connections: usize,
    /// The measured window, seconds.
    pub seconds: u64,
    /// The pod on a Krustlet node.
    pub krustlet: Load,
    /// `wasmtime serve` of the same component, if it was run.
    pub wasmtime_serve: Option<Load>,
    /// Krustlet's requests/s over `wasmtime serve`'s.
    pub throughput_ratio: Option<f64>,
}

/// Runs the scenario; `wasmtime` is the `wasmtime` binary to compare with (`None`: Krustlet
/// alone).
pub async fn run(
    connections: usize,
    seconds: u64,
    wasmtime: Option<PathBuf>,
) -> anyhow::Result<Http> {
    let window = Duration::from_secs(seconds);
    let component = krustlet_test_workloads::http_component().map_err(anyhow::Error::msg)?;

    let node = start_node("bench-http", &[]).await?;
    let ns = krustlet_e2e::TestNamespace::new("bench-http").await?;
    let pods = ns.api::<k8s_openapi::api::core::v1::Pod>();
    let pod = serde_json::from_value(for_node(
        serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "containers": [{
                    "name": "web",
                    "image": krustlet_e2e::workloads::http_component(),
                    "ports": [{"containerPort": POD_PORT}],
                    "env": [{"name": "POD_NAME", "value": "web"}]
                }]
            }
        }),
        node.name(),
    ))?;
    create(&pods, &pod).await?;
    let pod_addr = SocketAddr::new(node.ip(), POD_PORT);
    wait_serving(pod_addr, Duration::from_secs(180)).await?;
    load(pod_addr, connections, Duration::from_secs(1)).await?;
    let krustlet = load(pod_addr, connections, window).await?;
    drop(ns);
    drop(node);

    let wasmtime_serve = match wasmtime {
        Some(binary) => {
            let serve = WasmtimeServe::start(&binary, &component)?;
            wait_serving(serve.addr, Duration::from_secs(60)).await?;
            load(serve.addr, connections, Duration::from_secs(1)).await?;
            Some(load(serve.addr, connections, window).await?)
        }
        None => None,
    };
    let throughput_ratio = wasmtime_serve
        .as_ref()
        .filter(|w| w.requests_per_second > 0.0)
        .map(|w| krustlet.requests_per_second / w.requests_per_second);
    let result = Http {
        connections,
        seconds,
        krustlet,
        wasmtime_serve,
        throughput_ratio,
    };
    let row = |load: &Load| {
        format!(
            "{:.0} req/s, {}, {} errors",
            load.requests_per_second,
            latency_cell(&load.latency),
            load.errors
        )
    };
    let mut rows = vec![("Krustlet pod".to_string(), row(&result.krustlet))];
    if let Some(serve) = &result.wasmtime_serve {
        rows.push(("wasmtime serve".into(), row(serve)));
    }
    if let Some(ratio) = result.throughput_ratio {
        rows.push((
            "Krustlet / wasmtime serve".into(),
            format!("{ratio:.2} of the requests/s"),
        ));
    }
    print_table(
        &format!("http: one http component, {connections} connections, {seconds} s"),
        &rows,
    );
    Ok(result)
}

/// The `wasmtime` binary: `explicit`, else `$KRUSTLET_CACHE/wasmtime-cli/bin/wasmtime`, else
/// `wasmtime` on `PATH`.
pub fn find_wasmtime(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let cache = std::env::var_os("KRUSTLET_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/krustlet")));
    if let Some(cached) = cache.map(|c| c.join("wasmtime-cli/bin/wasmtime"))
        && cached.is_file()
    {
        return Ok(cached);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("wasmtime"))
            .find(|p| p.is_file())
    });
    on_path.with_context(|| {
        format!(
            "prerequisite missing: wasmtime (the CLI of the wasmtime Krustlet embeds, {}) to \
             compare with: cargo install wasmtime-cli --version {} --locked --root \
             \"$KRUSTLET_CACHE/wasmtime-cli\" (or pass --wasmtime PATH, or --no-wasmtime)",
            krustlet_wasi::WASMTIME_VERSION,
            krustlet_wasi::WASMTIME_VERSION
        )
    })
}

/// A `wasmtime serve` process, killed on drop.
struct WasmtimeServe {
    child: std::process::Child,
    addr: SocketAddr,
}

impl WasmtimeServe {
    /// Serves `component` on a free loopback port, with WASI's cli interfaces as Krustlet
    /// gives HTTP components (`-Scli`).
    fn start(binary: &Path, component: &Path) -> anyhow::Result<Self> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = std::process::Command::new(binary)
            .args(["serve", "-Scli", "--addr"])
            .arg(addr.to_string())
            .arg(component)
            .env("POD_NAME", "web")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { child, addr })
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `GET /` at `addr` answers 200.
async fn wait_serving(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(5), get_once(addr)).await
            && status == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing answered 200 at http://{addr}/ within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One `GET /` on a fresh connection: the status.
async fn get_once(addr: SocketAddr) -> anyhow::Result<u16> {
    let mut connection = Connection::open(addr).await?;
    let (status, _) = connection.get().await?;
    Ok(status)
}

/// A keep-alive HTTP/1.1 client connection.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    /// `GET /`, the whole body read: the status and how long it took.
    async fn get(&mut self) -> anyhow::Result<(u16, Duration)> {
        self.sender.ready().await?;
        let request = hyper::Request::get("/")
            .header(hyper::header::HOST, "bench")
            .body(Empty::new())?;
        let started = Instant::now();
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok((status, started.elapsed()))
    }
}

/// `connections` clients sending `GET /` back to back for `window`.
async fn load(addr: SocketAddr, connections: usize, window: Duration) -> anyhow::Result<Load> {
    let started = Instant::now();
    let deadline = started + window;
    let clients: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(client(addr, deadline)))
        .collect();
    let (mut samples, mut errors) = (Vec::new(), 0);
    for client in clients {
        let (ok, failed) = client.await?;
        samples.extend(ok);
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    Ok(Load {
        requests_per_second: samples.len() as f64 / elapsed,
        latency: Latency::of(&samples),
        errors,
    })
}

/// One client until `deadline`: the latencies of its 200s and how many requests failed (a
/// failed connection is opened again).
async fn client(addr: SocketAddr, deadline: Instant) -> (Vec<Duration>, u64) {
    let (mut samples, mut errors) = (Vec::new(), 0u64);
    let mut connection = None;
    while Instant::now() < deadline && samples.len() < MAX_REQUESTS_PER_CONNECTION {
        let open = match connection.take() {
            Some(open) => open,
            None => match Connection::open(addr).await {
                Ok(open) => open,
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let mut open = open;
        match open.get().await {
            Ok((200, took)) => {
                samples.push(took);
                connection = Some(open);
            }
            Ok(_) => {
                errors += 1;
                connection = Some(open);
            }
            Err(_) => errors += 1,
        }
    }
    (samples, errors)
}
