//! The hollow node: upstream's kubelet with a fake in-process container runtime (kubemark's
//! `--morph=kubelet`, `k8s.io/kubernetes/cmd/kubemark`, built with the control plane by
//! `test/cluster/build.sh`), the peer Krustlet is measured against (issue 18).
//!
//! How kubemark runs here (`cmd/kubemark/app/hollow_node.go`, `pkg/kubemark/hollow_kubelet.go`
//! at the cluster's Kubernetes version):
//! - It joins like Krustlet: TLS bootstrap with the cluster's bootstrap kubeconfig
//!   (`--bootstrap-kubeconfig`, `bootstrap.LoadClientCert`), writing its kubeconfig and client
//!   certificate into the node's temp dir (`--kubeconfig`, `--cert-dir`), so it talks to the API
//!   server as `system:node:<name>`, as Krustlet does.
//! - No container runtime is needed: `fakeremote.NewFakeRemoteRuntime` serves CRI in process on
//!   a socket `/tmp/kubelet_remote_<random>.sock` (`fakeremote.GenerateEndpoint`: a fixed
//!   directory, not configurable); with `--use-host-image-service=false` images come from the
//!   fake image service too, which "pulls" any image name. Its containers start Running and
//!   never exit (`FakeRuntimeService.StartContainer`): pods on a hollow node never complete.
//! - The kubelet's root dir (with its static-pod, pod-log and pod-resources dirs) is
//!   `/tmp/hollow-kubelet.<random>` (`GetHollowKubeletConfig` calls `MakeTempDirOrDie` with
//!   `/tmp` fixed, not `TMPDIR`). kubemark is killed, not stopped, so it removes neither: on
//!   drop the root dir named in its log is removed, and so are the sockets of that name that
//!   appeared while it ran and no longer accept connections.
//! - Its own kubeconfig and certificates go to a temp dir of the node's.
//! - Its kubelet API serves plain HTTP without authentication (kubemark passes no TLS options
//!   or authenticator), on `0.0.0.0:<--kubelet-port>`; the read-only port is turned off.
//! - kubemark's own client defaults are 10 QPS / burst 20; the node runs with the limits every
//!   bench node gets ([`crate::node::client_limits`]: the kubelet's defaults, 50 / 100, unless
//!   `--kube-api-qps`/`--kube-api-burst` say otherwise), as Krustlet does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use krustlet_e2e::cluster::{bin_dir, cluster};
use krustlet_e2e::node::{free_port, lifeline};
use tempfile::TempDir;

/// The taints every benchmark node registers with (Krustlet's defaults), so the same manifests
/// land on every kind of node.
const TAINTS: &str =
    "kubernetes.io/arch=wasm32-wasi:NoExecute,kubernetes.io/arch=wasm32-wasi:NoSchedule";

/// A running kubemark hollow node; killed, and its Node object deleted, on drop.
pub struct HollowNode {
    name: String,
    dir: TempDir,
    port: u16,
    child: Child,
    /// The fake runtime sockets that existed before this node started (not ours to remove).
    sockets_before: Vec<PathBuf>,
}

/// Where kubemark's fake runtime puts its sockets, and their name's start.
const SOCKET_DIR: &str = "/tmp";
const SOCKET_PREFIX: &str = "kubelet_remote_";
/// The root dir's prefix (`GetHollowKubeletConfig`).
const ROOT_PREFIX: &str = "/tmp/hollow-kubelet.";

/// The fake runtime sockets now in [`SOCKET_DIR`].
fn runtime_sockets() -> Vec<PathBuf> {
    std::fs::read_dir(SOCKET_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(SOCKET_PREFIX) && n.ends_with(".sock"))
        })
        .collect()
}

/// The root dir kubemark's log names (`Using <dir> as root dir for hollow-kubelet`).
fn root_dir_in(log: &str) -> Option<PathBuf> {
    log.lines()
        .find_map(|l| l.split("Using ").nth(1)?.split(" as root dir").next())
        .filter(|dir| dir.starts_with(ROOT_PREFIX) && !dir.contains(".."))
        .map(PathBuf::from)
}

/// Where `test/cluster/build.sh` links kubemark.
///
/// # Errors
/// When it is not there: a prerequisite of `--against hollow`, never skipped.
pub fn kubemark() -> anyhow::Result<PathBuf> {
    let path = bin_dir().join("kubemark");
    if !path.exists() {
        bail!(
            "prerequisite missing: {} (kubemark, the hollow node of `--against hollow`); \
             build it with `test/cluster/build.sh`",
            path.display()
        );
    }
    Ok(path)
}

impl HollowNode {
    /// Starts kubemark as node `name` with room for `max_pods` pods. Returns once the process
    /// runs; the caller waits for the Node to be Ready.
    ///
    /// # Errors
    /// When kubemark is missing or cannot be started.
    pub fn start(name: &str, max_pods: usize) -> anyhow::Result<Self> {
        let binary = kubemark()?;
        let info = cluster();
        let limits = crate::node::client_limits();
        let dir = tempfile::Builder::new()
            .prefix("krustlet-bench-hollow-")
            .tempdir()?;
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("kubemark.log"))?;
        let mut command = Command::new(&binary);
        command
            .arg("--morph=kubelet")
            .arg(format!("--name={name}"))
            .arg(format!(
                "--bootstrap-kubeconfig={}",
                info.bootstrap_kubeconfig.display()
            ))
            .arg(format!(
                "--kubeconfig={}",
                dir.path().join("kubeconfig").display()
            ))
            .arg(format!("--cert-dir={}", dir.path().join("pki").display()))
            .arg(format!("--kubelet-port={port}"))
            .arg("--kubelet-read-only-port=0")
            .arg(format!("--max-pods={max_pods}"))
            .arg("--use-host-image-service=false")
            .arg(format!("--register-with-taints={TAINTS}"))
            .arg(format!("--kube-api-qps={}", limits.qps))
            .arg(format!("--kube-api-burst={}", limits.burst))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        lifeline(&mut command);
        let sockets_before = runtime_sockets();
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            name: name.to_string(),
            dir,
            port,
            child,
            sockets_before,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kubemark.log")).unwrap_or_default()
    }

    /// `kubelet_pod_start_duration_seconds` (sum, count) from the kubelet's `/metrics` (plain
    /// HTTP on loopback, see the module docs); zeros when unreadable.
    pub async fn pod_start_metric(&self) -> (f64, f64) {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build();
        let text = match client {
            Ok(client) => match client.get(&url).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            },
            Err(_) => String::new(),
        };
        crate::harness::pod_start_from_metrics(&text)
    }
}

impl Drop for HollowNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::harness::delete_node(&self.name);
        if let Some(root) = root_dir_in(&self.log()) {
            let _ = std::fs::remove_dir_all(root);
        }
        // A socket that refuses connections has no server left: ours, or another's stale one.
        for socket in runtime_sockets() {
            if !self.sockets_before.contains(&socket)
                && std::os::unix::net::UnixStream::connect(&socket).is_err()
            {
                let _ = std::fs::remove_file(&socket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_dir_comes_from_kubemarks_log() {
        let log = "I1130 09:15:35.063301    5764 hollow_kubelet.go:152] Using \
                   /tmp/hollow-kubelet.2625648203 as root dir for hollow-kubelet\n";
        assert_eq!(
            root_dir_in(log),
            Some(PathBuf::from("/tmp/hollow-kubelet.2625648203"))
        );
        assert_eq!(root_dir_in("Using / as root dir for hollow-kubelet"), None);
    }
}
