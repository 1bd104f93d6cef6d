//! Per-account sending limits: the provider's quotas (messages per minute,
//! messages and recipients per day, recipients per message; defaults from
//! the preset table in `oauth::preset`) and the back-off a provider imposes
//! when it throttles an account (421, 4.7.x, "too many connections").
//!
//! Written as a small token bucket rather than with `governor`: the engine
//! needs "how long until this message (of N recipients) may go", to release
//! the message until then, and a bucket whose cost is the recipient count;
//! both are a few lines here, and the clock is a parameter (`now`), so the
//! tests drive time by hand instead of sleeping.
//!
//! A daily quota is a bucket that holds the day's allowance and refills it
//! evenly over 24 hours: a burst up to the quota is allowed, after which the
//! account sends at the quota's average rate. That is stricter than a
//! calendar day (which providers count on a rolling window anyway).

use crate::oauth::preset::ProviderLimits;
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// The limits in force for one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountLimits {
    pub messages_per_minute: Option<u32>,
    pub messages_per_day: Option<u32>,
    pub recipients_per_day: Option<u32>,
    /// Larger envelopes are sent as several transactions of at most this many.
    pub recipients_per_message: Option<u32>,
}

impl From<ProviderLimits> for AccountLimits {
    fn from(limits: ProviderLimits) -> Self {
        AccountLimits {
            messages_per_minute: limits.messages_per_minute,
            messages_per_day: limits.messages_per_day,
            recipients_per_day: limits.recipients_per_day,
            recipients_per_message: limits.recipients_per_message,
        }
    }
}

/// A token bucket: `capacity` tokens, refilled at `capacity` per `period`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: u32, period: Duration, now: Instant) -> Self {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            capacity,
            per_second: capacity / period.as_secs_f64().max(1e-9),
            tokens: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = self.updated.max(now);
    }

    /// How long until `cost` tokens are there (zero if they are now). A
    /// cost above the capacity is treated as the capacity, so a message
    /// larger than a whole quota still goes once the bucket is full.
    pub fn wait_for(&mut self, cost: u32, now: Instant) -> Duration {
        self.refill(now);
        let cost = f64::from(cost).min(self.capacity);
        if self.tokens >= cost {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((cost - self.tokens) / self.per_second)
        }
    }

    /// Takes `cost` tokens; call after `wait_for` returned zero.
    pub fn take(&mut self, cost: u32, now: Instant) {
        self.refill(now);
        self.tokens -= f64::from(cost).min(self.capacity);
    }
}

/// Whether a message may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go; the quota was charged.
    Go,
    /// Not before this long from now: a quota is used up.
    Limited(Duration),
    /// Not before this long from now: the provider is throttling the account.
    BackedOff(Duration),
}

/// One account's quotas and throttling back-off.
#[derive(Debug, Clone)]
pub struct AccountLimiter {
    limits: AccountLimits,
    messages_per_minute: Option<TokenBucket>,
    messages_per_day: Option<TokenBucket>,
    recipients_per_day: Option<TokenBucket>,
    backed_off_until: Option<Instant>,
}

impl AccountLimiter {
    pub fn new(limits: AccountLimits, now: Instant) -> Self {
        let bucket = |limit: Option<u32>, period| limit.map(|n| TokenBucket::new(n, period, now));
        AccountLimiter {
            limits,
            messages_per_minute: bucket(limits.messages_per_minute, MINUTE),
            messages_per_day: bucket(limits.messages_per_day, DAY),
            recipients_per_day: bucket(limits.recipients_per_day, DAY),
            backed_off_until: None,
        }
    }

    pub fn limits(&self) -> AccountLimits {
        self.limits
    }

    /// Asks to send one message to `recipients` recipients now. Charges
    /// every quota only when all of them allow it, so a refused message
    /// costs nothing.
    pub fn admit(&mut self, recipients: u32, now: Instant) -> Admission {
        if let Some(until) = self.backed_off_until {
            if now < until {
                return Admission::BackedOff(until - now);
            }
            self.backed_off_until = None;
        }
        let mut wait = Duration::ZERO;
        for (bucket, cost) in [
            (&mut self.messages_per_minute, 1),
            (&mut self.messages_per_day, 1),
            (&mut self.recipients_per_day, recipients),
        ] {
            if let Some(bucket) = bucket {
                wait = wait.max(bucket.wait_for(cost, now));
            }
        }
        if !wait.is_zero() {
            return Admission::Limited(wait);
        }
        for (bucket, cost) in [
            (&mut self.messages_per_minute, 1),
            (&mut self.messages_per_day, 1),
            (&mut self.recipients_per_day, recipients),
        ] {
            if let Some(bucket) = bucket {
                bucket.take(cost, now);
            }
        }
        Admission::Go
    }

    /// The provider throttled the account: nothing goes for `period`. A
    /// longer back-off already in force is kept.
    pub fn back_off(&mut self, period: Duration, now: Instant) {
        let until = now + period;
        self.backed_off_until = Some(self.backed_off_until.map_or(until, |u| u.max(until)));
    }

    /// When the current back-off ends, if there is one.
    pub fn backed_off_until(&self) -> Option<Instant> {
        self.backed_off_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    #[test]
    fn per_minute_quota_refills_evenly() {
        let start = Instant::now();
        let mut limiter = AccountLimiter::new(
            AccountLimits {
                messages_per_minute: Some(30),
                ..AccountLimits::default()
            },
            start,
        );
        for _ in 0..30 {
            assert_eq!(limiter.admit(1, start), Admission::Go);
        }
        // 30 per minute: one more every two seconds.
        match limiter.admit(1, start) {
            Admission::Limited(wait) => assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6),
            other => panic!("expected a limit, got {other:?}"),
        }
        assert_eq!(limiter.admit(1, start + secs(2.0)), Admission::Go);
        assert!(matches!(
            limiter.admit(1, start + secs(2.5)),
            Admission::Limited(_)
        ));
    }

    #[test]
    fn recipients_per_day_is_charged_by_recipient_and_refusal_costs_nothing() {
        let start = Instant::now();
        let mut limiter = AccountLimiter::new(
            AccountLimits {
                messages_per_minute: Some(100),
                recipients_per_day: Some(10),
                ..AccountLimits::default()
            },
            start,
        );
        assert_eq!(limiter.admit(8, start), Admission::Go);
        // 3 more recipients would exceed the day: refused, and the minute
        // quota is not charged for it.
        let Admission::Limited(wait) = limiter.admit(3, start) else {
            panic!("expected a limit");
        };
        // One recipient back takes a tenth of a day.
        assert!((wait.as_secs_f64() - 8640.0).abs() < 1.0, "{wait:?}");
        assert_eq!(limiter.admit(2, start), Admission::Go);
        // A message larger than the whole quota goes once the bucket is full.
        let Admission::Limited(_) = limiter.admit(50, start) else {
            panic!("expected a limit");
        };
        assert_eq!(limiter.admit(50, start + DAY), Admission::Go);
    }

    #[test]
    fn back_off_blocks_until_it_ends_and_keeps_the_longest() {
        let start = Instant::now();
        let mut limiter = AccountLimiter::new(AccountLimits::default(), start);
        assert_eq!(limiter.admit(1, start), Admission::Go);
        limiter.back_off(secs(60.0), start);
        limiter.back_off(secs(10.0), start);
        assert_eq!(
            limiter.admit(1, start + secs(30.0)),
            Admission::BackedOff(secs(30.0))
        );
        assert_eq!(limiter.admit(1, start + secs(60.0)), Admission::Go);
        assert_eq!(limiter.backed_off_until(), None);
    }

    #[test]
    fn no_limits_means_always_go() {
        let start = Instant::now();
        let mut limiter = AccountLimiter::new(AccountLimits::default(), start);
        for _ in 0..10_000 {
            assert_eq!(limiter.admit(500, start), Admission::Go);
        }
    }
}
