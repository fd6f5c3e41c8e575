//! The scenarios; each returns a serialisable result and prints its table.

mod churn;
mod cold;
mod density;
mod http;
mod rotation;
mod startup;

use std::path::PathBuf;

use crate::report::write_json;

/// What to measure.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// N pods created in a burst with the image cached: create → Running and → Succeeded.
    Startup {
        /// How many pods.
        #[arg(long, default_value_t = 100)]
        pods: usize,
    },
    /// Ramp to N long-running pods on one node: RSS and CPU per pod, node health throughout.
    Density {
        /// How many pods.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
    },
    /// Sustained create → complete → delete at a target rate.
    Churn {
        /// Target pods per second.
        #[arg(long, default_value_t = 300)]
        rate: u32,
        /// For how long.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
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
    /// Every scenario with tiny numbers, so the harness cannot rot (run by the test suite).
    Smoke,
}

/// Runs `scenario` and writes its JSON to `out` (default `bench-results/<name>.json`).
pub async fn run(scenario: Scenario, out: Option<PathBuf>) -> anyhow::Result<()> {
    let path = |name: &str| {
        out.clone()
            .unwrap_or_else(|| PathBuf::from(format!("bench-results/{name}.json")))
    };
    match scenario {
        Scenario::Startup { pods } => {
            write_json(&path("startup"), "startup", &startup::run(pods).await?)
        }
        Scenario::Density { pods } => {
            write_json(&path("density"), "density", &density::run(pods).await?)
        }
        Scenario::Churn { rate, seconds } => {
            write_json(&path("churn"), "churn", &churn::run(rate, seconds).await?)
        }
        Scenario::Cold => write_json(&path("cold"), "cold", &cold::run().await?),
        Scenario::Http {
            connections,
            seconds,
            wasmtime,
            no_wasmtime,
        } => {
            // Found before the cluster starts, so a missing CLI fails at once.
            let wasmtime = if no_wasmtime {
                None
            } else {
                Some(http::find_wasmtime(wasmtime)?)
            };
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
        Scenario::Smoke => {
            let result = serde_json::json!({
                "startup": startup::run(3).await?,
                "density": density::run(5).await?,
                "churn": churn::run(5, 3).await?,
                "cold": cold::run().await?,
                "http": http::run(2, 1, None).await?,
            });
            write_json(&path("smoke"), "smoke", &result)
        }
    }
}
