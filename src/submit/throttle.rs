//! Failed-authentication throttling, per client address and per user name.
//! After `max_failures` bad credentials within `window`, further AUTH from
//! that address (or for that user) is refused for a lockout that doubles
//! with each repeat. The check comes before any Argon2 work, so a password
//! guesser can neither guess fast nor burn the relay's CPU.
//!
//! - An attempt is counted when it begins ([`AuthThrottle::begin_attempt`]),
//!   as pending until it is judged: no more attempts may be pending than
//!   failures are left before the lockout, so a hundred guesses sent in
//!   parallel get five checked and the rest wait ([`AttemptRefused::Busy`]) and
//!   then meet the lockout those five earned. A burst of correct logins
//!   (fifty sessions of one device pool at once) is not refused for being
//!   many: a pending attempt is not a failure, only a wait.
//! - A user's lockout does not apply at the addresses that user logged in
//!   from recently: wrong guesses from elsewhere cannot stop a device that
//!   keeps using its correct password from its usual address, while a
//!   guesser anywhere else still meets the user's and its own lockouts.
//!
//! Pure: every call takes `now`, so tests drive the clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ThrottleRules {
    pub max_failures: u32,
    pub window: Duration,
    pub first_lockout: Duration,
    pub max_lockout: Duration,
    /// Addresses and users tracked at most; beyond it, idle records are
    /// dropped first (a spray from many addresses must not grow memory
    /// without bound).
    pub max_tracked: usize,
    /// How long a successful login keeps its address exempt from the
    /// user's lockout.
    pub trusted_for: Duration,
}

/// Addresses remembered as a user's usual ones, at most: a device has one
/// or two; a cap keeps a user who logs in from everywhere from growing it.
const TRUSTED_PER_USER: usize = 8;

impl Default for ThrottleRules {
    fn default() -> Self {
        ThrottleRules {
            // Five tries covers a person mistyping an app password; a
            // guesser gets five per ten minutes, then ever longer pauses.
            max_failures: 5,
            window: Duration::from_secs(10 * 60),
            first_lockout: Duration::from_secs(60),
            // An hour caps how long a legitimate device stays locked out
            // by someone else's guessing.
            max_lockout: Duration::from_secs(60 * 60),
            max_tracked: 100_000,
            // A device that sends at least monthly stays exempt.
            trusted_for: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Who is locked out, and for how much longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lockout {
    Address { remaining: Duration },
    User { remaining: Duration },
}

/// Why an attempt may not begin now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptRefused {
    /// Locked out: refuse.
    Locked(Lockout),
    /// As many attempts are being judged as failures are left before a
    /// lockout: wait for one of them to end, then ask again.
    Busy,
}

#[derive(Debug, Clone)]
struct FailureRecord {
    window_start: Instant,
    failures: u32,
    /// Attempts begun and not judged yet.
    pending: u32,
    /// Lockouts so far: the next lasts `first_lockout * 2^lockouts`.
    lockouts: u32,
    locked_until: Option<Instant>,
    last_seen: Instant,
}

impl FailureRecord {
    fn new(now: Instant) -> Self {
        FailureRecord {
            window_start: now,
            failures: 0,
            pending: 0,
            lockouts: 0,
            locked_until: None,
            last_seen: now,
        }
    }

    fn remaining(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    fn fail(&mut self, rules: &ThrottleRules, now: Instant) {
        self.last_seen = now;
        if now.duration_since(self.window_start) > rules.window {
            self.window_start = now;
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures >= rules.max_failures {
            let factor = 2u32.saturating_pow(self.lockouts.min(16));
            let lockout = rules
                .first_lockout
                .saturating_mul(factor)
                .min(rules.max_lockout);
            self.locked_until = Some(now + lockout);
            self.lockouts = self.lockouts.saturating_add(1);
            self.failures = 0;
            self.window_start = now;
        }
    }

    /// Failures counted in the window as of `now`.
    fn failures_now(&self, rules: &ThrottleRules, now: Instant) -> u32 {
        if now.duration_since(self.window_start) > rules.window {
            0
        } else {
            self.failures
        }
    }

    /// Whether one more pending attempt could, by failing with the others,
    /// go past the lockout's threshold.
    fn is_full(&self, rules: &ThrottleRules, now: Instant) -> bool {
        self.failures_now(rules, now) + self.pending >= rules.max_failures
    }

    fn end_pending(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// Nothing left to remember: not locked and the window passed.
    fn is_idle(&self, rules: &ThrottleRules, now: Instant) -> bool {
        self.remaining(now).is_none()
            && self.pending == 0
            && now.duration_since(self.last_seen) > rules.window.max(rules.max_lockout)
    }
}

#[derive(Debug, Default)]
pub struct AuthThrottle {
    rules: ThrottleRules,
    addresses: HashMap<IpAddr, FailureRecord>,
    users: HashMap<String, FailureRecord>,
    /// Each user's recent good addresses and when it last logged in there.
    trusted: HashMap<String, Vec<(IpAddr, Instant)>>,
}

impl AuthThrottle {
    pub fn new(rules: ThrottleRules) -> Self {
        AuthThrottle {
            rules,
            ..AuthThrottle::default()
        }
    }

    /// `Err` if this address or user is locked out now.
    pub fn check(&self, peer: IpAddr, user: &str, now: Instant) -> Result<(), Lockout> {
        if let Some(remaining) = self
            .addresses
            .get(&address_key(peer))
            .and_then(|r| r.remaining(now))
        {
            return Err(Lockout::Address { remaining });
        }
        if let Some(key) = user_key(user)
            && let Some(remaining) = self.users.get(&key).and_then(|r| r.remaining(now))
            && !self.is_trusted(&key, peer, now)
        {
            return Err(Lockout::User { remaining });
        }
        Ok(())
    }

    /// Checks, then counts the attempt as pending until
    /// [`AuthThrottle::attempt_succeeded`], [`AuthThrottle::attempt_failed`]
    /// or [`AuthThrottle::attempt_abandoned`] ends it.
    pub fn begin_attempt(
        &mut self,
        peer: IpAddr,
        user: &str,
        now: Instant,
    ) -> Result<(), AttemptRefused> {
        self.check(peer, user, now)
            .map_err(AttemptRefused::Locked)?;
        let rules = &self.rules;
        let address_full = self
            .addresses
            .get(&address_key(peer))
            .is_some_and(|r| r.is_full(rules, now));
        let user_full = user_key(user)
            .and_then(|key| self.users.get(&key))
            .is_some_and(|r| r.is_full(rules, now));
        if address_full || user_full {
            return Err(AttemptRefused::Busy);
        }
        self.make_room(now);
        self.addresses
            .entry(address_key(peer))
            .or_insert_with(|| FailureRecord::new(now))
            .pending += 1;
        if let Some(key) = user_key(user) {
            self.users
                .entry(key)
                .or_insert_with(|| FailureRecord::new(now))
                .pending += 1;
        }
        Ok(())
    }

    /// The attempt begun was judged wrong: it counts as a failure.
    pub fn attempt_failed(&mut self, peer: IpAddr, user: &str, now: Instant) {
        self.end_pending(peer, user);
        self.record_failure(peer, user, now);
    }

    fn end_pending(&mut self, peer: IpAddr, user: &str) {
        if let Some(record) = self.addresses.get_mut(&address_key(peer)) {
            record.end_pending();
        }
        if let Some(record) = user_key(user).and_then(|key| self.users.get_mut(&key)) {
            record.end_pending();
        }
    }

    /// The attempt begun for `user` from `peer` succeeded: it ends, the
    /// user's failures are cleared, and the address becomes one of the
    /// user's usual ones. The address keeps its failures: one valid account
    /// must not reset a guesser's address.
    pub fn attempt_succeeded(&mut self, peer: IpAddr, user: &str, now: Instant) {
        self.end_pending(peer, user);
        let Some(key) = user_key(user) else {
            return;
        };
        if let Some(record) = self.users.get_mut(&key) {
            // Its other attempts still pending stay counted as pending.
            record.failures = 0;
            record.locked_until = None;
            record.lockouts = 0;
        }
        let trusted_for = self.rules.trusted_for;
        let addresses = self.trusted.entry(key).or_default();
        addresses
            .retain(|(ip, at)| *ip != address_key(peer) && now.duration_since(*at) < trusted_for);
        if addresses.len() >= TRUSTED_PER_USER {
            addresses.remove(0);
        }
        addresses.push((address_key(peer), now));
    }

    /// The attempt begun could not be judged (the store or an issuer was
    /// unreachable): neither a failure nor a success.
    pub fn attempt_abandoned(&mut self, peer: IpAddr, user: &str) {
        self.end_pending(peer, user);
    }

    fn is_trusted(&self, user_key: &str, peer: IpAddr, now: Instant) -> bool {
        self.trusted.get(user_key).is_some_and(|addresses| {
            addresses.iter().any(|(ip, at)| {
                *ip == address_key(peer) && now.duration_since(*at) < self.rules.trusted_for
            })
        })
    }

    pub fn record_failure(&mut self, peer: IpAddr, user: &str, now: Instant) {
        self.make_room(now);
        let rules = &self.rules;
        self.addresses
            .entry(address_key(peer))
            .or_insert_with(|| FailureRecord::new(now))
            .fail(rules, now);
        if let Some(key) = user_key(user) {
            self.users
                .entry(key)
                .or_insert_with(|| FailureRecord::new(now))
                .fail(rules, now);
        }
    }

    fn make_room(&mut self, now: Instant) {
        if self.addresses.len() + self.users.len() < self.rules.max_tracked {
            return;
        }
        let rules = &self.rules;
        self.addresses.retain(|_, r| !r.is_idle(rules, now));
        self.users.retain(|_, r| !r.is_idle(rules, now));
        self.trusted.retain(|_, addresses| {
            addresses.retain(|(_, at)| now.duration_since(*at) < rules.trusted_for);
            !addresses.is_empty()
        });
        // Still full of active records: forget the unlocked ones, keeping
        // the lockouts that are doing their job.
        if self.addresses.len() + self.users.len() >= rules.max_tracked {
            self.addresses.retain(|_, r| r.remaining(now).is_some());
            self.users.retain(|_, r| r.remaining(now).is_some());
        }
    }
}

/// IPv6 clients get a whole /64 each, so counting per /64 is what counts
/// per client; v4-mapped addresses count as their v4 address.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// No key for an empty name (OAUTHBEARER may omit the user): lumping all
/// such clients under one name would let one guesser lock out the rest.
fn user_key(user: &str) -> Option<String> {
    (!user.is_empty()).then(|| user.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn locks_after_five_failures_and_doubles() {
        let rules = ThrottleRules::default();
        let mut throttle = AuthThrottle::new(rules.clone());
        let start = Instant::now();
        let peer = ip("192.0.2.1");
        for n in 0..4 {
            throttle.record_failure(peer, "scanner", start + Duration::from_secs(n));
            assert!(throttle.check(peer, "scanner", start).is_ok());
        }
        throttle.record_failure(peer, "scanner", start + Duration::from_secs(4));
        let at = start + Duration::from_secs(5);
        assert_eq!(
            throttle.check(peer, "scanner", at),
            Err(Lockout::Address {
                remaining: Duration::from_secs(59)
            })
        );
        // Another address, same user: the user is locked too.
        assert!(matches!(
            throttle.check(ip("198.51.100.9"), "Scanner", at),
            Err(Lockout::User { .. })
        ));
        // Over after a minute; five more failures lock for two.
        let later = start + Duration::from_secs(70);
        assert!(throttle.check(peer, "scanner", later).is_ok());
        for n in 0..5 {
            throttle.record_failure(peer, "scanner", later + Duration::from_secs(n));
        }
        let locked = throttle.check(peer, "scanner", later + Duration::from_secs(4));
        assert_eq!(
            locked,
            Err(Lockout::Address {
                remaining: Duration::from_secs(120)
            })
        );
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let mut throttle = AuthThrottle::new(ThrottleRules::default());
        let start = Instant::now();
        let peer = ip("192.0.2.1");
        for n in 0..20 {
            // One failure every three minutes: never five in ten minutes.
            throttle.record_failure(peer, "u", start + Duration::from_secs(n * 180));
        }
        // 20 failures three minutes apart: 4 per window, never locked.
        assert!(
            throttle
                .check(peer, "u", start + Duration::from_secs(19 * 180))
                .is_ok()
        );
    }

    #[test]
    fn success_clears_the_user_not_the_address() {
        let mut throttle = AuthThrottle::new(ThrottleRules::default());
        let now = Instant::now();
        let peer = ip("192.0.2.1");
        for _ in 0..4 {
            throttle.record_failure(peer, "u", now);
        }
        throttle
            .begin_attempt(peer, "u", now)
            .expect("not locked yet");
        throttle.attempt_succeeded(peer, "u", now);
        throttle.record_failure(peer, "v", now);
        assert!(matches!(
            throttle.check(peer, "u", now),
            Err(Lockout::Address { .. })
        ));
        assert!(throttle.check(ip("192.0.2.2"), "u", now).is_ok());
    }

    #[test]
    fn an_empty_user_name_is_not_a_shared_lock() {
        let mut throttle = AuthThrottle::new(ThrottleRules::default());
        let now = Instant::now();
        for n in 0..5u8 {
            throttle.record_failure(IpAddr::from([192, 0, 2, n]), "", now);
        }
        assert!(throttle.check(ip("198.51.100.1"), "", now).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let mut throttle = AuthThrottle::new(ThrottleRules::default());
        let now = Instant::now();
        for n in 0..5 {
            throttle.record_failure(ip(&format!("2001:db8:1:2::{n}")), &format!("u{n}"), now);
        }
        assert!(throttle.check(ip("2001:db8:1:2::ff"), "x", now).is_err());
        assert!(throttle.check(ip("2001:db8:1:3::1"), "x", now).is_ok());
    }

    #[test]
    fn parallel_attempts_are_counted_when_they_begin() {
        let mut throttle = AuthThrottle::new(ThrottleRules::default());
        let now = Instant::now();
        let peer = ip("192.0.2.7");
        // A hundred guesses arrive before any check has finished: five are
        // checked, the others wait.
        let admitted = (0..100)
            .filter(|_| throttle.begin_attempt(peer, "scanner", now).is_ok())
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(
            throttle.begin_attempt(peer, "scanner", now),
            Err(AttemptRefused::Busy)
        );
        // The five fail: the waiting ones then meet the lockout.
        for _ in 0..5 {
            throttle.attempt_failed(peer, "scanner", now);
        }
        assert!(matches!(
            throttle.begin_attempt(peer, "scanner", now),
            Err(AttemptRefused::Locked(Lockout::Address { .. }))
        ));
    }

    #[test]
    fn a_burst_of_correct_logins_waits_its_turn_and_is_never_locked_out() {
        let mut throttle = AuthThrottle::new(ThrottleRules::default());
        let now = Instant::now();
        let pool = ip("192.0.2.8");
        // Fifty sessions of one device pool log in at once; each that may
        // not begin yet retries after another one ends, as the policy does.
        let mut waiting = 50;
        let mut in_flight = 0;
        let mut rounds = 0;
        while waiting > 0 {
            rounds += 1;
            assert!(rounds < 1000, "bounded");
            while waiting > 0 && throttle.begin_attempt(pool, "printer", now).is_ok() {
                waiting -= 1;
                in_flight += 1;
            }
            assert!(in_flight > 0, "someone is always let in");
            throttle.attempt_succeeded(pool, "printer", now);
            in_flight -= 1;
        }
        for _ in 0..in_flight {
            throttle.attempt_succeeded(pool, "printer", now);
        }
        assert!(throttle.check(pool, "printer", now).is_ok());
    }

    #[test]
    fn guesses_from_elsewhere_do_not_stop_a_device_at_its_usual_address() {
        let mut throttle = AuthThrottle::new(ThrottleRules::default());
        let start = Instant::now();
        let device = ip("192.168.10.20");
        throttle
            .begin_attempt(device, "scanner", start)
            .expect("first login");
        throttle.attempt_succeeded(device, "scanner", start);
        // Someone else, from many addresses, guesses the device's password.
        for n in 0..20u8 {
            let guesser = IpAddr::from([203, 0, 113, n]);
            if throttle.begin_attempt(guesser, "scanner", start).is_ok() {
                throttle.attempt_failed(guesser, "scanner", start);
            }
        }
        let later = start + Duration::from_secs(5);
        // The guessers meet the user's lockout...
        assert!(matches!(
            throttle.check(ip("198.51.100.1"), "scanner", later),
            Err(Lockout::User { .. })
        ));
        // ...the device does not, and its next login still works.
        throttle
            .begin_attempt(device, "scanner", later)
            .expect("the device logs in");
        throttle.attempt_succeeded(device, "scanner", later);
        // After its trust ran out, the device is like any other address.
        let much_later = start + Duration::from_secs(31 * 24 * 3600);
        for n in 0..5u8 {
            let guesser = IpAddr::from([203, 0, 114, n]);
            throttle
                .begin_attempt(guesser, "scanner", much_later)
                .expect("not locked yet");
            throttle.attempt_failed(guesser, "scanner", much_later);
        }
        assert!(matches!(
            throttle.check(device, "scanner", much_later),
            Err(Lockout::User { .. })
        ));
    }

    #[test]
    fn an_attempt_that_could_not_be_judged_counts_for_nothing() {
        let mut throttle = AuthThrottle::new(ThrottleRules::default());
        let now = Instant::now();
        let peer = ip("192.0.2.9");
        for _ in 0..20 {
            throttle
                .begin_attempt(peer, "u", now)
                .expect("never locked");
            throttle.attempt_abandoned(peer, "u");
        }
        assert!(throttle.check(peer, "u", now).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let rules = ThrottleRules {
            max_tracked: 100,
            ..ThrottleRules::default()
        };
        let mut throttle = AuthThrottle::new(rules);
        let now = Instant::now();
        for n in 0..10_000u32 {
            throttle.record_failure(IpAddr::from(n.to_be_bytes()), &format!("u{n}"), now);
        }
        assert!(throttle.addresses.len() + throttle.users.len() <= 102);
    }
}
