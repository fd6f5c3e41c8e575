//! `krustlet standalone` under test: a process running static pods from a manifest directory,
//! and the `krustlet pods` / `krustlet logs` commands that read its data dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::node::lifeline;

/// A standalone Krustlet; killed on drop.
pub struct StandaloneKrustlet {
    binary: PathBuf,
    node_name: String,
    manifests: TempDir,
    data_dir: TempDir,
    child: Option<Child>,
}

impl StandaloneKrustlet {
    /// Starts `binary` in standalone mode with an empty manifest directory.
    pub fn start(binary: &str, node_name: &str) -> anyhow::Result<Self> {
        let mut krustlet = Self {
            binary: binary.into(),
            node_name: node_name.into(),
            manifests: tempfile::Builder::new()
                .prefix("krustlet-manifests-")
                .tempdir()?,
            data_dir: tempfile::Builder::new()
                .prefix("krustlet-standalone-")
                .tempdir()?,
            child: None,
        };
        krustlet.spawn()?;
        Ok(krustlet)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(&self.binary);
        command
            .arg("standalone")
            .arg("--manifests")
            .arg(self.manifests.path())
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg(format!("--node-name={}", self.node_name))
            .arg("--node-ip=127.0.0.1")
            .arg("--log=info,kubelet=debug")
            .arg(crate::node::TEST_EVICTION_HARD)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        lifeline(&mut command);
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?,
        );
        Ok(())
    }

    /// Kills the process (SIGKILL, no graceful stop) and starts it again on the same dirs.
    pub fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        self.spawn()
    }

    /// The manifest directory.
    pub fn manifests(&self) -> &Path {
        self.manifests.path()
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The static pod name of a manifest's `metadata.name` on this node.
    pub fn pod_name(&self, name: &str) -> String {
        format!("{name}-{}", self.node_name)
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("krustlet.log")
    }

    /// The process's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `krustlet <args> --data-dir <data dir>` (a separate process, as a user would).
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.binary)
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .output()?;
        if !output.status.success() {
            bail!(
                "krustlet {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Polls `krustlet <args>` until `check` accepts its output; the error shows the last
    /// output and the Krustlet log.
    pub async fn wait_output(
        &mut self,
        args: &[&str],
        what: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.command(args);
            if let Ok(out) = &last
                && check(out)
            {
                return Ok(out.clone());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("{what}: krustlet exited ({status}); log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: not within {timeout:?}; last `krustlet {}`: {last:?}\nkrustlet log:\n{}",
                    args.join(" "),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for StandaloneKrustlet {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The row of `pod` in `krustlet pods` output, split into cells.
pub fn pod_row(table: &str, pod: &str) -> Option<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cells| cells.get(1).map(String::as_str) == Some(pod))
}
