//! Test hosts: a networked test node runs in a network namespace of its own, as a node of a
//! real cluster runs on a machine of its own, with its CNI bridge and kube-proxy beside it.
//!
//! Everything lives in namespaces this process creates, on 198.19.0.0/16 (RFC 2544's
//! benchmarking range, never routed off the machine; [`crate::address`] keeps to
//! 198.18.0.0/16):
//!
//! ```text
//! root namespace: control plane and registries on 127.0.0.1, 198.19.S.1 on a veth
//!   └─ lan (krustlet-e2e-<pid>-lan): bridge lan0, router 198.19.S.254, CoreDNS on :53,
//!      one route per node podCIDR (via that node's host), no default route
//!        ├─ host (krustlet-e2e-<pid>-h<n>): eth0 198.19.S.<n>, default via the router;
//!        │    Krustlet, kube-proxy, the CNI bridge cni0 and the node's pods
//!        └─ host ...
//! ```
//!
//! A packet from a pod can reach other hosts, their pods and the router, and nothing else: the
//! router has no default route and the root namespace's end only answers. The control plane
//! and registries listen on the root namespace's loopback, which a namespace cannot reach, so
//! each namespace gets a forwarder: listeners on its own 127.0.0.1 at the same ports, whose
//! connections this process relays to the root's 127.0.0.1 (kubeconfigs and image references
//! stay as they are). The API server reaches a node's kubelet at the node's 198.19.S.<n>.
//!
//! Cluster DNS: CoreDNS runs in the lan namespace with the `kubernetes` plugin, behind the
//! Service `kube-system/kube-dns` at [`CLUSTER_DNS`] (its EndpointSlice names the router), so
//! kube-proxy in every host sends cluster DNS there, as in a kubeadm cluster.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};
use kubelet::network::netns::NetNs;

use crate::address::ip;
use crate::cluster::{bin_dir, cluster};

/// The prefix of every namespace the harness creates ([`crate::address::remove_leftovers`]
/// removes those of dead processes).
const NETNS_PREFIX: &str = "krustlet-e2e-";

/// The cluster DNS Service's ClusterIP (in the test cluster's 10.0.0.0/24 service range).
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

/// The range the controller-manager allocates node podCIDRs from (`--cluster-cidr`).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Sets a sysctl inside a namespace (`/proc/sys/net` is per namespace).
fn sysctl(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let ns = open(netns)?;
    ns.run(|| std::fs::write(&path, value))?
        .with_context(|| format!("setting {key}={value} in {netns}"))
}

fn netns_path(netns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(netns)
}

fn open(netns: &str) -> anyhow::Result<NetNs> {
    NetNs::open(&netns_path(netns)).with_context(|| format!("opening network namespace {netns}"))
}

/// The 127.0.0.1 ports of the control plane and registries that namespaces reach through a
/// forwarder.
fn forwarded_ports() -> anyhow::Result<Vec<u16>> {
    let info = cluster();
    let port = |address: &str| -> anyhow::Result<u16> {
        address
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .with_context(|| format!("no port in {address}"))
    };
    let mut ports = vec![port(&info.server)?];
    for registry in [&info.registry, &info.auth_registry] {
        if !registry.is_empty() {
            ports.push(port(registry)?);
        }
    }
    Ok(ports)
}

/// The runtime that relays forwarded connections, for the life of the process.
fn relay_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testhost-relay")
            .enable_all()
            .build()
            .expect("relay runtime")
    })
}

/// Listens on `ports` at 127.0.0.1 inside `netns` and relays each connection to the same port
/// on the root namespace's 127.0.0.1; the returned tasks end the relay when aborted.
fn forward_loopback(netns: &str, ports: &[u16]) -> anyhow::Result<Vec<tokio::task::AbortHandle>> {
    let ns = open(netns)?;
    let listeners = ns.run(|| {
        ports
            .iter()
            .map(|&port| {
                let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
                listener.set_nonblocking(true)?;
                Ok((port, listener))
            })
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    let runtime = relay_runtime();
    let _guard = runtime.enter();
    listeners
        .into_iter()
        .map(|(port, listener)| {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            Ok(runtime
                .spawn(async move {
                    while let Ok((mut inside, _)) = listener.accept().await {
                        tokio::spawn(async move {
                            if let Ok(mut outside) =
                                tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await
                            {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                            }
                        });
                    }
                })
                .abort_handle())
        })
        .collect()
}

/// Makes a child start inside `netns` and die with the thread that spawned it (the node
/// harness's [`crate::node::lifeline`]).
#[allow(unsafe_code)]
fn enter_and_lifeline(command: &mut Command, netns: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::open(netns_path(netns))
        .with_context(|| format!("opening network namespace {netns}"))?;
    // SAFETY: setns is async-signal-safe; the closure owns the file it reads.
    unsafe {
        command.pre_exec(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    crate::node::lifeline(command);
    Ok(())
}

/// The lan of this process: created once, on first use, and kept until the process ends (the
/// next run's [`crate::address::remove_leftovers`] deletes it).
pub struct Lan {
    netns: String,
    /// The third octet of this lan's 198.19.S.0/24.
    subnet: u8,
    next_host: AtomicU8,
    routes: Mutex<()>,
}

impl Lan {
    /// The lan of this process, created on first use: its namespace and bridge, the root
    /// namespace's end, the loopback forwarder and CoreDNS behind `kube-system/kube-dns`.
    ///
    /// # Panics
    /// When it cannot be created (the message names the missing prerequisite).
    pub fn get() -> &'static Lan {
        static LAN: OnceLock<Result<Lan, String>> = OnceLock::new();
        let lan = LAN.get_or_init(|| {
            // CoreDNS dies with the thread that started it, so start it from one that lives as
            // long as the process.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let created = Lan::create();
                let coredns = match &created {
                    Ok(lan) => lan.start_coredns(),
                    Err(_) => Ok(None),
                };
                let result = match (created, coredns) {
                    (Ok(lan), Ok(child)) => {
                        let _ = tx.send(Ok(lan));
                        child
                    }
                    (Err(e), _) | (Ok(_), Err(e)) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                        None
                    }
                };
                let _coredns = result;
                loop {
                    std::thread::park();
                }
            });
            rx.recv()
                .unwrap_or_else(|_| Err("the lan's thread died".into()))
        });
        match lan {
            Ok(lan) => lan,
            Err(e) => panic!("test hosts unavailable: {e}"),
        }
    }

    fn create() -> anyhow::Result<Self> {
        crate::address::remove_leftovers();
        let pid = std::process::id();
        let netns = format!("{NETNS_PREFIX}{pid}-lan");
        let in_use = ip(&["-4", "-o", "addr", "show"])?;
        let start = (pid % 256) as u8;
        let subnet = (0..=255u8)
            .map(|i| start.wrapping_add(i))
            .find(|s| !in_use.contains(&format!(" 198.19.{s}.")))
            .context("no free /24 in 198.19.0.0/16 for the test lan")?;
        let root_veth = format!("krl{pid:x}");
        let root_veth = &root_veth[..root_veth.len().min(15)];
        ip(&["netns", "add", &netns])?;
        let lan = Self {
            netns: netns.clone(),
            subnet,
            next_host: AtomicU8::new(2),
            routes: Mutex::new(()),
        };
        let n = ["-n", netns.as_str()];
        ip(&[&n[..], &["link", "set", "lo", "up"]].concat())?;
        ip(&[&n[..], &["link", "add", "lan0", "type", "bridge"]].concat())?;
        ip(&[
            &n[..],
            &[
                "addr",
                "add",
                &format!("{}/24", lan.router()),
                "dev",
                "lan0",
            ],
        ]
        .concat())?;
        ip(&[&n[..], &["link", "set", "lan0", "up"]].concat())?;
        ip(&[
            "link", "add", root_veth, "type", "veth", "peer", "name", "uplink", "netns", &netns,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("198.19.{subnet}.1/24"),
            "dev",
            root_veth,
        ])?;
        ip(&["link", "set", root_veth, "up"])?;
        ip(&[&n[..], &["link", "set", "uplink", "master", "lan0", "up"]].concat())?;
        sysctl(&netns, "net.ipv4.ip_forward", "1")?;
        // Hosts route through the router on their own segment; redirects would only teach
        // them the same path.
        sysctl(&netns, "net.ipv4.conf.all.send_redirects", "0")?;
        sysctl(&netns, "net.ipv4.conf.lan0.send_redirects", "0")?;
        // The lan lives as long as the process, and so do its relays.
        forward_loopback(&netns, &forwarded_ports()?)?;
        Ok(lan)
    }

    /// CoreDNS on the router's port 53, and the `kube-dns` Service and EndpointSlice naming it.
    fn start_coredns(&self) -> anyhow::Result<Option<Child>> {
        let info = cluster();
        let binary = bin_dir().join("coredns");
        if !binary.exists() {
            bail!(
                "prerequisite missing: {} (build it with test/cluster/build.sh)",
                binary.display()
            );
        }
        let dir = info.dir.join(format!("coredns-{}", self.netns));
        std::fs::create_dir_all(&dir)?;
        let corefile = dir.join("Corefile");
        std::fs::write(
            &corefile,
            format!(
                ".:53 {{\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        \
                 kubeconfig {}\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n    \
                 }}\n    cache 5\n}}\n",
                info.kubeconfig.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("coredns.log"))?;
        let mut command = Command::new(&binary);
        command
            .arg("-conf")
            .arg(&corefile)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        enter_and_lifeline(&mut command, &self.netns)?;
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let router = self.router();
        let manifest = format!(
            r#"apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  clusterIP: {CLUSTER_DNS}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-lan
  namespace: kube-system
  labels: {{kubernetes.io/service-name: kube-dns}}
addressType: IPv4
endpoints:
- addresses: ["{router}"]
  conditions: {{ready: true}}
ports:
- {{name: dns, port: 53, protocol: UDP}}
- {{name: dns-tcp, port: 53, protocol: TCP}}
"#
        );
        let path = dir.join("kube-dns.yaml");
        std::fs::write(&path, manifest)?;
        crate::kubectl(&["apply", "-f", &path.display().to_string()])
            .context("creating the kube-dns Service")?;
        Ok(Some(child))
    }

    /// The lan's namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The router's address (and CoreDNS's).
    pub fn router(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.subnet, 254)
    }

    /// Routes `cidr` (a node's podCIDR) to `via` (its host), replacing an older route.
    fn route(&self, cidr: &str, via: Ipv4Addr) -> anyhow::Result<()> {
        let _one = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        ip(&[
            "-n",
            &self.netns,
            "route",
            "replace",
            cidr,
            "via",
            &via.to_string(),
        ])
        .map(drop)
    }

    fn unroute(&self, cidr: &str, via: Ipv4Addr) {
        let _one = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let _ = ip(&[
            "-n",
            &self.netns,
            "route",
            "del",
            cidr,
            "via",
            &via.to_string(),
        ]);
    }
}

/// One test host: a namespace on the lan with its own address; deleted (with everything in
/// it) on drop.
pub struct TestHost {
    netns: String,
    ip: Ipv4Addr,
    relays: Vec<tokio::task::AbortHandle>,
    kube_proxy: Option<Child>,
    pod_cidr: Option<String>,
    resolv_dir: PathBuf,
}

impl TestHost {
    /// Creates a host on the lan: namespace, veth to the bridge, address, default route via
    /// the router, loopback forwarder, and a resolv.conf naming the cluster DNS for commands
    /// run with [`TestHost::command`].
    ///
    /// # Errors
    /// When `ip` fails (root is needed) or the lan has no address left.
    pub fn create() -> anyhow::Result<Self> {
        let lan = Lan::get();
        let n = lan.next_host.fetch_add(1, Ordering::Relaxed);
        if !(2..254).contains(&n) {
            bail!("the test lan has no host address left (252 hosts per test process)");
        }
        let pid = std::process::id();
        let netns = format!("{NETNS_PREFIX}{pid}-h{n}");
        let address = Ipv4Addr::new(198, 19, lan.subnet, n);
        ip(&["netns", "add", &netns])?;
        let resolv_dir = Path::new("/etc/netns").join(&netns);
        let mut host = Self {
            netns: netns.clone(),
            ip: address,
            relays: Vec::new(),
            kube_proxy: None,
            pod_cidr: None,
            resolv_dir,
        };
        let lan_end = format!("h{n}");
        ip(&[
            "-n", &lan.netns, "link", "add", &lan_end, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ])?;
        ip(&[
            "-n", &lan.netns, "link", "set", &lan_end, "master", "lan0", "up",
        ])?;
        let h = ["-n", netns.as_str()];
        ip(&[&h[..], &["link", "set", "lo", "up"]].concat())?;
        ip(&[
            &h[..],
            &["addr", "add", &format!("{address}/24"), "dev", "eth0"],
        ]
        .concat())?;
        ip(&[&h[..], &["link", "set", "eth0", "up"]].concat())?;
        ip(&[
            &h[..],
            &["route", "add", "default", "via", &lan.router().to_string()],
        ]
        .concat())?;
        // kube-proxy needs bridged traffic to pass iptables (a pod reaching a Service whose
        // endpoint is on the same bridge), as kubeadm's preflight checks.
        sysctl(&netns, "net.bridge.bridge-nf-call-iptables", "1").context(
            "prerequisite missing: br_netfilter (`modprobe br_netfilter`), which kube-proxy \
             needs for pods reaching Services on their own node",
        )?;
        host.relays = forward_loopback(&netns, &forwarded_ports()?)?;
        // `ip netns exec` mounts /etc/netns/<name>/resolv.conf over /etc/resolv.conf.
        std::fs::create_dir_all(&host.resolv_dir)?;
        std::fs::write(
            host.resolv_dir.join("resolv.conf"),
            format!(
                "nameserver {CLUSTER_DNS}\nsearch svc.cluster.local cluster.local\noptions ndots:5\n"
            ),
        )?;
        Ok(host)
    }

    /// The host's address on the lan.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The namespace's name (`ip netns exec <name> ...`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The namespace's file, for `setns`.
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }

    /// A command that runs inside the host (through `ip netns exec`, so name lookups use the
    /// cluster DNS).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, program]);
        command
    }

    /// Prepares `command` to run inside the host and die with the calling thread.
    ///
    /// # Errors
    /// When the namespace cannot be opened.
    pub fn enter(&self, command: &mut Command) -> anyhow::Result<()> {
        enter_and_lifeline(command, &self.netns)
    }

    /// Makes the node's `pod_cidr` reachable from every host (a route on the router).
    ///
    /// # Errors
    /// When the route cannot be added.
    pub fn route_pods(&mut self, pod_cidr: &str) -> anyhow::Result<()> {
        Lan::get().route(pod_cidr, self.ip)?;
        self.pod_cidr = Some(pod_cidr.to_string());
        Ok(())
    }

    /// Makes the host the network of Krustlet node `node` (already started inside it), as a
    /// CNI DaemonSet and the node's kube-proxy would: waits for the podCIDR the
    /// controller-manager allocates, writes a bridge/host-local/portmap conflist over it into
    /// `conf_dir` (the node's `--cni-conf-dir`; IPAM state in `state_dir/ipam`), routes the
    /// podCIDR to this host on the router, and starts kube-proxy (log in
    /// `state_dir/kube-proxy.log`).
    ///
    /// # Errors
    /// When the node gets no podCIDR within a minute, or a step fails.
    pub async fn attach_node(
        &mut self,
        node: &str,
        conf_dir: &Path,
        state_dir: &Path,
    ) -> anyhow::Result<String> {
        let pod_cidr = wait_pod_cidr(node, std::time::Duration::from_secs(60)).await?;
        std::fs::create_dir_all(conf_dir)?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "krustlet-e2e",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": state_dir.join("ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(
            conf_dir.join("10-krustlet-e2e.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        self.route_pods(&pod_cidr)?;
        self.start_kube_proxy(node, &state_dir.join("kube-proxy.log"))?;
        Ok(pod_cidr)
    }

    /// Starts kube-proxy (iptables mode) for `node` inside the host, with its output in `log`.
    ///
    /// # Errors
    /// When kube-proxy is not built or does not start.
    pub fn start_kube_proxy(&mut self, node: &str, log: &Path) -> anyhow::Result<()> {
        let info = cluster();
        let binary = bin_dir().join("kube-proxy");
        if !binary.exists() {
            bail!(
                "prerequisite missing: {} (build it with test/cluster/build.sh)",
                binary.display()
            );
        }
        let out = std::fs::File::create(log)?;
        let mut command = Command::new(&binary);
        command
            .arg(format!("--kubeconfig={}", info.kubeconfig.display()))
            .arg(format!("--hostname-override={node}"))
            .arg(format!("--bind-address={}", self.ip))
            .arg(format!("--cluster-cidr={CLUSTER_CIDR}"))
            .args([
                "--proxy-mode=iptables",
                // conntrack's table size is the machine's, not the namespace's: leave it.
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
                "--metrics-bind-address=127.0.0.1:10249",
                "--healthz-bind-address=127.0.0.1:10256",
                "--v=2",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        self.enter(&mut command)?;
        self.kube_proxy = Some(
            command
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?,
        );
        Ok(())
    }
}

/// Waits for the controller-manager to give node `node` its podCIDR.
///
/// # Errors
/// When it has none after `timeout`.
pub async fn wait_pod_cidr(node: &str, timeout: std::time::Duration) -> anyhow::Result<String> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
        kube::Api::all(crate::cluster::client().await?);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(cidr) = nodes.get_opt(node).await?.and_then(|n| n.spec?.pod_cidr) {
            return Ok(cidr);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "node {node} got no podCIDR within {timeout:?} (is the controller-manager \
                 allocating node CIDRs, and is the node registered?)"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.kube_proxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for relay in &self.relays {
            relay.abort();
        }
        if let Some(cidr) = &self.pod_cidr {
            Lan::get().unroute(cidr, self.ip);
        }
        let _ = std::fs::remove_dir_all(&self.resolv_dir);
        // Deleting the namespace deletes its veth end, and so the pair.
        let _ = ip(&["netns", "del", &self.netns]);
    }
}
