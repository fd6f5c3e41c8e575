//! Starting (or reusing) the test control plane and registries.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};
use serde::Deserialize;

/// What the `devcluster` launcher reports once the cluster is ready (its `cluster.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterInfo {
    /// The cluster's state directory (certs, logs, etcd data).
    pub dir: PathBuf,
    /// The API server URL, `https://127.0.0.1:<port>`.
    pub server: String,
    /// An admin kubeconfig (group `system:masters`).
    pub kubeconfig: PathBuf,
    /// A kubeconfig holding only the node bootstrap token.
    pub bootstrap_kubeconfig: PathBuf,
    /// The bootstrap token, `<id>.<secret>`.
    pub bootstrap_token: String,
    /// The cluster CA certificate.
    pub ca_file: PathBuf,
    /// The API server's client certificate for talking to kubelets.
    pub kubelet_client_cert_file: PathBuf,
    /// Its key.
    pub kubelet_client_key_file: PathBuf,
    /// A kubectl built from the same Kubernetes release as the cluster.
    pub kubectl: PathBuf,
    /// `127.0.0.1:<port>` of the anonymous registry.
    pub registry: String,
    /// The anonymous registry's storage directory.
    pub registry_dir: PathBuf,
    /// `127.0.0.1:<port>` of the registry behind htpasswd auth.
    pub auth_registry: String,
    /// The authenticated registry's storage directory.
    pub auth_registry_dir: PathBuf,
    /// The user the authenticated registry accepts.
    pub auth_registry_user: String,
    /// Its password.
    pub auth_registry_password: String,
}

/// The repository root (two levels above the crate being tested or run).
///
/// Cargo sets `CARGO_MANIFEST_DIR` for the processes of `cargo test` and `cargo run`; that one
/// comes first because the compile-time value goes stale when the same target dir serves
/// another checkout (cargo does not rebuild a path crate for a new checkout path).
pub fn repo_root() -> PathBuf {
    let here = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|dir| PathBuf::from(dir).join("../.."))
        .filter(|root| root.join("test/cluster").is_dir());
    here.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The project-local bin dir that `test/cluster/build.sh` fills.
pub fn bin_dir() -> PathBuf {
    repo_root().join(".bin")
}

struct Running {
    info: ClusterInfo,
    // Held for the life of the process: when it exits, the pipe closes and the launcher stops
    // the cluster and removes its state, however the test process ended.
    _lifeline: Option<Mutex<(Child, ChildStdin)>>,
}

static CLUSTER: OnceLock<Result<Running, String>> = OnceLock::new();

/// The cluster for this test process, started on first use.
///
/// With `KRUSTLET_E2E_CLUSTER=<path to cluster.json>` an already running cluster is reused (the
/// dev cluster, or one started by the test runner for several test binaries).
///
/// # Panics
/// When the cluster cannot be started; the message names the missing prerequisite or the log to
/// read. Tests must fail, never skip, without their cluster.
pub fn cluster() -> &'static ClusterInfo {
    match CLUSTER.get_or_init(|| start().map_err(|e| format!("{e:#}"))) {
        Ok(running) => &running.info,
        Err(e) => panic!("test cluster unavailable: {e}"),
    }
}

fn start() -> anyhow::Result<Running> {
    // reqwest (under oci-client) is built without a default TLS provider; pick ring, as kube does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Node addresses left by harness processes that were killed.
    crate::address::remove_leftovers();
    if let Some(path) = std::env::var_os("KRUSTLET_E2E_CLUSTER") {
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading KRUSTLET_E2E_CLUSTER={}",
                Path::new(&path).display()
            )
        })?;
        let info = serde_json::from_str(&text).context("parsing cluster.json")?;
        return Ok(Running {
            info,
            _lifeline: None,
        });
    }
    let launcher = bin_dir().join("devcluster");
    if !launcher.exists() {
        bail!(
            "prerequisite missing: {} (the real control plane); build it with `test/cluster/build.sh` \
             or run `.ci/run`",
            launcher.display()
        );
    }
    let mut child = Command::new(&launcher)
        .arg("--stdin-lifeline")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", launcher.display()))?;
    let stdin = child.stdin.take().context("launcher stdin")?;
    let stdout = child.stdout.take().context("launcher stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the launcher's output")?;
        if let Some(json) = line.strip_prefix("DEVCLUSTER_READY ") {
            let info = serde_json::from_str(json).context("parsing the ready line")?;
            return Ok(Running {
                info,
                _lifeline: Some(Mutex::new((child, stdin))),
            });
        }
    }
    let status = child.wait()?;
    bail!("devcluster exited ({status}) before it was ready; its error is printed above")
}

/// An admin client for the test cluster.
pub async fn client() -> anyhow::Result<kube::Client> {
    client_from(&cluster().kubeconfig).await
}

/// A client from any kubeconfig (a node's own, say).
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}
