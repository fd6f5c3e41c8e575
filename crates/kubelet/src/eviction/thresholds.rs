//! Which thresholds are met, and for how long (upstream's `eviction/helpers.go`:
//! `thresholdsFirstObservedAt`, `thresholdsMetGracePeriod`, `nodeConditionsLastObservedAt`,
//! `nodeConditionsObservedSince`).
//!
//! A met threshold, hard or soft, raises its pressure condition at once; the condition stays
//! True until the threshold has not been met for the pressure transition period, so it does
//! not flap. Pods are evicted for a hard threshold at once, for a soft one only after it has
//! been met continuously for its grace period.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::Signal;
use crate::node::conditions::Pressure;

/// A threshold met in this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Met {
    /// Its signal.
    pub signal: Signal,
    /// Hard (`--eviction-hard`) or soft (`--eviction-soft`).
    pub hard: bool,
    /// How long it must be met before evicting (zero for a hard one).
    pub grace: Duration,
}

/// What one round decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The pressure conditions to report.
    pub conditions: Pressure,
    /// The thresholds met for their grace period, which drive evictions.
    pub evict_for: Vec<Met>,
}

/// Remembers when thresholds and conditions were observed across rounds.
#[derive(Debug, Default)]
pub struct ThresholdTracker {
    first_observed: HashMap<(Signal, bool), Instant>,
    condition_last_observed: HashMap<Signal, Instant>,
}

impl ThresholdTracker {
    /// One round at `now` in which `met` are the thresholds met.
    pub fn observe(&mut self, now: Instant, met: &[Met], transition: Duration) -> Decision {
        // A threshold not met this round starts its grace period over next time.
        self.first_observed
            .retain(|key, _| met.iter().any(|m| (m.signal, m.hard) == *key));
        for m in met {
            self.first_observed.entry((m.signal, m.hard)).or_insert(now);
            self.condition_last_observed.insert(m.signal, now);
        }
        let mut conditions = Pressure::default();
        self.condition_last_observed
            .retain(|_, last| now.duration_since(*last) < transition);
        for signal in self.condition_last_observed.keys() {
            conditions.raise(*signal);
        }
        let evict_for = met
            .iter()
            .filter(|m| {
                self.first_observed
                    .get(&(m.signal, m.hard))
                    .is_some_and(|first| now.duration_since(*first) >= m.grace)
            })
            .copied()
            .collect();
        Decision {
            conditions,
            evict_for,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn soft(grace: Duration) -> Met {
        Met {
            signal: Signal::MemoryAvailable,
            hard: false,
            grace,
        }
    }

    #[test]
    fn a_soft_threshold_raises_the_condition_at_once_and_evicts_after_its_grace() {
        let mut tracker = ThresholdTracker::default();
        let t0 = Instant::now();
        let transition = 5 * MINUTE;
        let first = tracker.observe(t0, &[soft(MINUTE)], transition);
        assert!(first.conditions.memory);
        assert!(first.evict_for.is_empty());
        let later = tracker.observe(
            t0 + 30 * Duration::from_secs(1),
            &[soft(MINUTE)],
            transition,
        );
        assert!(later.evict_for.is_empty());
        let due = tracker.observe(t0 + MINUTE, &[soft(MINUTE)], transition);
        assert_eq!(due.evict_for, [soft(MINUTE)]);
    }

    #[test]
    fn a_threshold_that_stops_being_met_starts_its_grace_over() {
        let mut tracker = ThresholdTracker::default();
        let t0 = Instant::now();
        tracker.observe(t0, &[soft(MINUTE)], MINUTE);
        tracker.observe(t0 + Duration::from_secs(50), &[], MINUTE);
        let again = tracker.observe(t0 + Duration::from_secs(70), &[soft(MINUTE)], MINUTE);
        assert!(again.evict_for.is_empty(), "the grace period restarted");
    }

    #[test]
    fn the_condition_holds_for_the_transition_period_after_the_last_observation() {
        let mut tracker = ThresholdTracker::default();
        let t0 = Instant::now();
        let hard = Met {
            signal: Signal::NodefsAvailable,
            hard: true,
            grace: Duration::ZERO,
        };
        let met = tracker.observe(t0, &[hard], 5 * MINUTE);
        assert!(met.conditions.disk);
        assert_eq!(met.evict_for, [hard], "hard thresholds evict at once");
        let relieved = tracker.observe(t0 + 4 * MINUTE, &[], 5 * MINUTE);
        assert!(
            relieved.conditions.disk,
            "still within the transition period"
        );
        assert!(relieved.evict_for.is_empty());
        let over = tracker.observe(t0 + 5 * MINUTE, &[], 5 * MINUTE);
        assert!(!over.conditions.disk);
    }
}
