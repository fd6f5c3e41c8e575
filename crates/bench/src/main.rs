//! `krustlet-bench`: benchmarks against the real control plane (see `BENCHMARKS.md`).
//!
//! ```text
//! cargo run -p krustlet-bench --release -- all [--density-pods 10000] --against hollow,floor
//! cargo run -p krustlet-bench --release -- startup [--pods 100 --serial 50] [--against hollow,floor]
//! cargo run -p krustlet-bench --release -- density [--pods 1000] [--against hollow,floor]
//! cargo run -p krustlet-bench --release -- churn [--rates 50,100,200,300 --seconds 30] [--against hollow,floor]
//! cargo run -p krustlet-bench --release -- cold
//! cargo run -p krustlet-bench --release -- http [--connections 50 --seconds 10]  # vs wasmtime serve
//! cargo run -p krustlet-bench -- rotation [--minutes 25]   # certificates of 600 s
//! cargo run -p krustlet-bench --release -- smoke      # every scenario, tiny
//! ```
//! Each starts the test cluster (the real control plane and registry on loopback, as the e2e
//! tests do) and Krustlet nodes (this very binary, re-run as `krustlet`), prints a table and
//! writes `bench-results/<scenario>.json` with machine information.
//!
//! `--kube-api-qps N --kube-api-burst M` set every Krustlet and hollow node's API client limits
//! (default the kubelet's, 50 and 100).
//!
//! `--against hollow,floor` runs the scenario on the peers too, one after another after
//! Krustlet in the same run on the same control plane: kubemark's hollow node (the upstream
//! kubelet with a fake runtime, [`hollow`]) and the floor node (a client that only patches pod
//! status, [`floor`]); the table sets each figure side by side with Krustlet's ratio to each.

mod api_writes;
mod floor;
mod harness;
mod hollow;
mod node;
mod report;
mod scenario;

use std::process::ExitCode;

use clap::Parser;

/// Set in the environment of the node processes the benchmark starts: run as `krustlet`.
pub const RUN_AS_NODE: &str = "KRUSTLET_BENCH_RUN_AS_NODE";

/// Benchmarks of Krustlet against a real Kubernetes control plane.
#[derive(Debug, Parser)]
#[command(name = "krustlet-bench", version)]
struct Cli {
    /// The scenario.
    #[command(subcommand)]
    scenario: scenario::Scenario,
    /// Where the JSON result goes [default: bench-results/<scenario>.json].
    #[arg(long, global = true)]
    out: Option<std::path::PathBuf>,
    /// The API client QPS of every Krustlet and hollow node (the kubelet's flag and default).
    #[arg(long, global = true, default_value_t = 50)]
    kube_api_qps: u32,
    /// The API client burst of every Krustlet and hollow node (the kubelet's flag and default).
    #[arg(long, global = true, default_value_t = 100)]
    kube_api_burst: u32,
}

fn main() -> ExitCode {
    if std::env::var_os(RUN_AS_NODE).is_some() {
        return krustlet::main();
    }
    let cli = Cli::parse();
    node::set_client_limits(node::ClientLimits {
        qps: cli.kube_api_qps,
        burst: cli.kube_api_burst,
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("krustlet-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(scenario::run(cli.scenario, cli.out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("krustlet-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
