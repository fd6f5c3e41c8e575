//! CNI pod networking, as a container runtime does it (containerd's CRI with libcni): a
//! sandbox per pod, that is, a network namespace ([`super::netns`]) with the node's CNI network
//! ADDed to it before the first container starts, DELeted when the pod ends.
//!
//! ```text
//! setup(pod)   hostNetwork ─────────────────────────────▶ the node's network
//!              record on disk (a restarted kubelet) ────▶ CHECK ─ ok ─▶ resume it
//!                                                           └ fails ─▶ DEL, then as new
//!              no config in --cni-conf-dir ─────────────▶ the node's network (Ready says so)
//!              new: netns <data-dir>/netns/<uid> ─▶ record ─▶ ADD loopback (lo), ADD network
//!                   (eth0) ─▶ record with results ─▶ pod IPs; a failed ADD is DELeted
//!                   (spec: "a delete must still be executed even if the add fails")
//! teardown(uid) DEL each attachment, last first, plugins in reverse, prevResult from the
//!               record ─▶ remove netns and record; a failed DEL keeps both for reconcile
//! reconcile(live) records and netns files of pods not live and not set up here ─▶ DEL
//! ```
//!
//! - The CNI container ID is the pod UID (also `K8S_POD_INFRA_CONTAINER_ID`), `CNI_IFNAME` is
//!   `eth0`, `CNI_ARGS` is `IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;
//!   K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..` as the kubelet's dockershim and containerd
//!   pass them, and `portMappings` (the pod's `hostPort`s) goes to plugins that declare the
//!   capability.
//! - As containerd (go-cni `WithLoNetwork`), the loopback interface is brought up by a
//!   built-in `cni-loopback` network (`{"type": "loopback"}`, interface `lo`) run first,
//!   when the `loopback` plugin is in `--cni-bin-dir` and the pod network does not already
//!   run it.
//! - The record (`<cni-cache-dir>/sandboxes/<uid>.json`, like libcni's
//!   `/var/lib/cni/results` cache) keeps each attachment's configuration, arguments and ADD
//!   result, written before the first ADD and after each, so a DEL after a crash uses what
//!   the ADD used (section 3: "The network configuration should not change between add and
//!   delete") and gets the ADD result as `prevResult`.
//! - Operations on one pod never overlap (section 3 "Lifecycle & Ordering": no parallel
//!   operations for the same container); different pods run in parallel.

pub mod config;
pub mod plugin;
mod record;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use super::netns::{self, NetNs};
use super::{
    HostPorts, Network, NetworkCondition, NetworkError, NodeNetwork, PodNetwork, SandboxSpec,
};
use config::NetworkConfigList;
use plugin::{Attachment, Command, PluginExec};
use record::{AttachmentRecord, Records, SandboxRecord};

/// How long one plugin may run before it is killed.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The most bytes read from a plugin's stdout (and from its stderr).
pub const MAX_PLUGIN_OUTPUT: usize = 1 << 20;
/// The pod's interface in its namespace (containerd's and the kubelet's default).
pub const POD_IFNAME: &str = "eth0";
/// The built-in loopback network's name (containerd's).
pub const LOOPBACK_NETWORK: &str = "cni-loopback";

/// Errors of CNI pod networking.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration in `--cni-conf-dir` is unusable.
    #[error("network plugin is not ready: cni config load failed: {0}")]
    Config(#[from] config::ConfigError),
    /// No executable for a plugin's `type`.
    #[error(
        "CNI plugin {plugin:?} not found in --cni-bin-dir ({dirs}): install it there (the CNI \
         reference plugins are in github.com/containernetworking/plugins) or fix \"type\" in the \
         network configuration"
    )]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// The directories searched.
        dirs: String,
    },
    /// The plugin could not be started (or waited for).
    #[error("plugin {plugin} ({}) could not be run: {source}", path.display())]
    Spawn {
        /// The plugin, as `type="bridge" name="net"`.
        plugin: String,
        /// Its executable.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The plugin ran too long and was killed.
    #[error(
        "plugin {plugin} failed ({command}): it did not finish within {}s and was killed; see \
         what it waits for (its log, the network it configures)", timeout.as_secs()
    )]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The operation.
        command: Command,
        /// The bound.
        timeout: Duration,
    },
    /// The plugin wrote more than allowed.
    #[error("plugin {plugin} failed ({command}): it wrote more than {limit} bytes and was killed")]
    OutputTooLarge {
        /// The plugin.
        plugin: String,
        /// The operation.
        command: Command,
        /// The bound.
        limit: usize,
    },
    /// The plugin returned an error result (CNI spec section 5 "Error").
    #[error(
        "plugin {plugin} failed ({command}): {msg}{}{} (CNI error code {code})",
        if details.is_empty() { "" } else { "; " }, details
    )]
    Plugin {
        /// The plugin.
        plugin: String,
        /// The operation.
        command: Command,
        /// The error code (11: try again later).
        code: u32,
        /// Its message.
        msg: String,
        /// Its details.
        details: String,
    },
    /// The plugin succeeded with output that is no result.
    #[error("plugin {plugin} failed ({command}): {message}")]
    BadResult {
        /// The plugin.
        plugin: String,
        /// The operation.
        command: Command,
        /// What is wrong.
        message: String,
    },
    /// The network gave the pod no address.
    #[error(
        "the CNI network {network:?} gave the pod no IP address (its result has no \"ips\"): \
         its first plugin must assign one (e.g. with \"ipam\")"
    )]
    NoAddress {
        /// The network's name.
        network: String,
    },
    /// The pod UID is not a valid CNI container ID.
    #[error("pod UID {uid:?} is not a valid CNI container ID (letters, digits, '_', '.', '-')")]
    InvalidContainerId {
        /// The UID.
        uid: String,
    },
    /// The sandbox record cannot be read or written.
    #[error("the pod's CNI sandbox record {}: {message}", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Where CNI pod networking finds and keeps things.
#[derive(Debug, Clone)]
pub struct CniSettings {
    /// `--cni-conf-dir`: network configurations.
    pub conf_dir: PathBuf,
    /// `--cni-bin-dir`: plugin executables, searched in order.
    pub bin_dirs: Vec<PathBuf>,
    /// `--cni-cache-dir`: sandbox records (`sandboxes/<uid>.json`).
    pub cache_dir: PathBuf,
    /// Where pod network namespaces are bind-mounted (`<data-dir>/netns`).
    pub netns_dir: PathBuf,
    /// How long one plugin may run.
    pub plugin_timeout: Duration,
    /// The most output read from one plugin.
    pub max_output: usize,
}

impl CniSettings {
    /// The settings of `config`; relative directories are made absolute (plugins get paths).
    pub fn of(config: &crate::config::KubeletConfig) -> Self {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        Self {
            conf_dir: absolute(&config.cni_conf_dir),
            bin_dirs: config.cni_bin_dirs.iter().map(|d| absolute(d)).collect(),
            cache_dir: absolute(&config.cni_cache_dir),
            netns_dir: absolute(&config.data_path("netns")),
            plugin_timeout: PLUGIN_TIMEOUT,
            max_output: MAX_PLUGIN_OUTPUT,
        }
    }
}

/// CNI pod networking over the node's network (for `hostNetwork` pods, and for every pod while
/// there is no CNI configuration).
pub struct CniNetwork {
    settings: CniSettings,
    exec: PluginExec,
    records: Records,
    node: Arc<NodeNetwork>,
    /// The pods set up by this process.
    pods: Mutex<HashMap<String, Arc<dyn PodNetwork>>>,
    /// One lock per pod with an operation in flight.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The condition reported last (to log changes once).
    condition: Mutex<Option<NetworkCondition>>,
}

impl std::fmt::Debug for CniNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CniNetwork")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl CniNetwork {
    /// CNI networking with `settings`, falling back to `node`.
    pub fn new(settings: CniSettings, node: Arc<NodeNetwork>) -> Arc<Self> {
        let exec = PluginExec {
            bin_dirs: settings.bin_dirs.clone(),
            timeout: settings.plugin_timeout,
            max_output: settings.max_output,
        };
        let records = Records::new(settings.cache_dir.join("sandboxes"));
        Arc::new(Self {
            settings,
            exec,
            records,
            node,
            pods: Mutex::default(),
            locks: Mutex::default(),
            condition: Mutex::default(),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &CniSettings {
        &self.settings
    }

    /// The pod network configuration now, if any.
    ///
    /// # Errors
    /// [`CniError::Config`].
    pub fn load_config(&self) -> Result<Option<NetworkConfigList>, CniError> {
        Ok(config::load(&self.settings.conf_dir)?)
    }

    fn registered(&self, uid: &str) -> Option<Arc<dyn PodNetwork>> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    fn register(&self, uid: &str, network: Arc<dyn PodNetwork>) -> Arc<dyn PodNetwork> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_string(), network.clone());
        network
    }

    fn unregister(&self, uid: &str) {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// Waits for the pod's lock: one operation per pod at a time.
    async fn lock(&self, uid: &str) -> PodLock<'_> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(uid.to_string())
            .or_default()
            .clone();
        PodLock {
            guard: Some(lock.lock_owned().await),
            network: self,
            uid: uid.to_string(),
        }
    }

    fn netns_path(&self, uid: &str) -> PathBuf {
        self.settings.netns_dir.join(uid)
    }

    async fn setup_pod(&self, sandbox: &SandboxSpec) -> Result<Arc<dyn PodNetwork>, NetworkError> {
        let uid = sandbox.uid.as_str();
        let _lock = self.lock(uid).await;
        if let Some(existing) = self.registered(uid) {
            return Ok(existing);
        }
        if sandbox.host_network {
            return Ok(self.register(uid, self.node.clone()));
        }
        // A sandbox from before a restart of Krustlet: resumed if it is still whole, with the
        // configuration it was added with (whatever --cni-conf-dir holds now).
        match self.records.read(uid) {
            Ok(Some(record)) => match self.resume(&record).await {
                Ok(pod) => return Ok(self.register(uid, pod)),
                Err(why) => {
                    tracing::warn!(%uid, error = %why, "the pod's sandbox from before cannot be resumed; deleting it and creating a new one");
                    self.delete(&record).await?;
                }
            },
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%uid, %error, "unreadable sandbox record; creating a new sandbox");
                self.records.remove(uid);
            }
        }
        let Some(list) = self.load_config()? else {
            tracing::info!(pod = %format!("{}/{}", sandbox.namespace, sandbox.name), %uid, conf_dir = %self.settings.conf_dir.display(), "no CNI configuration: the pod shares the node's network");
            return Ok(self.register(uid, self.node.clone()));
        };
        validate_container_id(uid)?;
        // A namespace without a record (a crash between the two): nothing was ADDed to it.
        netns::remove(&self.netns_path(uid))?;
        let pod = self.add(sandbox, list).await?;
        Ok(self.register(uid, pod))
    }

    /// The attachments a new sandbox gets: the built-in loopback network first (when the
    /// plugin is there and the pod network does not run it), then the pod network.
    fn plan(&self, sandbox: &SandboxSpec, list: &NetworkConfigList) -> Vec<AttachmentRecord> {
        let args = cni_args(sandbox);
        let mut capability_args = BTreeMap::new();
        if !sandbox.port_mappings.is_empty() && list.declares("portMappings") {
            capability_args.insert(
                "portMappings".to_string(),
                serde_json::to_value(&sandbox.port_mappings).unwrap_or_default(),
            );
        }
        let mut attachments = Vec::new();
        let runs_loopback = list.plugins.iter().any(|p| p.plugin_type == "loopback");
        if !runs_loopback && self.exec.find("loopback").is_ok() {
            attachments.push(AttachmentRecord {
                if_name: "lo".into(),
                config: loopback_list().to_json(),
                cni_args: args.clone(),
                capability_args: BTreeMap::new(),
                result: None,
            });
        }
        attachments.push(AttachmentRecord {
            if_name: POD_IFNAME.into(),
            config: list.to_json(),
            cni_args: args,
            capability_args,
            result: None,
        });
        attachments
    }

    async fn add(
        &self,
        sandbox: &SandboxSpec,
        list: NetworkConfigList,
    ) -> Result<Arc<dyn PodNetwork>, NetworkError> {
        let uid = sandbox.uid.as_str();
        let path = self.netns_path(uid);
        let ns = NetNs::create(&path)?;
        let mut record = SandboxRecord::new(sandbox, &path, self.plan(sandbox, &list));
        if let Err(error) = self.records.write(&record) {
            drop(ns);
            let _ = netns::remove(&path);
            return Err(error.into());
        }
        for index in 0..record.attachments.len() {
            let step = match self.add_attachment(&record, index).await {
                Ok(result) => {
                    record.attachments[index].result = Some(result);
                    self.records.write(&record)
                }
                Err(error) => Err(error),
            };
            if let Err(error) = step {
                // Section 3 "Lifecycle & Ordering": a delete must follow a failed add.
                drop(ns);
                if let Err(del) = self.delete(&record).await {
                    tracing::warn!(%uid, error = %del, "DEL after a failed ADD failed; it is retried later");
                }
                return Err(error.into());
            }
        }
        let pod = CniPod::of(&record, ns)?;
        tracing::info!(pod = %format!("{}/{}", sandbox.namespace, sandbox.name), %uid, ips = ?pod.ips, netns = %path.display(), network = %list.name, "pod network set up");
        Ok(Arc::new(pod))
    }

    /// ADD for attachment `index` of `record` (section 3 "Adding an attachment").
    async fn add_attachment(
        &self,
        record: &SandboxRecord,
        index: usize,
    ) -> Result<Value, CniError> {
        let attachment = &record.attachments[index];
        let list = NetworkConfigList::from_json(&attachment.config)?;
        let params = Attachment {
            container_id: &record.container_id,
            netns: &record.netns,
            ifname: &attachment.if_name,
            args: &attachment.cni_args,
        };
        let mut result: Option<Value> = None;
        for plugin in &list.plugins {
            let request = plugin.request(&list, result.as_ref(), &attachment.capability_args);
            let described = plugin.describe(&list.name);
            result = Some(
                self.exec
                    .exec(
                        Command::Add,
                        &plugin.plugin_type,
                        &described,
                        &request,
                        &params,
                    )
                    .await?,
            );
        }
        result.ok_or_else(|| CniError::NoAddress {
            network: list.name.clone(),
        })
    }

    /// Resumes a recorded sandbox: its namespace is there, every ADD finished, and CHECK (where
    /// the configuration allows it) passes.
    async fn resume(&self, record: &SandboxRecord) -> Result<Arc<dyn PodNetwork>, NetworkError> {
        if record.attachments.iter().any(|a| a.result.is_none()) {
            return Err(CniError::Record {
                path: self.records.path(&record.uid),
                message: "an ADD did not finish".into(),
            }
            .into());
        }
        let ns = NetNs::open(&record.netns)?;
        for attachment in &record.attachments {
            let list = NetworkConfigList::from_json(&attachment.config).map_err(CniError::from)?;
            if !list.checks() {
                continue;
            }
            let params = Attachment {
                container_id: &record.container_id,
                netns: &record.netns,
                ifname: &attachment.if_name,
                args: &attachment.cni_args,
            };
            // Section 3 "Checking an attachment": every plugin, in order, with the ADD result.
            for plugin in &list.plugins {
                let request = plugin.request(
                    &list,
                    attachment.result.as_ref(),
                    &attachment.capability_args,
                );
                self.exec
                    .exec(
                        Command::Check,
                        &plugin.plugin_type,
                        &plugin.describe(&list.name),
                        &request,
                        &params,
                    )
                    .await?;
            }
        }
        let pod = CniPod::of(record, ns)?;
        tracing::info!(uid = %record.uid, ips = ?pod.ips, "pod network resumed");
        Ok(Arc::new(pod))
    }

    /// DEL for every attachment of `record`, the last first (section 3 "Deleting an
    /// attachment": plugins in reverse order, `prevResult` the ADD's result), then removes the
    /// namespace and the record. Stops at the first failure and keeps both.
    async fn delete(&self, record: &SandboxRecord) -> Result<(), CniError> {
        // A namespace that is gone (or no namespace any more, after a reboot) is passed as
        // empty, as containerd does: plugins then release what lives outside it (IPAM).
        let netns_alive = NetNs::open(&record.netns).is_ok();
        let netns_param = if netns_alive {
            record.netns.clone()
        } else {
            PathBuf::new()
        };
        for attachment in record.attachments.iter().rev() {
            let list = NetworkConfigList::from_json(&attachment.config)?;
            let params = Attachment {
                container_id: &record.container_id,
                netns: &netns_param,
                ifname: &attachment.if_name,
                args: &attachment.cni_args,
            };
            let prev = if list.passes_prev_result() {
                attachment.result.as_ref()
            } else {
                None
            };
            for plugin in list.plugins.iter().rev() {
                let request = plugin.request(&list, prev, &attachment.capability_args);
                self.exec
                    .exec(
                        Command::Del,
                        &plugin.plugin_type,
                        &plugin.describe(&list.name),
                        &request,
                        &params,
                    )
                    .await?;
            }
        }
        if let Err(error) = netns::remove(&record.netns) {
            tracing::warn!(uid = %record.uid, %error, "cannot remove the pod's network namespace");
        }
        self.records.remove(&record.uid);
        tracing::info!(uid = %record.uid, "pod network deleted");
        Ok(())
    }

    async fn teardown_pod(&self, uid: &str) -> Result<(), NetworkError> {
        let _lock = self.lock(uid).await;
        self.teardown_locked(uid).await
    }

    /// Tears the pod's network down; the caller holds the pod's lock.
    async fn teardown_locked(&self, uid: &str) -> Result<(), NetworkError> {
        self.unregister(uid);
        if validate_container_id(uid).is_err() {
            // Setup never made files for it (it validates first), and the UID must not name
            // a path on disk.
            return Ok(());
        }
        match self.records.read(uid) {
            Ok(Some(record)) => self.delete(&record).await.map_err(NetworkError::from),
            Ok(None) => {
                netns::remove(&self.netns_path(uid))?;
                Ok(())
            }
            Err(error) => {
                // Nothing to DEL with: the namespace goes, the record is logged and goes.
                tracing::error!(%uid, %error, "unreadable sandbox record: the pod's network cannot be DELeted; removing its namespace (its IPAM allocation may be left)");
                self.records.remove(uid);
                netns::remove(&self.netns_path(uid))?;
                Ok(())
            }
        }
    }

    async fn reconcile_pods(&self, live: &HashSet<String>) -> Vec<String> {
        let mut on_disk: BTreeSet<String> = self.records.list().into_iter().collect();
        on_disk.extend(
            netns::list(&self.settings.netns_dir)
                .into_iter()
                .map(|(name, _)| name),
        );
        let mut removed = Vec::new();
        for uid in on_disk {
            if live.contains(&uid) {
                continue;
            }
            // Checked under the pod's lock: a pod set up meanwhile is left alone.
            let _lock = self.lock(&uid).await;
            if self.registered(&uid).is_some() {
                continue;
            }
            match self.teardown_locked(&uid).await {
                Ok(()) => {
                    tracing::info!(%uid, "removed the network of a pod that is gone");
                    removed.push(uid);
                }
                Err(error) => {
                    tracing::warn!(%uid, %error, "deleting the network of a pod that is gone failed; retried at the next round")
                }
            }
        }
        removed
    }

    fn current_condition(&self) -> NetworkCondition {
        let condition = match self.load_config() {
            Ok(Some(_)) => NetworkCondition::Ready,
            Ok(None) => NetworkCondition::NodeFallback(format!(
                "network plugin is not ready: cni config uninitialized (no *.conflist, *.conf or \
                 *.json file in {}), so pods share the node's network",
                self.settings.conf_dir.display()
            )),
            Err(error) => NetworkCondition::NotReady(error.to_string()),
        };
        let mut last = self.condition.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() != Some(&condition) {
            match &condition {
                NetworkCondition::Ready => {
                    tracing::info!(conf_dir = %self.settings.conf_dir.display(), "CNI configuration found: new pods get their own network")
                }
                NetworkCondition::NodeFallback(note) => tracing::info!("{note}"),
                NetworkCondition::NotReady(why) => tracing::warn!("{why}"),
            }
            *last = Some(condition.clone());
        }
        condition
    }
}

/// A pod's lock; forgets the lock when the last user is done.
struct PodLock<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    network: &'a CniNetwork,
    uid: String,
}

impl Drop for PodLock<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.network.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map holds it: nobody waits.
        if locks
            .get(&self.uid)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.uid);
        }
    }
}

impl Network for CniNetwork {
    fn pod(&self, uid: &str) -> Option<Arc<dyn PodNetwork>> {
        self.registered(uid)
    }

    fn setup<'a>(
        &'a self,
        sandbox: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<Arc<dyn PodNetwork>, NetworkError>> {
        Box::pin(self.setup_pod(sandbox))
    }

    fn teardown<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(self.teardown_pod(uid))
    }

    fn reconcile<'a>(&'a self, live: &'a HashSet<String>) -> BoxFuture<'a, Vec<String>> {
        Box::pin(self.reconcile_pods(live))
    }

    fn condition(&self) -> NetworkCondition {
        self.current_condition()
    }
}

/// `CNI_ARGS` for a pod, as the kubelet (dockershim) and containerd pass them.
pub fn cni_args(sandbox: &SandboxSpec) -> Vec<(String, String)> {
    [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", sandbox.namespace.as_str()),
        ("K8S_POD_NAME", sandbox.name.as_str()),
        ("K8S_POD_INFRA_CONTAINER_ID", sandbox.uid.as_str()),
        ("K8S_POD_UID", sandbox.uid.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// containerd's built-in loopback network (go-cni `WithLoNetwork`).
pub fn loopback_list() -> NetworkConfigList {
    let mut raw = serde_json::Map::new();
    raw.insert("type".into(), Value::String("loopback".into()));
    NetworkConfigList {
        name: LOOPBACK_NETWORK.into(),
        cni_version: "0.3.1".into(),
        disable_check: false,
        plugins: vec![config::PluginConf {
            plugin_type: "loopback".into(),
            capabilities: Vec::new(),
            raw,
        }],
        source: PathBuf::new(),
    }
}

/// libcni's `ValidateContainerID`.
fn validate_container_id(uid: &str) -> Result<(), CniError> {
    let mut chars = uid.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidContainerId {
            uid: uid.to_string(),
        })
    }
}

/// A pod on its own CNI network.
#[derive(Debug)]
pub struct CniPod {
    uid: String,
    /// Primary first, at most one per family.
    ips: Vec<IpAddr>,
    netns: Arc<NetNs>,
    host_ports: HostPorts,
}

impl CniPod {
    /// The pod of a recorded sandbox whose ADDs all finished: its IPs are those of the pod
    /// network's result (the last attachment).
    fn of(record: &SandboxRecord, netns: NetNs) -> Result<Self, CniError> {
        let main = record
            .attachments
            .iter()
            .rev()
            .find(|a| a.if_name == POD_IFNAME)
            .or(record.attachments.last());
        let network = main
            .and_then(|a| a.config.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ips = main
            .and_then(|a| a.result.as_ref())
            .map(plugin::result_ips)
            .unwrap_or_default();
        let ips = plugin::pod_ips(&ips);
        if ips.is_empty() {
            return Err(CniError::NoAddress { network });
        }
        let mapped = main.is_some_and(|a| a.capability_args.contains_key("portMappings"))
            || main
                .and_then(|a| NetworkConfigList::from_json(&a.config).ok())
                .is_some_and(|l| l.declares("portMappings"));
        Ok(Self {
            uid: record.uid.clone(),
            ips,
            netns: Arc::new(netns),
            host_ports: if mapped {
                HostPorts::Mapped
            } else {
                HostPorts::Unmapped
            },
        })
    }

    /// The pod's loopback address in the family of its primary IP.
    fn loopback(&self) -> IpAddr {
        if self.ips.iter().any(IpAddr::is_ipv4) {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        }
    }
}

impl PodNetwork for CniPod {
    fn ip(&self) -> IpAddr {
        self.ips
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    fn ips(&self) -> Vec<IpAddr> {
        self.ips.clone()
    }

    fn listen_tcp(&self, port: u16) -> Result<TcpListener, NetworkError> {
        // Bound inside the pod's namespace on every address (its IPs and loopback), as a
        // container's `0.0.0.0:port`.
        let addr = SocketAddr::new(super::wildcard_for(&self.ips), port);
        let ip = self.ip();
        self.netns
            .run(|| super::listen(addr))?
            .map_err(|error| match error {
                NetworkError::PortInUse { port, .. } => NetworkError::PodPortInUse { ip, port },
                other => other,
            })
    }

    fn connect_tcp(
        &self,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, NetworkError>> {
        // From the node's namespace to the pod IP, as the kubelet's prober does.
        Box::pin(super::connect(SocketAddr::new(self.ip(), port), timeout))
    }

    fn forward_tcp(
        &self,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, NetworkError>> {
        let netns = self.netns.clone();
        let inside = SocketAddr::new(self.loopback(), port);
        let outside = SocketAddr::new(self.ip(), port);
        Box::pin(async move {
            // containerd's PortForward: dial localhost:port inside the pod's namespace.
            let dialed = tokio::task::spawn_blocking(move || {
                netns.run(|| {
                    let stream = std::net::TcpStream::connect_timeout(&inside, timeout)?;
                    stream.set_nonblocking(true)?;
                    Ok::<_, std::io::Error>(stream)
                })
            })
            .await;
            match dialed {
                Ok(Ok(Ok(stream))) => tokio::net::TcpStream::from_std(stream).map_err(|source| {
                    NetworkError::Connect {
                        addr: inside,
                        source,
                    }
                }),
                // Refused or silent inside: that is the answer.
                Ok(Ok(Err(source)))
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Err(NetworkError::Connect {
                        addr: inside,
                        source,
                    })
                }
                // No loopback in the pod (no loopback plugin): through the pod IP instead.
                _ => super::connect(outside, timeout).await,
            }
        })
    }

    fn run_inside<'a>(&self, f: Box<dyn FnOnce() + Send + 'a>) -> Result<(), NetworkError> {
        Ok(self.netns.run(f)?)
    }

    fn namespace(&self) -> Option<PathBuf> {
        Some(self.netns.path().to_path_buf())
    }

    fn host_ports(&self) -> HostPorts {
        self.host_ports
    }
}

impl CniPod {
    /// The pod UID.
    pub fn uid(&self) -> &str {
        &self.uid
    }
}
