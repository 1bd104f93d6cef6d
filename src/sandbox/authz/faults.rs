//! Fault injection at the token endpoint, so tests and demos can show what
//! the relay does when the identity provider misbehaves: HTTP 500,
//! `invalid_grant` (consent withdrawn), or a slow answer.
//!
//! Faults apply to the next N requests, or to a fraction of requests chosen
//! by a deterministic pattern (not random), so a test run is reproducible.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What an affected `/token` request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFault {
    /// HTTP 500 with `{"error":"server_error"}`.
    ServerError,
    /// HTTP 400 `invalid_grant`, as when the user withdrew consent.
    InvalidGrant,
    /// The request is handled normally, after this delay.
    Delay(Duration),
    /// HTTP 429 with `{"error":"temporarily_unavailable"}` and this
    /// `Retry-After`, as a provider throttling its token endpoint answers.
    Throttled { retry_after: Duration },
    /// The request is handled normally, but the access token lives only
    /// this long, as when a policy at the provider shortens lifetimes or a
    /// token was issued long before it is used.
    ShortLived(Duration),
}

/// Which requests a fault hits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultSchedule {
    /// The next `n` token requests.
    Next(u64),
    /// A fraction in `0.0..=1.0`: request number `i` (from 0) is hit when
    /// `floor((i+1)·f) > floor(i·f)`. Evenly spread, and the same every run.
    Fraction(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultPlan {
    pub fault: TokenFault,
    pub schedule: FaultSchedule,
}

#[derive(Debug, Default)]
struct FaultState {
    plan: Option<FaultPlan>,
    /// Requests seen since the plan was set.
    seen: u64,
}

/// The runtime-settable fault plan of one server. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct TokenFaults {
    state: Arc<Mutex<FaultState>>,
}

impl TokenFaults {
    pub(crate) fn new(initial: Option<FaultPlan>) -> Self {
        let faults = TokenFaults::default();
        if let Some(plan) = initial {
            faults.set(plan);
        }
        faults
    }

    /// Replaces the plan; counting starts again from zero.
    pub fn set(&self, plan: FaultPlan) {
        let mut state = self.lock();
        state.plan = Some(plan);
        state.seen = 0;
    }

    /// `fault` for the next `n` token requests.
    pub fn fail_next(&self, n: u64, fault: TokenFault) {
        self.set(FaultPlan {
            fault,
            schedule: FaultSchedule::Next(n),
        });
    }

    /// `fault` for a deterministic `fraction` of token requests.
    pub fn fail_fraction(&self, fraction: f64, fault: TokenFault) {
        self.set(FaultPlan {
            fault,
            schedule: FaultSchedule::Fraction(fraction.clamp(0.0, 1.0)),
        });
    }

    pub fn clear(&self) {
        let mut state = self.lock();
        state.plan = None;
        state.seen = 0;
    }

    /// Decides the fate of one request (called once per `/token` request).
    pub(crate) fn next_request(&self) -> Option<TokenFault> {
        let mut state = self.lock();
        let plan = state.plan?;
        let index = state.seen;
        state.seen += 1;
        let hit = match plan.schedule {
            FaultSchedule::Next(n) => index < n,
            FaultSchedule::Fraction(f) => {
                // Counts up to 2^53 are exact in f64; a test sends far fewer.
                ((index + 1) as f64 * f).floor() > (index as f64 * f).floor()
            }
        };
        if let FaultSchedule::Next(n) = plan.schedule
            && index + 1 >= n
        {
            state.plan = None;
        }
        hit.then_some(plan.fault)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        // The state is two plain fields; a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_n_then_off() {
        let faults = TokenFaults::default();
        faults.fail_next(2, TokenFault::ServerError);
        let hits: Vec<_> = (0..4).map(|_| faults.next_request()).collect();
        assert_eq!(
            hits,
            [
                Some(TokenFault::ServerError),
                Some(TokenFault::ServerError),
                None,
                None
            ]
        );
    }

    #[test]
    fn fraction_is_exact_and_reproducible() {
        let faults = TokenFaults::default();
        faults.fail_fraction(0.25, TokenFault::InvalidGrant);
        let pattern: Vec<bool> = (0..8).map(|_| faults.next_request().is_some()).collect();
        assert_eq!(pattern.iter().filter(|h| **h).count(), 2);
        faults.fail_fraction(0.25, TokenFault::InvalidGrant);
        let again: Vec<bool> = (0..8).map(|_| faults.next_request().is_some()).collect();
        assert_eq!(pattern, again);
    }

    #[test]
    fn zero_and_one() {
        let faults = TokenFaults::default();
        faults.fail_fraction(0.0, TokenFault::ServerError);
        assert!((0..10).all(|_| faults.next_request().is_none()));
        faults.fail_fraction(1.0, TokenFault::ServerError);
        assert!((0..10).all(|_| faults.next_request().is_some()));
    }
}
