//! The wasm runtime's metrics on the kubelet's `/metrics`: module compile time, compile-cache
//! hits by where the program came from, and running instances.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `source` of `krustlet_wasm_compile_cache_hits_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `memory` (compiled earlier in this process) or `disk` (the on-disk cache).
    pub source: String,
}

/// The runtime's metric handles; clones share the values.
#[derive(Debug, Clone)]
pub struct WasiMetrics {
    /// Seconds to compile a program (cache misses only).
    pub compile_seconds: Histogram,
    /// Programs found compiled, by source.
    pub cache_hits: Family<SourceLabel, Counter>,
    /// Guest instances running now.
    pub instances: Gauge,
}

impl Default for WasiMetrics {
    fn default() -> Self {
        Self {
            // 10 ms to about 80 s.
            compile_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            cache_hits: Family::default(),
            instances: Gauge::default(),
        }
    }
}

impl WasiMetrics {
    /// Counts a compile-cache hit from `source` (`memory` or `disk`).
    pub fn hit(&self, source: &str) {
        self.cache_hits
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .inc();
    }

    /// Counts a running instance until the guard is dropped.
    pub fn instance(&self) -> InstanceGuard {
        self.instances.inc();
        InstanceGuard(self.instances.clone())
    }

    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "krustlet_wasm_compile_duration_seconds",
            "Time to compile a wasm module or component to native code (cache misses)",
            self.compile_seconds.clone(),
        );
        registry.register(
            "krustlet_wasm_compile_cache_hits",
            "Programs found already compiled, by source: memory or disk",
            self.cache_hits.clone(),
        );
        registry.register(
            "krustlet_wasm_running_instances",
            "Wasm guest instances running now",
            self.instances.clone(),
        );
    }
}

/// Decrements the running instance gauge when dropped.
pub struct InstanceGuard(Gauge);

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
