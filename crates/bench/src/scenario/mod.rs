//! The scenarios; each returns a serialisable result and prints its table.

mod churn;
mod cold;
mod density;
mod http;
mod rotation;
mod startup;

use std::future::Future;
use std::path::PathBuf;

use serde::Serialize;

use crate::harness::Kind;
use crate::report::{Compared, Figures, write_json};

/// What to measure.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// N pods created in a burst with the image cached: create → Running and → Succeeded; then
    /// M pods one at a time.
    Startup {
        /// How many pods in the burst.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// How many pods then one at a time, each once the one before is Running.
        #[arg(long, default_value_t = 50)]
        serial: usize,
        /// Peers to run the same scenario on, after Krustlet, in the same run.
        #[command(flatten)]
        against: Against,
    },
    /// Ramp to N long-running pods on one node: RSS and CPU per pod, node health throughout.
    Density {
        /// How many pods.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// Peers to run the same scenario on, after Krustlet, in the same run.
        #[command(flatten)]
        against: Against,
    },
    /// Sustained create → complete → delete at a ramp of target rates; the highest with p99
    /// under 5 s, and the node's API writes per pod.
    Churn {
        /// Target pods per second, one step each, in this order.
        #[arg(long, value_delimiter = ',', default_value = "50,100,200,300")]
        rates: Vec<u32>,
        /// How long each step creates pods.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Peers to run the same scenario on, after Krustlet, in the same run.
        #[command(flatten)]
        against: Against,
    },
    /// First pod of a new image (pull + compile) vs. cached, and after a Krustlet restart.
    Cold,
    /// One http component pod under concurrent keep-alive load, next to `wasmtime serve` of
    /// the same component.
    Http {
        /// Concurrent connections.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// The measured window.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The `wasmtime` CLI to compare with [default: $KRUSTLET_CACHE/wasmtime-cli/bin/wasmtime,
        /// else on PATH].
        #[arg(long)]
        wasmtime: Option<PathBuf>,
        /// Measure Krustlet alone.
        #[arg(long)]
        no_wasmtime: bool,
    },
    /// Certificates of 600 s: pods keep starting and being deleted across client certificate
    /// rotations (takes `minutes` of wall time, mostly idle; not part of `smoke`).
    Rotation {
        /// For how long.
        #[arg(long, default_value_t = 25)]
        minutes: u64,
    },
    /// Every scenario but rotation, at issue 18's sizes unless told smaller, into one JSON
    /// (`bench-results/all.json`) and one table each.
    All {
        /// Pods in the startup burst.
        #[arg(long, default_value_t = 100)]
        burst: usize,
        /// Startup pods created one at a time.
        #[arg(long, default_value_t = 50)]
        serial: usize,
        /// Pods for density.
        #[arg(long, default_value_t = 10_000)]
        density_pods: usize,
        /// Churn's ramp, pods per second.
        #[arg(long, value_delimiter = ',', default_value = "50,100,200,300")]
        rates: Vec<u32>,
        /// How long each churn step creates pods.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Connections for http.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// The `wasmtime` CLI for http [default: as `http`; if there is none, http is
        /// measured on Krustlet alone and the output says so].
        #[arg(long)]
        wasmtime: Option<PathBuf>,
        /// Measure http on Krustlet alone.
        #[arg(long)]
        no_wasmtime: bool,
        /// Peers to run startup, density and churn on too.
        #[command(flatten)]
        against: Against,
    },
    /// Every scenario with tiny numbers, so the harness cannot rot (run by the test suite);
    /// startup, density and churn also on both peers (a hollow node and the floor).
    Smoke,
}

/// The peers a scenario is compared with.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Against {
    /// Also run the scenario on these node kinds, one after another after Krustlet, on the
    /// same control plane, and print each figure for every kind with Krustlet's ratio to each:
    /// `hollow` (kubemark's hollow node: the upstream kubelet with a fake runtime; needs
    /// `.bin/kubemark` from `test/cluster/build.sh`) and `floor` (a client that only patches
    /// pod status: the control plane's own limit).
    #[arg(long, value_delimiter = ',', value_name = "hollow,floor")]
    against: Vec<Kind>,
}

impl Against {
    /// Krustlet, then each named peer once, in the order given.
    fn kinds(&self) -> Vec<Kind> {
        let mut kinds = vec![Kind::Krustlet];
        for kind in &self.against {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        kinds
    }
}

/// Runs `scenario` on each of `kinds` in turn (each node stopped before the next starts, so
/// they do not share the machine) and sets the results side by side.
async fn compare<T, F, Fut>(title: &str, kinds: &[Kind], scenario: F) -> anyhow::Result<Compared<T>>
where
    T: Figures,
    F: Fn(Kind) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    // A missing prerequisite fails the run before any node starts, naming it.
    if kinds.contains(&Kind::Hollow) {
        crate::hollow::kubemark()?;
    }
    let mut results = Vec::new();
    for kind in kinds {
        let result = scenario(*kind)
            .await
            .map_err(|error| error.context(format!("{title} on the {} node", kind.name())))?;
        results.push((*kind, result));
    }
    let compared = Compared::new(results);
    compared.print(&format!("{title}: Krustlet against {}", peers(kinds)));
    Ok(compared)
}

fn peers(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .filter(|k| **k != Kind::Krustlet)
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes Krustlet's result alone (the output without `--against`) or the comparison.
async fn run_against<T, F, Fut>(
    name: &str,
    path: PathBuf,
    against: &Against,
    scenario: F,
) -> anyhow::Result<()>
where
    T: Figures + Serialize,
    F: Fn(Kind) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let kinds = against.kinds();
    if kinds.len() == 1 {
        return write_json(&path, name, &scenario(Kind::Krustlet).await?);
    }
    write_json(&path, name, &compare(name, &kinds, scenario).await?)
}

/// ` (on the <kind> node)` for peers; nothing for Krustlet, whose tables read as before.
fn on_kind(kind: Kind) -> String {
    match kind {
        Kind::Krustlet => String::new(),
        other => format!(" (on the {} node)", other.name()),
    }
}

/// How a table names the node: `Krustlet`, or the peer.
fn node_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Krustlet => "Krustlet",
        Kind::Hollow => "the hollow node",
        Kind::Floor => "the floor node",
    }
}

/// Runs `scenario` and writes its JSON to `out` (default `bench-results/<name>.json`).
pub async fn run(scenario: Scenario, out: Option<PathBuf>) -> anyhow::Result<()> {
    let path = |name: &str| {
        out.clone()
            .unwrap_or_else(|| PathBuf::from(format!("bench-results/{name}.json")))
    };
    match scenario {
        Scenario::Startup {
            pods,
            serial,
            against,
        } => {
            run_against("startup", path("startup"), &against, |kind| {
                startup::run(pods, serial, kind)
            })
            .await
        }
        Scenario::Density { pods, against } => {
            run_against("density", path("density"), &against, |kind| {
                density::run(pods, kind)
            })
            .await
        }
        Scenario::Churn {
            rates,
            seconds,
            against,
        } => {
            run_against("churn", path("churn"), &against, |kind| {
                churn::run(&rates, seconds, kind)
            })
            .await
        }
        Scenario::Cold => write_json(&path("cold"), "cold", &cold::run().await?),
        Scenario::Http {
            connections,
            seconds,
            wasmtime,
            no_wasmtime,
        } => {
            // Found before the cluster starts, so a missing CLI fails at once.
            let wasmtime = (!no_wasmtime)
                .then(|| http::find_wasmtime(wasmtime))
                .transpose()?;
            write_json(
                &path("http"),
                "http",
                &http::run(connections, seconds, wasmtime).await?,
            )
        }
        Scenario::Rotation { minutes } => write_json(
            &path("rotation"),
            "rotation",
            &rotation::run(minutes).await?,
        ),
        Scenario::All {
            burst,
            serial,
            density_pods,
            rates,
            seconds,
            connections,
            wasmtime,
            no_wasmtime,
            against,
        } => {
            // `wasmtime serve` is http's own peer, not one of issue 18's: without its CLI,
            // `all` still runs every scenario and says why http stands alone (`http` fails).
            let (wasmtime, alone) = if no_wasmtime {
                (None, None)
            } else {
                match http::find_wasmtime(wasmtime) {
                    Ok(path) => (Some(path), None),
                    Err(missing) => (None, Some(format!("{missing:#}"))),
                }
            };
            if let Some(missing) = &alone {
                println!("http will be measured on Krustlet alone: {missing}");
            }
            let kinds = against.kinds();
            let result = serde_json::json!({
                "startup": compare("startup", &kinds, |kind| startup::run(burst, serial, kind)).await?,
                "churn": compare("churn", &kinds, |kind| churn::run(&rates, seconds, kind)).await?,
                "density": compare("density", &kinds, |kind| density::run(density_pods, kind)).await?,
                "cold": cold::run().await?,
                "http": http::run(connections, 10, wasmtime).await?,
            });
            if let Some(missing) = &alone {
                println!("http was measured on Krustlet alone: {missing}");
            }
            write_json(&path("all"), "all", &result)
        }
        Scenario::Smoke => {
            let kinds = [Kind::Krustlet, Kind::Hollow, Kind::Floor];
            let result = serde_json::json!({
                "startup": compare("startup", &kinds, |kind| startup::run(3, 2, kind)).await?,
                "density": compare("density", &kinds, |kind| density::run(5, kind)).await?,
                "churn": compare("churn", &kinds, |kind| churn::run(&[5], 3, kind)).await?,
                "cold": cold::run().await?,
                "http": http::run(2, 1, None).await?,
            });
            write_json(&path("smoke"), "smoke", &result)
        }
    }
}
