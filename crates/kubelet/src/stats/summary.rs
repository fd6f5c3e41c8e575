//! The `/stats/summary` document: the `Summary` of `k8s.io/kubelet/pkg/apis/stats/v1alpha1`,
//! with the fields this node can measure (absent ones are left out, as upstream's `omitempty`).

use std::path::Path;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use super::node::CpuTimes;
use super::{PodRef, RunningEntry, Stats};
use crate::node::host::{Filesystem, Memory};

/// The whole summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The node.
    pub node: NodeStats,
    /// Every pod with a running container.
    pub pods: Vec<PodStats>,
}

/// Node totals.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node's name.
    pub node_name: String,
    /// When the node booted.
    pub start_time: Time,
    /// CPU of the whole host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory of the whole host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// The filesystem of the data dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    /// The runtime's filesystems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStats>,
}

/// The runtime's filesystems.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    /// Where images are stored (the data dir's filesystem).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_fs: Option<FsStats>,
}

/// One pod.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which pod.
    pub pod_ref: PodRef,
    /// When its first running container started.
    pub start_time: Time,
    /// Its running containers.
    pub containers: Vec<ContainerStats>,
    /// The sum of its containers' CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// The sum of its containers' memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// Volumes (none are measured yet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume: Vec<serde_json::Value>,
    /// Local storage used by the pod: its containers' logs.
    #[serde(rename = "ephemeral-storage", skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<FsStats>,
}

/// One container.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// The container's name.
    pub name: String,
    /// When this run started.
    pub start_time: Time,
    /// CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// Its log files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<FsStats>,
}

/// CPU use.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When it was measured.
    pub time: Time,
    /// Use over the last sample period, in billionths of a core.
    pub usage_nano_cores: Option<u64>,
    /// Cumulative CPU time in nanoseconds.
    pub usage_core_nano_seconds: Option<u64>,
}

/// Memory use.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When it was measured.
    pub time: Time,
    /// What is left (node only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// Memory in use.
    pub usage_bytes: Option<u64>,
    /// The working set: what metrics-server and eviction look at.
    pub working_set_bytes: Option<u64>,
    /// Resident memory.
    pub rss_bytes: Option<u64>,
}

/// Filesystem use.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    /// When it was measured.
    pub time: Time,
    /// Space left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// Size of the filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// Space used.
    pub used_bytes: Option<u64>,
}

fn container_memory(entry: &RunningEntry, time: &Time) -> MemoryStats {
    let bytes = entry.usage.memory_bytes();
    MemoryStats {
        time: time.clone(),
        available_bytes: None,
        usage_bytes: Some(bytes),
        working_set_bytes: Some(bytes),
        rss_bytes: Some(bytes),
    }
}

/// Bytes of the files under `dir` (not following links).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.path(), e.file_type().ok()?)))
        .map(|(path, kind)| {
            if kind.is_dir() {
                dir_size(&path)
            } else {
                std::fs::symlink_metadata(&path).map_or(0, |m| m.len())
            }
        })
        .sum()
}

fn fs_stats(time: &Time, fs: Option<Filesystem>) -> Option<FsStats> {
    fs.map(|fs| FsStats {
        time: time.clone(),
        available_bytes: Some(fs.available_bytes),
        capacity_bytes: Some(fs.total_bytes),
        used_bytes: Some(fs.total_bytes.saturating_sub(fs.available_bytes)),
    })
}

/// Builds the summary from the running containers and the host.
pub fn summary(stats: &Stats, node_name: &str, data_dir: &Path) -> Summary {
    let now = Time(Timestamp::now());
    let cpu_times = CpuTimes::read().ok();
    let memory = Memory::read().ok();
    let data_fs = Filesystem::of(data_dir).ok();
    let node = NodeStats {
        node_name: node_name.into(),
        start_time: Time(
            cpu_times
                .and_then(|c| Timestamp::from_second(c.boot_time).ok())
                .unwrap_or(Timestamp::UNIX_EPOCH),
        ),
        cpu: cpu_times.map(|c| CpuStats {
            time: now.clone(),
            usage_nano_cores: Some(stats.node_cpu().nano_cores()),
            usage_core_nano_seconds: Some(c.busy_nanos),
        }),
        memory: memory.map(|m| {
            let used = m.total_bytes.saturating_sub(m.available_bytes);
            MemoryStats {
                time: now.clone(),
                available_bytes: Some(m.available_bytes),
                usage_bytes: Some(used),
                working_set_bytes: Some(used),
                rss_bytes: None,
            }
        }),
        fs: fs_stats(&now, data_fs),
        runtime: Some(RuntimeStats {
            image_fs: fs_stats(&now, data_fs),
        }),
    };

    let mut pods: Vec<PodStats> = Vec::new();
    for entry in stats.running() {
        let logs = dir_size(&entry.log_dir);
        let container = ContainerStats {
            name: entry.container.clone(),
            start_time: Time(entry.started),
            cpu: Some(CpuStats {
                time: now.clone(),
                usage_nano_cores: Some(entry.cpu.nano_cores()),
                usage_core_nano_seconds: Some(entry.usage.cpu_nanos()),
            }),
            memory: Some(container_memory(&entry, &now)),
            logs: Some(FsStats {
                time: now.clone(),
                available_bytes: data_fs.map(|f| f.available_bytes),
                capacity_bytes: data_fs.map(|f| f.total_bytes),
                used_bytes: Some(logs),
            }),
        };
        let pod = match pods.iter_mut().find(|p| p.pod_ref == entry.pod) {
            Some(pod) => pod,
            None => {
                pods.push(PodStats {
                    pod_ref: entry.pod.clone(),
                    start_time: Time(entry.started),
                    containers: Vec::new(),
                    cpu: None,
                    memory: None,
                    volume: Vec::new(),
                    ephemeral_storage: None,
                });
                pods.last_mut().expect("just pushed")
            }
        };
        pod.start_time = Time(pod.start_time.0.min(entry.started));
        pod.containers.push(container);
    }
    for pod in &mut pods {
        let sum = |f: &dyn Fn(&ContainerStats) -> Option<u64>| {
            pod.containers.iter().filter_map(f).sum::<u64>()
        };
        let nano_cores = sum(&|c| c.cpu.as_ref()?.usage_nano_cores);
        let cpu_nanos = sum(&|c| c.cpu.as_ref()?.usage_core_nano_seconds);
        let memory = sum(&|c| c.memory.as_ref()?.working_set_bytes);
        let logs = sum(&|c| c.logs.as_ref()?.used_bytes);
        pod.cpu = Some(CpuStats {
            time: now.clone(),
            usage_nano_cores: Some(nano_cores),
            usage_core_nano_seconds: Some(cpu_nanos),
        });
        pod.memory = Some(MemoryStats {
            time: now.clone(),
            available_bytes: None,
            usage_bytes: Some(memory),
            working_set_bytes: Some(memory),
            rss_bytes: Some(memory),
        });
        pod.ephemeral_storage = Some(FsStats {
            time: now.clone(),
            available_bytes: data_fs.map(|f| f.available_bytes),
            capacity_bytes: data_fs.map(|f| f.total_bytes),
            used_bytes: Some(logs),
        });
    }
    Summary { node, pods }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Usage;
    use std::sync::Arc;

    #[test]
    fn pods_sum_their_containers_in_the_upstream_shape() {
        let stats = Stats::new();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("0.log"), "12345").expect("write");
        let pod = PodRef {
            name: "p".into(),
            namespace: "ns".into(),
            uid: "u".into(),
        };
        let (a, b) = (Arc::new(Usage::default()), Arc::new(Usage::default()));
        a.set_memory_bytes(1000);
        b.set_memory_bytes(24);
        b.add_cpu_nanos(7);
        let _a = stats.register(pod.clone(), "a", Default::default(), a, dir.path().into());
        let _b = stats.register(pod, "b", Default::default(), b, dir.path().into());
        let json = serde_json::to_value(summary(&stats, "node-a", dir.path())).expect("json");
        assert_eq!(json["node"]["nodeName"], "node-a");
        assert!(json["node"]["memory"]["workingSetBytes"].as_u64() > Some(0));
        assert!(json["node"]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0));
        let pod = &json["pods"][0];
        assert_eq!(pod["podRef"]["uid"], "u");
        assert_eq!(pod["memory"]["workingSetBytes"], 1024);
        assert_eq!(pod["cpu"]["usageCoreNanoSeconds"], 7);
        assert_eq!(pod["ephemeral-storage"]["usedBytes"], 10);
        assert_eq!(pod["containers"][1]["name"], "b");
        assert_eq!(pod["containers"][1]["memory"]["workingSetBytes"], 24);
        assert!(pod["containers"][0]["startTime"].is_string());
    }
}
