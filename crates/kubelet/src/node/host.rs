//! Facts about the host and measurements of its resources, read from `/proc`, `/etc` and
//! `statvfs`. Everything here is cheap enough to call on every status tick.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// Static facts reported in the Node's `nodeInfo` and capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id`; changes on every boot.
    pub boot_id: String,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` from `/etc/os-release`.
    pub os_image: String,
    /// CPUs this process may use.
    pub cpus: u32,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
}

impl HostInfo {
    /// Reads the host facts; missing files give empty strings, never errors, as the kubelet's
    /// cadvisor-less fallbacks do.
    pub fn read() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let machine_id = Some(read("/etc/machine-id"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| read("/var/lib/dbus/machine-id"));
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        Self {
            machine_id,
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            kernel_version: read("/proc/sys/kernel/osrelease"),
            os_image,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: Memory::read().map(|m| m.total_bytes).unwrap_or(0),
        }
    }
}

/// Host memory, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`: what can be allocated without swapping.
    pub available_bytes: u64,
}

impl Memory {
    /// Reads `/proc/meminfo`.
    pub fn read() -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/meminfo")?))
    }

    fn parse(meminfo: &str) -> Self {
        let field = |name: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
                * 1024
        };
        Self {
            total_bytes: field("MemTotal:"),
            available_bytes: field("MemAvailable:"),
        }
    }
}

/// Space on a filesystem, from `statvfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filesystem {
    /// Size in bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
}

impl Filesystem {
    /// Measures the filesystem holding `path` (which must exist).
    pub fn of(path: &Path) -> nix::Result<Self> {
        let stat = nix::sys::statvfs::statvfs(path)?;
        let fragment = stat.fragment_size() as u64;
        Ok(Self {
            total_bytes: stat.blocks() as u64 * fragment,
            available_bytes: stat.blocks_available() as u64 * fragment,
        })
    }
}

/// Process IDs: the limit and how many are in use (threads count, as the kernel allocates a
/// PID per thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pids {
    /// `/proc/sys/kernel/pid_max`.
    pub max: u64,
    /// Tasks that exist now (`/proc/loadavg`'s fourth field, after the slash).
    pub in_use: u64,
}

impl Pids {
    /// Reads `/proc`.
    pub fn read() -> std::io::Result<Self> {
        let max = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
            .trim()
            .parse()
            .unwrap_or(32768);
        let loadavg = std::fs::read_to_string("/proc/loadavg")?;
        let in_use = loadavg
            .split_whitespace()
            .nth(3)
            .and_then(|f| f.split_once('/'))
            .and_then(|(_, total)| total.parse().ok())
            .unwrap_or(0);
        Ok(Self { max, in_use })
    }
}

/// The host's primary address: the first IPv4 address of an interface that is up and not a
/// loopback, else 127.0.0.1. Found without sending any packet.
pub fn primary_ip() -> IpAddr {
    use nix::net::if_::InterfaceFlags;
    let addresses = nix::ifaddrs::getifaddrs().into_iter().flatten();
    for ifa in addresses {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP)
            || ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        if let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            return IpAddr::V4(addr.ip());
        }
    }
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses() {
        let m =
            Memory::parse("MemTotal:       16384 kB\nMemFree: 1 kB\nMemAvailable:    8192 kB\n");
        assert_eq!(
            m,
            Memory {
                total_bytes: 16384 * 1024,
                available_bytes: 8192 * 1024
            }
        );
    }

    #[test]
    fn this_host_is_measurable() {
        let info = HostInfo::read();
        assert!(info.cpus >= 1 && info.memory_bytes > 0, "{info:?}");
        let fs = Filesystem::of(Path::new("/")).expect("statvfs /");
        assert!(fs.total_bytes >= fs.available_bytes && fs.total_bytes > 0);
        let pids = Pids::read().expect("pids");
        assert!(pids.in_use > 0 && pids.max > pids.in_use, "{pids:?}");
    }
}
