//! The exposition formats of `/metrics`: OpenMetrics for scrapers that ask for it (`Accept:
//! application/openmetrics-text`), else the Prometheus text format 0.0.4, which is what the
//! kubelet answers by default (client_golang's `promhttp.HandlerFor` negotiates the same way,
//! `expfmt.NegotiateIncludingOpenMetrics`) and what `promtool check metrics` reads.

/// The OpenMetrics content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format's content type.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Rewrites prometheus-client's OpenMetrics text as Prometheus text 0.0.4: counter families
/// are named after their `_total` samples (and lose `_created`), `info` families become gauges
/// named `<name>_info`, `unknown` becomes `untyped`, and `# UNIT` and `# EOF` go.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    // Family name -> (new name, new type) for the families whose name or type changes.
    let mut renamed: Vec<(&str, String, &str)> = Vec::new();
    for line in openmetrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let Some((name, kind)) = rest.split_once(' ') else {
            continue;
        };
        match kind {
            "counter" if !name.ends_with("_total") => {
                renamed.push((name, format!("{name}_total"), "counter"));
            }
            "info" => renamed.push((name, format!("{name}_info"), "gauge")),
            "unknown" | "stateset" => renamed.push((name, name.to_string(), "untyped")),
            "gaugehistogram" => renamed.push((name, name.to_string(), "histogram")),
            _ => {}
        }
    }
    let family = |name: &str| renamed.iter().find(|(old, _, _)| *old == name);
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = family(name).map_or(name, |(_, new, _)| new.as_str());
            out.push_str(&format!("# HELP {name} {help}\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let (name, kind) = family(name).map_or((name, kind), |(_, new, k)| (new.as_str(), k));
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or_default();
        let created = sample_name
            .strip_suffix("_created")
            .is_some_and(|base| is_counter(&renamed, base));
        if created {
            continue;
        }
        // Exemplars (` # {...}`) are OpenMetrics only.
        let sample = line.split_once(" # ").map_or(line, |(sample, _)| sample);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

fn is_counter(renamed: &[(&str, String, &str)], family: &str) -> bool {
    renamed
        .iter()
        .any(|(old, _, kind)| *old == family && *kind == "counter")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_for_their_samples_and_openmetrics_only_lines_go() {
        let om = "# HELP a_started Things started.\n# TYPE a_started counter\n\
                  a_started_total 3\na_started_created 1700000000.0\n\
                  # HELP b Build.\n# TYPE b info\nb_info{version=\"1\"} 1\n\
                  # HELP c_seconds Time.\n# TYPE c_seconds gauge\n# UNIT c_seconds seconds\n\
                  c_seconds 2.5 # {trace=\"x\"} 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP a_started_total Things started.\n# TYPE a_started_total counter\n\
             a_started_total 3\n\
             # HELP b_info Build.\n# TYPE b_info gauge\nb_info{version=\"1\"} 1\n\
             # HELP c_seconds Time.\n# TYPE c_seconds gauge\nc_seconds 2.5\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(None));
    }
}
