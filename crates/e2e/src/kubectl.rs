//! Running the cluster's own kubectl, as a user would.

use std::process::Command;

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
