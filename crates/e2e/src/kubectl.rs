//! Running the cluster's own kubectl, as a user would.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::cluster;

/// Runs `kubectl --kubeconfig <admin> ARGS` and returns its stdout; fails with its stderr.
pub fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let info = cluster();
    let output = Command::new(&info.kubectl)
        .arg("--kubeconfig")
        .arg(&info.kubeconfig)
        .args(args)
        .output()
        .with_context(|| format!("running {}", info.kubectl.display()))?;
    if !output.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// What one kubectl run gave: exit code, stdout, stderr.
pub struct Run {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs the cluster's kubectl with `env`, feeding `stdin` (then closing it), within `timeout`.
pub fn kubectl_run(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
    timeout: Duration,
) -> Run {
    let info = cluster();
    let mut command = Command::new(&info.kubectl);
    command
        .arg("--kubeconfig")
        .arg(&info.kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("run kubectl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "kubectl {} did not return within {timeout:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
