//! Per-account sending limits: the provider's quotas (messages per minute,
//! messages and recipients per day, recipients per message; defaults from
//! the preset table in `oauth::preset`, replaced by `[account.limits]`)
//! and the back-off a provider imposes when it throttles an account (421,
//! 4.7.x, "too many connections").
//!
//! The quotas are the provider's, counted per account however many relays
//! send for it, so their state lives in the store (one row per account,
//! [`QuotaState`]), charged by [`Store::admit_delivery`] in one
//! transaction: two instances on one PostgreSQL database (or two processes
//! on one SQLite file) share one allowance, and a back-off one of them
//! met holds for all (issue 13, item 4). The arithmetic is here, once, for
//! both backends: a pure function of the state, the limits and the time.
//! The time is the wall clock of whichever instance charges (they are
//! expected to keep NTP time); a clock behind the others never refills a
//! bucket twice, since `updated_at` only moves forward. An account without
//! quotas has only its back-off to check: [`UnmeteredAdmissions`] asks the
//! store at most once a second per account (a back-off another instance
//! recorded is seen within that second), not once per message.
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
//!
//! [`Store::admit_delivery`]: crate::store::Store::admit_delivery

use crate::oauth::preset::ProviderLimits;
use std::collections::HashMap;
use std::sync::Mutex;
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

impl AccountLimits {
    /// Whether any quota counts messages or recipients over time (the
    /// recipients-per-message limit shapes transactions, it counts nothing).
    pub fn has_quotas(&self) -> bool {
        self.messages_per_minute.is_some()
            || self.messages_per_day.is_some()
            || self.recipients_per_day.is_some()
    }
}

/// One account's quotas as the store keeps them: each bucket's level as of
/// `updated_at`, and the back-off in force. Times are Unix seconds with a
/// fraction: a per-minute quota of 30 refills one message every 2 s.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QuotaState {
    pub updated_at: f64,
    /// Tokens left as of `updated_at`; `None`: never charged, so full (a
    /// new quota, or one raised in the config, starts with its allowance).
    pub minute_messages: Option<f64>,
    pub day_messages: Option<f64>,
    pub day_recipients: Option<f64>,
    /// Nothing goes before this: the provider is throttling the account.
    pub backed_off_until: Option<f64>,
}

/// A token bucket: `capacity` tokens, refilled at `capacity` per `period`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    capacity: f64,
    per_second: f64,
}

impl Bucket {
    fn new(capacity: u32, period: Duration) -> Self {
        let capacity = f64::from(capacity.max(1));
        Bucket {
            capacity,
            per_second: capacity / period.as_secs_f64().max(1e-9),
        }
    }

    /// The level `elapsed` seconds after it was `stored`.
    fn level(&self, stored: Option<f64>, elapsed: f64) -> f64 {
        stored.map_or(self.capacity, |tokens| {
            (tokens + elapsed.max(0.0) * self.per_second).min(self.capacity)
        })
    }

    /// A cost above the capacity is treated as the capacity, so a message
    /// larger than a whole quota still goes once the bucket is full.
    fn cost(&self, cost: u32) -> f64 {
        f64::from(cost).min(self.capacity)
    }

    /// How long until `cost` tokens are there at `level` (zero if they are).
    fn wait_for(&self, level: f64, cost: u32) -> Duration {
        let cost = self.cost(cost);
        if level >= cost {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((cost - level) / self.per_second)
        }
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

/// Asks to send one message to `recipients` recipients at `now` (Unix
/// seconds) under `limits`, from the account's stored `state`. Charges
/// every quota only when all of them allow it, so a refused message costs
/// nothing; returns the verdict and the state to store, if it changed (an
/// account without quotas and without a back-off costs no write).
pub fn admit(
    limits: &AccountLimits,
    state: &QuotaState,
    recipients: u32,
    now: f64,
) -> (Admission, Option<QuotaState>) {
    if let Some(until) = state.backed_off_until
        && now < until
    {
        let wait = Duration::from_secs_f64(until - now);
        return (Admission::BackedOff(wait), None);
    }
    if !limits.has_quotas() {
        let ended = state.backed_off_until.map(|_| QuotaState {
            backed_off_until: None,
            ..*state
        });
        return (Admission::Go, ended);
    }
    let elapsed = now - state.updated_at;
    let quotas = [
        (limits.messages_per_minute, MINUTE, state.minute_messages, 1),
        (limits.messages_per_day, DAY, state.day_messages, 1),
        (
            limits.recipients_per_day,
            DAY,
            state.day_recipients,
            recipients,
        ),
    ];
    let mut wait = Duration::ZERO;
    let mut levels = [None; 3];
    for (slot, (limit, period, stored, cost)) in levels.iter_mut().zip(quotas) {
        if let Some(limit) = limit {
            let bucket = Bucket::new(limit, period);
            let level = bucket.level(stored, elapsed);
            wait = wait.max(bucket.wait_for(level, cost));
            *slot = Some(level - bucket.cost(cost));
        }
    }
    if !wait.is_zero() {
        return (Admission::Limited(wait), None);
    }
    let [minute_messages, day_messages, day_recipients] = levels;
    let charged = QuotaState {
        // A clock stepped back must not refill a bucket twice.
        updated_at: now.max(state.updated_at),
        minute_messages,
        day_messages,
        day_recipients,
        backed_off_until: None,
    };
    (Admission::Go, Some(charged))
}

/// The provider throttled the account at `now`: nothing goes for `period`.
/// A longer back-off already in force is kept.
pub fn back_off(state: &QuotaState, period: Duration, now: f64) -> QuotaState {
    let until = now + period.as_secs_f64();
    QuotaState {
        backed_off_until: Some(state.backed_off_until.map_or(until, |u| u.max(until))),
        ..*state
    }
}

/// The time now as [`QuotaState`] counts it.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How long the store's answer for an account without quotas stands.
const UNMETERED_RECHECK: Duration = Duration::from_secs(1);

/// The store's last answers for accounts without quotas, where the only
/// state is a back-off. Asking the store for each message was a read and a
/// hand-off to a store connection and back (sqlx's pool, SQLite's thread)
/// per delivery, a fifth of the store's round trips while delivering at
/// full rate; a back-off lasts a provider's throttling window (a minute
/// or more), so an answer a second old is as good. A back-off this engine
/// records itself is seen at once ([`UnmeteredAdmissions::forget`]).
#[derive(Default)]
pub struct UnmeteredAdmissions {
    accounts: Mutex<HashMap<String, Known>>,
}

#[derive(Default)]
struct Known {
    seen: Option<Seen>,
    /// Moved on by every [`UnmeteredAdmissions::forget`], so that an answer
    /// the store gave before it is not kept after it.
    generation: u64,
}

#[derive(Clone, Copy)]
struct Seen {
    at: Instant,
    /// The back-off in force when the store answered, as a deadline.
    backed_off_until: Option<Instant>,
}

/// Handed out when the store must be asked; [`UnmeteredAdmissions::note`]
/// keeps the answer only if nothing was forgotten meanwhile.
#[derive(Clone, Copy, Debug)]
pub struct AskTheStore {
    asked_at: Instant,
    generation: u64,
}

impl UnmeteredAdmissions {
    /// The admission for `account` from the store's answer of less than a
    /// second ago, or what to hand to [`Self::note`] with the store's.
    pub fn admit(&self, account: &str, now: Instant) -> Result<Admission, AskTheStore> {
        let accounts = self.lock();
        let known = accounts.get(account);
        let ask = AskTheStore {
            asked_at: now,
            generation: known.map_or(0, |k| k.generation),
        };
        let Some(seen) = known.and_then(|k| k.seen) else {
            return Err(ask);
        };
        if now.saturating_duration_since(seen.at) >= UNMETERED_RECHECK {
            return Err(ask);
        }
        match seen.backed_off_until {
            Some(until) if until > now => Ok(Admission::BackedOff(until - now)),
            // Ended: the store clears it (a write) on the next ask.
            Some(_) => Err(ask),
            None => Ok(Admission::Go),
        }
    }

    /// Keeps the store's answer for `account`, as of when it was asked
    /// (`ask`), unless [`Self::forget`] came in between.
    pub fn note(&self, account: &str, admission: Admission, ask: AskTheStore) {
        let backed_off_until = match admission {
            Admission::Go => None,
            Admission::BackedOff(wait) => Some(ask.asked_at + wait),
            // Only an account with quotas is limited, and those always ask.
            Admission::Limited(_) => return,
        };
        let mut accounts = self.lock();
        let known = accounts.entry(account.to_string()).or_default();
        if known.generation == ask.generation {
            known.seen = Some(Seen {
                at: ask.asked_at,
                backed_off_until,
            });
        }
    }

    /// Drops what is known of `account`: its state in the store changed.
    /// An answer asked for before this and noted after it is not kept.
    pub fn forget(&self, account: &str) {
        let mut accounts = self.lock();
        let known = accounts.entry(account.to_string()).or_default();
        known.seen = None;
        known.generation += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        // A panic while holding this lock leaves plain data behind.
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: f64 = 1_800_000_000.0;

    /// Admits as the store does: the state written back after each call.
    struct Account {
        limits: AccountLimits,
        state: QuotaState,
    }

    impl Account {
        fn new(limits: AccountLimits) -> Self {
            Account {
                limits,
                state: QuotaState::default(),
            }
        }

        fn admit(&mut self, recipients: u32, now: f64) -> Admission {
            let (admission, next) = admit(&self.limits, &self.state, recipients, now);
            if let Some(next) = next {
                self.state = next;
            }
            admission
        }
    }

    #[test]
    fn per_minute_quota_refills_evenly() {
        let mut account = Account::new(AccountLimits {
            messages_per_minute: Some(30),
            ..AccountLimits::default()
        });
        for _ in 0..30 {
            assert_eq!(account.admit(1, START), Admission::Go);
        }
        // 30 per minute: one more every two seconds.
        match account.admit(1, START) {
            Admission::Limited(wait) => assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6),
            other => panic!("expected a limit, got {other:?}"),
        }
        assert_eq!(account.admit(1, START + 2.0), Admission::Go);
        assert!(matches!(
            account.admit(1, START + 2.5),
            Admission::Limited(_)
        ));
    }

    #[test]
    fn recipients_per_day_is_charged_by_recipient_and_refusal_costs_nothing() {
        let mut account = Account::new(AccountLimits {
            messages_per_minute: Some(100),
            recipients_per_day: Some(10),
            ..AccountLimits::default()
        });
        assert_eq!(account.admit(8, START), Admission::Go);
        // 3 more recipients would exceed the day: refused, and the minute
        // quota is not charged for it.
        let Admission::Limited(wait) = account.admit(3, START) else {
            panic!("expected a limit");
        };
        // One recipient back takes a tenth of a day.
        assert!((wait.as_secs_f64() - 8640.0).abs() < 1.0, "{wait:?}");
        assert_eq!(account.admit(2, START), Admission::Go);
        // A message larger than the whole quota goes once the bucket is full.
        let Admission::Limited(_) = account.admit(50, START) else {
            panic!("expected a limit");
        };
        assert_eq!(account.admit(50, START + DAY.as_secs_f64()), Admission::Go);
    }

    #[test]
    fn back_off_blocks_until_it_ends_and_keeps_the_longest() {
        let mut account = Account::new(AccountLimits::default());
        assert_eq!(account.admit(1, START), Admission::Go);
        account.state = back_off(&account.state, Duration::from_secs(60), START);
        account.state = back_off(&account.state, Duration::from_secs(10), START);
        assert_eq!(
            account.admit(1, START + 30.0),
            Admission::BackedOff(Duration::from_secs(30))
        );
        assert_eq!(account.admit(1, START + 60.0), Admission::Go);
        assert_eq!(account.state.backed_off_until, None, "the back-off ended");
    }

    #[test]
    fn no_limits_means_always_go_and_nothing_to_write() {
        let limits = AccountLimits {
            recipients_per_message: Some(100),
            ..AccountLimits::default()
        };
        for _ in 0..10_000 {
            assert_eq!(
                admit(&limits, &QuotaState::default(), 500, START),
                (Admission::Go, None)
            );
        }
    }

    #[test]
    fn a_clock_stepped_back_refills_nothing() {
        let mut account = Account::new(AccountLimits {
            messages_per_minute: Some(1),
            ..AccountLimits::default()
        });
        assert_eq!(account.admit(1, START + 60.0), Admission::Go);
        // Another instance whose clock is a minute behind.
        assert!(matches!(account.admit(1, START), Admission::Limited(_)));
        assert!(matches!(
            account.admit(1, START + 90.0),
            Admission::Limited(_)
        ));
        assert_eq!(account.admit(1, START + 120.0), Admission::Go);
    }

    #[test]
    fn an_unmetered_answer_stands_for_a_second_and_a_back_off_until_it_ends() {
        let admissions = UnmeteredAdmissions::default();
        let t0 = Instant::now();
        let ask = admissions
            .admit("office", t0)
            .expect_err("nothing known: ask");
        admissions.note("office", Admission::Go, ask);
        assert_eq!(
            admissions
                .admit("office", t0 + Duration::from_millis(999))
                .ok(),
            Some(Admission::Go)
        );
        assert!(admissions.admit("other", t0).is_err(), "per account");
        assert!(
            admissions.admit("office", t0 + UNMETERED_RECHECK).is_err(),
            "a second old: ask again (another instance may have backed off)"
        );

        let ask = admissions
            .admit("office", t0 + UNMETERED_RECHECK)
            .expect_err("ask");
        let t1 = t0 + UNMETERED_RECHECK;
        admissions.note("office", Admission::BackedOff(Duration::from_secs(60)), ask);
        assert_eq!(
            admissions
                .admit("office", t1 + Duration::from_millis(400))
                .ok(),
            Some(Admission::BackedOff(Duration::from_millis(59_600)))
        );
        admissions.forget("office");
        let ask = admissions.admit("office", t1).expect_err("forgotten: ask");
        admissions.note(
            "office",
            Admission::BackedOff(Duration::from_millis(500)),
            ask,
        );
        assert!(
            admissions
                .admit("office", t1 + Duration::from_millis(600))
                .is_err(),
            "an ended back-off is cleared in the store, so ask"
        );
        admissions.forget("office");
        let ask = admissions.admit("office", t1).expect_err("ask");
        admissions.note("office", Admission::Limited(Duration::from_secs(1)), ask);
        assert!(admissions.admit("office", t1).is_err(), "quotas always ask");
    }

    /// A worker asks the store and hears "go"; meanwhile another records a
    /// back-off and forgets: the late "go" is not kept, the next message
    /// asks the store (and meets the back-off).
    #[test]
    fn an_answer_asked_for_before_a_forget_is_not_kept_after_it() {
        let admissions = UnmeteredAdmissions::default();
        let t0 = Instant::now();
        let ask = admissions.admit("office", t0).expect_err("ask");
        admissions.forget("office");
        admissions.note("office", Admission::Go, ask);
        assert!(admissions.admit("office", t0).is_err(), "asks again");
        let ask = admissions.admit("office", t0).expect_err("ask");
        admissions.note("office", Admission::Go, ask);
        assert_eq!(admissions.admit("office", t0).ok(), Some(Admission::Go));
    }
}
