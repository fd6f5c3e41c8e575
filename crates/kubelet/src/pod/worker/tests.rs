//! The pod worker driven through its transitions on a [`FakeRuntime`] with paused time, the
//! way `pod_workers_test.go` drives the upstream worker. The end-to-end tests check the same
//! behaviour against the real cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::watch;

use super::{Desired, PodDirs, WorkerContext, run};
use crate::container::runner::NodeServices;
use crate::container::service_env::ServiceEnv;
use crate::eviction::Evictions;
use crate::image::ImageStore;
use crate::log::rotation::LogPolicy;
use crate::metrics::KubeletMetrics;
use crate::node::allocatable::NodeResources;
use crate::pod::api::ApiLink;
use crate::pod::events::PodEvents;
use crate::pod::status::{PodKey, StatusManager, StatusSink};
use crate::runtime::fake::{FakeRuntime, Step};
use crate::stats::Stats;

const OLD: &str = "fake.test/app:v1";
const NEW: &str = "fake.test/app:v2";

struct Harness {
    fake: FakeRuntime,
    status: StatusManager,
    desired: watch::Sender<Desired>,
    key: PodKey,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn seed(images: &ImageStore, reference: &str) {
    // Public: any pod may reuse it without a pull.
    let public = crate::image::access::Access {
        anonymous: true,
        ..Default::default()
    };
    images.store().record_test_image(
        reference,
        format!("\0asm\x01\0\0\0{reference}").as_bytes(),
        public,
    );
}

fn pod(spec: serde_json::Value, status: Option<serde_json::Value>) -> Pod {
    let mut pod = serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "0123456789abcdef"},
        "spec": spec,
    });
    if let Some(status) = status {
        pod["status"] = status;
    }
    serde_json::from_value(pod).expect("pod")
}

/// A container of the fake image.
fn c(name: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "image": OLD, "imagePullPolicy": "IfNotPresent"})
}

fn start(pod: Pod, fake: &FakeRuntime) -> Harness {
    start_on(
        pod,
        fake,
        crate::network::NodeNetwork::new(std::net::IpAddr::from([127, 0, 0, 1])),
    )
}

/// Starts a worker whose pods get their network from `network`.
fn start_on(pod: Pod, fake: &FakeRuntime, network: Arc<dyn crate::network::Network>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let images = ImageStore::new(
        dir.path().join("images"),
        Vec::new(),
        crate::image::limits::PullLimits::default(),
    )
    .expect("store");
    seed(&images, OLD);
    seed(&images, NEW);
    let status = StatusManager::new();
    tokio::spawn(
        status
            .clone()
            .run(StatusSink::Files(dir.path().join("status"))),
    );
    let ctx = WorkerContext {
        services: Arc::new(NodeServices {
            runtime: Arc::new(fake.clone()),
            images: Arc::new(images),
            events: PodEvents::new(crate::events::EventPublisher::log_only()),
            node_name: "node".into(),
            node_labels: BTreeMap::new(),
            node_ip: "127.0.0.1".into(),
            api: ApiLink::Standalone,
            log_policy: LogPolicy::default(),
            log_links: None,
            stats: Stats::new(),
            metrics: KubeletMetrics::new("node"),
            allocatable: NodeResources {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
                ephemeral_storage_bytes: 1 << 40,
                pods: 110,
            },
            memory_bound: 1 << 30,
            service_env: ServiceEnv::none(),
            exec: Default::default(),
            network,
            outbound_deny: crate::network::outbound::default_node_deny().into(),
            dns: Arc::default(),
        }),
        status: status.clone(),
        dirs: PodDirs {
            pods: dir.path().join("pods"),
            logs: dir.path().join("logs"),
        },
        evictions: Evictions::default(),
    };
    let key = PodKey::of(&pod);
    let (desired, rx) = watch::channel(Desired::Run(Arc::new(pod)));
    let task = tokio::spawn(run(ctx, rx, None));
    Harness {
        fake: fake.clone(),
        status,
        desired,
        key,
        task,
        _dir: dir,
    }
}

impl Harness {
    fn status(&self) -> PodStatus {
        self.status.get(&self.key).unwrap_or_default()
    }

    /// Waits (in virtual time) until `check` holds for the latest status.
    async fn wait(&self, what: &str, check: impl Fn(&PodStatus) -> bool) -> PodStatus {
        for _ in 0..20_000 {
            let status = self.status();
            if check(&status) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not {what}: {:#?}", self.status());
    }

    fn update(&self, pod: Pod) {
        self.desired.send_replace(Desired::Run(Arc::new(pod)));
    }

    async fn ended(self) {
        tokio::time::timeout(Duration::from_secs(600), self.task)
            .await
            .expect("worker ended")
            .expect("no panic");
    }
}

fn phase(s: &PodStatus) -> &str {
    s.phase.as_deref().unwrap_or_default()
}

fn container<'a>(s: &'a PodStatus, name: &str) -> Option<&'a ContainerStatus> {
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

fn running(s: &PodStatus, name: &str) -> bool {
    container(s, name).is_some_and(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
}

fn deleted(mut pod: Pod) -> Pod {
    pod.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    pod.metadata.deletion_grace_period_seconds = Some(5);
    pod
}

#[tokio::test(start_paused = true)]
async fn an_app_that_exits_zero_under_never_succeeds() {
    let fake = FakeRuntime::default();
    fake.script(
        "app",
        [Step::Exit {
            after: Duration::from_secs(1),
            code: 0,
        }],
    );
    let h = start(
        pod(
            serde_json::json!({"restartPolicy": "Never", "containers": [c("app")]}),
            None,
        ),
        &fake,
    );
    let s = h.wait("Succeeded", |s| phase(s) == "Succeeded").await;
    let ready = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
    assert_eq!(h.fake.starts_of("app"), 1);
}

#[tokio::test(start_paused = true)]
async fn sidecars_stop_in_reverse_order_once_the_app_is_done() {
    let fake = FakeRuntime::default();
    fake.script(
        "app",
        [Step::Exit {
            after: Duration::from_secs(2),
            code: 0,
        }],
    );
    let mut first = c("first");
    first["restartPolicy"] = "Always".into();
    let mut second = c("second");
    second["restartPolicy"] = "Always".into();
    let h = start(
        pod(
            serde_json::json!({"restartPolicy": "Never", "initContainers": [first, second], "containers": [c("app")]}),
            None,
        ),
        &fake,
    );
    let terminated = |s: &PodStatus, name: &str| {
        container(s, name)
            .is_some_and(|c| c.state.as_ref().is_some_and(|st| st.terminated.is_some()))
    };
    h.wait("Succeeded with its sidecars stopped", |s| {
        phase(s) == "Succeeded" && terminated(s, "first") && terminated(s, "second")
    })
    .await;
    assert_eq!(h.fake.killed(), ["second", "first"]);
    let order: Vec<String> = h.fake.started().into_iter().map(|s| s.container).collect();
    assert_eq!(order, ["first", "second", "app"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_init_container_under_never_fails_the_pod_without_starting_apps() {
    let fake = FakeRuntime::default();
    fake.script(
        "init",
        [Step::Exit {
            after: Duration::from_secs(1),
            code: 3,
        }],
    );
    let h = start(
        pod(
            serde_json::json!({"restartPolicy": "Never", "initContainers": [c("init")], "containers": [c("app")]}),
            None,
        ),
        &fake,
    );
    h.wait("Failed", |s| phase(s) == "Failed").await;
    assert_eq!(h.fake.starts_of("app"), 0);
}

#[tokio::test(start_paused = true)]
async fn deleting_a_pod_whose_volumes_fail_finishes_at_once() {
    let fake = FakeRuntime::default();
    // Standalone has no API server: a configMap volume fails to mount, again and again.
    let spec = serde_json::json!({
        "volumes": [{"name": "cfg", "configMap": {"name": "missing"}}],
        "containers": [c("app")]
    });
    let h = start(pod(spec.clone(), None), &fake);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.fake.starts_of("app"), 0);
    h.update(deleted(pod(spec, None)));
    let started = tokio::time::Instant::now();
    h.ended().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn active_deadline_fails_the_pod_deadline_exceeded() {
    let fake = FakeRuntime::default();
    let h = start(
        pod(
            serde_json::json!({"activeDeadlineSeconds": 5, "terminationGracePeriodSeconds": 1, "containers": [c("app")]}),
            None,
        ),
        &fake,
    );
    let s = h.wait("Failed", |s| phase(s) == "Failed").await;
    assert_eq!(s.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(h.fake.killed(), ["app"]);
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_finished_containers_stay_done_and_running_ones_follow_their_policy() {
    let fake = FakeRuntime::default();
    let previous = serde_json::json!({
        "phase": "Running",
        "startTime": "2026-01-01T00:00:00Z",
        "containerStatuses": [
            {"name": "done", "image": OLD, "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "busy", "image": OLD, "imageID": "", "ready": true, "restartCount": 0,
             "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}
        ]
    });
    let h = start(
        pod(
            serde_json::json!({"restartPolicy": "Never", "containers": [c("done"), c("busy")]}),
            Some(previous.clone()),
        ),
        &fake,
    );
    let s = h.wait("Failed", |s| phase(s) == "Failed").await;
    let busy = container(&s, "busy")
        .and_then(|c| c.state.as_ref())
        .and_then(|st| st.terminated.clone())
        .expect("busy terminated");
    assert_eq!(
        (busy.exit_code, busy.reason.as_deref()),
        (137, Some("ContainerStatusUnknown"))
    );
    assert_eq!(h.fake.started().len(), 0, "nothing runs again under Never");

    // The same pod under Always: the running container starts again, counted.
    let fake = FakeRuntime::default();
    let h = start(
        pod(
            serde_json::json!({"restartPolicy": "Always", "containers": [c("busy")]}),
            Some(previous),
        ),
        &fake,
    );
    let s = h.wait("busy running again", |s| running(s, "busy")).await;
    let busy = container(&s, "busy").expect("busy");
    assert_eq!(busy.restart_count, 1);
    assert_eq!(
        busy.last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .and_then(|t| t.reason.as_deref()),
        Some("ContainerStatusUnknown")
    );
}

#[tokio::test(start_paused = true)]
async fn init_containers_that_succeeded_before_a_restart_are_not_run_again() {
    let fake = FakeRuntime::default();
    let previous = serde_json::json!({
        "phase": "Pending",
        "initContainerStatuses": [
            {"name": "init", "image": OLD, "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
        ]
    });
    let h = start(
        pod(
            serde_json::json!({"initContainers": [c("init")], "containers": [c("app")]}),
            Some(previous),
        ),
        &fake,
    );
    h.wait("app running", |s| running(s, "app")).await;
    assert_eq!(h.fake.starts_of("init"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_image_restarts_the_container() {
    let fake = FakeRuntime::default();
    let spec = serde_json::json!({"terminationGracePeriodSeconds": 1, "containers": [c("app")]});
    let h = start(pod(spec.clone(), None), &fake);
    h.wait("running", |s| running(s, "app")).await;
    let mut changed = spec;
    changed["containers"][0]["image"] = NEW.into();
    h.update(pod(changed, None));
    let s = h
        .wait("running the new image", |s| {
            running(s, "app") && container(s, "app").is_some_and(|c| c.image == NEW)
        })
        .await;
    assert_eq!(container(&s, "app").map(|c| c.restart_count), Some(1));
    assert_eq!(h.fake.starts_of("app"), 2);
    assert_eq!(h.fake.killed(), ["app"]);
}

#[tokio::test(start_paused = true)]
async fn the_first_restart_is_immediate_then_crash_loop_back_off() {
    let fake = FakeRuntime::default();
    let exit = || Step::Exit {
        after: Duration::from_millis(100),
        code: 1,
    };
    fake.script("app", [exit(), exit()]);
    let h = start(
        pod(
            serde_json::json!({"restartPolicy": "OnFailure", "containers": [c("app")]}),
            None,
        ),
        &fake,
    );
    h.wait("backing off", |s| {
        container(s, "app").is_some_and(|c| {
            c.state
                .as_ref()
                .and_then(|st| st.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("CrashLoopBackOff")
        })
    })
    .await;
    // Two runs before the first back-off: the first restart did not wait.
    assert_eq!(h.fake.starts_of("app"), 2);
    h.wait("third run", |s| running(s, "app")).await;
    assert_eq!(h.fake.starts_of("app"), 3);
}

#[tokio::test(start_paused = true)]
async fn node_shutdown_fails_pods_with_a_disruption_target() {
    let fake = FakeRuntime::default();
    let h = start(
        pod(serde_json::json!({"containers": [c("app")]}), None),
        &fake,
    );
    h.wait("running", |s| running(s, "app")).await;
    h.desired
        .send_replace(Desired::NodeShutdown(Duration::from_secs(2)));
    let s = h.wait("Failed", |s| phase(s) == "Failed").await;
    assert_eq!(s.reason.as_deref(), Some("Terminated"));
    let disruption = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget")
        .expect("DisruptionTarget");
    assert_eq!(disruption.reason.as_deref(), Some("TerminationByKubelet"));
    h.ended().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_pod_stops_at_once_and_is_forgotten() {
    let fake = FakeRuntime::default();
    let h = start(
        pod(
            serde_json::json!({"terminationGracePeriodSeconds": 30, "containers": [c("app")]}),
            None,
        ),
        &fake,
    );
    h.wait("running", |s| running(s, "app")).await;
    h.desired.send_replace(Desired::Removed);
    let status = h.status.clone();
    let key = h.key.clone();
    let started = tokio::time::Instant::now();
    h.ended().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(status.get(&key).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_container_restart_rule_retries_one_exit_code_in_a_never_pod() {
    let fake = FakeRuntime::default();
    let exit = |code| Step::Exit {
        after: Duration::from_millis(100),
        code,
    };
    // Exit 42 is "retriable" by the container's rule; exit 3 is not.
    fake.script("app", [exit(42), exit(42), exit(3)]);
    let mut app = c("app");
    app["restartPolicy"] = "Never".into();
    app["restartPolicyRules"] =
        serde_json::json!([{"action": "Restart", "exitCodes": {"operator": "In", "values": [42]}}]);
    let h = start(
        pod(
            serde_json::json!({"restartPolicy": "Never", "containers": [app]}),
            None,
        ),
        &fake,
    );
    // Had the first exit 42 failed the pod, it would be Failed with restartCount 0.
    let s = h.wait("Failed", |s| phase(s) == "Failed").await;
    let app = container(&s, "app").expect("app status");
    assert_eq!(app.restart_count, 2);
    let ended = app.state.as_ref().and_then(|st| st.terminated.as_ref());
    assert_eq!(ended.map(|t| t.exit_code), Some(3));
    assert_eq!(h.fake.starts_of("app"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_container_policy_overrides_the_pods() {
    let fake = FakeRuntime::default();
    let exit = |code| Step::Exit {
        after: Duration::from_millis(100),
        code,
    };
    // The pod says Never; the container says OnFailure.
    fake.script("app", [exit(1), exit(0)]);
    let mut app = c("app");
    app["restartPolicy"] = "OnFailure".into();
    let h = start(
        pod(
            serde_json::json!({"restartPolicy": "Never", "containers": [app]}),
            None,
        ),
        &fake,
    );
    let s = h.wait("Succeeded", |s| phase(s) == "Succeeded").await;
    assert_eq!(container(&s, "app").map(|c| c.restart_count), Some(1));
}

fn ephemeral<'a>(s: &'a PodStatus, name: &str) -> Option<&'a ContainerStatus> {
    s.ephemeral_container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
}

#[tokio::test(start_paused = true)]
async fn an_ephemeral_container_runs_once_apart_from_the_phase_and_is_never_restarted() {
    let fake = FakeRuntime::default();
    fake.script(
        "debugger",
        [Step::Exit {
            after: Duration::from_secs(1),
            code: 3,
        }],
    );
    let base = serde_json::json!({"restartPolicy": "Always", "containers": [c("app")]});
    let h = start(pod(base.clone(), None), &fake);
    h.wait("app running", |s| running(s, "app")).await;
    // `kubectl debug` adds it through the ephemeralcontainers subresource: a pod update.
    let mut spec = base;
    let mut debugger = c("debugger");
    debugger["targetContainerName"] = "app".into();
    spec["ephemeralContainers"] = serde_json::json!([debugger]);
    h.update(pod(spec.clone(), None));
    let s = h
        .wait("the debugger terminated", |s| {
            ephemeral(s, "debugger")
                .and_then(|c| c.state.as_ref())
                .and_then(|st| st.terminated.as_ref())
                .is_some()
        })
        .await;
    let debugger = ephemeral(&s, "debugger").expect("status");
    let terminated = debugger
        .state
        .as_ref()
        .and_then(|st| st.terminated.as_ref())
        .expect("terminated");
    assert_eq!(terminated.exit_code, 3);
    assert_eq!(debugger.restart_count, 0);
    // Only among the ephemeral statuses, and the pod runs on.
    assert!(container(&s, "debugger").is_none());
    assert_eq!(phase(&s), "Running");
    assert!(running(&s, "app"));
    // Later updates never run it again, whatever its exit code and the pod's policy.
    h.update(pod(spec, None));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.fake.starts_of("debugger"), 1);
    assert_eq!(h.fake.starts_of("app"), 1);
    let debugger = ephemeral(&h.status(), "debugger").cloned().expect("status");
    assert_eq!(debugger.restart_count, 0);
}

/// A pod network whose sandbox fails `failures` times (as a CNI ADD error would), then gives
/// the pod 10.9.0.7; it records setups and teardowns.
#[derive(Debug)]
struct FlakyNetwork {
    failures: std::sync::Mutex<u32>,
    setups: std::sync::atomic::AtomicU32,
    teardowns: std::sync::Mutex<Vec<String>>,
}

impl crate::network::Network for FlakyNetwork {
    fn pod(&self, _uid: &str) -> Option<Arc<dyn crate::network::PodNetwork>> {
        Some(crate::network::NodeNetwork::new([10, 9, 0, 7].into()))
    }

    fn setup<'a>(
        &'a self,
        sandbox: &'a crate::network::SandboxSpec,
    ) -> futures::future::BoxFuture<
        'a,
        Result<Arc<dyn crate::network::PodNetwork>, crate::network::NetworkError>,
    > {
        use std::sync::atomic::Ordering;
        self.setups.fetch_add(1, Ordering::SeqCst);
        let mut failures = self.failures.lock().expect("lock");
        let result: Result<Arc<dyn crate::network::PodNetwork>, _> = if *failures > 0 {
            *failures -= 1;
            Err(crate::network::NetworkError::NoNetwork {
                uid: sandbox.uid.clone(),
            })
        } else {
            Ok(crate::network::NodeNetwork::new([10, 9, 0, 7].into()))
        };
        Box::pin(async move { result })
    }

    fn teardown<'a>(
        &'a self,
        uid: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), crate::network::NetworkError>> {
        self.teardowns.lock().expect("lock").push(uid.to_string());
        Box::pin(async { Ok(()) })
    }

    fn reconcile<'a>(
        &'a self,
        _live: &'a std::collections::HashSet<String>,
    ) -> futures::future::BoxFuture<'a, Vec<String>> {
        Box::pin(async { Vec::new() })
    }
}

#[tokio::test(start_paused = true)]
async fn a_sandbox_that_fails_keeps_the_pod_pending_and_is_retried_then_torn_down() {
    let fake = FakeRuntime::default();
    fake.script(
        "app",
        [Step::Exit {
            after: Duration::from_secs(30),
            code: 0,
        }],
    );
    let network = Arc::new(FlakyNetwork {
        failures: std::sync::Mutex::new(3),
        setups: Default::default(),
        teardowns: Default::default(),
    });
    let spec = serde_json::json!({"restartPolicy": "Never", "containers": [c("app")]});
    let h = start_on(pod(spec.clone(), None), &fake, network.clone());
    let pending = h.wait("Pending", |s| phase(s) == "Pending").await;
    assert_eq!(pending.pod_ip, None, "no IP before the sandbox exists");
    assert_eq!(
        h.fake.starts_of("app"),
        0,
        "no container before the sandbox"
    );
    let started = tokio::time::Instant::now();
    let s = h.wait("Running", |s| running(s, "app")).await;
    // Retried after 1 s, 2 s, 4 s (back-off), then set up.
    assert_eq!(network.setups.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.pod_ip.as_deref(), Some("10.9.0.7"));
    assert_eq!(
        s.pod_ips
            .iter()
            .flatten()
            .map(|ip| ip.ip.as_str())
            .collect::<Vec<_>>(),
        ["10.9.0.7"]
    );
    assert_eq!(s.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(network.teardowns.lock().expect("lock").is_empty());
    // The pod ends: its sandbox goes, its status keeps the IP (as upstream's).
    let done = h.wait("Succeeded", |s| phase(s) == "Succeeded").await;
    assert_eq!(done.pod_ip.as_deref(), Some("10.9.0.7"));
    for _ in 0..100 {
        if !network.teardowns.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        *network.teardowns.lock().expect("lock"),
        ["0123456789abcdef"],
        "the sandbox goes when the pod ends"
    );
    h.update(deleted(pod(spec, None)));
    h.ended().await;
}
