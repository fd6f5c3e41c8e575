//! Crash-loop back-off (the kubelet's `doBackOff` in `kuberuntime_manager.go`): the first
//! restart after a crash is immediate (no back-off entry yet), then 10 s, doubling up to
//! 5 minutes, forgotten after 10 minutes of healthy running. Image pulls keep a back-off of
//! their own that starts at 10 s.

use std::time::Duration;

/// The first delay.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The longest delay.
pub const MAX: Duration = Duration::from_secs(300);
/// A run this long resets the back-off.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// One container's back-off state.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    next: Option<Duration>,
    /// The first delay is already the initial one (image pulls).
    no_free_retry: bool,
}

impl Backoff {
    /// Crash-loop back-off: the first restart is immediate.
    pub fn crash() -> Self {
        Self::default()
    }

    /// Image-pull back-off: 10 s from the first failure.
    pub fn pull() -> Self {
        Self {
            next: None,
            no_free_retry: true,
        }
    }

    /// The delay before the next restart after a run of `ran`.
    pub fn next_delay(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.next = None;
        }
        let delay = match self.next {
            Some(delay) => delay,
            None if self.no_free_retry => INITIAL,
            None => {
                self.next = Some(INITIAL);
                return Duration::ZERO;
            }
        };
        self.next = Some((delay * 2).min(MAX));
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_restart_is_immediate_then_doubles_to_the_cap_and_resets_after_a_long_run() {
        let mut b = Backoff::crash();
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(short).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next_delay(RESET_AFTER).as_secs(), 0);
    }

    #[test]
    fn image_pull_back_off_starts_at_ten_seconds() {
        let mut b = Backoff::pull();
        let delays: Vec<u64> = (0..3)
            .map(|_| b.next_delay(Duration::ZERO).as_secs())
            .collect();
        assert_eq!(delays, [10, 20, 40]);
    }
}
