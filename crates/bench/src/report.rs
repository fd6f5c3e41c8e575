//! Results: latency percentiles, a printed table and a JSON file with machine information.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::harness::Kind;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            if ms.is_empty() {
                return 0.0;
            }
            let index = ((p / 100.0) * ms.len() as f64).ceil() as usize;
            ms[index.clamp(1, ms.len()) - 1]
        };
        Self {
            count: ms.len(),
            p50_ms: rank(50.0),
            p90_ms: rank(90.0),
            p99_ms: rank(99.0),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's facts.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_default(),
            memory_bytes: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// Prints `rows` as a two-column table under `title`.
pub fn print_table(title: &str, rows: &[(String, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("\n{title}");
    println!("{}", "-".repeat(title.len()));
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
}

/// Formats a latency row value.
pub fn latency_cell(l: &Latency) -> String {
    format!(
        "p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n={})",
        l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
    )
}

/// Writes `result` with the machine and the command line to `path` as JSON.
pub fn write_json(path: &Path, scenario: &str, result: &impl Serialize) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let document = serde_json::json!({
        "scenario": scenario,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": Machine::read(),
        "result": result,
    });
    std::fs::write(path, serde_json::to_string_pretty(&document)?)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// One figure of a result, comparable across node kinds.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What it is, e.g. `create → Running p50`.
    pub name: Cow<'static, str>,
    /// Its unit, e.g. `ms`.
    pub unit: &'static str,
    /// The value, if the kind has it (the floor has no process of its own to measure).
    pub value: Option<f64>,
    /// Whether more is better (a rate); otherwise less is (a time, memory).
    pub higher_is_better: bool,
}

impl Figure {
    /// A figure every kind has, where less is better.
    pub fn of(name: impl Into<Cow<'static, str>>, unit: &'static str, value: f64) -> Self {
        Self::maybe(name, unit, Some(value))
    }

    /// A figure some kinds lack, where less is better.
    pub fn maybe(
        name: impl Into<Cow<'static, str>>,
        unit: &'static str,
        value: Option<f64>,
    ) -> Self {
        Self {
            name: name.into(),
            unit,
            value,
            higher_is_better: false,
        }
    }

    /// A rate some kinds lack: more is better.
    pub fn maybe_rate(
        name: impl Into<Cow<'static, str>>,
        unit: &'static str,
        value: Option<f64>,
    ) -> Self {
        Self {
            higher_is_better: true,
            ..Self::maybe(name, unit, value)
        }
    }

    /// A rate every kind has: more is better.
    pub fn rate(name: impl Into<Cow<'static, str>>, unit: &'static str, value: f64) -> Self {
        Self {
            higher_is_better: true,
            ..Self::of(name, unit, value)
        }
    }
}

/// A result whose figures can be set side by side with another kind's.
pub trait Figures {
    /// The figures, in the order the table prints them; every kind lists the same names.
    fn figures(&self) -> Vec<Figure>;
}

/// One figure for every kind, and Krustlet's value over each peer's.
#[derive(Debug, Clone, Serialize)]
pub struct ComparedFigure {
    /// The figure's name.
    pub name: Cow<'static, str>,
    /// Its unit.
    pub unit: &'static str,
    /// Whether more is better (then a ratio above 1 favours Krustlet); otherwise less is.
    pub higher_is_better: bool,
    /// Each kind's value (`null` where a kind has none).
    pub values: BTreeMap<&'static str, Option<f64>>,
    /// `krustlet/<peer>`: Krustlet's value over the peer's (`null` where either is missing or
    /// the peer's is zero).
    pub ratios: BTreeMap<String, Option<f64>>,
}

/// One scenario's results on every kind of node, run one after another in the same run on the
/// same control plane.
#[derive(Debug, Serialize)]
pub struct Compared<T> {
    /// Each kind's whole result.
    pub kinds: BTreeMap<&'static str, T>,
    /// The figures side by side, with ratios.
    pub figures: Vec<ComparedFigure>,
    /// The kinds in the order they ran (Krustlet first).
    pub order: Vec<&'static str>,
}

impl<T: Figures> Compared<T> {
    /// Sets `results` side by side; ratios are Krustlet's over each other kind's.
    pub fn new(results: Vec<(Kind, T)>) -> Self {
        let order: Vec<&'static str> = results.iter().map(|(k, _)| k.name()).collect();
        let mut figures: Vec<ComparedFigure> = Vec::new();
        for (kind, result) in &results {
            for figure in result.figures() {
                let index = match figures.iter().position(|f| f.name == figure.name) {
                    Some(index) => index,
                    None => {
                        figures.push(ComparedFigure {
                            name: figure.name,
                            unit: figure.unit,
                            higher_is_better: figure.higher_is_better,
                            values: BTreeMap::new(),
                            ratios: BTreeMap::new(),
                        });
                        figures.len() - 1
                    }
                };
                figures[index].values.insert(kind.name(), figure.value);
            }
        }
        let krustlet = Kind::Krustlet.name();
        for figure in &mut figures {
            let ours = figure.values.get(krustlet).copied().flatten();
            for peer in order.iter().filter(|k| **k != krustlet) {
                let theirs = figure.values.get(peer).copied().flatten();
                let ratio = match (ours, theirs) {
                    (Some(ours), Some(theirs)) if theirs != 0.0 => Some(ours / theirs),
                    _ => None,
                };
                figure.ratios.insert(format!("{krustlet}/{peer}"), ratio);
            }
        }
        Self {
            kinds: results.into_iter().map(|(k, r)| (k.name(), r)).collect(),
            figures,
            order,
        }
    }

    /// Prints the figures as a table: one column per kind, then one per ratio.
    pub fn print(&self, title: &str) {
        let ratio_names: Vec<String> = self
            .figures
            .first()
            .map(|f| f.ratios.keys().cloned().collect())
            .unwrap_or_default();
        let mut header = vec![String::new()];
        header.extend(self.order.iter().map(|k| k.to_string()));
        header.extend(ratio_names.iter().cloned());
        let mut rows = vec![header];
        for figure in &self.figures {
            let better = if figure.higher_is_better {
                "more is better"
            } else {
                "less is better"
            };
            let mut row = vec![format!("{} ({}, {better})", figure.name, figure.unit)];
            row.extend(self.order.iter().map(|k| {
                figure
                    .values
                    .get(k)
                    .copied()
                    .flatten()
                    .map_or("n/a".to_string(), |v| format!("{v:.1}"))
            }));
            row.extend(ratio_names.iter().map(|r| {
                figure
                    .ratios
                    .get(r)
                    .copied()
                    .flatten()
                    .map_or("n/a".to_string(), |v| format!("{v:.2}x"))
            }));
            rows.push(row);
        }
        let columns = rows.first().map_or(0, Vec::len);
        let widths: Vec<usize> = (0..columns)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        println!("\n{title}");
        println!("{}", "-".repeat(title.chars().count()));
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, width))| {
                    let pad = width.saturating_sub(cell.chars().count());
                    if i == 0 {
                        format!("{cell}{}", " ".repeat(pad))
                    } else {
                        format!("{}{cell}", " ".repeat(pad))
                    }
                })
                .collect();
            println!("{}", cells.join("  "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&samples);
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Latency::of(&[]).count, 0);
    }

    struct Fixed(f64, Option<f64>);

    impl Figures for Fixed {
        fn figures(&self) -> Vec<Figure> {
            vec![
                Figure::of("p50", "ms", self.0),
                Figure::maybe("rss", "KiB", self.1),
            ]
        }
    }

    #[test]
    fn ratios_are_krustlet_over_each_peer() {
        let compared = Compared::new(vec![
            (Kind::Krustlet, Fixed(30.0, Some(100.0))),
            (Kind::Hollow, Fixed(60.0, Some(50.0))),
            (Kind::Floor, Fixed(10.0, None)),
        ]);
        assert_eq!(compared.order, ["krustlet", "hollow", "floor"]);
        let p50 = &compared.figures[0];
        assert_eq!(p50.ratios["krustlet/hollow"], Some(0.5));
        assert_eq!(p50.ratios["krustlet/floor"], Some(3.0));
        let rss = &compared.figures[1];
        assert_eq!(rss.ratios["krustlet/hollow"], Some(2.0));
        assert_eq!(rss.ratios["krustlet/floor"], None, "the floor has no RSS");
        assert_eq!(rss.values["floor"], None);
    }
}
