//! The kubelet's own Prometheus metrics, under upstream's names (`pkg/kubelet/metrics`), served
//! on `/metrics` together with whatever the runtime registers
//! ([`crate::runtime::Runtime::register_metrics`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::stats::Stats;

/// `container_state` of `kubelet_running_containers`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerStateLabel {
    /// `running` (the only state this node keeps containers in).
    pub container_state: String,
}

/// `operation_type` of `kubelet_pod_worker_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    /// `create` (first setup), `update` (a changed spec) or `sync` (periodic refresh).
    pub operation_type: String,
}

/// `container_type` of `kubelet_started_containers_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerTypeLabel {
    /// `container`, `init_container` or `sidecar` (upstream uses the first two).
    pub container_type: String,
}

/// `node` of `kubelet_node_name`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node's name.
    pub node: String,
}

/// The labels of `prober_probe_total` (upstream `pkg/kubelet/prober/prober_manager.go`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `Liveness`, `Readiness` or `Startup`.
    pub probe_type: String,
    /// `successful`, `failed` or `unknown`.
    pub result: String,
    /// The container's name.
    pub container: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's UID.
    pub pod_uid: String,
}

/// The prober's metrics, served on `/metrics/probes` (upstream registers them in their own
/// registry for that path, `pkg/kubelet/server/server.go`).
#[derive(Debug, Clone, Default)]
pub struct ProbeMetrics {
    /// Probe runs by type and result, per container.
    pub results: Family<ProbeLabels, Counter>,
}

/// Which container a probe belongs to (the fixed labels of its series).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedContainer {
    /// The container's name.
    pub container: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's UID.
    pub pod_uid: String,
}

/// The results a probe series is kept for (upstream `probeResultSuccessful`, ...).
const PROBE_RESULTS: [&str; 3] = ["successful", "failed", "unknown"];

impl ProbeMetrics {
    /// A registry with only the prober's metrics, for `/metrics/probes`.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        // prometheus-client adds `_total` to counters.
        registry.register(
            "prober_probe",
            "Cumulative number of a liveness, readiness or startup probe for a container by result.",
            self.results.clone(),
        );
        registry
    }

    fn labels(probe_type: &str, result: &str, c: &ProbedContainer) -> ProbeLabels {
        ProbeLabels {
            probe_type: probe_type.into(),
            result: result.into(),
            container: c.container.clone(),
            pod: c.pod.clone(),
            namespace: c.namespace.clone(),
            pod_uid: c.pod_uid.clone(),
        }
    }

    /// Counts one run of `probe_type` on `c` with `result`.
    pub fn record(&self, probe_type: &str, result: &str, c: &ProbedContainer) {
        self.results
            .get_or_create(&Self::labels(probe_type, result, c))
            .inc();
    }

    /// Drops the series of `probe_type` on `c` (upstream's probe worker does when it stops:
    /// the container's run ended).
    pub fn forget(&self, probe_type: &str, c: &ProbedContainer) {
        for result in PROBE_RESULTS {
            self.results.remove(&Self::labels(probe_type, result, c));
        }
    }
}

/// Upstream's buckets for pod start duration, in seconds.
const POD_START_BUCKETS: [f64; 25] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// Prometheus' default buckets, which upstream's pod worker duration uses.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn worker_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// The kubelet's metrics; the handles are cheap to clone and shared with the pod workers.
#[derive(Debug, Clone)]
pub struct KubeletMetrics {
    /// Pods with a running container.
    pub running_pods: Gauge,
    /// Containers by state.
    pub running_containers: Family<ContainerStateLabel, Gauge>,
    /// From the worker first seeing a pod to all its containers started.
    pub pod_start_duration: Histogram,
    /// Duration of one pod worker operation.
    pub pod_worker_duration: Family<OperationLabel, Histogram, fn() -> Histogram>,
    /// Containers started.
    pub started_containers: Family<ContainerTypeLabel, Counter>,
    /// Pods started.
    pub started_pods: Counter,
    /// Always 1, labelled with the node's name.
    pub node_name: Family<NodeLabel, Gauge>,
    /// The prober's metrics (on `/metrics/probes`, not `/metrics`).
    pub probes: ProbeMetrics,
}

impl KubeletMetrics {
    /// New metrics for `node`.
    pub fn new(node: &str) -> Self {
        let metrics = Self {
            running_pods: Gauge::default(),
            running_containers: Family::default(),
            pod_start_duration: Histogram::new(POD_START_BUCKETS),
            pod_worker_duration: Family::new_with_constructor(worker_histogram),
            started_containers: Family::default(),
            started_pods: Counter::default(),
            node_name: Family::default(),
            probes: ProbeMetrics::default(),
        };
        metrics
            .node_name
            .get_or_create(&NodeLabel { node: node.into() })
            .set(1);
        metrics
    }

    /// Adds the metrics to `registry` under their upstream names.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubelet_running_pods",
            "Number of pods that have a running container",
            self.running_pods.clone(),
        );
        registry.register(
            "kubelet_running_containers",
            "Number of containers currently running",
            self.running_containers.clone(),
        );
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            self.pod_start_duration.clone(),
        );
        registry.register(
            "kubelet_pod_worker_duration_seconds",
            "Duration in seconds to sync a single pod. Broken down by operation type: create, update, or sync",
            self.pod_worker_duration.clone(),
        );
        // prometheus-client adds `_total` to counters.
        registry.register(
            "kubelet_started_containers",
            "Cumulative number of containers started",
            self.started_containers.clone(),
        );
        registry.register(
            "kubelet_started_pods",
            "Cumulative number of pods started",
            self.started_pods.clone(),
        );
        registry.register(
            "kubelet_node_name",
            "The node's name. The count is always 1.",
            self.node_name.clone(),
        );
    }

    /// Brings the gauges of what runs now up to date (called before each scrape).
    pub fn refresh(&self, stats: &Stats) {
        let running = stats.running();
        let mut pods: Vec<&str> = running.iter().map(|e| e.pod.uid.as_str()).collect();
        pods.sort_unstable();
        pods.dedup();
        self.running_pods.set(pods.len() as i64);
        self.running_containers
            .get_or_create(&ContainerStateLabel {
                container_state: "running".into(),
            })
            .set(running.len() as i64);
    }

    /// Records the duration of a pod worker operation.
    pub fn observe_worker(&self, operation: &str, seconds: f64) {
        self.pod_worker_duration
            .get_or_create(&OperationLabel {
                operation_type: operation.into(),
            })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_upstreams() {
        let metrics = KubeletMetrics::new("node-a");
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.refresh(&Stats::new());
        metrics.started_pods.inc();
        metrics.observe_worker("create", 0.02);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for expected in [
            "kubelet_running_pods 0\n",
            "kubelet_running_containers{container_state=\"running\"} 0\n",
            "kubelet_started_pods_total 1\n",
            "kubelet_node_name{node=\"node-a\"} 1\n",
            "kubelet_pod_worker_duration_seconds_count{operation_type=\"create\"} 1\n",
            "# TYPE kubelet_pod_start_duration_seconds histogram\n",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn probe_results_are_counted_per_container_and_forgotten_with_it() {
        let probes = ProbeMetrics::default();
        let c = ProbedContainer {
            container: "main".into(),
            pod: "p".into(),
            namespace: "ns".into(),
            pod_uid: "u".into(),
        };
        probes.record("Liveness", "successful", &c);
        probes.record("Liveness", "successful", &c);
        probes.record("Liveness", "failed", &c);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &probes.registry()).expect("encode");
        assert!(
            text.contains(
                "prober_probe_total{probe_type=\"Liveness\",result=\"successful\",container=\"main\",pod=\"p\",namespace=\"ns\",pod_uid=\"u\"} 2\n"
            ),
            "{text}"
        );
        probes.forget("Liveness", &c);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &probes.registry()).expect("encode");
        assert!(!text.contains("result="), "{text}");
    }
}
