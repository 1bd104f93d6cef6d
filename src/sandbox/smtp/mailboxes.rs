//! What the sandbox SMTP server knows per mailbox: the switches an
//! administrator sets at the provider (SMTP AUTH off, Send As grants),
//! settable at run time so a test can flip them with mail in flight, and
//! the counters behind the profile's limits (sessions, messages, failed
//! logins). Mailbox names compare without regard to case, as providers do.

use super::super::profile::Limit;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Cheap to clone; clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct Mailboxes {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    auth_disabled: HashSet<String>,
    send_as: HashMap<String, HashSet<String>>,
    /// Authenticated sessions per mailbox, in login order.
    sessions: HashMap<String, Vec<SocketAddr>>,
    failed_logins: HashMap<String, VecDeque<Instant>>,
    messages: HashMap<String, VecDeque<Instant>>,
}

fn key(mailbox: &str) -> String {
    mailbox.to_ascii_lowercase()
}

/// Drops the instants older than `window`; returns how many are left.
fn within(times: &mut VecDeque<Instant>, window: Duration, now: Instant) -> usize {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        times.pop_front();
    }
    times.len()
}

impl Mailboxes {
    /// As `Set-CASMailbox -SmtpClientAuthenticationDisabled $true` does:
    /// every login to `mailbox` is refused with the profile's reply.
    pub fn disable_smtp_auth(&self, mailbox: &str) {
        self.lock().auth_disabled.insert(key(mailbox));
    }

    pub fn enable_smtp_auth(&self, mailbox: &str) {
        self.lock().auth_disabled.remove(&key(mailbox));
    }

    /// As `Add-RecipientPermission -AccessRights SendAs` does: `mailbox`
    /// may put `address` in MAIL FROM.
    pub fn grant_send_as(&self, mailbox: &str, address: &str) {
        self.lock()
            .send_as
            .entry(key(mailbox))
            .or_default()
            .insert(key(address));
    }

    /// Forgets the sliding windows (messages sent, failed logins), as a
    /// provider's counters do once their window has passed.
    pub fn reset_windows(&self) {
        let mut state = self.lock();
        state.failed_logins.clear();
        state.messages.clear();
    }

    pub(super) fn smtp_auth_disabled(&self, mailbox: &str) -> bool {
        self.lock().auth_disabled.contains(&key(mailbox))
    }

    pub(super) fn may_send_as(&self, mailbox: &str, address: &str) -> bool {
        self.lock()
            .send_as
            .get(&key(mailbox))
            .is_some_and(|granted| granted.contains(&key(address)))
    }

    pub(super) fn logged_in(&self, mailbox: &str, peer: SocketAddr) {
        self.lock()
            .sessions
            .entry(key(mailbox))
            .or_default()
            .push(peer);
    }

    pub(super) fn disconnected(&self, peer: SocketAddr) {
        let mut state = self.lock();
        for sessions in state.sessions.values_mut() {
            sessions.retain(|p| *p != peer);
        }
        state.sessions.retain(|_, sessions| !sessions.is_empty());
    }

    /// Whether the session from `peer` is among the first `cap` logged in
    /// to `mailbox` (the later ones are the ones beyond the cap).
    pub(super) fn within_session_cap(&self, mailbox: &str, peer: SocketAddr, cap: usize) -> bool {
        self.lock()
            .sessions
            .get(&key(mailbox))
            .and_then(|sessions| sessions.iter().position(|p| *p == peer))
            .is_none_or(|position| position < cap)
    }

    pub(super) fn login_failed(&self, mailbox: &str) {
        self.lock()
            .failed_logins
            .entry(key(mailbox))
            .or_default()
            .push_back(Instant::now());
    }

    pub(super) fn failed_logins(&self, mailbox: &str, window: Duration) -> usize {
        let now = Instant::now();
        self.lock()
            .failed_logins
            .get_mut(&key(mailbox))
            .map_or(0, |times| within(times, window, now))
    }

    /// Counts one more message of `mailbox` against `limits`, unless one
    /// of them is used up: then that limit, and nothing is counted.
    pub(super) fn count_message<'a>(
        &self,
        mailbox: &str,
        limits: &'a [Limit],
    ) -> Option<&'a Limit> {
        if limits.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut state = self.lock();
        let times = state.messages.entry(key(mailbox)).or_default();
        let longest = limits.iter().map(|l| l.window).max().unwrap_or_default();
        within(times, longest, now);
        let exceeded = limits.iter().find(|limit| {
            let in_window = times
                .iter()
                .filter(|t| now.saturating_duration_since(**t) < limit.window)
                .count();
            in_window >= limit.count as usize
        });
        if exceeded.is_none() {
            times.push_back(now);
        }
        exceeded
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain maps and sets: a panic elsewhere cannot leave them half
        // changed in a way that matters to a sandbox.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::server::Reply;

    #[test]
    fn session_cap_counts_logins_in_order_and_frees_on_disconnect() {
        let mailboxes = Mailboxes::default();
        let peers: Vec<SocketAddr> = (1..=4)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .collect();
        for peer in &peers {
            mailboxes.logged_in("Alice@Sandbox.test", *peer);
        }
        let within = |peer| mailboxes.within_session_cap("alice@sandbox.test", peer, 3);
        assert!(within(peers[0]) && within(peers[2]));
        assert!(!within(peers[3]));
        mailboxes.disconnected(peers[0]);
        assert!(within(peers[3]));
    }

    #[test]
    fn message_limits_refuse_without_counting_and_switches_apply() {
        let mailboxes = Mailboxes::default();
        let limits = [Limit {
            count: 2,
            window: Duration::from_secs(60),
            reply: Reply::new(554, "5.2.0 quota"),
        }];
        assert!(mailboxes.count_message("a@x", &limits).is_none());
        assert!(mailboxes.count_message("a@x", &limits).is_none());
        assert!(mailboxes.count_message("a@x", &limits).is_some());
        assert!(mailboxes.count_message("b@x", &limits).is_none());
        mailboxes.reset_windows();
        assert!(mailboxes.count_message("a@x", &limits).is_none());

        assert!(!mailboxes.may_send_as("a@x", "billing@x"));
        mailboxes.grant_send_as("a@x", "Billing@x");
        assert!(mailboxes.may_send_as("A@x", "billing@X"));
        mailboxes.disable_smtp_auth("a@x");
        assert!(mailboxes.smtp_auth_disabled("A@X"));
        mailboxes.enable_smtp_auth("a@x");
        assert!(!mailboxes.smtp_auth_disabled("a@x"));
    }
}
