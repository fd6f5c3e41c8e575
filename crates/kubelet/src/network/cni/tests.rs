//! CNI tests with fake plugins: small shell scripts in a temporary bin dir that record their
//! command, `CNI_*` environment and stdin, and print a canned result. Tests that create
//! network namespaces need root and fail, naming it, without it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::plugin::{self, Attachment, Command, PluginExec};
use super::*;
use crate::network::{PortMapping, SandboxSpec};

/// The first plugin's result: the pod's eth0 with one address, and a host-side bridge
/// address that is not the pod's.
const FIRST_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:00"},{"name":"eth0","sandbox":"/ns"}],"ips":[{"address":"192.168.99.1/24","interface":0},{"address":"10.1.0.5/24","gateway":"10.1.0.1","interface":1}]}"#;
/// The second (chained) plugin's result: the first's with DNS added.
const SECOND_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:00"},{"name":"eth0","sandbox":"/ns"}],"ips":[{"address":"192.168.99.1/24","interface":0},{"address":"10.1.0.5/24","gateway":"10.1.0.1","interface":1}],"dns":{"nameservers":["10.96.0.10"]}}"#;
const LOOPBACK_RESULT: &str = r#"{"cniVersion":"0.3.1","interfaces":[{"name":"lo"}],"ips":[{"address":"127.0.0.1/8","interface":0}]}"#;
const ERROR_RESULT: &str = r#"{"cniVersion":"1.0.0","code":7,"msg":"Invalid Configuration","details":"Network 192.168.0.0/31 too small to allocate from."}"#;

/// A node's CNI directories in a temporary directory, with a log of plugin calls.
struct Fake {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fake {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        for sub in ["bin", "conf", "log"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        Self { _dir: dir, root }
    }

    fn settings(&self) -> CniSettings {
        CniSettings {
            conf_dir: self.root.join("conf"),
            bin_dirs: vec![self.root.join("missing-bin"), self.root.join("bin")],
            cache_dir: self.root.join("cache"),
            netns_dir: self.root.join("netns"),
            plugin_timeout: Duration::from_secs(20),
            max_output: 1 << 20,
        }
    }

    fn exec(&self) -> PluginExec {
        let settings = self.settings();
        PluginExec {
            bin_dirs: settings.bin_dirs,
            timeout: settings.plugin_timeout,
            max_output: settings.max_output,
        }
    }

    fn log(&self) -> PathBuf {
        self.root.join("log")
    }

    /// A plugin `name` that records its call, runs `extra` (shell), prints `add_output` on
    /// ADD and exits with `exit`.
    fn plugin(&self, name: &str, add_output: &str, extra: &str, exit: i32) {
        use std::os::unix::fs::PermissionsExt;
        let log = self.log();
        let log = log.display();
        let script = format!(
            r#"#!/bin/sh
input=$(cat)
echo "{name} $CNI_COMMAND" >> "{log}/calls"
printf '%s' "$input" > "{log}/{name}.$CNI_COMMAND.stdin"
env | grep '^CNI_' | sort > "{log}/{name}.$CNI_COMMAND.env"
{extra}
if [ "$CNI_COMMAND" = ADD ]; then printf '%s' '{add_output}'; fi
exit {exit}
"#
        );
        let path = self.root.join("bin").join(name);
        std::fs::write(&path, script).expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// The loopback plugin, for real: it brings `lo` up in the namespace.
    fn loopback(&self) {
        self.plugin(
            "loopback",
            LOOPBACK_RESULT,
            r#"if [ "$CNI_COMMAND" = ADD ] && [ -n "$CNI_NETNS" ]; then nsenter --net="$CNI_NETNS" ip link set lo up || exit 1; fi"#,
            0,
        );
    }

    fn conf(&self, name: &str, json: &str) {
        std::fs::write(self.root.join("conf").join(name), json).expect("write conf");
    }

    /// The calls so far, `plugin COMMAND` each.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.log().join("calls"));
    }

    fn stdin(&self, plugin: &str, command: &str) -> Value {
        let text = std::fs::read_to_string(self.log().join(format!("{plugin}.{command}.stdin")))
            .expect("stdin recorded");
        serde_json::from_str(&text).expect("stdin is JSON")
    }

    fn env(&self, plugin: &str, command: &str) -> Vec<String> {
        std::fs::read_to_string(self.log().join(format!("{plugin}.{command}.env")))
            .expect("env recorded")
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn sandbox(uid: &str) -> SandboxSpec {
    SandboxSpec {
        uid: uid.into(),
        namespace: "ns".into(),
        name: format!("pod-{uid}"),
        host_network: false,
        port_mappings: vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }],
    }
}

/// The network of the fake node: `first` assigns the address, `second` is chained and
/// declares `portMappings`.
const CHAINED: &str = r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"first","ipam":{"type":"host-local"}},{"type":"second","capabilities":{"portMappings":true}}]}"#;

#[tokio::test]
async fn plugins_get_the_cni_environment_and_the_pods_identity() {
    let fake = Fake::new();
    fake.plugin("first", FIRST_RESULT, "", 0);
    let (list, _) = config::parse_list(CHAINED.as_bytes()).expect("list");
    let spec = sandbox("0b9c1a6e-7f3d-4c2a-9a51-2f1e1d0c0b0a");
    let args = cni_args(&spec);
    let netns = PathBuf::from("/var/run/netns/x");
    let attachment = Attachment {
        container_id: &spec.uid,
        netns: &netns,
        ifname: POD_IFNAME,
        args: &args,
    };
    let request = list.plugins[0].request(&list, None, &Default::default());
    let result = fake
        .exec()
        .exec(
            Command::Add,
            "first",
            "type=\"first\"",
            &request,
            &attachment,
        )
        .await
        .expect("add");
    assert_eq!(
        result,
        serde_json::from_str::<Value>(FIRST_RESULT).expect("json")
    );
    let env = fake.env("first", "ADD");
    let cni_path = format!(
        "CNI_PATH={}:{}",
        fake.root.join("missing-bin").display(),
        fake.root.join("bin").display()
    );
    for expected in [
        "CNI_COMMAND=ADD".to_string(),
        format!("CNI_CONTAINERID={}", spec.uid),
        "CNI_NETNS=/var/run/netns/x".to_string(),
        "CNI_IFNAME=eth0".to_string(),
        cni_path,
        format!(
            "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod-{uid};\
             K8S_POD_INFRA_CONTAINER_ID={uid};K8S_POD_UID={uid}",
            uid = spec.uid
        ),
    ] {
        assert!(env.contains(&expected), "{expected} not in {env:?}");
    }
    let stdin = fake.stdin("first", "ADD");
    assert_eq!(stdin["name"], "podnet");
    assert_eq!(stdin["cniVersion"], "1.0.0");
    assert_eq!(stdin["ipam"]["type"], "host-local");
    assert!(stdin.get("prevResult").is_none());
}

#[tokio::test]
async fn error_results_name_the_plugin_and_its_message() {
    let fake = Fake::new();
    fake.plugin("bad", ERROR_RESULT, "", 1);
    fake.plugin("quiet", "", "echo 'no address left' >&2", 2);
    fake.plugin("garbled", "not json", "", 0);
    let netns = PathBuf::from("/x");
    let attachment = Attachment {
        container_id: "c1",
        netns: &netns,
        ifname: "eth0",
        args: &[],
    };
    let exec = fake.exec();
    let describe = |t: &str| format!("type={t:?} name=\"podnet\"");
    let error = exec
        .exec(
            Command::Add,
            "bad",
            &describe("bad"),
            &json!({}),
            &attachment,
        )
        .await
        .expect_err("error result");
    assert!(
        matches!(&error, CniError::Plugin { code: 7, msg, .. } if msg == "Invalid Configuration"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with(
            "plugin type=\"bad\" name=\"podnet\" failed (add): Invalid Configuration; Network \
             192.168.0.0/31 too small"
        ),
        "{message}"
    );
    // Without an error result, stderr and the exit status say what happened.
    let error = exec
        .exec(
            Command::Del,
            "quiet",
            &describe("quiet"),
            &json!({}),
            &attachment,
        )
        .await
        .expect_err("stderr");
    let message = error.to_string();
    assert!(message.contains("failed (delete)"), "{message}");
    assert!(message.contains("no address left"), "{message}");
    assert!(message.contains("exit status: 2"), "{message}");
    let error = exec
        .exec(
            Command::Add,
            "garbled",
            &describe("garbled"),
            &json!({}),
            &attachment,
        )
        .await
        .expect_err("no result");
    assert!(matches!(error, CniError::BadResult { .. }), "{error:?}");
    // DEL's output is not a result and is not read.
    exec.exec(
        Command::Del,
        "garbled",
        &describe("garbled"),
        &json!({}),
        &attachment,
    )
    .await
    .expect("del succeeds");
    let error = exec
        .exec(
            Command::Add,
            "absent",
            &describe("absent"),
            &json!({}),
            &attachment,
        )
        .await
        .expect_err("not found");
    assert!(
        matches!(error, CniError::PluginNotFound { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("--cni-bin-dir"), "{error}");
}

#[tokio::test]
async fn a_plugin_past_its_time_is_killed_with_its_children() {
    let fake = Fake::new();
    let pidfile = fake.root.join("sleeper.pid");
    fake.plugin(
        "slow",
        "{}",
        &format!("sleep 60 & echo $! > {}; wait", pidfile.display()),
        0,
    );
    fake.plugin("chatty", "{}", "head -c 3000000 /dev/zero | tr '\\0' x", 0);
    let mut exec = fake.exec();
    exec.timeout = Duration::from_millis(500);
    exec.max_output = 4096;
    let netns = PathBuf::from("/x");
    let attachment = Attachment {
        container_id: "c1",
        netns: &netns,
        ifname: "eth0",
        args: &[],
    };
    let started = Instant::now();
    let error = exec
        .exec(
            Command::Add,
            "slow",
            "type=\"slow\"",
            &json!({}),
            &attachment,
        )
        .await
        .expect_err("timeout");
    assert!(matches!(error, CniError::Timeout { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(error.to_string().contains("was killed"), "{error}");
    // The plugin's own child went with it (its process group was killed).
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid number");
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.contains(") Z "))
            .unwrap_or(true)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone(), "the plugin's child {pid} still runs");
    exec.timeout = Duration::from_secs(20);
    let error = exec
        .exec(
            Command::Add,
            "chatty",
            "type=\"chatty\"",
            &json!({}),
            &attachment,
        )
        .await
        .expect_err("too much output");
    assert!(
        matches!(error, CniError::OutputTooLarge { limit: 4096, .. }),
        "{error:?}"
    );
}

#[test]
fn the_pods_ips_come_from_its_interfaces_ipv4_first() {
    let result: Value = serde_json::from_str(FIRST_RESULT).expect("json");
    assert_eq!(
        plugin::result_ips(&result),
        ["10.1.0.5".parse::<IpAddr>().expect("ip")]
    );
    let dual = json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.1.0.5/24"}, {"address": "fd00::6/64"}, {"address": "10.1.0.6/24"}]});
    let ips = plugin::pod_ips(&plugin::result_ips(&dual));
    assert_eq!(
        ips,
        [
            "10.1.0.5".parse::<IpAddr>().expect("v4"),
            "fd00::5".parse().expect("v6")
        ]
    );
    let legacy = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.2.0.3/16"}});
    assert_eq!(
        plugin::result_ips(&legacy),
        ["10.2.0.3".parse::<IpAddr>().expect("ip")]
    );
    assert!(plugin::pod_ips(&[]).is_empty());
    assert_eq!(loopback_list().to_json()["plugins"][0]["type"], "loopback");
}

#[tokio::test]
async fn without_a_configuration_pods_share_the_node_network() {
    let fake = Fake::new();
    let network = CniNetwork::new(fake.settings(), NodeNetwork::new([127, 0, 0, 1].into()));
    let NetworkCondition::NodeFallback(note) = network.condition() else {
        panic!("expected the node fallback");
    };
    assert!(note.contains("cni config uninitialized"), "{note}");
    let pod = network
        .setup(&sandbox("u-plain"))
        .await
        .expect("node network");
    assert_eq!(pod.ip(), IpAddr::from([127, 0, 0, 1]));
    assert_eq!(pod.host_ports(), HostPorts::NodeNetwork);
    assert!(network.pod("u-plain").is_some());
    network.teardown("u-plain").await.expect("teardown");
    assert!(network.pod("u-plain").is_none());
    // An unusable configuration: NotReady, and pods get no network (but hostNetwork ones).
    fake.conf("10-net.conflist", r#"{"name":"x","plugins":[]}"#);
    let NetworkCondition::NotReady(why) = network.condition() else {
        panic!("expected not ready");
    };
    assert!(why.contains("10-net.conflist"), "{why}");
    let error = match network.setup(&sandbox("u-broken")).await {
        Ok(_) => panic!("setup with a broken configuration"),
        Err(error) => error,
    };
    assert!(
        error.to_string().contains("cni config load failed"),
        "{error}"
    );
    let host = SandboxSpec {
        host_network: true,
        ..sandbox("u-host")
    };
    let pod = network.setup(&host).await.expect("hostNetwork");
    assert_eq!(pod.ip(), IpAddr::from([127, 0, 0, 1]));
    assert!(fake.calls().is_empty(), "no plugin ran");
}

/// ADD chains results and offers `portMappings`; the pod listens inside its own namespace
/// (not on the host's loopback); DEL runs in reverse with the recorded configuration and the
/// ADD result, even after the configuration on disk changed.
#[tokio::test]
async fn add_chains_results_and_del_reverses_with_the_recorded_configuration() {
    crate::network::netns::require_root();
    let fake = Fake::new();
    fake.loopback();
    fake.plugin("first", FIRST_RESULT, "", 0);
    fake.plugin("second", SECOND_RESULT, "", 0);
    fake.conf("10-podnet.conflist", CHAINED);
    let network = CniNetwork::new(fake.settings(), NodeNetwork::new([127, 0, 0, 1].into()));
    assert_eq!(network.condition(), NetworkCondition::Ready);
    let uid = "7c2e9f4a-1b3d-4e5f-8a6b-9c0d1e2f3a4b";
    let pod = network.setup(&sandbox(uid)).await.expect("setup");
    assert_eq!(
        fake.calls(),
        ["loopback ADD", "first ADD", "second ADD"],
        "the loopback network first, then the pod network in order"
    );
    assert_eq!(pod.ip(), IpAddr::from([10, 1, 0, 5]));
    assert_eq!(pod.ips(), [IpAddr::from([10, 1, 0, 5])]);
    assert_eq!(pod.host_ports(), HostPorts::Mapped);
    let netns_path = fake.root.join("netns").join(uid);
    assert_eq!(pod.namespace(), Some(netns_path.clone()));
    assert!(NetNs::open(&netns_path).is_ok(), "a live namespace");
    // prevResult chaining and capability arguments (spec section 3).
    let first_in = fake.stdin("first", "ADD");
    assert!(first_in.get("prevResult").is_none());
    assert!(
        first_in.get("runtimeConfig").is_none(),
        "first declares no capability"
    );
    let second_in = fake.stdin("second", "ADD");
    assert_eq!(
        second_in["prevResult"],
        serde_json::from_str::<Value>(FIRST_RESULT).expect("json")
    );
    assert_eq!(
        second_in["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
    assert!(second_in.get("capabilities").is_none());
    assert!(
        fake.env("loopback", "ADD")
            .contains(&"CNI_IFNAME=lo".to_string()),
        "loopback gets lo"
    );
    assert!(
        fake.env("first", "ADD")
            .contains(&format!("CNI_NETNS={}", netns_path.display()))
    );
    // Set up once: asking again returns it without running plugins.
    let again = network.setup(&sandbox(uid)).await.expect("again");
    assert_eq!(again.ip(), pod.ip());
    assert_eq!(fake.calls().len(), 3);

    // A listener for the pod is inside its namespace: not on the host's loopback, and
    // reachable from the kubelet through the namespace (port-forward, as containerd does).
    // The port is held (bound, not listening) on the host: the pod listens on it all the
    // same, and the host's loopback refuses it.
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind on the host");
    let port = held.local_addr().expect("addr").port();
    let listener = pod.listen_tcp(port).expect("listen in the pod");
    let from_host = std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    );
    assert!(
        from_host.is_err(),
        "the pod's port answers on the host's loopback"
    );
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let (accepted, forwarded) = tokio::join!(
        listener.accept(),
        pod.forward_tcp(port, Duration::from_secs(5))
    );
    accepted.expect("accepted inside the pod");
    forwarded.expect("forwarded into the pod");
    let taken = pod
        .listen_tcp(port)
        .expect_err("the port is taken in the pod");
    assert!(
        matches!(taken, NetworkError::PodPortInUse { .. }),
        "{taken}"
    );
    assert_eq!(taken.reason(), "PortInUse");
    // `enter` runs code inside: the pod's namespace, not ours.
    let inside = crate::network::enter(&*pod, || {
        std::fs::read_link("/proc/thread-self/ns/net").expect("ns link")
    })
    .expect("enter");
    assert_ne!(
        inside,
        std::fs::read_link("/proc/self/ns/net").expect("own ns link")
    );
    drop(listener);

    // The configuration on disk changes; DEL still uses what ADD used.
    std::fs::remove_file(fake.root.join("conf/10-podnet.conflist")).expect("rm conf");
    fake.conf(
        "00-other.conflist",
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"other"}]}"#,
    );
    fake.clear_calls();
    network.teardown(uid).await.expect("teardown");
    assert_eq!(
        fake.calls(),
        ["second DEL", "first DEL", "loopback DEL"],
        "reverse order, the pod network first"
    );
    let final_result: Value = serde_json::from_str(SECOND_RESULT).expect("json");
    assert_eq!(fake.stdin("second", "DEL")["prevResult"], final_result);
    assert_eq!(fake.stdin("first", "DEL")["prevResult"], final_result);
    assert_eq!(fake.stdin("first", "DEL")["name"], "podnet");
    assert!(
        fake.stdin("loopback", "DEL").get("prevResult").is_none(),
        "0.3.1 gets no prevResult on DEL"
    );
    assert!(!netns_path.exists(), "the namespace is removed");
    assert!(network.pod(uid).is_none());
    assert!(network.records.list().is_empty(), "the record is removed");
    network
        .teardown(uid)
        .await
        .expect("a second teardown is fine");
}

/// A failed ADD is DELeted (spec: a delete must follow a failed add) and leaves nothing.
#[tokio::test]
async fn a_failed_add_is_deleted_and_names_the_plugin() {
    crate::network::netns::require_root();
    let fake = Fake::new();
    fake.plugin("first", FIRST_RESULT, "", 0);
    fake.plugin(
        "bad",
        "",
        &format!(r#"if [ "$CNI_COMMAND" = ADD ]; then printf '%s' '{ERROR_RESULT}'; exit 1; fi"#),
        0,
    );
    fake.conf(
        "net.conf",
        r#"{"cniVersion":"1.0.0","name":"single","type":"first"}"#,
    );
    fake.conf(
        "zz-ignored.conflist",
        r#"{"cniVersion":"1.0.0","name":"later","plugins":[{"type":"bad"}]}"#,
    );
    let network = CniNetwork::new(fake.settings(), NodeNetwork::new([127, 0, 0, 1].into()));
    // The lexically first file wins, a .conf wrapped into a list; no loopback plugin here.
    let pod = network.setup(&sandbox("u-single")).await.expect("setup");
    assert_eq!(pod.ip(), IpAddr::from([10, 1, 0, 5]));
    assert_eq!(pod.host_ports(), HostPorts::Unmapped);
    assert_eq!(fake.calls(), ["first ADD"]);
    std::fs::remove_file(fake.root.join("conf/net.conf")).expect("rm");
    fake.conf(
        "net.conflist",
        r#"{"cniVersion":"1.0.0","name":"broken","plugins":[{"type":"first"},{"type":"bad"}]}"#,
    );
    fake.clear_calls();
    let error = match network.setup(&sandbox("u-fails")).await {
        Ok(_) => panic!("setup with a failing plugin"),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(
        message.contains("plugin type=\"bad\" name=\"broken\" failed (add): Invalid Configuration"),
        "{message}"
    );
    assert_eq!(
        fake.calls(),
        ["first ADD", "bad ADD", "bad DEL", "first DEL"]
    );
    assert!(!fake.root.join("netns/u-fails").exists());
    assert_eq!(network.records.list(), ["u-single"]);
    assert!(network.pod("u-fails").is_none());
    network.teardown("u-single").await.expect("teardown");
}

/// After a crash (a new process: nothing in memory), reconcile DELetes sandboxes of pods that
/// are gone and keeps live ones, which setup then resumes (CHECK, no new ADD).
#[tokio::test]
async fn reconcile_deletes_stale_sandboxes_and_setup_resumes_live_ones() {
    crate::network::netns::require_root();
    let fake = Fake::new();
    fake.plugin("first", FIRST_RESULT, "", 0);
    fake.plugin("second", SECOND_RESULT, "", 0);
    fake.conf("10-podnet.conflist", CHAINED);
    let before = CniNetwork::new(fake.settings(), NodeNetwork::new([127, 0, 0, 1].into()));
    before.setup(&sandbox("u-gone")).await.expect("setup gone");
    before.setup(&sandbox("u-live")).await.expect("setup live");
    // Reconcile never takes pods this process set up, live or not.
    assert!(before.reconcile(&HashSet::new()).await.is_empty());
    // A namespace file left without a record (a crash between the two) goes too.
    std::fs::write(fake.root.join("netns/u-orphan"), "").expect("stray netns file");
    drop(before);

    let after = CniNetwork::new(fake.settings(), NodeNetwork::new([127, 0, 0, 1].into()));
    fake.clear_calls();
    let live: HashSet<String> = ["u-live".to_string()].into();
    let mut removed = after.reconcile(&live).await;
    removed.sort();
    assert_eq!(removed, ["u-gone", "u-orphan"]);
    assert_eq!(fake.calls(), ["second DEL", "first DEL"]);
    assert!(
        fake.env("first", "DEL")
            .contains(&"CNI_CONTAINERID=u-gone".to_string())
    );
    assert!(!fake.root.join("netns/u-gone").exists());
    assert!(!fake.root.join("netns/u-orphan").exists());
    assert!(fake.root.join("netns/u-live").exists());
    fake.clear_calls();
    let resumed = after.setup(&sandbox("u-live")).await.expect("resume");
    assert_eq!(resumed.ip(), IpAddr::from([10, 1, 0, 5]));
    assert_eq!(fake.calls(), ["first CHECK", "second CHECK"]);
    assert_eq!(
        fake.stdin("first", "CHECK")["prevResult"],
        serde_json::from_str::<Value>(SECOND_RESULT).expect("json")
    );
    after.teardown("u-live").await.expect("teardown");
    assert!(after.reconcile(&HashSet::new()).await.is_empty());
}

/// A DEL that fails keeps the sandbox for a later round, which succeeds once the plugin does.
#[tokio::test]
async fn a_failed_del_is_retried_by_reconcile() {
    crate::network::netns::require_root();
    let fake = Fake::new();
    let flag = fake.root.join("fail-del");
    fake.plugin(
        "first",
        FIRST_RESULT,
        &format!(
            r#"if [ "$CNI_COMMAND" = DEL ] && [ -e {} ]; then echo '{ERROR_RESULT}'; exit 1; fi"#,
            flag.display()
        ),
        0,
    );
    fake.conf(
        "net.conflist",
        r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"first"}]}"#,
    );
    let network = CniNetwork::new(fake.settings(), NodeNetwork::new([127, 0, 0, 1].into()));
    network.setup(&sandbox("u-stuck")).await.expect("setup");
    std::fs::write(&flag, "").expect("flag");
    let error = network.teardown("u-stuck").await.expect_err("DEL fails");
    assert!(error.to_string().contains("failed (delete)"), "{error}");
    assert!(network.pod("u-stuck").is_none(), "the pod lets go of it");
    assert!(
        fake.root.join("netns/u-stuck").exists(),
        "kept for the retry"
    );
    assert!(network.reconcile(&HashSet::new()).await.is_empty());
    std::fs::remove_file(&flag).expect("unflag");
    assert_eq!(network.reconcile(&HashSet::new()).await, ["u-stuck"]);
    assert!(!fake.root.join("netns/u-stuck").exists());
}

#[test]
fn sandbox_specs_carry_host_ports_of_app_containers() {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
        "spec": {
            "initContainers": [{"name": "i", "ports": [{"containerPort": 1, "hostPort": 1}]}],
            "containers": [{"name": "c", "ports": [
                {"containerPort": 8080, "hostPort": 80},
                {"containerPort": 8080, "hostPort": 80},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},
                {"containerPort": 9090}
            ]}]
        }
    }))
    .expect("pod");
    let spec = SandboxSpec::of(&pod);
    assert_eq!(
        (
            spec.uid.as_str(),
            spec.namespace.as_str(),
            spec.name.as_str()
        ),
        ("u1", "ns", "web")
    );
    assert!(!spec.host_network);
    assert_eq!(
        serde_json::to_value(&spec.port_mappings).expect("json"),
        json!([
            {"hostPort": 80, "containerPort": 8080, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
        ])
    );
}

#[test]
fn container_ids_are_validated_as_libcni_does() {
    assert!(validate_container_id("0b9c1a6e-7f3d").is_ok());
    assert!(validate_container_id("static_pod.1").is_ok());
    for bad in ["", "-x", "a/b", "a b"] {
        assert!(validate_container_id(bad).is_err(), "{bad:?}");
    }
}
