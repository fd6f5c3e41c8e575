//! Node addresses that are not loopback, so that the API server's node proxy (which refuses
//! loopback and link-local addresses: `proxyutil.IsProxyableIP`) reaches the node.
//!
//! Each address is the root-side end of a veth pair whose other end lives in a network
//! namespace the harness creates (`krustlet-e2e-<pid>-<n>`); the pair is on 198.18.0.0/16,
//! half of the benchmarking range 198.18.0.0/15 (RFC 2544), which is never routed off the
//! machine (test hosts, [`crate::testhost`], use the other half). Traffic to the root
//! end is local delivery: nothing leaves the machine. Dropping a [`NodeAddress`] deletes the
//! namespace (and with it the pair); [`remove_leftovers`] deletes namespaces of harness
//! processes that no longer run.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// The prefix of the network namespaces the harness creates.
const NETNS_PREFIX: &str = "krustlet-e2e-";

/// A non-loopback address on this machine, held until dropped.
#[derive(Debug)]
pub struct NodeAddress {
    netns: String,
    ip: Ipv4Addr,
}

/// Runs `ip ARGS...` (iproute2) and returns its output; the harness's namespaces and veths
/// (here and in [`crate::testhost`]) are made with it.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("prerequisite missing: the `ip` command (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {} (the test harness's network namespaces need root: CAP_NET_ADMIN \
             and CAP_SYS_ADMIN)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The IPv4 addresses this machine has now.
fn addresses_in_use() -> anyhow::Result<String> {
    ip(&["-4", "-o", "addr", "show"])
}

impl NodeAddress {
    /// Creates a namespace and veth pair and returns the root end's address.
    ///
    /// # Errors
    /// When `ip` is missing or not permitted, or no /30 is free in 198.18.0.0/16.
    pub fn create() -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let netns = format!("{NETNS_PREFIX}{pid}-{n}");
        // Interface names are at most 15 bytes.
        let veth = format!("kre{:x}", (pid << 8) ^ n);
        let veth = &veth[..veth.len().min(15)];
        let in_use = addresses_in_use()?;
        // 2^14 subnets of 4 addresses; start at one derived from pid and counter, skip used ones.
        let start = (pid.wrapping_mul(131) ^ n.wrapping_mul(7919)) % (1 << 14);
        let subnet = (0..(1u32 << 14))
            .map(|i| (start + i) % (1 << 14))
            .find(|s| {
                let host = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + s * 4 + 1);
                !in_use.contains(&format!(" {host}/"))
            })
            .context("no free /30 in 198.18.0.0/16 for a node address")?;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + subnet * 4;
        let (root, peer) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let address = Self {
            netns: netns.clone(),
            ip: root,
        };
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        ip(&["addr", "add", &format!("{root}/30"), "dev", veth])?;
        ip(&["link", "set", veth, "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{peer}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        Ok(address)
    }

    /// The address (on the root side of the pair).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

impl Drop for NodeAddress {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and so the pair.
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// Deletes the namespaces (and so the veth pairs) of harness processes that are gone.
pub fn remove_leftovers() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let alive = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = ip(&["netns", "del", name]);
            // A test host's resolv.conf for `ip netns exec` (crate::testhost).
            let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(name));
        }
    }
}
