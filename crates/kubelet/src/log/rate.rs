//! The per-container bound on log output: a token bucket of `--container-log-max-rate` bytes
//! per second with one second of burst. A container that writes faster is made to wait (its
//! stream is not ready) rather than losing output, and only its own task waits.

use std::time::{Duration, Instant};

/// A token bucket; `rate` 0 is unbounded.
#[derive(Debug)]
pub struct RateBudget {
    rate: u64,
    tokens: f64,
    updated: Instant,
}

impl RateBudget {
    /// A full bucket of `rate` bytes per second.
    pub fn new(rate: u64) -> Self {
        Self {
            rate,
            tokens: rate as f64,
            updated: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.rate as f64);
        self.updated = now;
    }

    /// Bytes that may be written now (`usize::MAX` if unbounded).
    pub fn available(&mut self, now: Instant) -> usize {
        if self.rate == 0 {
            return usize::MAX;
        }
        self.refill(now);
        self.tokens.max(0.0) as usize
    }

    /// Counts `bytes` written; the bucket may go into debt, which later waits repay.
    pub fn spend(&mut self, bytes: usize, now: Instant) {
        if self.rate != 0 {
            self.refill(now);
            self.tokens -= bytes as f64;
        }
    }

    /// How long until at least one byte may be written.
    pub fn wait(&mut self, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.rate as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_waits_at_the_rate() {
        let start = Instant::now();
        let mut budget = RateBudget::new(1000);
        assert_eq!(budget.available(start), 1000);
        budget.spend(1500, start);
        assert_eq!(budget.available(start), 0);
        let wait = budget.wait(start);
        assert!(
            wait >= Duration::from_millis(500) && wait < Duration::from_millis(520),
            "{wait:?}"
        );
        assert_eq!(budget.wait(start + Duration::from_secs(1)), Duration::ZERO);
        let mut unbounded = RateBudget::new(0);
        unbounded.spend(1 << 30, start);
        assert_eq!(unbounded.wait(start), Duration::ZERO);
    }
}
