//! When to try a deferred message again: exponential backoff with jitter,
//! bounded by a maximum age after which the message expires.

use rand::Rng;
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
        let exponent = attempts.saturating_sub(1).min(20);
        let base = self
            .first
            .saturating_mul(1u32 << exponent)
            .min(self.max_interval);
        let jitter = rand::rng().random_range(0.8..=1.2);
        base.mul_f64(jitter).min(self.max_interval.mul_f64(1.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_bounded_with_jitter() {
        let schedule = RetrySchedule::default();
        for attempts in 1..40 {
            let delay = schedule.delay_after(attempts);
            let exponent = attempts.saturating_sub(1).min(20);
            let base = (schedule.first.as_secs_f64() * 2f64.powi(exponent as i32))
                .min(schedule.max_interval.as_secs_f64());
            let secs = delay.as_secs_f64();
            assert!(
                secs >= base * 0.8 - 1e-6 && secs <= base * 1.2 + 1e-6,
                "{attempts}: {secs} vs {base}"
            );
        }
    }
}
