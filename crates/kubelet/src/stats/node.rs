//! Node-wide CPU time and boot time, from `/proc/stat`.

/// Nanoseconds per `/proc/stat` tick: the kernel reports in USER_HZ, which is 100 on Linux.
const NANOS_PER_TICK: u64 = 10_000_000;

/// The node's cumulative CPU time and boot time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// CPU time spent on anything but idle and I/O wait, over all cores, since boot.
    pub busy_nanos: u64,
    /// Boot time, seconds since the epoch (`btime`).
    pub boot_time: i64,
}

impl CpuTimes {
    /// Reads `/proc/stat`.
    pub fn read() -> std::io::Result<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat")?).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected /proc/stat")
        })
    }

    fn parse(stat: &str) -> Option<Self> {
        let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = cpu
            .split_whitespace()
            .skip(1)
            .filter_map(|n| n.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let busy: u64 = [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&i| ticks.get(i))
            .sum();
        let boot_time = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        Some(Self {
            busy_nanos: busy * NANOS_PER_TICK,
            boot_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat =
            "cpu  100 10 50 1000 20 5 5 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nbtime 1700000000\n";
        let times = CpuTimes::parse(stat).expect("parse");
        assert_eq!(times.busy_nanos, 170 * NANOS_PER_TICK);
        assert_eq!(times.boot_time, 1_700_000_000);
        assert!(CpuTimes::read().expect("read").busy_nanos > 0);
    }
}
