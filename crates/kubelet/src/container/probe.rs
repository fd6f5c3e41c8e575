//! Probes (upstream `pkg/kubelet/prober` and `pkg/probe/{exec,http,tcp}`): liveness, readiness
//! and startup probes.
//!
//! - `exec`: the command runs as one more instance of the container's program, through the
//!   same path as `kubectl exec`. Exit 0 is success; any other exit, a trap or the timeout is a
//!   failure.
//! - `httpGet`: a GET to the pod's address (from the node, through `network::PodNetwork`) on the
//!   probe's port (a number or a named `containerPort`), with its path and headers and
//!   `User-Agent: kube-probe/1.35`; a status from 200 to 399 is success (`probe/http`). HTTPS
//!   and a `host` other than the pod's are not supported: the probe fails saying so.
//! - `tcpSocket`: success when the port accepts a connection within the timeout (`probe/tcp`).
//! - `grpc`: the gRPC health protocol's `Check` over HTTP/2 to the pod's address on the
//!   probe's port with its `service`; `SERVING` is success (`probe/grpc`, see
//!   [`super::grpc_probe`]).
//!
//! Semantics as upstream's `worker.go`: nothing runs before `initialDelaySeconds`; each probe
//! runs every `periodSeconds` with `timeoutSeconds`; `successThreshold`/`failureThreshold`
//! consecutive results flip it; a startup probe gates the other two; readiness starts False,
//! liveness and startup succeed only by running.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc;

use crate::container::exec_targets::ExecTarget;
use crate::metrics::{ProbeMetrics, ProbedContainer};
use crate::network::PodNetwork;
use crate::runtime::{ExecIo, Termination};

/// Where a run's probe results are counted (`prober_probe_total` on `/metrics/probes`).
#[derive(Debug, Clone)]
pub struct ProbeRecorder {
    /// The prober's metrics.
    pub metrics: ProbeMetrics,
    /// The probed container's labels.
    pub container: ProbedContainer,
}

/// Drops a run's probe series when its probes stop (the run ended and the task was aborted).
struct ForgetOnDrop {
    recorder: ProbeRecorder,
    kinds: Vec<Kind>,
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        for kind in &self.kinds {
            self.recorder
                .metrics
                .forget(kind.name(), &self.recorder.container);
        }
    }
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `livenessProbe`: a failure restarts the container.
    Liveness,
    /// `readinessProbe`: flips the container's `ready`.
    Readiness,
    /// `startupProbe`: gates the others; a failure restarts the container.
    Startup,
}

impl Kind {
    /// The name upstream's events use ("Liveness probe failed: ...").
    pub fn name(self) -> &'static str {
        match self {
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
            Self::Startup => "Startup",
        }
    }
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// `exec`: run this argv in the container.
    Exec(Vec<String>),
    /// `httpGet`.
    HttpGet {
        /// The resolved port.
        port: Result<u16, String>,
        /// Path and query (default `/`).
        path: String,
        /// `HTTP` or `HTTPS`.
        scheme: String,
        /// `host`, if set.
        host: Option<String>,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// `tcpSocket`.
    TcpSocket {
        /// The resolved port.
        port: Result<u16, String>,
    },
    /// `grpc`.
    Grpc {
        /// The port.
        port: Result<u16, String>,
        /// The service asked about (empty: the server as a whole).
        service: String,
    },
}

/// One probe with upstream's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Which probe.
    pub kind: Kind,
    /// What it does.
    pub handler: Handler,
    /// `initialDelaySeconds` (default 0).
    pub initial_delay: Duration,
    /// `periodSeconds` (default 10, at least 1).
    pub period: Duration,
    /// `timeoutSeconds` (default 1, at least 1).
    pub timeout: Duration,
    /// `successThreshold` (default 1).
    pub success_threshold: u32,
    /// `failureThreshold` (default 3).
    pub failure_threshold: u32,
}

/// A probe's port: a number, or the name of one of the container's ports
/// (upstream's `probe.ResolveContainerPort`).
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port number: {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("couldn't find port: {name} in the container's ports")),
    }
}

impl ProbeSpec {
    /// The probe `probe` of `container`, if it has a handler.
    pub fn of(kind: Kind, probe: &Probe, container: &Container) -> Option<Self> {
        let handler = if let Some(exec) = &probe.exec {
            Handler::Exec(exec.command.clone().unwrap_or_default())
        } else if let Some(get) = &probe.http_get {
            let path = get
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            Handler::HttpGet {
                port: resolve_port(&get.port, container),
                path: if path.starts_with('/') {
                    path
                } else {
                    format!("/{path}")
                },
                scheme: get.scheme.clone().unwrap_or_else(|| "HTTP".into()),
                host: get.host.clone().filter(|h| !h.is_empty()),
                headers: get
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            Handler::TcpSocket {
                port: resolve_port(&tcp.port, container),
            }
        } else if let Some(grpc) = &probe.grpc {
            Handler::Grpc {
                port: u16::try_from(grpc.port)
                    .map_err(|_| format!("invalid port number: {}", grpc.port)),
                service: grpc.service.clone().unwrap_or_default(),
            }
        } else {
            return None;
        };
        let seconds = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(v.unwrap_or(default).max(min).unsigned_abs().into())
        };
        let count = |v: Option<i32>, default: i32| v.unwrap_or(default).max(1).unsigned_abs();
        Some(Self {
            kind,
            handler,
            initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
            period: seconds(probe.period_seconds, 10, 1),
            timeout: seconds(probe.timeout_seconds, 1, 1),
            // Liveness and startup probes must have successThreshold 1 (API validation).
            success_threshold: match kind {
                Kind::Readiness => count(probe.success_threshold, 1),
                _ => 1,
            },
            failure_threshold: count(probe.failure_threshold, 3),
        })
    }

    /// The container's probes: startup, liveness, readiness.
    pub fn all_of(c: &Container) -> Vec<Self> {
        [
            (Kind::Startup, &c.startup_probe),
            (Kind::Liveness, &c.liveness_probe),
            (Kind::Readiness, &c.readiness_probe),
        ]
        .into_iter()
        .filter_map(|(kind, probe)| ProbeSpec::of(kind, probe.as_ref()?, c))
        .collect()
    }
}

/// Where a run's probes go: the container (exec) and the pod's network (http, tcp).
#[derive(Clone)]
pub struct ProbeTarget {
    /// The running container, for exec probes.
    pub exec: Arc<ExecTarget>,
    /// The pod's network, for httpGet and tcpSocket probes.
    pub network: Arc<dyn PodNetwork>,
}

/// Most bytes of an HTTP probe's response body read (upstream's `maxRespBodyLength`, 10 KiB).
const MAX_HTTP_BODY: usize = 10 << 10;

/// One `tcpSocket` probe: `Ok` when the port accepts a connection (`probe/tcp`).
pub async fn tcp_once(
    network: &dyn PodNetwork,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    network
        .connect_tcp(port, timeout)
        .await
        .map(drop)
        .map_err(|error| error.to_string())
}

/// One `httpGet` probe: `Ok` for a status from 200 to 399 (`probe/http`).
pub async fn http_once(
    network: &dyn PodNetwork,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let ip = network.ip();
    match tokio::time::timeout(timeout, http_attempt(network, port, path, headers, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "Get \"http://{ip}:{port}{path}\": context deadline exceeded (Client.Timeout \
             exceeded while awaiting headers)"
        )),
    }
}

async fn http_attempt(
    network: &dyn PodNetwork,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let stream = network
        .connect_tcp(port, timeout)
        .await
        .map_err(|error| error.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP probe failed: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = std::net::SocketAddr::new(network.ip(), port).to_string();
    let mut request = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "kube-probe/1.35")
        .header(http::header::ACCEPT, "*/*");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("invalid HTTP probe request: {e}"))?;
    let response = sender.send_request(request).await;
    let result = match response {
        Err(e) => Err(format!("HTTP probe failed: {e}")),
        Ok(response) => {
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut text = Vec::new();
            while text.len() < MAX_HTTP_BODY {
                match http_body_util::BodyExt::frame(&mut body).await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let room = MAX_HTTP_BODY - text.len();
                            text.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    _ => break,
                }
            }
            if (200..400).contains(&status) {
                Ok(())
            } else {
                let body = String::from_utf8_lossy(&text).trim_end().to_string();
                Err(if body.is_empty() {
                    format!("HTTP probe failed with statuscode: {status}")
                } else {
                    format!("HTTP probe failed with statuscode: {status}: {body}")
                })
            }
        }
    };
    driver.abort();
    result
}

/// Runs one round of `probe` against `target`: `Ok` on success, else the failure message.
pub async fn once(probe: &ProbeSpec, target: &ProbeTarget, id: String) -> Result<(), String> {
    match &probe.handler {
        Handler::Exec(command) => exec_once(&target.exec, id, command, probe.timeout).await,
        Handler::TcpSocket { port } => {
            tcp_once(&*target.network, *port.as_ref()?, probe.timeout).await
        }
        Handler::HttpGet {
            port,
            path,
            scheme,
            host,
            headers,
        } => {
            if !scheme.eq_ignore_ascii_case("HTTP") {
                return Err(format!(
                    "httpGet probes with scheme {scheme} are not supported yet; use HTTP"
                ));
            }
            if let Some(host) = host
                && host.parse::<std::net::IpAddr>().ok() != Some(target.network.ip())
            {
                return Err(format!(
                    "httpGet.host {host:?} is not supported: probes reach the pod's own address; \
                     leave host empty"
                ));
            }
            http_once(
                &*target.network,
                *port.as_ref()?,
                path,
                headers,
                probe.timeout,
            )
            .await
        }
        Handler::Grpc { port, service } => {
            super::grpc_probe::grpc_once(&*target.network, *port.as_ref()?, service, probe.timeout)
                .await
        }
    }
}

/// What the probes of one run tell its runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The startup probe succeeded (or there is none): the container is `started`.
    Started,
    /// One run of a probe failed (upstream's `Unhealthy` event, for every failure).
    Unhealthy {
        /// Which probe.
        kind: Kind,
        /// Its output or why it failed.
        message: String,
    },
    /// Readiness changed.
    Ready(bool),
    /// Liveness or startup failed `failureThreshold` times: restart the container.
    Failed {
        /// Which probe.
        kind: Kind,
        /// Its last output or why it failed.
        message: String,
    },
}

/// How much of a probe's output is kept for its failure message (upstream's
/// `maxProbeOutputLength`... 10 KiB).
const MAX_OUTPUT: usize = 10 << 10;

/// Runs `command` once in `target` within `timeout`: `Ok` on exit 0, else the failure message.
pub async fn exec_once(
    target: &ExecTarget,
    id: String,
    command: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let (stdout, mut out) = mpsc::channel::<Bytes>(16);
    let stderr = stdout.clone();
    let io = ExecIo {
        stdin: None,
        stdout: Some(stdout),
        stderr: Some(stderr),
        tty: false,
    };
    let spec = target
        .spec(id, command.to_vec(), io)
        .map_err(|e| e.to_string())?;
    let mut running = target
        .runtime
        .exec(spec)
        .await
        .map_err(|e| e.message.clone())?;
    let collect = async {
        let mut output = Vec::new();
        while let Some(chunk) = out.recv().await {
            let room = MAX_OUTPUT.saturating_sub(output.len());
            output.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        output
    };
    let run = async { tokio::join!(&mut running.exit, collect) };
    match tokio::time::timeout(timeout, run).await {
        Ok((Ok(Termination::Exited(0)), _)) => Ok(()),
        Ok((termination, output)) => {
            let output = String::from_utf8_lossy(&output).trim_end().to_string();
            Err(match termination {
                Ok(Termination::Exited(code)) if output.is_empty() => {
                    format!("command {command:?} exited with {code}")
                }
                Ok(Termination::Trapped { message, .. }) if output.is_empty() => message,
                _ => output,
            })
        }
        Err(_) => {
            let _ = running.kill.send(());
            Err(format!(
                "command timed out: {command:?} timed out after {}s",
                timeout.as_secs()
            ))
        }
    }
}

/// Drives a run's probes until `events` closes or a restart is asked for (upstream's probe
/// workers, one loop per run here). Sends [`ProbeEvent`]s; the runner acts on them.
pub async fn run(
    probes: Vec<ProbeSpec>,
    target: ProbeTarget,
    recorder: ProbeRecorder,
    events: mpsc::Sender<ProbeEvent>,
) {
    let _forget = ForgetOnDrop {
        recorder: recorder.clone(),
        kinds: probes.iter().map(|p| p.kind).collect(),
    };
    let recorder = &recorder;
    let startup = probes.iter().find(|p| p.kind == Kind::Startup).cloned();
    if let Some(probe) = startup {
        match drive(&probe, &target, recorder, &events, true).await {
            Some(()) => {}
            None => return,
        }
    }
    if events.send(ProbeEvent::Started).await.is_err() {
        return;
    }
    let others = probes
        .into_iter()
        .filter(|p| p.kind != Kind::Startup)
        .map(|probe| {
            let (target, events) = (target.clone(), events.clone());
            async move { drive(&probe, &target, recorder, &events, false).await }
        });
    futures::future::join_all(others).await;
}

/// Runs one probe. With `until_success` (a startup probe) returns `Some` at its first success;
/// otherwise runs until the runner goes. `None`: it failed for good or the runner went.
async fn drive(
    probe: &ProbeSpec,
    target: &ProbeTarget,
    recorder: &ProbeRecorder,
    events: &mpsc::Sender<ProbeEvent>,
    until_success: bool,
) -> Option<()> {
    let container = &recorder.container.container;
    tokio::time::sleep(probe.initial_delay).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut ready = false;
    let mut round = 0u64;
    loop {
        round += 1;
        let id = format!("probe-{container}-{}-{round}", probe.kind.name());
        let result = once(probe, target, id).await;
        // Upstream's `ProberResults` (prober/worker.go): one count per run by its result.
        let label = if result.is_ok() {
            "successful"
        } else {
            "failed"
        };
        recorder
            .metrics
            .record(probe.kind.name(), label, &recorder.container);
        match result {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if successes >= probe.success_threshold {
                    if until_success {
                        return Some(());
                    }
                    if probe.kind == Kind::Readiness && !ready {
                        ready = true;
                        events.send(ProbeEvent::Ready(true)).await.ok()?;
                    }
                }
            }
            Err(message) => {
                successes = 0;
                failures += 1;
                // Upstream's prober records every failed run as an `Unhealthy` event.
                events
                    .send(ProbeEvent::Unhealthy {
                        kind: probe.kind,
                        message: message.clone(),
                    })
                    .await
                    .ok()?;
                if failures >= probe.failure_threshold {
                    match probe.kind {
                        Kind::Readiness => {
                            if ready {
                                ready = false;
                                events.send(ProbeEvent::Ready(false)).await.ok()?;
                            }
                        }
                        kind => {
                            let _ = events.send(ProbeEvent::Failed { kind, message }).await;
                            return None;
                        }
                    }
                }
            }
        }
        if events.is_closed() {
            return None;
        }
        tokio::time::sleep(probe.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_get_upstreams_defaults() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "ports": [{"name": "web", "containerPort": 8080}],
            "livenessProbe": {"exec": {"command": ["check"]}},
            "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 2, "successThreshold": 2},
            "startupProbe": {"httpGet": {"port": "web", "path": "healthz"}}
        }))
        .expect("container");
        let probes = ProbeSpec::all_of(&c);
        assert_eq!(probes.len(), 3);
        assert_eq!(
            probes[0].handler,
            Handler::HttpGet {
                port: Ok(8080),
                path: "/healthz".into(),
                scheme: "HTTP".into(),
                host: None,
                headers: vec![],
            }
        );
        let liveness = &probes[1];
        assert_eq!(liveness.kind, Kind::Liveness);
        assert_eq!(liveness.handler, Handler::Exec(vec!["check".into()]));
        assert_eq!(
            (
                liveness.period,
                liveness.timeout,
                liveness.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 3)
        );
        assert_eq!(probes[2].period, Duration::from_secs(2));
        assert_eq!(probes[2].success_threshold, 2);
    }

    #[test]
    fn an_unknown_named_port_is_a_failure_message() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "readinessProbe": {"tcpSocket": {"port": "nope"}},
            "livenessProbe": {"grpc": {"port": 9000}}
        }))
        .expect("container");
        let probes = ProbeSpec::all_of(&c);
        assert_eq!(
            probes[0].handler,
            Handler::Grpc {
                port: Ok(9000),
                service: String::new()
            }
        );
        match &probes[1].handler {
            Handler::TcpSocket { port: Err(message) } => {
                assert!(message.contains("nope"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A one-request HTTP server on loopback answering `status`.
    async fn answer_once(status: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(
                    head.contains("User-Agent: kube-probe/1.35")
                        || head.contains("user-agent: kube-probe/1.35"),
                    "{head}"
                );
                let body = "not well";
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_and_tcp_probes_reach_the_pod_network() {
        let network = crate::network::NodeNetwork::new(std::net::IpAddr::from([127, 0, 0, 1]));
        let timeout = Duration::from_secs(5);
        let ok = answer_once(204).await;
        http_once(&*network, ok, "/healthz", &[], timeout)
            .await
            .expect("2xx is success");
        let failing = answer_once(500).await;
        let message = http_once(&*network, failing, "/healthz", &[], timeout)
            .await
            .expect_err("500 is failure");
        assert_eq!(message, "HTTP probe failed with statuscode: 500: not well");
        let open = answer_once(200).await;
        tcp_once(&*network, open, timeout).await.expect("accepts");
        let closed = crate::network::NodeNetwork::new(std::net::IpAddr::from([127, 0, 0, 1]))
            .listen_tcp(0)
            .expect("listen")
            .local_addr()
            .expect("addr")
            .port();
        let message = tcp_once(&*network, closed, timeout)
            .await
            .expect_err("refused");
        assert!(message.contains("cannot connect"), "{message}");
    }
}
