//! The dev cluster's pod network, for `./dev up`: the e2e harness's test hosts
//! (`krustlet_e2e::testhost`), one per dev node, kept until SIGTERM.
//!
//! ```text
//! KRUSTLET_E2E_CLUSTER=.dev/cluster/cluster.json krustlet-dev-net NODE=DIR...
//! ```
//!
//! Creates the lan (router, CoreDNS behind `kube-system/kube-dns`) and a host per node, prints
//! `host NODE NETNS IP` for each and then `DEVNET_READY`, and routes the cluster's pod range
//! (10.244.0.0/16) from this machine to the router, so `curl <pod IP>` works here. Then, for
//! each node once it has registered (`./dev` starts it inside its host), writes its CNI
//! configuration to `DIR/net.d`, routes its podCIDR and starts its kube-proxy
//! (`DIR/kube-proxy.log`). SIGTERM removes all of it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use krustlet_e2e::testhost::{CLUSTER_CIDR, Lan, TestHost};

fn main() -> anyhow::Result<()> {
    let nodes: Vec<(String, PathBuf)> = std::env::args()
        .skip(1)
        .map(|arg| {
            arg.split_once('=')
                .map(|(node, dir)| (node.to_string(), PathBuf::from(dir)))
                .with_context(|| format!("{arg:?}: expected NODE=DIR"))
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!nodes.is_empty(), "usage: krustlet-dev-net NODE=DIR...");
    std::env::var_os("KRUSTLET_E2E_CLUSTER")
        .context("KRUSTLET_E2E_CLUSTER must name the dev cluster's cluster.json")?;
    // reqwest (under kube) is built without a default TLS provider; pick ring, as kube does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One thread: children (CoreDNS, kube-proxy) die with the thread that started them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(nodes))
}

async fn serve(nodes: Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    let lan = Lan::get();
    let mut hosts = Vec::new();
    let mut out = std::io::stdout();
    for (node, dir) in nodes {
        let host = TestHost::create()?;
        writeln!(out, "host {node} {} {}", host.netns(), host.ip())?;
        hosts.push((node, dir, host));
    }
    let router = lan.router().to_string();
    route(&["replace", CLUSTER_CIDR, "via", &router])?;
    writeln!(out, "DEVNET_READY")?;
    out.flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let attach = async {
        for (node, dir, host) in &mut hosts {
            match host.attach_node(node, &dir.join("net.d"), dir).await {
                Ok(cidr) => eprintln!("krustlet-dev-net: node {node} has pods on {cidr}"),
                Err(error) => eprintln!("krustlet-dev-net: node {node}: {error:#}"),
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = attach => {}
    }
    let _ = route(&["del", CLUSTER_CIDR, "via", &router]);
    drop(hosts);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", lan.netns()])
        .status();
    Ok(())
}

fn route(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("ip")
        .arg("route")
        .args(args)
        .status()
        .context("prerequisite missing: the `ip` command (iproute2)")?;
    anyhow::ensure!(status.success(), "ip route {} failed", args.join(" "));
    Ok(())
}
