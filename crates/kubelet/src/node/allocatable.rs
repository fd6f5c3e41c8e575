//! Capacity and allocatable resources (the kubelet's node allocatable): allocatable is
//! capacity minus `--system-reserved`, `--kube-reserved` and the hard eviction thresholds.
//! Pod admission, the default memory bound of a container without a limit and the Node's
//! status all use these numbers.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::config::{KubeletConfig, ReservedResource, Signal};
use crate::node::host::HostInfo;
use crate::quantity::{format_kib, format_millis};

/// An amount of each node resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeResources {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Ephemeral storage (the data dir's filesystem) in bytes.
    pub ephemeral_storage_bytes: u64,
    /// Pods.
    pub pods: u64,
}

impl NodeResources {
    /// The node's capacity: its CPUs and memory, the data dir's filesystem, `--max-pods`.
    pub fn capacity(config: &KubeletConfig, host: &HostInfo, storage_bytes: u64) -> Self {
        Self {
            cpu_millis: u64::from(host.cpus) * 1000,
            memory_bytes: host.memory_bytes,
            ephemeral_storage_bytes: storage_bytes,
            pods: u64::from(config.max_pods),
        }
    }

    /// What pods may use of `capacity`.
    pub fn allocatable(config: &KubeletConfig, capacity: &Self) -> Self {
        let threshold = |signal: Signal, total: u64| {
            config
                .eviction_hard
                .iter()
                .filter(|t| t.signal == signal)
                .map(|t| t.quantity.of(total))
                .max()
                .unwrap_or(0)
        };
        let memory = capacity.memory_bytes;
        let storage = capacity.ephemeral_storage_bytes;
        Self {
            cpu_millis: capacity
                .cpu_millis
                .saturating_sub(config.reserved(ReservedResource::Cpu)),
            memory_bytes: memory
                .saturating_sub(config.reserved(ReservedResource::Memory))
                .saturating_sub(threshold(Signal::MemoryAvailable, memory)),
            ephemeral_storage_bytes: storage
                .saturating_sub(config.reserved(ReservedResource::EphemeralStorage))
                .saturating_sub(threshold(Signal::NodefsAvailable, storage)),
            pods: capacity.pods,
        }
    }

    /// The memory all pods together may hold: capacity minus `--system-reserved` and
    /// `--kube-reserved` (upstream enforces this on the pods cgroup; eviction thresholds are
    /// left to the eviction manager). Bounds containers without a memory limit.
    pub fn pods_memory_bound(config: &KubeletConfig, capacity: &Self) -> u64 {
        capacity
            .memory_bytes
            .saturating_sub(config.reserved(ReservedResource::Memory))
    }

    /// As a Node's `capacity`/`allocatable` list.
    pub fn to_list(&self) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".to_string(), format_millis(self.cpu_millis)),
            ("memory".to_string(), format_kib(self.memory_bytes)),
            (
                "ephemeral-storage".to_string(),
                format_kib(self.ephemeral_storage_bytes),
            ),
            ("pods".to_string(), Quantity(self.pods.to_string())),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flags;

    #[test]
    fn allocatable_subtracts_reservations_and_thresholds() {
        let flags = Flags {
            node_name: Some("n".into()),
            system_reserved: Some(vec!["cpu=500m".parse().expect("r")]),
            kube_reserved: Some(vec![
                "memory=100Mi".parse().expect("r"),
                "cpu=100m".parse().expect("r"),
            ]),
            eviction_hard: Some(vec!["memory.available<100Mi".parse().expect("t")]),
            ..Default::default()
        };
        let config = flags.resolve().expect("config");
        let host = HostInfo {
            cpus: 2,
            memory_bytes: 1 << 30,
            ..HostInfo::read()
        };
        let capacity = NodeResources::capacity(&config, &host, 10 << 30);
        let allocatable = NodeResources::allocatable(&config, &capacity);
        assert_eq!(allocatable.cpu_millis, 1400);
        assert_eq!(allocatable.memory_bytes, (1 << 30) - (200 << 20));
        assert_eq!(allocatable.to_list()["cpu"].0, "1400m");
        assert_eq!(allocatable.pods, 110);
    }
}
