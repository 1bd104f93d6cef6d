//! Counters of what the sandbox SMTP server saw, published on a watch
//! channel so tests wait for "3 messages accepted" instead of sleeping.

use crate::smtp::server::{Channel, SessionEvent};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SmtpStats {
    pub connections: u64,
    /// Sessions running now.
    pub active_sessions: u64,
    /// EHLO and HELO commands.
    pub ehlos: u64,
    pub starttls_completed: u64,
    /// AUTH commands by mechanism name as sent ("unknown" for the others).
    pub auth_attempts: BTreeMap<String, u64>,
    /// AUTH commands sent before TLS: must stay 0 for a well-behaved client,
    /// since that would put a token on an unencrypted wire.
    pub auth_attempts_before_tls: u64,
    pub auth_successes: u64,
    pub auth_failures: u64,
    pub messages_accepted: u64,
    pub messages_refused: u64,
}

impl SmtpStats {
    pub fn auth_attempts_total(&self) -> u64 {
        self.auth_attempts.values().sum()
    }

    pub(super) fn record(&mut self, event: &SessionEvent) {
        match event {
            SessionEvent::Connected => {
                self.connections += 1;
                self.active_sessions += 1;
            }
            SessionEvent::Closed => self.active_sessions = self.active_sessions.saturating_sub(1),
            SessionEvent::Hello { .. } => self.ehlos += 1,
            SessionEvent::TlsStarted => self.starttls_completed += 1,
            SessionEvent::AuthAttempt { mechanism, channel } => {
                let name = mechanism.map_or("unknown", |m| m.wire_name());
                *self.auth_attempts.entry(name.to_string()).or_default() += 1;
                if *channel == Channel::Plaintext {
                    self.auth_attempts_before_tls += 1;
                }
            }
            SessionEvent::AuthSucceeded { .. } => self.auth_successes += 1,
            SessionEvent::AuthFailed { .. } => self.auth_failures += 1,
            SessionEvent::MessageAccepted { .. } => self.messages_accepted += 1,
            SessionEvent::MessageRefused { .. } => self.messages_refused += 1,
        }
    }
}
