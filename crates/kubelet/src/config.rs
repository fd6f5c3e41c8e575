//! The kubelet's configuration: command-line flags, `KRUSTLET_*` environment variables and a
//! YAML config file, merged into one [`KubeletConfig`].
//!
//! Precedence, highest first: flags, environment variables, the config file (`--config`),
//! built-in defaults. The config file uses the flags' names in camelCase (`maxPods: 50`), but for
//! the kubelet's own spellings in [`CONFIG_KEY_EXCEPTIONS`] (`kubeAPIQPS`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::quantity;

/// Flags whose config-file key is not their name in camelCase, with their key: the kubelet's
/// own `KubeletConfiguration` spelling.
pub const CONFIG_KEY_EXCEPTIONS: &[(&str, &str)] = &[
    ("kube-api-qps", "kubeAPIQPS"),
    ("kube-api-burst", "kubeAPIBurst"),
];

/// Flags shared by every mode that runs pods; each also reads `KRUSTLET_<NAME>` and the config
/// file key of the same name in camelCase.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flags {
    /// YAML config file; its keys are these flags' names in camelCase. Flags and KRUSTLET_*
    /// variables override it.
    #[arg(long, env = "KRUSTLET_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Kubeconfig with the node's credentials. Written by TLS bootstrap when absent and
    /// --bootstrap-kubeconfig is given. [default: <data-dir>/kubeconfig]
    #[arg(long, env = "KRUSTLET_KUBECONFIG", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig with a bootstrap token, used to obtain a client certificate through a CSR
    /// when --kubeconfig does not exist yet.
    #[arg(long, env = "KRUSTLET_BOOTSTRAP_KUBECONFIG", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_kubeconfig: Option<PathBuf>,

    /// Directory for the node's client and serving certificates. [default: <data-dir>/pki]
    #[arg(long, env = "KRUSTLET_CERT_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_dir: Option<PathBuf>,

    /// The node's name. [default: the host name, lowercased]
    #[arg(long, env = "KRUSTLET_NODE_NAME", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// The node's InternalIP address. [default: the first non-loopback IPv4 address of an up
    /// interface, else 127.0.0.1]
    #[arg(long, env = "KRUSTLET_NODE_IP", value_name = "IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<IpAddr>,

    /// Port of the kubelet HTTPS API. [default: 10250]
    #[arg(long, env = "KRUSTLET_PORT", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,

    /// Certificate (chain) for the kubelet API, PEM; overrides the issued serving certificate.
    /// Needs --tls-private-key-file.
    #[arg(long, env = "KRUSTLET_TLS_CERT_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key of --tls-cert-file, PEM.
    #[arg(long, env = "KRUSTLET_TLS_PRIVATE_KEY_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_private_key_file: Option<PathBuf>,

    /// CA bundle that verifies client certificates on the kubelet API. [default: the cluster
    /// CA of the node's kubeconfig]
    #[arg(long, env = "KRUSTLET_CLIENT_CA_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,

    /// Lifetime, in seconds, the node asks for its client and serving certificates (the CSR's
    /// spec.expirationSeconds), at least 600 (the API server's minimum). The signer may issue
    /// shorter ones; each is renewed at 80% of its lifetime. [default: the signer's,
    /// kube-controller-manager --cluster-signing-duration]
    #[arg(long, env = "KRUSTLET_CSR_EXPIRATION_SECONDS", value_name = "SECONDS",
          value_parser = clap::value_parser!(u32).range(600..=i32::MAX as i64))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csr_expiration_seconds: Option<u32>,

    /// Most connections the kubelet API holds open at once; a connection beyond it is closed
    /// at once, so an idle crowd cannot exhaust the process's file descriptors. [default: 1000]
    #[arg(long, env = "KRUSTLET_API_MAX_CONNECTIONS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_max_connections: Option<u32>,

    /// How long a kubelet API connection may sit with no request in progress before it is
    /// closed, e.g. 90s (the kubelet's IdleTimeout). [default: 90s]
    #[arg(long, env = "KRUSTLET_API_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "opt_duration"
    )]
    pub api_idle_timeout: Option<Duration>,

    /// Directory for pod data, logs, images and state. [default: ~/.krustlet]
    #[arg(long, env = "KRUSTLET_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// Most pods this node runs, 1 to 100000. [default: 110]
    #[arg(long, env = "KRUSTLET_MAX_PODS", value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pods: Option<u32>,

    /// Extra node labels, KEY=VALUE, comma-separated.
    #[arg(
        long,
        env = "KRUSTLET_NODE_LABELS",
        value_name = "KEY=VALUE,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_labels: Option<Vec<Label>>,

    /// Taints to register with, KEY=VALUE:EFFECT, comma-separated; replaces the default.
    /// [default: kubernetes.io/arch=wasm32-wasi:NoExecute,kubernetes.io/arch=wasm32-wasi:NoSchedule]
    #[arg(
        long,
        env = "KRUSTLET_REGISTER_WITH_TAINTS",
        value_name = "KEY=VALUE:EFFECT,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub register_with_taints: Option<Vec<TaintSpec>>,

    /// Graceful node shutdown: with a period (e.g. 30s), SIGTERM stops every pod within it, reports them Failed and the node NotReady. 0 (the default, as upstream's shutdownGracePeriod) makes SIGTERM a restart: pods are left as they are and resume when Krustlet starts again. [default: 0s]
    #[arg(long, env = "KRUSTLET_SHUTDOWN_GRACE_PERIOD", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "opt_duration"
    )]
    pub shutdown_grace_period: Option<Duration>,

    /// How often node status is computed (and sent, if it changed). [default: 10s]
    #[arg(long, env = "KRUSTLET_NODE_STATUS_UPDATE_FREQUENCY", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "opt_duration"
    )]
    pub node_status_update_frequency: Option<Duration>,

    /// How often node status is sent even when unchanged. [default: 5m]
    #[arg(long, env = "KRUSTLET_NODE_STATUS_REPORT_FREQUENCY", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "opt_duration"
    )]
    pub node_status_report_frequency: Option<Duration>,

    /// Duration of the node Lease; it is renewed every quarter of it. [default: 40]
    #[arg(long, env = "KRUSTLET_NODE_LEASE_DURATION_SECONDS", value_name = "SECONDS",
          value_parser = clap::value_parser!(u32).range(4..=3600))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_lease_duration_seconds: Option<u32>,

    /// Requests per second the node's API client may make on average, as the kubelet's
    /// --kube-api-qps; beyond that a request waits for its turn. 0 means client-go's own
    /// default, 5 (rest.RESTClientFor's DefaultQPS, what the kubelet gets for 0). The Lease and
    /// node status go through a second client without a limit, as the kubelet's; events share
    /// this one. [default: 50]
    #[arg(long, env = "KRUSTLET_KUBE_API_QPS", value_name = "QPS",
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    #[serde(rename = "kubeAPIQPS", skip_serializing_if = "Option::is_none")]
    pub kube_api_qps: Option<u32>,

    /// Most requests the node's API client may make at once before --kube-api-qps paces it, as
    /// the kubelet's --kube-api-burst; at least 1 when --kube-api-qps is above 0 (with a QPS of
    /// 0, 0 means client-go's DefaultBurst, 10). [default: 100]
    #[arg(long, env = "KRUSTLET_KUBE_API_BURST", value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    #[serde(rename = "kubeAPIBurst", skip_serializing_if = "Option::is_none")]
    pub kube_api_burst: Option<u32>,

    /// Thresholds that raise MemoryPressure, DiskPressure and PIDPressure, as the kubelet's
    /// --eviction-hard: memory.available<100Mi,nodefs.available<10%,pid.available<5%.
    #[arg(
        long,
        env = "KRUSTLET_EVICTION_HARD",
        value_name = "SIGNAL<QUANTITY,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_hard: Option<Vec<Threshold>>,

    /// Soft eviction thresholds, as the kubelet's --eviction-soft (e.g. memory.available<1.5Gi):
    /// they raise the pressure condition at once, and evict only once met for their grace
    /// period (--eviction-soft-grace-period). [default: none]
    #[arg(
        long,
        env = "KRUSTLET_EVICTION_SOFT",
        value_name = "SIGNAL<QUANTITY,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_soft: Option<Vec<Threshold>>,

    /// How long each soft threshold must be met before pods are evicted, as the kubelet's
    /// --eviction-soft-grace-period (e.g. memory.available=1m30s); every soft threshold needs
    /// one. [default: none]
    #[arg(
        long,
        env = "KRUSTLET_EVICTION_SOFT_GRACE_PERIOD",
        value_name = "SIGNAL=DURATION,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_soft_grace_period: Option<Vec<SoftGrace>>,

    /// Most seconds of grace a pod evicted for a soft threshold gets (its own
    /// terminationGracePeriodSeconds if shorter); negative: the pod's own. Hard evictions give
    /// none. [default: 0]
    #[arg(
        long,
        env = "KRUSTLET_EVICTION_MAX_POD_GRACE_PERIOD",
        value_name = "SECONDS",
        allow_hyphen_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_max_pod_grace_period: Option<i64>,

    /// How long a pressure condition stays True after its threshold was last met, so it does
    /// not flap, as the kubelet's --eviction-pressure-transition-period. [default: 5m]
    #[arg(long, env = "KRUSTLET_EVICTION_PRESSURE_TRANSITION_PERIOD", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "opt_duration"
    )]
    pub eviction_pressure_transition_period: Option<Duration>,
    /// Where container logs are written, as `<ns>_<pod>_<uid>/<container>/<n>.log` (the
    /// kubelet's `podLogsDir`); a system service sets /var/log/pods for host log shippers.
    /// [default: <data-dir>/logs/pods]
    #[arg(long, env = "KRUSTLET_POD_LOGS_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_logs_dir: Option<PathBuf>,

    /// Directory for `<pod>_<ns>_<container>-<id>.log` links to each container's current log,
    /// as the kubelet keeps in /var/log/containers (a system service sets that). [default: none]
    #[arg(long, env = "KRUSTLET_CONTAINER_LOG_LINKS_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_log_links_dir: Option<PathBuf>,

    /// Size at which a container's log file is rotated, a quantity such as 10Mi or 512Ki; at
    /// least 32Ki. [default: 10Mi]
    #[arg(long, env = "KRUSTLET_CONTAINER_LOG_MAX_SIZE", value_name = "QUANTITY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_log_max_size: Option<ByteQuantity>,

    /// Most log files kept per container run, the current one included; at least 2. A
    /// container's logs stay within max-size × max-files (plus its previous run's). [default: 5]
    #[arg(long, env = "KRUSTLET_CONTAINER_LOG_MAX_FILES", value_name = "N",
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_log_max_files: Option<u32>,

    /// Write-rate bound on each container's log output, bytes per second (e.g. 1Mi; 0: none).
    /// A container that prints faster is paused until its output fits the rate (with one
    /// second of burst): no output is lost, and other pods are not slowed. [default: 2Mi]
    #[arg(long, env = "KRUSTLET_CONTAINER_LOG_MAX_RATE", value_name = "QUANTITY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_log_max_rate: Option<ByteQuantity>,
    /// Resources set aside for the operating system, subtracted from allocatable, as the
    /// kubelet's --system-reserved: cpu=100m,memory=100Mi,ephemeral-storage=1Gi,pid=100.
    #[arg(
        long,
        env = "KRUSTLET_SYSTEM_RESERVED",
        value_name = "RESOURCE=QUANTITY,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_reserved: Option<Vec<Reservation>>,

    /// Resources set aside for Krustlet itself, subtracted from allocatable, as the kubelet's
    /// --kube-reserved (same form as --system-reserved).
    #[arg(
        long,
        env = "KRUSTLET_KUBE_RESERVED",
        value_name = "RESOURCE=QUANTITY,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kube_reserved: Option<Vec<Reservation>>,

    /// A registry reached over plain HTTP instead of TLS, host[:port]; repeatable. Registries on
    /// loopback always use plain HTTP.
    #[arg(long, env = "KRUSTLET_INSECURE_REGISTRY", value_name = "HOST[:PORT]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_registry: Option<Vec<String>>,

    /// Disk use of the data dir's filesystem, in percent, at which image GC starts; 100
    /// disables it. [default: 85]
    #[arg(long, env = "KRUSTLET_IMAGE_GC_HIGH_THRESHOLD", value_name = "PERCENT",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_gc_high_threshold: Option<u8>,

    /// Disk use, in percent, image GC brings the filesystem below. [default: 80]
    #[arg(long, env = "KRUSTLET_IMAGE_GC_LOW_THRESHOLD", value_name = "PERCENT",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_gc_low_threshold: Option<u8>,

    /// How long an image must be unused before image GC may remove it. [default: 2m]
    #[arg(long, env = "KRUSTLET_IMAGE_MINIMUM_GC_AGE", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        with = "opt_duration"
    )]
    pub image_minimum_gc_age: Option<Duration>,

    /// Most bytes the layers of one image may decompress to, together (and the largest layer
    /// downloaded), a quantity such as 1Gi; a pull past it fails with ErrImagePull naming this
    /// flag, so a small compressed "bomb" cannot fill the disk or the node's memory.
    /// [default: 1Gi]
    #[arg(
        long,
        env = "KRUSTLET_IMAGE_MAX_UNPACKED_SIZE",
        value_name = "QUANTITY"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_max_unpacked_size: Option<ByteQuantity>,

    /// The largest WebAssembly module or component pulled, unpacked or compiled, a quantity
    /// such as 128Mi. [default: 128Mi]
    #[arg(long, env = "KRUSTLET_MAX_MODULE_SIZE", value_name = "QUANTITY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_module_size: Option<ByteQuantity>,

    /// How many programs compile at once, 1 to 64; other starts that need a compilation wait
    /// their turn (compiling is CPU- and memory-heavy, and every guest shares this process).
    /// [default: 2]
    #[arg(long, env = "KRUSTLET_COMPILE_CONCURRENCY", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile_concurrency: Option<u32>,

    /// Memory the in-process cache of compiled programs may hold, a quantity such as 256Mi;
    /// the least recently used programs are dropped past it (the on-disk cache keeps them).
    /// [default: 256Mi]
    #[arg(long, env = "KRUSTLET_COMPILE_CACHE_MEMORY", value_name = "QUANTITY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile_cache_memory: Option<ByteQuantity>,

    /// The compiler of a program's first start on this node (nothing compiled in memory or on
    /// disk): `winch`, wasmtime's baseline compiler, starts the pod in a fraction of the time
    /// and runs it slower, while Cranelift compiles the program in the background for every
    /// later start; `cranelift` makes the first start wait for the optimized code.
    /// [default: winch]
    #[arg(long, env = "KRUSTLET_FIRST_START_COMPILER", value_name = "COMPILER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_start_compiler: Option<FirstStartCompiler>,

    /// Directory of static pod manifests (YAML or JSON, one Pod each; dotfiles ignored), run
    /// without the scheduler as the kubelet's static pods. Connected, each also appears in the
    /// API as a mirror pod; `krustlet standalone` needs it.
    #[arg(
        long,
        visible_alias = "pod-manifest-path",
        env = "KRUSTLET_MANIFESTS",
        value_name = "DIR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifests: Option<PathBuf>,

    /// The node's image signature policy (YAML, see docs/signing.md): which images must carry
    /// cosign signatures from which keys or keyless identities (checked offline against a
    /// trusted root), per image pattern and namespace. Reloaded when the file (or a key or
    /// trusted root it names) changes; running containers that no longer pass get a Warning
    /// event. Without it every image runs unverified.
    #[arg(long, env = "KRUSTLET_IMAGE_POLICY_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_policy_file: Option<PathBuf>,

    /// Directory of CNI network configurations (`*.conflist`, `*.conf`, `*.json`), as the
    /// kubelet and containerd read it: the lexically first file is the pod network, and each
    /// pod gets a network namespace and its IPs from it. Without a configuration pods share
    /// the node's network and the node's Ready condition says so; with an invalid one the node
    /// is NotReady. [default: /etc/cni/net.d]
    #[arg(long, env = "KRUSTLET_CNI_CONF_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni_conf_dir: Option<PathBuf>,

    /// Directories searched in order for CNI plugin executables (`CNI_PATH`), comma- or
    /// colon-separated. [default: /opt/cni/bin]
    #[arg(
        long,
        env = "KRUSTLET_CNI_BIN_DIR",
        value_name = "DIR,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni_bin_dir: Option<Vec<PathBuf>>,

    /// Where each pod's CNI configuration and ADD result are kept (`sandboxes/<uid>.json`), so
    /// its network is deleted with what it was added with, also after a crash; libcni keeps
    /// the same in /var/lib/cni. Pod network namespaces are `<data-dir>/netns/<uid>`.
    /// [default: <data-dir>/cni]
    #[arg(long, env = "KRUSTLET_CNI_CACHE_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cni_cache_dir: Option<PathBuf>,

    /// Addresses (CIDRs, comma-separated) that guests' own sockets may never reach, whatever a
    /// pod grants in its `krustlet.dev/allowed-outbound` annotation. An empty value denies
    /// nothing beyond what pods do not grant. [default: 169.254.169.254/32,fd00:ec2::254/128,
    /// the cloud metadata services]
    #[arg(
        long,
        env = "KRUSTLET_WASM_OUTBOUND_DENY",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasm_outbound_deny: Option<Vec<String>>,

    /// The cluster DNS Service's addresses (comma-separated), the nameservers of `ClusterFirst`
    /// pods' name lookups, as the kubelet's flag. Without it such pods get the node's resolver
    /// and a `MissingClusterDNS` Warning.
    #[arg(
        long,
        env = "KRUSTLET_CLUSTER_DNS",
        value_name = "IP,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_dns: Option<Vec<std::net::IpAddr>>,

    /// The cluster's DNS domain (`cluster.local`): `ClusterFirst` pods search
    /// `<ns>.svc.<domain>`, `svc.<domain>` and `<domain>`, as the kubelet's flag. [default: no
    /// cluster search domains]
    #[arg(long, env = "KRUSTLET_CLUSTER_DOMAIN", value_name = "DOMAIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,

    /// The resolver configuration that `Default` pods (and `ClusterFirst` ones without
    /// `--cluster-dns`) inherit, as the kubelet's flag; empty: lookups go to the node's
    /// loopback. [default: /etc/resolv.conf]
    #[arg(long, env = "KRUSTLET_RESOLV_CONF", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
}

/// Errors in the configuration; each names the setting and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for these settings.
    #[error("invalid config file {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// serde's message, naming the key.
        message: String,
    },
    /// A value that passed parsing is still unusable.
    #[error("invalid --{flag}: {message}")]
    Invalid {
        /// The flag's name.
        flag: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// The kubelet's resolved configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfig {
    /// Kubeconfig with the node's credentials.
    pub kubeconfig: PathBuf,
    /// Bootstrap kubeconfig, if TLS bootstrap is wanted.
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Certificate directory.
    pub cert_dir: PathBuf,
    /// Node name.
    pub node_name: String,
    /// Node InternalIP.
    pub node_ip: IpAddr,
    /// Kubelet API port.
    pub port: u16,
    /// Kubelet API certificate, overriding the issued one.
    pub tls_cert_file: Option<PathBuf>,
    /// Its key.
    pub tls_private_key_file: Option<PathBuf>,
    /// CA for client certificates; `None`: the kubeconfig's cluster CA.
    pub client_ca_file: Option<PathBuf>,
    /// Requested certificate lifetime (CSR `expirationSeconds`); `None`: the signer's.
    pub csr_expiration_seconds: Option<u32>,
    /// Most open kubelet API connections.
    pub api_max_connections: u32,
    /// Idle kubelet API connections are closed after this.
    #[serde(with = "humantime_serde")]
    pub api_idle_timeout: Duration,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Pod capacity.
    pub max_pods: u32,
    /// Extra node labels.
    pub node_labels: Vec<Label>,
    /// Registration taints.
    pub register_with_taints: Vec<TaintSpec>,
    /// Graceful shutdown bound.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
    /// Node status computation period.
    #[serde(with = "humantime_serde")]
    pub node_status_update_frequency: Duration,
    /// Unchanged node status report period.
    #[serde(with = "humantime_serde")]
    pub node_status_report_frequency: Duration,
    /// Node lease duration in seconds.
    pub node_lease_duration_seconds: u32,
    /// The node's API client rate limit.
    pub kube_api_limit: crate::bootstrap::rate_limit::RateLimit,
    /// Hard pressure thresholds.
    pub eviction_hard: Vec<Threshold>,
    /// Soft pressure thresholds, each with its grace period.
    pub eviction_soft: Vec<(Threshold, Duration)>,
    /// Most grace for a soft eviction, in seconds (negative: the pod's own).
    pub eviction_max_pod_grace_period: i64,
    /// How long a pressure condition outlives its threshold.
    #[serde(with = "humantime_serde")]
    pub eviction_pressure_transition_period: Duration,
    /// Where container logs are written.
    pub pod_logs_dir: PathBuf,
    /// Where `/var/log/containers`-style links go, if anywhere.
    pub container_log_links_dir: Option<PathBuf>,
    /// Container log rotation size in bytes.
    pub container_log_max_size: u64,
    /// Container log files kept per run.
    pub container_log_max_files: u32,
    /// Container log output bound in bytes per second (0: none).
    pub container_log_max_rate: u64,
    /// Reserved for the operating system.
    pub system_reserved: Vec<Reservation>,
    /// Reserved for Krustlet.
    pub kube_reserved: Vec<Reservation>,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// When image GC runs.
    #[serde(skip)]
    pub image_gc: crate::image::gc::GcPolicy,
    /// Size limits of pulls.
    pub pull_limits: crate::image::limits::PullLimits,
    /// How the runtime compiles programs.
    pub compile: CompileSettings,
    /// Static pod manifests, if any.
    pub manifests: Option<PathBuf>,
    /// The image signature policy file, if any.
    pub image_policy_file: Option<PathBuf>,
    /// CNI network configurations.
    pub cni_conf_dir: PathBuf,
    /// CNI plugin directories, in search order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// CNI sandbox records.
    pub cni_cache_dir: PathBuf,
    /// What guests' own sockets may never reach (`--wasm-outbound-deny`).
    pub wasm_outbound_deny: Vec<crate::network::outbound::Cidr>,
    /// Pods' DNS (`--cluster-dns`, `--cluster-domain`, `--resolv-conf`).
    pub dns: crate::network::dns::DnsSettings,
}

impl Flags {
    /// Merges these flags (already merged with the environment by clap) over the config file
    /// named by `--config`, if any: a value given on the command line or in the environment wins.
    pub fn merge_config_file(self) -> Result<Self, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?;
        let parse_error = |e: &dyn std::fmt::Display| ConfigError::ParseFile {
            path: path.clone(),
            message: e.to_string(),
        };
        // Through JSON values: validates the file, then overlays every value that is set here.
        let file: Flags = serde_yaml::from_str(&text).map_err(|e| parse_error(&e))?;
        let mut merged = serde_json::to_value(file).map_err(|e| parse_error(&e))?;
        let ours = serde_json::to_value(&self).map_err(|e| parse_error(&e))?;
        if let (Some(merged), serde_json::Value::Object(ours)) = (merged.as_object_mut(), ours) {
            merged.extend(ours);
        }
        let mut flags: Flags = serde_json::from_value(merged).map_err(|e| parse_error(&e))?;
        flags.config = Some(path);
        Ok(flags)
    }

    /// Applies defaults and checks what parsing alone cannot.
    pub fn resolve(self) -> Result<KubeletConfig, ConfigError> {
        let data_dir = self.data_dir.unwrap_or_else(default_data_dir);
        let node_name = match self.node_name {
            Some(name) => name,
            None => hostname().map_err(|message| ConfigError::Invalid {
                flag: "node-name",
                message,
            })?,
        };
        validate_node_name(&node_name)?;
        if self.tls_cert_file.is_some() != self.tls_private_key_file.is_some() {
            return Err(ConfigError::Invalid {
                flag: "tls-cert-file",
                message: "--tls-cert-file and --tls-private-key-file go together".into(),
            });
        }
        let config = KubeletConfig {
            kubeconfig: self
                .kubeconfig
                .unwrap_or_else(|| data_dir.join("kubeconfig")),
            bootstrap_kubeconfig: self.bootstrap_kubeconfig,
            cert_dir: self.cert_dir.unwrap_or_else(|| data_dir.join("pki")),
            node_name,
            node_ip: self.node_ip.unwrap_or_else(crate::node::host::primary_ip),
            port: self.port.unwrap_or(10250),
            tls_cert_file: self.tls_cert_file,
            tls_private_key_file: self.tls_private_key_file,
            client_ca_file: self.client_ca_file,
            csr_expiration_seconds: self.csr_expiration_seconds,
            api_max_connections: self.api_max_connections.unwrap_or(1000),
            api_idle_timeout: self.api_idle_timeout.unwrap_or(Duration::from_secs(90)),
            max_pods: self.max_pods.unwrap_or(110),
            node_labels: self.node_labels.unwrap_or_default(),
            register_with_taints: self
                .register_with_taints
                .unwrap_or_else(TaintSpec::wasm_defaults),
            shutdown_grace_period: self.shutdown_grace_period.unwrap_or(Duration::ZERO),
            node_status_update_frequency: self
                .node_status_update_frequency
                .unwrap_or(Duration::from_secs(10)),
            node_status_report_frequency: self
                .node_status_report_frequency
                .unwrap_or(Duration::from_secs(300)),
            node_lease_duration_seconds: self.node_lease_duration_seconds.unwrap_or(40),
            kube_api_limit: crate::bootstrap::rate_limit::RateLimit::from_kubelet_flags(
                self.kube_api_qps.unwrap_or(50),
                self.kube_api_burst.unwrap_or(100),
            )
            .map_err(|message| ConfigError::Invalid {
                flag: "kube-api-burst",
                message,
            })?,
            eviction_hard: self.eviction_hard.unwrap_or_else(Threshold::defaults),
            eviction_soft: soft_thresholds(
                self.eviction_soft.unwrap_or_default(),
                self.eviction_soft_grace_period.unwrap_or_default(),
            )?,
            eviction_max_pod_grace_period: self.eviction_max_pod_grace_period.unwrap_or(0),
            eviction_pressure_transition_period: self
                .eviction_pressure_transition_period
                .unwrap_or(Duration::from_secs(300)),
            pod_logs_dir: self
                .pod_logs_dir
                .unwrap_or_else(|| crate::log::pods_log_root(&data_dir)),
            container_log_links_dir: self.container_log_links_dir,
            container_log_max_size: self.container_log_max_size.map_or(10 << 20, |q| q.0),
            container_log_max_files: self.container_log_max_files.unwrap_or(5),
            container_log_max_rate: self.container_log_max_rate.map_or(2 << 20, |q| q.0),
            system_reserved: self.system_reserved.unwrap_or_default(),
            kube_reserved: self.kube_reserved.unwrap_or_default(),
            insecure_registries: self.insecure_registry.unwrap_or_default(),
            image_gc: crate::image::gc::GcPolicy {
                high_percent: self.image_gc_high_threshold.unwrap_or(85),
                low_percent: self.image_gc_low_threshold.unwrap_or(80),
                minimum_age: self
                    .image_minimum_gc_age
                    .unwrap_or(Duration::from_secs(120)),
            },
            pull_limits: crate::image::limits::PullLimits {
                max_unpacked_bytes: self
                    .image_max_unpacked_size
                    .map_or(crate::image::limits::DEFAULT_MAX_UNPACKED_BYTES, |q| q.0),
                max_module_bytes: self
                    .max_module_size
                    .map_or(crate::image::limits::DEFAULT_MAX_MODULE_BYTES, |q| q.0),
            },
            compile: CompileSettings {
                concurrency: self.compile_concurrency.unwrap_or(2) as usize,
                cache_memory_bytes: self.compile_cache_memory.map_or(256 << 20, |q| q.0),
                first_start: self.first_start_compiler.unwrap_or_default(),
            },
            manifests: self.manifests,
            image_policy_file: self.image_policy_file,
            cni_conf_dir: self
                .cni_conf_dir
                .unwrap_or_else(|| PathBuf::from("/etc/cni/net.d")),
            cni_bin_dirs: cni_bin_dirs(self.cni_bin_dir)?,
            cni_cache_dir: self.cni_cache_dir.unwrap_or_else(|| data_dir.join("cni")),
            wasm_outbound_deny: outbound_deny(self.wasm_outbound_deny)?,
            dns: crate::network::dns::DnsSettings {
                cluster_dns: self.cluster_dns.unwrap_or_default(),
                cluster_domain: self
                    .cluster_domain
                    .unwrap_or_default()
                    .trim_end_matches('.')
                    .to_string(),
                resolv_conf: match self.resolv_conf {
                    None => Some(PathBuf::from("/etc/resolv.conf")),
                    Some(path) if path.as_os_str().is_empty() => None,
                    Some(path) => Some(path),
                },
            },
            data_dir,
        };
        for (flag, bytes) in [
            (
                "image-max-unpacked-size",
                config.pull_limits.max_unpacked_bytes,
            ),
            ("max-module-size", config.pull_limits.max_module_bytes),
        ] {
            if bytes == 0 {
                return Err(ConfigError::Invalid {
                    flag,
                    message: "must be more than 0 (a quantity such as 128Mi)".into(),
                });
            }
        }
        // A log entry is at most 16 KiB and a little; a file must hold at least one.
        if config.container_log_max_size < 32 << 10 {
            return Err(ConfigError::Invalid {
                flag: "container-log-max-size",
                message: format!(
                    "{} bytes is too small; at least 32Ki",
                    config.container_log_max_size
                ),
            });
        }
        if config.container_log_max_files < 2 {
            return Err(ConfigError::Invalid {
                flag: "container-log-max-files",
                message: "must be at least 2 (the current file and one rotated)".into(),
            });
        }
        if config.image_gc.low_percent > config.image_gc.high_percent {
            return Err(ConfigError::Invalid {
                flag: "image-gc-low-threshold",
                message: format!(
                    "{} is above --image-gc-high-threshold {}; the low threshold must not exceed the high one",
                    config.image_gc.low_percent, config.image_gc.high_percent
                ),
            });
        }
        if config.api_idle_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "api-idle-timeout",
                message: "must be more than 0s".into(),
            });
        }
        if config.node_status_update_frequency.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "node-status-update-frequency",
                message: "must be more than 0s".into(),
            });
        }
        Ok(config)
    }
}

/// `--cni-bin-dir`: each value may itself be a `:`-separated list, as `CNI_PATH` is.
/// `--wasm-outbound-deny`: its CIDRs, the metadata services when it is not given, nothing when
/// it is given empty.
fn outbound_deny(
    flag: Option<Vec<String>>,
) -> Result<Vec<crate::network::outbound::Cidr>, ConfigError> {
    let Some(values) = flag else {
        return Ok(crate::network::outbound::default_node_deny());
    };
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse().map_err(|message| ConfigError::Invalid {
                flag: "wasm-outbound-deny",
                message,
            })
        })
        .collect()
}

fn cni_bin_dirs(flag: Option<Vec<PathBuf>>) -> Result<Vec<PathBuf>, ConfigError> {
    let Some(values) = flag else {
        return Ok(vec![PathBuf::from("/opt/cni/bin")]);
    };
    let dirs: Vec<PathBuf> = values
        .iter()
        .flat_map(|v| {
            v.to_str()
                .map(|s| s.split(':').map(PathBuf::from).collect::<Vec<_>>())
                .unwrap_or_else(|| vec![v.clone()])
        })
        .filter(|d| !d.as_os_str().is_empty())
        .collect();
    if dirs.is_empty() {
        return Err(ConfigError::Invalid {
            flag: "cni-bin-dir",
            message: "names no directory (a list such as /opt/cni/bin,/usr/lib/cni)".into(),
        });
    }
    Ok(dirs)
}

/// How the runtime compiles programs (`--compile-concurrency`, `--compile-cache-memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompileSettings {
    /// Compilations at once.
    pub concurrency: usize,
    /// Bytes of compiled code kept in memory.
    pub cache_memory_bytes: u64,
    /// The compiler of a program's first start.
    pub first_start: FirstStartCompiler,
}

/// The compiler of a program's first start (`--first-start-compiler`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FirstStartCompiler {
    /// Winch, wasmtime's baseline compiler; Cranelift follows in the background.
    #[default]
    Winch,
    /// Cranelift, wasmtime's optimizing compiler, at once.
    Cranelift,
}

/// The data dir when --data-dir is not given: `~/.krustlet`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join(".krustlet")
}

fn hostname() -> Result<String, String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| format!("cannot read the host name ({e}); set --node-name"))?;
    Ok(name.trim().to_lowercase())
}

/// A node name must be a DNS subdomain (RFC 1123), as for any Kubernetes object name.
fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(ConfigError::Invalid {
            flag: "node-name",
            message: format!(
                "{name:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)"
            ),
        });
    }
    Ok(())
}

/// Parses durations like `30s`, `5m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m, 1h30m)"))
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Implements serde through `FromStr`/`Display` for the small string-shaped settings.
macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An amount of bytes written as a Kubernetes quantity (`10Mi`, `512Ki`, `1000000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteQuantity(pub u64);

impl FromStr for ByteQuantity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        crate::quantity::parse_count(s)
            .map(Self)
            .map_err(|e| format!("{s:?}: {e} (a quantity like 10Mi or 512Ki)"))
    }
}

impl std::fmt::Display for ByteQuantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
string_serde!(ByteQuantity);

/// A node label, `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl FromStr for Label {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
        if key.is_empty() {
            return Err(format!("{s:?} has an empty key"));
        }
        Ok(Self {
            key: key.into(),
            value: value.into(),
        })
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}
string_serde!(Label);

/// A registration taint, `KEY[=VALUE]:EFFECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaintSpec {
    /// The key.
    pub key: String,
    /// The value, possibly empty.
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

impl TaintSpec {
    /// The taints that keep pods without a wasm toleration off this node.
    pub fn wasm_defaults() -> Vec<Self> {
        ["NoExecute", "NoSchedule"]
            .into_iter()
            .map(|effect| Self {
                key: "kubernetes.io/arch".into(),
                value: "wasm32-wasi".into(),
                effect: effect.into(),
            })
            .collect()
    }
}

impl FromStr for TaintSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not KEY=VALUE:EFFECT"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!(
                "{s:?} has effect {effect:?}; allowed: NoSchedule, PreferNoSchedule, NoExecute"
            ));
        }
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if key.is_empty() {
            return Err(format!("{s:?} has an empty key"));
        }
        Ok(Self {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
        })
    }
}

impl std::fmt::Display for TaintSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}:{}", self.key, self.value, self.effect)
    }
}
string_serde!(TaintSpec);

/// A hard eviction threshold such as `memory.available<100Mi`: when the signal's available
/// amount drops below it, the matching pressure condition is raised.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// Which resource.
    pub signal: Signal,
    /// The bound.
    pub quantity: ThresholdQuantity,
}

/// The eviction signals this kubelet measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Available memory on the host (MemoryPressure).
    MemoryAvailable,
    /// Available space on the filesystem of the data dir (DiskPressure).
    NodefsAvailable,
    /// Process IDs still available (PIDPressure).
    PidAvailable,
}

/// An absolute amount (bytes or pids) or a percentage of the total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdQuantity {
    /// An absolute amount.
    Absolute(u64),
    /// A percentage, 0 to 100.
    Percent(f64),
}

impl ThresholdQuantity {
    /// The threshold in absolute units for a resource with `total` units.
    pub fn of(&self, total: u64) -> u64 {
        match *self {
            Self::Absolute(n) => n,
            Self::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

impl Threshold {
    /// The kubelet's Linux defaults, plus a PID threshold.
    pub fn defaults() -> Vec<Self> {
        [
            "memory.available<100Mi",
            "nodefs.available<10%",
            "pid.available<5%",
        ]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
    }
}

impl FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (signal, quantity) = s
            .split_once('<')
            .ok_or_else(|| format!("{s:?} is not SIGNAL<QUANTITY"))?;
        let signal = match signal {
            "memory.available" => Signal::MemoryAvailable,
            "nodefs.available" => Signal::NodefsAvailable,
            "pid.available" => Signal::PidAvailable,
            other => {
                return Err(format!(
                    "unknown signal {other:?}; allowed: memory.available, nodefs.available, pid.available"
                ));
            }
        };
        let quantity = if let Some(p) = quantity.strip_suffix('%') {
            let p: f64 = p
                .parse()
                .map_err(|_| format!("{quantity:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("{quantity:?} is not between 0% and 100%"));
            }
            ThresholdQuantity::Percent(p)
        } else {
            ThresholdQuantity::Absolute(quantity::parse_count(quantity).map_err(|e| e.to_string())?)
        };
        Ok(Self { signal, quantity })
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let signal = match self.signal {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::PidAvailable => "pid.available",
        };
        match self.quantity {
            ThresholdQuantity::Absolute(n) => write!(f, "{signal}<{n}"),
            ThresholdQuantity::Percent(p) => write!(f, "{signal}<{p}%"),
        }
    }
}
string_serde!(Threshold);

impl Signal {
    /// The signal's name in thresholds.
    pub fn name(self) -> &'static str {
        match self {
            Self::MemoryAvailable => "memory.available",
            Self::NodefsAvailable => "nodefs.available",
            Self::PidAvailable => "pid.available",
        }
    }

    fn parse(name: &str) -> Result<Self, String> {
        match name {
            "memory.available" => Ok(Self::MemoryAvailable),
            "nodefs.available" => Ok(Self::NodefsAvailable),
            "pid.available" => Ok(Self::PidAvailable),
            other => Err(format!(
                "unknown signal {other:?}; allowed: memory.available, nodefs.available, pid.available"
            )),
        }
    }
}

/// A soft threshold's grace period, `SIGNAL=DURATION` (`--eviction-soft-grace-period`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftGrace {
    /// The signal.
    pub signal: Signal,
    /// How long its soft threshold must be met before evicting.
    pub period: Duration,
}

impl FromStr for SoftGrace {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (signal, period) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not SIGNAL=DURATION (e.g. memory.available=1m30s)"))?;
        Ok(Self {
            signal: Signal::parse(signal)?,
            period: parse_duration(period)?,
        })
    }
}

impl std::fmt::Display for SoftGrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}={}",
            self.signal.name(),
            humantime::format_duration(self.period)
        )
    }
}
string_serde!(SoftGrace);

/// Pairs each soft threshold with its grace period; a soft threshold without one is an error,
/// as upstream's `ParseThresholdConfig` says.
fn soft_thresholds(
    thresholds: Vec<Threshold>,
    graces: Vec<SoftGrace>,
) -> Result<Vec<(Threshold, Duration)>, ConfigError> {
    thresholds
        .into_iter()
        .map(|t| {
            graces
                .iter()
                .find(|g| g.signal == t.signal)
                .map(|g| (t.clone(), g.period))
                .ok_or_else(|| ConfigError::Invalid {
                    flag: "eviction-soft-grace-period",
                    message: format!(
                        "the soft eviction threshold {t} needs a grace period (e.g. {}=1m30s)",
                        t.signal.name()
                    ),
                })
        })
        .collect()
}

/// A resource `--system-reserved`/`--kube-reserved` can set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservedResource {
    /// `cpu`, in millicores.
    Cpu,
    /// `memory`, in bytes.
    Memory,
    /// `ephemeral-storage`, in bytes.
    EphemeralStorage,
    /// `pid`, in processes.
    Pid,
}

/// One reservation, `RESOURCE=QUANTITY` (`cpu=100m`, `memory=100Mi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The resource.
    pub resource: ReservedResource,
    /// The amount in the resource's unit (millicores for cpu).
    pub amount: u64,
}

impl FromStr for Reservation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not RESOURCE=QUANTITY, e.g. memory=100Mi"))?;
        let (resource, amount) = match name {
            "cpu" => (ReservedResource::Cpu, quantity::parse_millis(value)),
            "memory" => (ReservedResource::Memory, quantity::parse_count(value)),
            "ephemeral-storage" => (
                ReservedResource::EphemeralStorage,
                quantity::parse_count(value),
            ),
            "pid" => (ReservedResource::Pid, quantity::parse_count(value)),
            other => {
                return Err(format!(
                    "unknown resource {other:?}: use cpu, memory, ephemeral-storage or pid"
                ));
            }
        };
        Ok(Self {
            resource,
            amount: amount.map_err(|e| e.to_string())?,
        })
    }
}

impl std::fmt::Display for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.resource {
            ReservedResource::Cpu => write!(f, "cpu={}m", self.amount),
            ReservedResource::Memory => write!(f, "memory={}", self.amount),
            ReservedResource::EphemeralStorage => write!(f, "ephemeral-storage={}", self.amount),
            ReservedResource::Pid => write!(f, "pid={}", self.amount),
        }
    }
}
string_serde!(Reservation);

impl KubeletConfig {
    /// Where the node's client certificate and key live (one PEM file, as the kubelet keeps it).
    pub fn client_cert_path(&self) -> PathBuf {
        self.cert_dir.join("kubelet-client-current.pem")
    }

    /// Where the node's serving certificate and key live.
    pub fn serving_cert_path(&self) -> PathBuf {
        self.cert_dir.join("kubelet-server-current.pem")
    }

    /// How container logs are rotated and bounded.
    pub fn log_policy(&self) -> crate::log::rotation::LogPolicy {
        crate::log::rotation::LogPolicy {
            max_size: self.container_log_max_size,
            max_files: self.container_log_max_files,
            max_rate: self.container_log_max_rate,
        }
    }

    /// The total of `--system-reserved` and `--kube-reserved` for `resource`.
    pub fn reserved(&self, resource: ReservedResource) -> u64 {
        self.system_reserved
            .iter()
            .chain(&self.kube_reserved)
            .filter(|r| r.resource == resource)
            .map(|r| r.amount)
            .sum()
    }

    /// A path under the data dir.
    pub fn data_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.data_dir.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_and_reject_bad_effects() {
        let t: TaintSpec = "a/b=c:NoSchedule".parse().expect("taint");
        assert_eq!(
            (t.key.as_str(), t.value.as_str(), t.effect.as_str()),
            ("a/b", "c", "NoSchedule")
        );
        let e = "a=b:Sometimes"
            .parse::<TaintSpec>()
            .expect_err("bad effect");
        assert!(e.contains("allowed: NoSchedule"), "{e}");
    }

    #[test]
    fn thresholds_parse() {
        let t: Threshold = "memory.available<100Mi".parse().expect("threshold");
        assert_eq!(t.quantity, ThresholdQuantity::Absolute(100 << 20));
        let t: Threshold = "nodefs.available<10%".parse().expect("threshold");
        assert_eq!(t.quantity.of(1000), 100);
        assert!("cpu.available<1".parse::<Threshold>().is_err());
        assert_eq!(Threshold::defaults().len(), 3);
    }

    #[test]
    fn kube_api_limits_use_the_kubelets_keys_and_defaults() {
        use crate::bootstrap::rate_limit::RateLimit;
        let resolve = |flags: Flags| flags.resolve().expect("config").kube_api_limit;
        let named = || Flags {
            node_name: Some("n".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(named()),
            RateLimit {
                qps: 50,
                burst: 100
            },
            "the kubelet's defaults"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "kubeAPIQPS: 5\nkubeAPIBurst: 10\n").expect("write");
        let flags = Flags {
            config: Some(file),
            ..named()
        }
        .merge_config_file()
        .expect("the kubelet's KubeletConfiguration keys");
        assert_eq!(resolve(flags), RateLimit { qps: 5, burst: 10 });
        let refused = Flags {
            kube_api_qps: Some(5),
            kube_api_burst: Some(0),
            ..named()
        }
        .resolve();
        assert!(refused.is_err(), "a burst of 0 with a QPS above 0");
    }

    #[test]
    fn file_values_yield_to_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "maxPods: 50\nnodeName: from-file\nport: 10999\nshutdownGracePeriod: 1m\n",
        )
        .expect("write");
        let flags = Flags {
            config: Some(file),
            max_pods: Some(7),
            ..Default::default()
        };
        let config = flags
            .merge_config_file()
            .expect("merge")
            .resolve()
            .expect("resolve");
        assert_eq!(config.max_pods, 7, "the flag wins");
        assert_eq!(config.node_name, "from-file");
        assert_eq!(config.port, 10999);
        assert_eq!(config.shutdown_grace_period, Duration::from_secs(60));
    }

    #[test]
    fn unknown_file_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "maxPodz: 50\n").expect("write");
        let flags = Flags {
            config: Some(file),
            ..Default::default()
        };
        let error = flags
            .merge_config_file()
            .expect_err("unknown key")
            .to_string();
        assert!(error.contains("maxPodz"), "{error}");
    }

    #[test]
    fn tls_files_come_in_pairs_and_from_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "nodeName: n\nclientCaFile: /ca.pem\ntlsCertFile: /c.pem\n",
        )
        .expect("write");
        let flags = Flags {
            config: Some(file),
            tls_private_key_file: Some("/k.pem".into()),
            ..Default::default()
        };
        let config = flags
            .merge_config_file()
            .expect("merge")
            .resolve()
            .expect("resolve");
        assert_eq!(config.client_ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(config.tls_cert_file.as_deref(), Some(Path::new("/c.pem")));
        let lone = Flags {
            node_name: Some("n".into()),
            tls_cert_file: Some("/c.pem".into()),
            ..Default::default()
        };
        let error = lone.resolve().expect_err("needs a key").to_string();
        assert!(error.contains("--tls-private-key-file"), "{error}");
    }

    #[test]
    fn log_bounds_come_from_flags_or_the_file_and_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "nodeName: n\ncontainerLogMaxSize: 64Ki\ncontainerLogMaxFiles: 3\n",
        )
        .expect("write");
        let flags = Flags {
            config: Some(file),
            container_log_max_rate: Some("1Mi".parse().expect("quantity")),
            ..Default::default()
        };
        let config = flags
            .merge_config_file()
            .expect("merge")
            .resolve()
            .expect("resolve");
        assert_eq!(
            (
                config.container_log_max_size,
                config.container_log_max_files,
                config.container_log_max_rate
            ),
            (64 << 10, 3, 1 << 20)
        );
        let defaults = Flags {
            node_name: Some("n".into()),
            ..Default::default()
        }
        .resolve()
        .expect("resolve");
        assert_eq!(defaults.log_policy().max_size, 10 << 20);
        assert_eq!(defaults.log_policy().max_files, 5);
        let tiny = Flags {
            node_name: Some("n".into()),
            container_log_max_size: Some(ByteQuantity(1024)),
            ..Default::default()
        };
        let error = tiny.resolve().expect_err("too small").to_string();
        assert!(error.contains("--container-log-max-size"), "{error}");
    }

    #[test]
    fn cni_directories_default_as_the_kubelet_and_take_cni_path_lists() {
        let defaults = Flags {
            node_name: Some("n".into()),
            data_dir: Some("/data".into()),
            ..Default::default()
        }
        .resolve()
        .expect("resolve");
        assert_eq!(defaults.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(defaults.cni_bin_dirs, [PathBuf::from("/opt/cni/bin")]);
        assert_eq!(defaults.cni_cache_dir, PathBuf::from("/data/cni"));
        let listed = Flags {
            node_name: Some("n".into()),
            cni_bin_dir: Some(vec!["/a:/b".into(), "/c".into()]),
            ..Default::default()
        }
        .resolve()
        .expect("resolve");
        assert_eq!(
            listed.cni_bin_dirs,
            [
                PathBuf::from("/a"),
                PathBuf::from("/b"),
                PathBuf::from("/c")
            ]
        );
        let empty = Flags {
            node_name: Some("n".into()),
            cni_bin_dir: Some(vec![":".into()]),
            ..Default::default()
        };
        let error = empty.resolve().expect_err("no directory").to_string();
        assert!(error.contains("--cni-bin-dir"), "{error}");
    }

    #[test]
    fn the_outbound_deny_list_defaults_to_the_metadata_services() {
        let resolve = |deny: Option<Vec<String>>| {
            Flags {
                node_name: Some("n".into()),
                wasm_outbound_deny: deny,
                ..Default::default()
            }
            .resolve()
        };
        let defaults = resolve(None).expect("resolve").wasm_outbound_deny;
        assert_eq!(
            defaults.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["169.254.169.254/32", "fd00:ec2::254/128"]
        );
        assert!(
            resolve(Some(vec![String::new()]))
                .expect("empty")
                .wasm_outbound_deny
                .is_empty()
        );
        let listed = resolve(Some(vec!["10.0.0.0/8".into(), " 192.0.2.1".into()]))
            .expect("listed")
            .wasm_outbound_deny;
        assert_eq!(listed.len(), 2);
        let error = resolve(Some(vec!["10.0.0.0/40".into()]))
            .expect_err("bad cidr")
            .to_string();
        assert!(error.contains("wasm-outbound-deny"), "{error}");
    }

    #[test]
    fn size_and_compile_limits_have_defaults_and_refuse_zero() {
        let defaults = Flags {
            node_name: Some("n".into()),
            ..Default::default()
        }
        .resolve()
        .expect("resolve");
        assert_eq!(defaults.pull_limits.max_unpacked_bytes, 1 << 30);
        assert_eq!(defaults.pull_limits.max_module_bytes, 128 << 20);
        assert_eq!(defaults.compile.concurrency, 2);
        assert_eq!(defaults.compile.cache_memory_bytes, 256 << 20);
        let zero = Flags {
            node_name: Some("n".into()),
            image_max_unpacked_size: Some(ByteQuantity(0)),
            ..Default::default()
        };
        let error = zero.resolve().expect_err("zero").to_string();
        assert!(error.contains("--image-max-unpacked-size"), "{error}");
    }

    #[test]
    fn bad_node_names_are_refused() {
        let flags = Flags {
            node_name: Some("Not_A_Name".into()),
            ..Default::default()
        };
        let error = flags.resolve().expect_err("invalid").to_string();
        assert!(error.contains("--node-name"), "{error}");
    }
}
