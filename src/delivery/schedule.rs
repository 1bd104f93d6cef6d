//! When to try a deferred message again: exponential backoff with jitter,
//! bounded by a maximum age after which the message expires.

use rand::RngExt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Wait after the first failed attempt.
    pub first: Duration,
    /// Longest wait between attempts.
    pub max_interval: Duration,
    /// A message still undelivered this long after submission expires.
    pub max_age: Duration,
}

impl Default for RetrySchedule {
    /// One minute, doubling to four hours, for five days: the classic MTA
    /// schedule (RFC 5321 section 4.5.4.1 suggests at least 30 minutes
    /// between tries and 4-5 days in total; early tries come sooner here
    /// because most failures of an OAuth relay are short: a token refresh,
    /// a throttled minute).
    fn default() -> Self {
        RetrySchedule {
            first: Duration::from_secs(60),
            max_interval: Duration::from_secs(4 * 3600),
            max_age: Duration::from_secs(5 * 86_400),
        }
    }
}

impl RetrySchedule {
    /// The delay before attempt `attempts + 1`, given `attempts` failures so
    /// far, with ±20% jitter so that messages deferred together (an outage)
    /// do not all come back in the same second.
    pub fn delay_after(&self, attempts: u32) -> Duration {
        self.delay_with_jitter(attempts, rand::rng().random_range(0.8..=1.2))
    }

    /// [`RetrySchedule::delay_after`] with the jitter factor given.
    fn delay_with_jitter(&self, attempts: u32, jitter: f64) -> Duration {
        let exponent = attempts.saturating_sub(1).min(20);
        let base = self
            .first
            .saturating_mul(1u32 << exponent)
            .min(self.max_interval);
        base.mul_f64(jitter).min(self.max_interval.mul_f64(1.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60;

    #[test]
    fn the_default_schedule_doubles_from_one_minute_to_four_hours() {
        let schedule = RetrySchedule::default();
        // (failures so far, the delay before the next attempt, in seconds)
        for (attempts, expected) in [
            (0, MINUTE),
            (1, MINUTE),
            (2, 2 * MINUTE),
            (3, 4 * MINUTE),
            (4, 8 * MINUTE),
            (5, 16 * MINUTE),
            (6, 32 * MINUTE),
            (7, 64 * MINUTE),
            (8, 128 * MINUTE),
            (9, 4 * 60 * MINUTE),
            (10, 4 * 60 * MINUTE),
            (40, 4 * 60 * MINUTE),
            (u32::MAX, 4 * 60 * MINUTE),
        ] {
            assert_eq!(
                schedule.delay_with_jitter(attempts, 1.0),
                Duration::from_secs(expected),
                "after {attempts} failures"
            );
        }
    }

    #[test]
    fn jitter_is_twenty_percent_either_way_and_the_cap_holds_it() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.delay_with_jitter(1, 0.8), Duration::from_secs(48));
        assert_eq!(schedule.delay_with_jitter(1, 1.2), Duration::from_secs(72));
        assert_eq!(schedule.delay_with_jitter(3, 0.8), Duration::from_secs(192));
        // At the cap: four hours less or more a fifth, never beyond.
        assert_eq!(
            schedule.delay_with_jitter(20, 0.8),
            Duration::from_secs(11_520)
        );
        assert_eq!(
            schedule.delay_with_jitter(20, 1.2),
            Duration::from_secs(17_280)
        );
        assert_eq!(
            schedule.delay_with_jitter(20, 5.0),
            Duration::from_secs(17_280)
        );
        // The random factor really varies, within its bounds: 200 uniform
        // draws all at or above 58.8 s (or all at or below 61.2 s) have a
        // chance below 10^-50.
        let draws: Vec<u64> = (0..200)
            .map(|_| schedule.delay_after(1).as_millis() as u64)
            .collect();
        assert!(
            draws.iter().all(|ms| (48_000..=72_000).contains(ms)),
            "{draws:?}"
        );
        let (low, high) = (draws.iter().min(), draws.iter().max());
        assert!(
            low < Some(&58_800) && high > Some(&61_200),
            "no jitter: {low:?}..{high:?}"
        );
    }

    #[test]
    fn a_test_schedule_keeps_its_own_numbers() {
        let schedule = RetrySchedule {
            first: Duration::from_millis(200),
            max_interval: Duration::from_secs(1),
            max_age: Duration::from_secs(3600),
        };
        assert_eq!(
            schedule.delay_with_jitter(1, 1.0),
            Duration::from_millis(200)
        );
        assert_eq!(
            schedule.delay_with_jitter(2, 1.0),
            Duration::from_millis(400)
        );
        assert_eq!(
            schedule.delay_with_jitter(3, 1.0),
            Duration::from_millis(800)
        );
        assert_eq!(schedule.delay_with_jitter(4, 1.0), Duration::from_secs(1));
    }
}
