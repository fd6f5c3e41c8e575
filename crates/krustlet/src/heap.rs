//! Gives the heap's free memory back to the system (`malloc_trim`), paced like a scavenger.
//!
//! glibc's malloc hands memory back to the kernel only from the top of an arena: pages freed
//! in the middle stay resident until the process calls `malloc_trim`. A node that starts
//! thousands of pods frees a great deal in between (watch events, status patches, each pod's
//! instantiation), so without trimming it keeps memory it no longer uses: at 10 000 sleeping
//! pods one `malloc_trim(0)` took its RSS from 1 055 MiB to 901 MiB, about 15 KiB a pod. The
//! upstream kubelet gets the same from Go's background scavenger.
//!
//! One thread of its own trims every [`Pacing::FIRST`] while trimming gives memory back, and
//! less and less often (up to [`Pacing::LONGEST`]) while it does not, so a node at rest does
//! not pay for it.

use std::time::Duration;

/// When the next trim is due, from what the last one gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pacing {
    interval: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            interval: Self::FIRST,
        }
    }
}

impl Pacing {
    /// The interval while trimming pays.
    pub const FIRST: Duration = Duration::from_secs(10);
    /// The longest interval, reached while trims give nothing back.
    pub const LONGEST: Duration = Duration::from_secs(160);
    /// What a trim must give back to count as paying: a page here and there is noise.
    pub const WORTH: u64 = 1 << 20;

    /// The wait before the next trim, after one that gave back `released` bytes.
    pub fn after(&mut self, released: u64) -> Duration {
        self.interval = if released >= Self::WORTH {
            Self::FIRST
        } else {
            (self.interval * 2).min(Self::LONGEST)
        };
        self.interval
    }

    /// The current interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// Starts the trimming thread; it lives as long as the process. Does nothing where malloc is
/// not glibc's.
pub fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("heap-trim".into())
            .spawn(trim_forever);
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the heap trimmer; freed memory stays resident");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_forever() {
    let mut pacing = Pacing::default();
    loop {
        std::thread::sleep(pacing.interval());
        let before = resident_bytes(None);
        let started = std::time::Instant::now();
        // SAFETY: `malloc_trim` takes no pointers; it locks each arena while it walks it.
        unsafe { libc::malloc_trim(0) };
        let released = before.saturating_sub(resident_bytes(None));
        let next = pacing.after(released);
        if released >= Pacing::WORTH {
            tracing::debug!(
                released_mib = released >> 20,
                took_ms = started.elapsed().as_millis() as u64,
                next_in_s = next.as_secs(),
                "gave freed heap memory back to the system"
            );
        }
    }
}

/// The resident memory in bytes (`VmRSS`) of process `pid`, or of this one; 0 if unreadable.
pub fn resident_bytes(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".into(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            let kib = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_back_off_while_they_give_nothing_back_and_resume_when_they_do() {
        let mut pacing = Pacing::default();
        assert_eq!(pacing.interval(), Pacing::FIRST);
        assert_eq!(pacing.after(Pacing::WORTH), Pacing::FIRST);
        assert_eq!(pacing.after(0), Pacing::FIRST * 2);
        assert_eq!(pacing.after(Pacing::WORTH - 1), Pacing::FIRST * 4);
        for _ in 0..10 {
            pacing.after(0);
        }
        assert_eq!(pacing.interval(), Pacing::LONGEST);
        assert_eq!(pacing.after(64 << 20), Pacing::FIRST);
    }

    #[test]
    fn the_resident_size_is_read() {
        assert!(resident_bytes(None) > 0);
        assert!(resident_bytes(Some(std::process::id())) > 0);
        assert_eq!(resident_bytes(Some(u32::MAX)), 0, "no such process");
    }
}
