//! `/metrics/cadvisor`: the `container_*` and `machine_*` series that cAdvisor's Prometheus
//! collector writes (google/cadvisor `metrics/prometheus.go`, `NewPrometheusCollector`), under
//! the labels the kubelet gives them (`pkg/kubelet/server/server.go`,
//! `containerPrometheusLabelsFunc`: `container`, `id`, `image`, `name`, `namespace`, `pod`), so
//! that dashboards and adapters written for kubelets find them.
//!
//! Containers have no cgroups here; `id` is the path the kubelet's cgroup layout would give
//! (`/kubepods/pod<uid>/<run id>`), `name` the run's ID (as containerd's containers are named).
//! Each pod also has a pod-level series (`container=""`, `id=/kubepods/pod<uid>`) and the node
//! one with `id="/"`, as cAdvisor reports for the pod and root cgroups.

use std::fmt::Write;
use std::path::Path;

use jiff::Timestamp;

use super::resource::escape;
use super::summary::Summary;
use super::{RunningEntry, Stats};

/// The kernel's CFS period in microseconds, which `container_spec_cpu_period` reports.
const CFS_PERIOD_MICROS: u64 = 100_000;

/// One series: its labels and value.
struct Series {
    labels: Vec<(&'static str, String)>,
    value: f64,
}

/// A metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
    millis: i64,
}

impl Family<'_> {
    fn sample(&mut self, series: &Series) {
        let labels: Vec<String> = series
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(
            self.out,
            "{}{{{}}} {} {}",
            self.name,
            labels.join(","),
            series.value,
            self.millis
        );
    }
}

fn family<'a>(
    out: &'a mut String,
    name: &'static str,
    kind: &str,
    help: &str,
    millis: i64,
) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name, millis }
}

/// The labels of a container, a pod (`container` empty) or the node (all empty but `id`).
fn labels(
    container: &str,
    id: &str,
    image: &str,
    name: &str,
    namespace: &str,
    pod: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("container", container.into()),
        ("id", id.into()),
        ("image", image.into()),
        ("name", name.into()),
        ("namespace", namespace.into()),
        ("pod", pod.into()),
    ]
}

fn container_labels(entry: &RunningEntry) -> Vec<(&'static str, String)> {
    labels(
        &entry.container,
        &format!("/kubepods/pod{}/{}", entry.pod.uid, entry.info.id),
        &entry.info.image,
        &entry.info.id,
        &entry.pod.namespace,
        &entry.pod.name,
    )
}

fn with(
    mut labels: Vec<(&'static str, String)>,
    extra: (&'static str, &str),
) -> Vec<(&'static str, String)> {
    labels.push((extra.0, extra.1.into()));
    labels.sort_by_key(|(k, _)| *k);
    labels
}

/// The device of the filesystem `path` is on, as `/proc/self/mountinfo` names its source
/// (cAdvisor's `device` label); empty if it cannot be told.
pub fn device_of(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return String::new();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return String::new();
    };
    // Fields: id parent major:minor root mount-point options... - fstype source super-options.
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = fields.get(4)?;
            let dash = fields.iter().position(|f| *f == "-")?;
            let source = fields.get(dash + 2)?;
            path.starts_with(mount_point)
                .then(|| (mount_point.len(), (*source).to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, source)| source)
        .unwrap_or_default()
}

/// Encodes the cAdvisor series in the Prometheus text format (version 0.0.4).
pub fn encode(stats: &Stats, summary: &Summary, device: &str) -> String {
    let now = Timestamp::now();
    let ms = now.as_millisecond();
    let running = stats.running();
    let mut out = String::new();
    let seconds = |nanos: u64| nanos as f64 / 1e9;
    let node = labels("", "/", "", "", "", "");
    let pod_labels = |p: &super::summary::PodStats| {
        labels(
            "",
            &format!("/kubepods/pod{}", p.pod_ref.uid),
            "",
            "",
            &p.pod_ref.namespace,
            &p.pod_ref.name,
        )
    };

    // cAdvisor reports CPU with `cpu="total"` when per-CPU usage is off (the kubelet's default).
    let mut f = family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed in seconds.",
        ms,
    );
    for e in &running {
        f.sample(&Series {
            labels: with(container_labels(e), ("cpu", "total")),
            value: seconds(e.usage.cpu_nanos()),
        });
    }
    for p in &summary.pods {
        if let Some(cpu) = &p.cpu {
            f.sample(&Series {
                labels: with(pod_labels(p), ("cpu", "total")),
                value: seconds(cpu.usage_core_nano_seconds.unwrap_or(0)),
            });
        }
    }
    if let Some(cpu) = &summary.node.cpu {
        f.sample(&Series {
            labels: with(node.clone(), ("cpu", "total")),
            value: seconds(cpu.usage_core_nano_seconds.unwrap_or(0)),
        });
    }

    // CFS series exist only for containers with a CPU quota (cAdvisor's condition
    // `s.Cpu.Quota != 0`); ours come from the runtime's `limits.cpu` token bucket.
    /// A CFS series: name, help, and its value for a container.
    type CfsSeries = (&'static str, &'static str, fn(&RunningEntry) -> f64);
    let limited: Vec<_> = running
        .iter()
        .filter(|e| e.info.cpu_limit_millis.is_some())
        .collect();
    let cfs: [CfsSeries; 3] = [
        (
            "container_cpu_cfs_periods_total",
            "Number of elapsed enforcement period intervals.",
            |e| e.usage.cfs_periods() as f64,
        ),
        (
            "container_cpu_cfs_throttled_periods_total",
            "Number of throttled period intervals.",
            |e| e.usage.throttled_periods() as f64,
        ),
        (
            "container_cpu_cfs_throttled_seconds_total",
            "Total time duration the container has been throttled.",
            |e| e.usage.throttled_nanos() as f64 / 1e9,
        ),
    ];
    for (name, help, value) in cfs {
        let mut f = family(&mut out, name, "counter", help, ms);
        for e in &limited {
            f.sample(&Series {
                labels: container_labels(e),
                value: value(e),
            });
        }
    }

    // Memory: a guest's linear memories are all resident, so usage, working set and RSS agree.
    for (name, help) in [
        (
            "container_memory_working_set_bytes",
            "Current working set in bytes.",
        ),
        ("container_memory_rss", "Size of RSS in bytes."),
        (
            "container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was accessed",
        ),
    ] {
        let mut f = family(&mut out, name, "gauge", help, ms);
        for e in &running {
            f.sample(&Series {
                labels: container_labels(e),
                value: e.usage.memory_bytes() as f64,
            });
        }
        for p in &summary.pods {
            if let Some(memory) = &p.memory {
                f.sample(&Series {
                    labels: pod_labels(p),
                    value: memory.working_set_bytes.unwrap_or(0) as f64,
                });
            }
        }
        if let Some(memory) = &summary.node.memory {
            let value = if name == "container_memory_rss" {
                memory.rss_bytes.or(memory.working_set_bytes)
            } else {
                memory.working_set_bytes
            };
            f.sample(&Series {
                labels: node.clone(),
                value: value.unwrap_or(0) as f64,
            });
        }
    }

    let mut f = family(
        &mut out,
        "container_spec_memory_limit_bytes",
        "gauge",
        "Memory limit for the container.",
        ms,
    );
    for e in &running {
        f.sample(&Series {
            labels: container_labels(e),
            value: e.info.memory_limit_bytes.unwrap_or(0) as f64,
        });
    }
    let mut f = family(
        &mut out,
        "container_spec_cpu_period",
        "gauge",
        "CPU period of the container.",
        ms,
    );
    for e in &limited {
        f.sample(&Series {
            labels: container_labels(e),
            value: CFS_PERIOD_MICROS as f64,
        });
    }
    let mut f = family(
        &mut out,
        "container_spec_cpu_quota",
        "gauge",
        "CPU quota of the container.",
        ms,
    );
    for e in &limited {
        let millis = e.info.cpu_limit_millis.unwrap_or(0);
        f.sample(&Series {
            labels: container_labels(e),
            value: (millis * CFS_PERIOD_MICROS / 1000) as f64,
        });
    }

    // Filesystem: a container writes only its logs; the node's line is the data dir's filesystem.
    let mut f = family(
        &mut out,
        "container_fs_usage_bytes",
        "gauge",
        "Number of bytes that are consumed by the container on this filesystem.",
        ms,
    );
    for p in &summary.pods {
        for c in &p.containers {
            let Some(entry) = running
                .iter()
                .find(|e| e.pod == p.pod_ref && e.container == c.name)
            else {
                continue;
            };
            f.sample(&Series {
                labels: with(container_labels(entry), ("device", device)),
                value: c.logs.as_ref().and_then(|l| l.used_bytes).unwrap_or(0) as f64,
            });
        }
    }
    if let Some(fs) = &summary.node.fs {
        f.sample(&Series {
            labels: with(node.clone(), ("device", device)),
            value: fs.used_bytes.unwrap_or(0) as f64,
        });
    }

    let mut f = family(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds.",
        ms,
    );
    for e in &running {
        f.sample(&Series {
            labels: container_labels(e),
            value: e.started.as_second() as f64,
        });
    }
    for p in &summary.pods {
        f.sample(&Series {
            labels: pod_labels(p),
            value: p.start_time.0.as_second() as f64,
        });
    }
    f.sample(&Series {
        labels: node.clone(),
        value: summary.node.start_time.0.as_second() as f64,
    });

    let mut f = family(
        &mut out,
        "container_last_seen",
        "gauge",
        "Last time a container was seen by the exporter",
        ms,
    );
    let seen = now.as_second() as f64;
    for e in &running {
        f.sample(&Series {
            labels: container_labels(e),
            value: seen,
        });
    }
    for p in &summary.pods {
        f.sample(&Series {
            labels: pod_labels(p),
            value: seen,
        });
    }
    f.sample(&Series {
        labels: node,
        value: seen,
    });

    // Machine series (cAdvisor's machine collector), without labels.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = writeln!(out, "# HELP machine_cpu_cores Number of logical CPU cores.");
    let _ = writeln!(out, "# TYPE machine_cpu_cores gauge");
    let _ = writeln!(out, "machine_cpu_cores {cores}");
    if let Some(memory) = &summary.node.memory {
        let total = memory.available_bytes.unwrap_or(0) + memory.usage_bytes.unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP machine_memory_bytes Amount of memory installed on the machine."
        );
        let _ = writeln!(out, "# TYPE machine_memory_bytes gauge");
        let _ = writeln!(out, "machine_memory_bytes {total}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Usage;
    use crate::stats::{PodRef, RunInfo};
    use std::sync::Arc;

    #[test]
    fn cadvisor_names_labels_and_cfs_series_for_limited_containers() {
        let stats = Stats::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = PodRef {
            name: "p".into(),
            namespace: "ns".into(),
            uid: "u1".into(),
        };
        let spinning = Arc::new(Usage::default());
        spinning.add_cpu_nanos(2_500_000_000);
        spinning.set_memory_bytes(1 << 20);
        spinning.add_cfs(10, 4, 300_000_000);
        let _a = stats.register(
            pod.clone(),
            "spin",
            RunInfo {
                id: "abc".into(),
                image: "reg/spin:1".into(),
                memory_limit_bytes: Some(64 << 20),
                cpu_limit_millis: Some(250),
            },
            spinning,
            dir.path().into(),
        );
        let _b = stats.register(
            pod,
            "idle",
            RunInfo {
                id: "def".into(),
                image: "reg/idle:1".into(),
                memory_limit_bytes: None,
                cpu_limit_millis: None,
            },
            Arc::new(Usage::default()),
            dir.path().into(),
        );
        let summary = crate::stats::summary::summary(&stats, "n", dir.path());
        let text = encode(&stats, &summary, "/dev/x");
        let spin = r#"container="spin",id="/kubepods/podu1/abc",image="reg/spin:1",name="abc",namespace="ns",pod="p""#;
        for expected in [
            format!(
                "container_cpu_usage_seconds_total{{{}}} 2.5 ",
                spin.replacen(",id=", ",cpu=\"total\",id=", 1)
            ),
            format!("container_memory_working_set_bytes{{{spin}}} 1048576 "),
            format!("container_memory_rss{{{spin}}} 1048576 "),
            format!("container_spec_memory_limit_bytes{{{spin}}} 67108864 "),
            format!("container_cpu_cfs_throttled_periods_total{{{spin}}} 4 "),
            format!("container_cpu_cfs_throttled_seconds_total{{{spin}}} 0.3 "),
            format!("container_spec_cpu_quota{{{spin}}} 25000 "),
            format!("container_last_seen{{{spin}}} "),
            "container_fs_usage_bytes{container=\"spin\",device=\"/dev/x\",".to_string(),
            "container_memory_working_set_bytes{container=\"\",id=\"/kubepods/podu1\",image=\"\",name=\"\",namespace=\"ns\",pod=\"p\"} 1048576 ".to_string(),
            "container_cpu_usage_seconds_total{container=\"\",cpu=\"total\",id=\"/\",".to_string(),
            "\nmachine_cpu_cores ".to_string(),
        ] {
            assert!(text.contains(&expected), "{expected:?} missing from:\n{text}");
        }
        assert!(
            !text.contains("container_cpu_cfs_periods_total{container=\"idle\""),
            "no CFS series without a CPU limit:\n{text}"
        );
        assert!(!device_of(Path::new("/")).is_empty());
    }
}
