//! CPU accounting and `limits.cpu` throttling.
//!
//! A run's CPU time is the thread CPU time spent inside its future's polls (guests run on the
//! async executor's threads and only between polls can they move between threads). The epoch
//! callback, which wasmtime calls inside a poll at every epoch tick, asks [`Throttle`] what to
//! do: keep a guest within its `limits.cpu` share with a token bucket (refilled at the share,
//! holding at most one 100 ms period's worth, like CFS quotas) by sleeping when it ran ahead,
//! and let guests with a bigger `requests.cpu` run more ticks between yields, so a contended
//! node divides its threads roughly by request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use kubelet::runtime::Usage;
use nix::time::{ClockId, clock_gettime};
use wasmtime::UpdateDeadline;

/// The window a CPU limit is enforced over, as the kernel's CFS period.
const PERIOD: Duration = Duration::from_millis(100);
/// Most epoch ticks a guest runs between yields, however big its CPU request.
const MAX_SLICE_TICKS: u64 = 10;
/// Marks "no poll in progress".
const IDLE: u64 = u64::MAX;

/// CPU time of the calling thread, in nanoseconds (0 if the clock cannot be read).
fn thread_cpu_nanos() -> u64 {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// A run's CPU clock: completed polls (in its [`Usage`]) plus the poll in progress.
pub(crate) struct CpuClock {
    usage: Arc<Usage>,
    poll_started: AtomicU64,
}

impl CpuClock {
    /// A clock that adds to `usage`.
    pub(crate) fn new(usage: Arc<Usage>) -> Arc<Self> {
        Arc::new(Self {
            usage,
            poll_started: AtomicU64::new(IDLE),
        })
    }

    /// CPU used so far; correct when called on the polling thread (the epoch callback is).
    fn used_nanos(&self) -> u64 {
        let started = self.poll_started.load(Ordering::Relaxed);
        let running = if started == IDLE {
            0
        } else {
            thread_cpu_nanos().saturating_sub(started)
        };
        self.usage.cpu_nanos() + running
    }
}

pin_project_lite::pin_project! {
    /// `future`, with the CPU time of its polls charged to `clock`. A future of its own rather
    /// than an `async fn`: one would keep the wrapped future twice (the argument and the
    /// pinned local), for as long as a guest sleeps.
    pub(crate) struct Metered<F> {
        clock: Arc<CpuClock>,
        #[pin]
        future: F,
    }
}

/// Runs `future`, charging the CPU time of its polls to `clock`.
pub(crate) fn metered<F: Future>(clock: Arc<CpuClock>, future: F) -> Metered<F> {
    Metered { clock, future }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let start = thread_cpu_nanos();
        this.clock.poll_started.store(start, Ordering::Relaxed);
        let result = this.future.poll(cx);
        this.clock.poll_started.store(IDLE, Ordering::Relaxed);
        this.clock
            .usage
            .add_cpu_nanos(thread_cpu_nanos().saturating_sub(start));
        result
    }
}

/// Decides, at each epoch tick, how long a guest runs before its next yield and whether it
/// must sleep first to stay within its CPU limit.
pub(crate) struct Throttle {
    clock: Arc<CpuClock>,
    /// `limits.cpu` in millicores.
    limit_millis: Option<u64>,
    slice_ticks: u64,
    /// CPU nanoseconds the guest may still use now (negative: it ran ahead).
    tokens: i64,
    last: Instant,
    last_used: u64,
    /// When the run started: enforcement periods are counted from here.
    started: Instant,
    /// The last period (index from `started`) counted in the run's `cfs_periods`.
    counted_period: Option<u64>,
    /// The last period counted as throttled.
    throttled_period: Option<u64>,
}

/// One tick per 100m requested: 1 for best-effort guests, 10 for a whole core or more.
fn slice_ticks(request_millis: Option<u64>) -> u64 {
    request_millis.map_or(1, |m| (m / 100).clamp(1, MAX_SLICE_TICKS))
}

impl Throttle {
    /// A throttle for the run whose `limits.cpu` and `requests.cpu` (millicores) are the live
    /// limits of the clock's usage; they are read again at every epoch (in-place resize).
    pub(crate) fn new(clock: Arc<CpuClock>) -> Self {
        let limits = clock.usage.limits.get();
        let limit_millis = limits.cpu_millis.map(|m| m.max(1));
        Self {
            clock,
            limit_millis,
            slice_ticks: slice_ticks(limits.cpu_request_millis),
            tokens: limit_millis.map_or(0, bucket_size),
            last: Instant::now(),
            last_used: 0,
            started: Instant::now(),
            counted_period: None,
            throttled_period: None,
        }
    }

    /// Follows a resize: a new limit keeps the tokens saved so far, capped to its bucket.
    fn follow_limits(&mut self) {
        let limits = self.clock.usage.limits.get();
        let limit_millis = limits.cpu_millis.map(|m| m.max(1));
        self.slice_ticks = slice_ticks(limits.cpu_request_millis);
        if limit_millis != self.limit_millis {
            if let Some(limit) = limit_millis {
                self.tokens = self.tokens.min(bucket_size(limit));
                if self.limit_millis.is_none() {
                    // Newly limited: account from now, not from the start of the run.
                    self.last = Instant::now();
                    self.last_used = self.clock.used_nanos();
                }
            }
            self.limit_millis = limit_millis;
        }
    }

    /// What the guest does at this epoch tick.
    pub(crate) fn on_epoch(&mut self) -> UpdateDeadline {
        self.follow_limits();
        let Some(limit) = self.limit_millis else {
            return UpdateDeadline::Yield(self.slice_ticks);
        };
        let now = Instant::now();
        let used = self.clock.used_nanos();
        let refill = nanos_of_share(now.duration_since(self.last), limit);
        let spent = used.saturating_sub(self.last_used) as i64;
        self.tokens = (self.tokens.saturating_add(refill)).min(bucket_size(limit)) - spent;
        self.last = now;
        self.last_used = used;
        // Periods are counted once each, as the kernel's `cpu.stat` does: `nr_periods` those the
        // guest ran or slept in, `nr_throttled` those its limit made it sleep in.
        let period = period_index(now.duration_since(self.started));
        if self.tokens >= 0 {
            let periods = self.count_periods(period, period);
            self.clock.usage.add_cfs(periods, 0, 0);
            return UpdateDeadline::Yield(self.slice_ticks);
        }
        // Sleep until the share has paid back what the guest ran ahead.
        let debt = self.tokens.unsigned_abs();
        let wait = Duration::from_nanos(debt.saturating_mul(1000) / limit);
        let end = period_index((now + wait).duration_since(self.started));
        let periods = self.count_periods(period, end);
        let first = self
            .throttled_period
            .map_or(period, |p| (p + 1).max(period));
        let throttled = (end + 1).saturating_sub(first);
        self.throttled_period = Some(end);
        self.clock.usage.add_cfs(
            periods,
            throttled,
            u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX),
        );
        UpdateDeadline::YieldCustom(self.slice_ticks, Box::pin(tokio::time::sleep(wait)))
    }
}

impl Throttle {
    /// Counts periods `from..=to` not counted before; returns how many are new.
    fn count_periods(&mut self, from: u64, to: u64) -> u64 {
        let first = self.counted_period.map_or(from, |p| (p + 1).max(from));
        self.counted_period = Some(self.counted_period.map_or(to, |p| p.max(to)));
        (to + 1).saturating_sub(first)
    }
}

/// Which enforcement period `elapsed` falls in.
fn period_index(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos() / PERIOD.as_nanos()).unwrap_or(u64::MAX)
}

/// CPU nanoseconds a `millis` share earns over `elapsed`.
fn nanos_of_share(elapsed: Duration, millis: u64) -> i64 {
    let nanos = elapsed.as_nanos().saturating_mul(u128::from(millis)) / 1000;
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

/// The most CPU a guest may save up: one period's worth of its share.
fn bucket_size(millis: u64) -> i64 {
    nanos_of_share(PERIOD, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(cpu: Option<u64>, request: Option<u64>) -> Arc<Usage> {
        let usage = Arc::new(Usage::default());
        usage.limits.set(kubelet::runtime::Limits {
            cpu_millis: cpu,
            cpu_request_millis: request,
            ..Default::default()
        });
        usage
    }

    #[test]
    fn slices_follow_requests() {
        let ticks = |request| Throttle::new(CpuClock::new(limited(None, request))).slice_ticks;
        assert_eq!(ticks(None), 1);
        assert_eq!(ticks(Some(250)), 2);
        assert_eq!(ticks(Some(8000)), 10);
    }

    #[tokio::test]
    async fn a_resized_limit_applies_at_the_next_epoch() {
        let usage = limited(Some(250), None);
        let mut throttle = Throttle::new(CpuClock::new(usage.clone()));
        usage.limits.set(kubelet::runtime::Limits {
            cpu_millis: Some(1000),
            cpu_request_millis: Some(1000),
            ..Default::default()
        });
        let _ = throttle.on_epoch();
        assert_eq!(throttle.limit_millis, Some(1000));
        assert_eq!(throttle.slice_ticks, 10);
        usage.limits.set(kubelet::runtime::Limits::default());
        let _ = throttle.on_epoch();
        assert_eq!(throttle.limit_millis, None);
    }

    #[tokio::test]
    async fn a_guest_over_its_share_sleeps_for_its_debt() {
        let usage = limited(Some(250), None);
        let clock = CpuClock::new(usage.clone());
        let mut throttle = Throttle::new(clock);
        // 25 ms of saved-up share; using 75 ms at once leaves 50 ms of debt: 200 ms at 250m.
        usage.add_cpu_nanos(75_000_000);
        match throttle.on_epoch() {
            UpdateDeadline::YieldCustom(1, _) => {}
            _ => panic!("expected a sleep"),
        }
        let debt = throttle.tokens.unsigned_abs();
        assert!((49_000_000..=50_000_000).contains(&debt), "{debt}");
        // A ~200 ms sleep from period 0 throttles periods 0 to 1 or 2 (it ends near 200 ms),
        // each counted as a period too.
        let (periods, throttled) = (usage.cfs_periods(), usage.throttled_periods());
        assert!(
            (2..=3).contains(&throttled) && throttled == periods,
            "{throttled}/{periods}"
        );
        assert!(
            usage.throttled_nanos() >= 190_000_000,
            "{}",
            usage.throttled_nanos()
        );
        // Another sleep at once: the periods it shares with the first are not throttled twice.
        usage.add_cpu_nanos(1_000_000);
        let _ = throttle.on_epoch();
        assert!(
            usage.throttled_periods() <= throttled + 1,
            "{throttled} then {}",
            usage.throttled_periods()
        );
        assert!(usage.throttled_periods() <= usage.cfs_periods());
    }

    #[tokio::test]
    async fn metered_polls_are_charged() {
        let usage = Arc::new(Usage::default());
        let clock = CpuClock::new(usage.clone());
        metered(clock, async {
            let start = thread_cpu_nanos();
            while thread_cpu_nanos() - start < 20_000_000 {
                std::hint::black_box(0);
            }
        })
        .await;
        assert!(usage.cpu_nanos() >= 20_000_000, "{}", usage.cpu_nanos());
    }
}
