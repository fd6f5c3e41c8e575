//! Exec probes (upstream `pkg/kubelet/prober`, the `exec` handler): liveness, readiness and
//! startup probes whose command runs as one more instance of the container's program, through
//! the same path as `kubectl exec`. Exit 0 is success; any other exit, a trap or the timeout is
//! a failure. `httpGet`, `tcpSocket` and `grpc` probes need pod networking and are not run yet.
//!
//! Semantics as upstream's `worker.go`: nothing runs before `initialDelaySeconds`; each probe
//! runs every `periodSeconds` with `timeoutSeconds`; `successThreshold`/`failureThreshold`
//! consecutive results flip it; a startup probe gates the other two; readiness starts False,
//! liveness and startup succeed only by running.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{Container, Probe};
use tokio::sync::mpsc;

use crate::container::exec_targets::ExecTarget;
use crate::metrics::{ProbeMetrics, ProbedContainer};
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

/// One exec probe with upstream's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecProbe {
    /// Which probe.
    pub kind: Kind,
    /// The command (argv).
    pub command: Vec<String>,
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

impl ExecProbe {
    /// The exec probe of `probe`, if it is one.
    pub fn of(kind: Kind, probe: &Probe) -> Option<Self> {
        let command = probe.exec.as_ref()?.command.clone().unwrap_or_default();
        let seconds = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(v.unwrap_or(default).max(min).unsigned_abs().into())
        };
        let count = |v: Option<i32>, default: i32| v.unwrap_or(default).max(1).unsigned_abs();
        Some(Self {
            kind,
            command,
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

    /// The container's exec probes: startup, liveness, readiness.
    pub fn all_of(c: &Container) -> Vec<Self> {
        [
            (Kind::Startup, &c.startup_probe),
            (Kind::Liveness, &c.liveness_probe),
            (Kind::Readiness, &c.readiness_probe),
        ]
        .into_iter()
        .filter_map(|(kind, probe)| ExecProbe::of(kind, probe.as_ref()?))
        .collect()
    }
}

/// What the probes of one run tell its runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The startup probe succeeded (or there is none): the container is `started`.
    Started,
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
    let spec = target.spec(id, command.to_vec(), io);
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
    probes: Vec<ExecProbe>,
    target: Arc<ExecTarget>,
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
    probe: &ExecProbe,
    target: &ExecTarget,
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
        let result = exec_once(target, id, &probe.command, probe.timeout).await;
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
    fn exec_probes_get_upstreams_defaults() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "livenessProbe": {"exec": {"command": ["check"]}},
            "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 2, "successThreshold": 2},
            "startupProbe": {"httpGet": {"port": 80}}
        }))
        .expect("container");
        let probes = ExecProbe::all_of(&c);
        // The httpGet startup probe is not an exec probe.
        assert_eq!(probes.len(), 2);
        let liveness = &probes[0];
        assert_eq!(liveness.kind, Kind::Liveness);
        assert_eq!(liveness.command, ["check"]);
        assert_eq!(
            (
                liveness.period,
                liveness.timeout,
                liveness.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 3)
        );
        assert_eq!(probes[1].period, Duration::from_secs(2));
        assert_eq!(probes[1].success_threshold, 2);
    }
}
