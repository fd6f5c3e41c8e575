//! `/metrics/resource`: the summary's CPU and memory in Prometheus text format, as upstream's
//! resource metrics collector writes them (the names, labels and millisecond timestamps
//! metrics-server reads).

use std::fmt::Write;

use super::summary::Summary;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
pub(super) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64, millis: i64) {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", labels.join(","))
    };
    let _ = writeln!(out, "{name}{labels} {value} {millis}");
}

/// Encodes `summary` in the Prometheus text format (version 0.0.4).
pub fn encode(summary: &Summary) -> String {
    let mut out = String::new();
    let ms = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| t.0.as_millisecond();
    let seconds = |nanos: u64| nanos as f64 / 1e9;

    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
    );
    for pod in &summary.pods {
        for c in &pod.containers {
            if let Some(cpu) = &c.cpu {
                let labels = [
                    ("container", c.name.as_str()),
                    ("namespace", pod.pod_ref.namespace.as_str()),
                    ("pod", pod.pod_ref.name.as_str()),
                ];
                sample(
                    &mut out,
                    "container_cpu_usage_seconds_total",
                    &labels,
                    seconds(cpu.usage_core_nano_seconds.unwrap_or(0)),
                    ms(&cpu.time),
                );
            }
        }
    }
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
    );
    for pod in &summary.pods {
        for c in &pod.containers {
            if let Some(memory) = &c.memory {
                let labels = [
                    ("container", c.name.as_str()),
                    ("namespace", pod.pod_ref.namespace.as_str()),
                    ("pod", pod.pod_ref.name.as_str()),
                ];
                sample(
                    &mut out,
                    "container_memory_working_set_bytes",
                    &labels,
                    memory.working_set_bytes.unwrap_or(0) as f64,
                    ms(&memory.time),
                );
            }
        }
    }
    family(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
    );
    for pod in &summary.pods {
        for c in &pod.containers {
            let labels = [
                ("container", c.name.as_str()),
                ("namespace", pod.pod_ref.namespace.as_str()),
                ("pod", pod.pod_ref.name.as_str()),
            ];
            sample(
                &mut out,
                "container_start_time_seconds",
                &labels,
                c.start_time.0.as_second() as f64,
                ms(&c.start_time),
            );
        }
    }
    family(
        &mut out,
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
    );
    if let Some(cpu) = &summary.node.cpu {
        sample(
            &mut out,
            "node_cpu_usage_seconds_total",
            &[],
            seconds(cpu.usage_core_nano_seconds.unwrap_or(0)),
            ms(&cpu.time),
        );
    }
    family(
        &mut out,
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
    );
    if let Some(memory) = &summary.node.memory {
        sample(
            &mut out,
            "node_memory_working_set_bytes",
            &[],
            memory.working_set_bytes.unwrap_or(0) as f64,
            ms(&memory.time),
        );
    }
    family(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
    );
    for pod in &summary.pods {
        if let Some(cpu) = &pod.cpu {
            let labels = [
                ("namespace", pod.pod_ref.namespace.as_str()),
                ("pod", pod.pod_ref.name.as_str()),
            ];
            sample(
                &mut out,
                "pod_cpu_usage_seconds_total",
                &labels,
                seconds(cpu.usage_core_nano_seconds.unwrap_or(0)),
                ms(&cpu.time),
            );
        }
    }
    family(
        &mut out,
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
    );
    for pod in &summary.pods {
        if let Some(memory) = &pod.memory {
            let labels = [
                ("namespace", pod.pod_ref.namespace.as_str()),
                ("pod", pod.pod_ref.name.as_str()),
            ];
            sample(
                &mut out,
                "pod_memory_working_set_bytes",
                &labels,
                memory.working_set_bytes.unwrap_or(0) as f64,
                ms(&memory.time),
            );
        }
    }
    // Both names: `scrape_error` is the older one, still served upstream.
    for name in ["resource_scrape_error", "scrape_error"] {
        family(
            &mut out,
            name,
            "gauge",
            "1 if there was an error while getting container metrics, 0 otherwise",
        );
        let _ = writeln!(out, "{name} 0");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Usage;
    use crate::stats::{PodRef, Stats};
    use std::sync::Arc;

    #[test]
    fn metrics_server_names_labels_and_timestamps() {
        let stats = Stats::new();
        let usage = Arc::new(Usage::default());
        usage.set_memory_bytes(4096);
        usage.add_cpu_nanos(1_500_000_000);
        let pod = PodRef {
            name: "p".into(),
            namespace: "ns".into(),
            uid: "u".into(),
        };
        let _r = stats.register(
            pod,
            "c\"1",
            Default::default(),
            usage,
            std::path::PathBuf::new(),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let text = encode(&crate::stats::summary::summary(&stats, "n", dir.path()));
        assert!(
            text.contains("container_memory_working_set_bytes{container=\"c\\\"1\",namespace=\"ns\",pod=\"p\"} 4096 "),
            "{text}"
        );
        assert!(
            text.contains("pod_cpu_usage_seconds_total{namespace=\"ns\",pod=\"p\"} 1.5 "),
            "{text}"
        );
        assert!(text.contains("\nnode_memory_working_set_bytes "), "{text}");
        assert!(text.contains("\nresource_scrape_error 0\n"), "{text}");
    }
}
