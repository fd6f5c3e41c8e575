//! Krustlet nodes under test: real `krustlet` processes joined to the test cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use tempfile::TempDir;

use crate::address::NodeAddress;
use crate::cluster::{bin_dir, client, cluster};
use crate::testhost::TestHost;

/// The hard eviction thresholds test nodes run with: the tests share the machine's disk with
/// builds, and a nearly full disk (CI's has run at 99% used) must not taint every test node
/// with disk-pressure, so the disk signal is an absolute 100 MiB rather than a share (tests
/// that need pressure set their own).
pub const TEST_EVICTION_HARD: &str =
    "--eviction-hard=memory.available<100Mi,nodefs.available<100Mi,pid.available<5%";

/// A running Krustlet node; killed, and its Node object deleted, on drop.
pub struct KrustletNode {
    name: String,
    binary: PathBuf,
    data_dir: TempDir,
    port: u16,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    /// A non-loopback address the node binds, if it has one (else 127.0.0.1).
    address: Option<NodeAddress>,
    /// The test host the node runs in, if it is networked ([`KrustletNode::start_networked`]).
    host: Option<TestHost>,
    child: Option<Child>,
}

/// A free loopback port (the kernel's choice, released for the caller to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl KrustletNode {
    /// Starts `binary` (the test's `CARGO_BIN_EXE_krustlet-e2e-node`) as a new node that joins
    /// through TLS bootstrap with the cluster's bootstrap token. `extra_args` are appended.
    pub fn start(binary: &str, prefix: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(binary, prefix, extra_args, &[])
    }

    /// [`KrustletNode::start`] on a non-loopback address of its own ([`NodeAddress`]), so the
    /// API server's node proxy (`kubectl get --raw /api/v1/nodes/<node>/proxy/...`,
    /// `kubectl logs` through the proxy) reaches it.
    pub fn start_addressed(
        binary: &str,
        prefix: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_full(
            binary,
            prefix,
            extra_args,
            &[],
            Some(NodeAddress::create()?),
        )
    }

    /// Starts `n` nodes (each its own name, data dir and port), as a fleet for tests of
    /// scheduling and node failure.
    pub fn start_many(
        binary: &str,
        prefix: &str,
        n: usize,
        extra_args: &[&str],
    ) -> anyhow::Result<Vec<Self>> {
        (0..n)
            .map(|_| Self::start(binary, prefix, extra_args))
            .collect()
    }

    /// [`KrustletNode::start`] with extra environment variables for the process.
    pub fn start_with_env(
        binary: &str,
        prefix: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_full(binary, prefix, extra_args, env, None)
    }

    /// [`KrustletNode::start`] in a [`TestHost`] of its own, as a node of a real cluster with
    /// pod networking: the CNI reference plugins (bridge `cni0`, host-local IPAM over the podCIDR
    /// the controller-manager gave the node, portmap), kube-proxy beside it, and the cluster
    /// DNS. Returns once the node is Ready with its CNI configuration in place.
    ///
    /// # Errors
    /// When the host cannot be made (root is needed), the node gets no podCIDR, or it does
    /// not become Ready.
    pub async fn start_networked(
        binary: &str,
        prefix: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let host = TestHost::create()?;
        let mut node = Self::new(binary, prefix, extra_args, &[], None, Some(host))?;
        node.spawn()?;
        let name = node.name.clone();
        let conf_dir = node.cni_conf_dir();
        let data_dir = node.data_dir().to_path_buf();
        let host = node.host.as_mut().context("networked node without host")?;
        host.attach_node(&name, &conf_dir, &data_dir).await?;
        node.wait_network_ready(Duration::from_secs(60)).await?;
        Ok(node)
    }

    fn start_full(
        binary: &str,
        prefix: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        address: Option<NodeAddress>,
    ) -> anyhow::Result<Self> {
        let mut node = Self::new(binary, prefix, extra_args, env, address, None)?;
        node.spawn()?;
        Ok(node)
    }

    fn new(
        binary: &str,
        prefix: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
        address: Option<NodeAddress>,
        host: Option<TestHost>,
    ) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Self {
            name,
            binary: binary.into(),
            data_dir: new_data_dir()?,
            port: free_port(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            address,
            host,
            child: None,
        })
    }

    /// Where a networked node's CNI configuration lives.
    fn cni_conf_dir(&self) -> PathBuf {
        self.data_dir.path().join("net.d")
    }

    /// Waits until the node is Ready and no longer says that pods share its network.
    async fn wait_network_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(client().await?);
        let deadline = Instant::now() + timeout;
        loop {
            let ready = nodes.get_opt(&self.name).await?.and_then(|n| {
                n.status?
                    .conditions?
                    .into_iter()
                    .find(|c| c.type_ == "Ready")
            });
            if let Some(ready) = &ready
                && ready.status == "True"
                && !ready
                    .message
                    .as_deref()
                    .unwrap_or("")
                    .contains("cni config")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not Ready with its CNI network within {timeout:?} (last: {ready:?}); \
                     log:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The arguments every test node runs with.
    fn args(&self) -> Vec<String> {
        let info = cluster();
        let mut args: Vec<String> = vec![
            format!("--node-name={}", self.name),
            format!("--node-ip={}", self.ip()),
            format!("--port={}", self.port),
            format!("--data-dir={}", self.data_dir.path().display()),
            format!(
                "--bootstrap-kubeconfig={}",
                info.bootstrap_kubeconfig.display()
            ),
            "--log=info,kubelet=debug".into(),
            TEST_EVICTION_HARD.into(),
        ];
        if self.host.is_some() {
            args.push(format!("--cni-conf-dir={}", self.cni_conf_dir().display()));
            args.push(format!("--cni-bin-dir={}", bin_dir().join("cni").display()));
            args.push(format!("--cluster-dns={}", crate::testhost::CLUSTER_DNS));
            args.push("--cluster-domain=cluster.local".into());
        } else if !self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--cni-conf-dir"))
        {
            // The host's /etc/cni/net.d is not the test's: a node gets pod networking only
            // when its test gives it a CNI configuration of its own.
            args.push(format!(
                "--cni-conf-dir={}",
                self.data_dir.path().join("no-cni-config").display()
            ));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(&self.binary);
        command
            .args(self.args())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        match &self.host {
            Some(host) => host.enter(&mut command)?,
            None => lifeline(&mut command),
        }
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?,
        );
        Ok(())
    }

    /// Restarts the process (same name and data dir) with other extra arguments.
    pub fn restart_with(&mut self, extra_args: &[&str]) -> anyhow::Result<()> {
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        self.restart()
    }

    /// Starts the process again with the same name and data dir (after a kill or exit).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's data dir.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The address the node binds and reports as its InternalIP.
    pub fn ip(&self) -> std::net::IpAddr {
        if let Some(host) = &self.host {
            return host.ip().into();
        }
        self.address
            .as_ref()
            .map_or([127, 0, 0, 1].into(), |a| a.ip().into())
    }

    /// The test host of a networked node.
    pub fn host(&self) -> Option<&TestHost> {
        self.host.as_ref()
    }

    /// The kubelet API port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the process's output goes.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("krustlet.log")
    }

    /// The process's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until `lines` lines of the node's log (across restarts) contain every one of
    /// `parts`: work the node does in the background, such as compiling a program with
    /// Cranelift after a first start.
    pub async fn wait_log(
        &self,
        parts: &[&str],
        lines: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.log();
            let found = log
                .lines()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .count();
            if found >= lines {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{found} of {lines} lines of the node's log contain all of {parts:?} \
                     after {timeout:?}; log:\n{log}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("node process not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)?;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("node process not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "krustlet did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit (status 0).
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        let status = self.wait_exit(timeout).await?;
        if !status.success() {
            bail!(
                "krustlet exited with {status} after SIGTERM; log:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// Waits until the Node's Ready condition has `status` ("True", "False", "Unknown").
    pub async fn wait_ready(&self, status: &str, timeout: Duration) -> anyhow::Result<Node> {
        let nodes: Api<Node> = Api::all(client().await?);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(node) = nodes.get_opt(&self.name).await?
                && ready_status(&node).as_deref() == Some(status)
            {
                return Ok(node);
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not Ready={status} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A node shared by every test of this process that just needs somewhere to run pods; started
/// on first use from a thread that lives as long as the process (a child's parent-death signal
/// follows the thread that started it).
pub fn shared_node(binary: &'static str) -> &'static str {
    static NODE: OnceLock<Result<String, String>> = OnceLock::new();
    let name = NODE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let node = match KrustletNode::start(binary, "shared", &[]) {
                Ok(node) => node,
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let ready = runtime.block_on(node.wait_ready("True", Duration::from_secs(120)));
            let _ = tx.send(
                ready
                    .map(|_| node.name().to_string())
                    .map_err(|e| format!("{e:#}")),
            );
            // Keep the node (and this thread) alive for the rest of the process.
            loop {
                std::thread::park();
            }
        });
        rx.recv()
            .unwrap_or_else(|_| Err("shared node thread died".into()))
    });
    match name {
        Ok(name) => name,
        Err(e) => panic!("shared krustlet node unavailable: {e}"),
    }
}

/// The status of a Node's Ready condition.
pub fn ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

impl Drop for KrustletNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Pods' namespaces are bind mounts in the data dir: unmount them before it goes.
        for entry in std::fs::read_dir(self.data_dir.path().join("netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
        }
        let info = cluster();
        let _ = Command::new(&info.kubectl)
            .arg("--kubeconfig")
            .arg(&info.kubeconfig)
            .args([
                "delete",
                "node",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Makes the child die with the test process, even when that is killed outright.
#[allow(unsafe_code)]
pub fn lifeline(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Where a node's data directory is made: under `$KRUSTLET_E2E_NODE_DIR` if set (the bench
/// uses it to put a node's files on another file system), else in the temporary directory.
fn new_data_dir() -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("krustlet-e2e-");
    match std::env::var_os(NODE_DIR) {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
}

/// The environment variable naming the parent of the nodes' data directories.
pub const NODE_DIR: &str = "KRUSTLET_E2E_NODE_DIR";
