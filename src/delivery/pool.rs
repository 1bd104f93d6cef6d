//! Per-account pools of authenticated upstream sessions. Opening a session
//! costs a TCP connect, a TLS handshake and an AUTH (and providers count and
//! throttle logins), so one session carries many messages, with RSET before
//! each reuse. Sessions are opened with `delivery::upstream::open_session`,
//! which keeps contract 4 (refresh once, retry once).
//!
//! Per account a semaphore caps the connections: a session counts against
//! the cap while checked out, and an idle one was checked out under a
//! permit and returned, so checked-out plus idle never exceeds the cap (a
//! new session is opened only when no idle one is left). A session is
//! retired after `max_messages_per_session` messages, after
//! `max_session_age`, after `max_idle` unused, or as soon as it is not
//! usable (timeout, I/O error, 421).
//!
//! A session also remembers the broker's credentials version of its
//! account when it was opened. When the account's credentials change
//! (revoked, a new consent or key: `Broker::credentials_version` moves), its
//! sessions are retired: idle ones closed as soon as the engine hears of it
//! (and at the next checkout at the latest), checked-out ones refused for
//! the next transaction (`is_current`) and closed at checkin. Nothing more
//! goes out on a session authenticated with a token that was taken away.

use crate::delivery::upstream::{UpstreamError, open_session};
use crate::metrics::UpstreamSessionEvent;
use crate::oauth::account::Account;
use crate::oauth::broker::{Broker, BrokerError};
use crate::oauth::preset::ProviderKind;
use crate::smtp::client::{ClientError, Envelope, SendReport, Session};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Concurrent connections per account. Microsoft 365 allows 3
    /// concurrent SMTP connections per mailbox before "432 4.3.2 Concurrent
    /// connections limit exceeded"; 3 is the default for that reason.
    pub max_connections_per_account: usize,
    /// Messages per session before it is closed and a new one opened, so a
    /// long-lived connection does not collect server-side limits (Exchange
    /// allows about 30 messages per connection-minute).
    pub max_messages_per_session: u64,
    /// The same two for `generic` accounts (a private or self-hosted
    /// server, no published per-mailbox caps): more connections, and more
    /// messages per AUTH. bench/peers.sh measured 3 connections as the
    /// limit of end-to-end delivery to a fast server; the provider presets
    /// keep the caps above.
    pub generic_max_connections: usize,
    pub generic_max_messages_per_session: u64,
    /// Session lifetime: a token authenticates the session once, and
    /// providers cut sessions that outlive their token.
    pub max_session_age: Duration,
    /// Servers drop idle connections (Exchange after about a minute, RFC
    /// 5321 section 4.5.3.2.7 allows 5); closing ours first avoids a failed
    /// reuse.
    pub max_idle: Duration,
    /// A session idle at least this long is probed with RSET before it
    /// carries a message; one idle less, whose last transaction ended, goes
    /// straight to MAIL (a round trip less per message), and if it turns
    /// out gone before the message was sent the engine sends the message
    /// on another ([`ClientError::is_gone_before_content`]).
    pub probe_after_idle: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections_per_account: 3,
            max_messages_per_session: 100,
            generic_max_connections: 8,
            generic_max_messages_per_session: 1000,
            max_session_age: Duration::from_secs(5 * 60),
            max_idle: Duration::from_secs(30),
            probe_after_idle: Duration::from_secs(2),
        }
    }
}

/// What the pool did, for metrics and the benchmark (messages per AUTH).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// Sessions connected, secured and authenticated.
    pub sessions_opened: u64,
    /// Successful upstream authentications (one per opened session; a
    /// refused token that was refreshed and retried counts once).
    pub authentications: u64,
    /// Attempts to open a session that failed.
    pub open_failures: u64,
    /// Checkouts served by an idle session.
    pub sessions_reused: u64,
    /// Reused sessions (without RSET) found gone before the message was
    /// sent, the message then sent on another.
    pub reused_found_gone: u64,
    /// Messages the upstream accepted (final 2xx after DATA).
    pub messages_sent: u64,
    pub sessions_closed: u64,
}

#[derive(Default)]
struct Counters {
    sessions_opened: AtomicU64,
    open_failures: AtomicU64,
    sessions_reused: AtomicU64,
    reused_found_gone: AtomicU64,
    messages_sent: AtomicU64,
    sessions_closed: AtomicU64,
}

struct IdleSession {
    session: Session,
    idle_since: Instant,
    /// The account's credentials version it was authenticated under.
    credentials: u64,
}

/// One account's connections.
struct AccountSessions {
    name: String,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<IdleSession>>,
    /// Messages a session carries before it is retired.
    max_messages: u64,
}

/// What one account's sessions may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCaps {
    pub connections: usize,
    /// Messages per session (per upstream AUTH).
    pub messages: u64,
}

impl PoolConfig {
    /// The caps for an account of provider `kind`: the providers'
    /// (Microsoft, Google) or the generic ones.
    pub fn caps(&self, kind: ProviderKind) -> SessionCaps {
        match kind {
            ProviderKind::Generic => SessionCaps {
                connections: self.generic_max_connections,
                messages: self.generic_max_messages_per_session,
            },
            ProviderKind::Microsoft | ProviderKind::Google => SessionCaps {
                connections: self.max_connections_per_account,
                messages: self.max_messages_per_session,
            },
        }
    }
}

impl AccountSessions {
    fn idle(&self) -> MutexGuard<'_, Vec<IdleSession>> {
        // The vector stays consistent if a holder panicked: recover it.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct SessionPool {
    broker: Arc<Broker>,
    config: PoolConfig,
    accounts: Mutex<HashMap<String, Arc<AccountSessions>>>,
    counters: Arc<Counters>,
}

/// A session checked out of the pool. Give it back with
/// [`SessionPool::checkin`]; dropping it closes the connection instead.
pub struct PooledSession {
    session: Session,
    account: Arc<AccountSessions>,
    counters: Arc<Counters>,
    reused: bool,
    /// Reused without RSET, and nothing sent on it since.
    unproven: bool,
    credentials: u64,
    _permit: OwnedSemaphorePermit,
}

impl PooledSession {
    /// One mail transaction on this session; counts accepted messages.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<SendReport, ClientError> {
        let sent = self.session.send(envelope, message).await;
        self.unproven = false;
        let report = sent?;
        if report.accepted() {
            self.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(report)
    }

    /// Whether this session came from the idle list rather than a new login.
    pub fn was_reused(&self) -> bool {
        self.reused
    }

    /// Whether it was reused without RSET ([`PoolConfig::probe_after_idle`])
    /// and has sent nothing since: a failure of its first transaction that
    /// [`ClientError::is_gone_before_content`] is the server having dropped
    /// it while idle, not a verdict on the message.
    pub fn is_unproven(&self) -> bool {
        self.unproven
    }

    pub fn session(&self) -> &Session {
        &self.session
    }
}

impl SessionPool {
    pub fn new(broker: Arc<Broker>, config: PoolConfig) -> Self {
        SessionPool {
            broker,
            config,
            accounts: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    pub fn config(&self) -> PoolConfig {
        self.config
    }

    pub fn stats(&self) -> PoolStats {
        let c = &self.counters;
        let opened = c.sessions_opened.load(Ordering::Relaxed);
        PoolStats {
            sessions_opened: opened,
            authentications: opened,
            open_failures: c.open_failures.load(Ordering::Relaxed),
            sessions_reused: c.sessions_reused.load(Ordering::Relaxed),
            reused_found_gone: c.reused_found_gone.load(Ordering::Relaxed),
            messages_sent: c.messages_sent.load(Ordering::Relaxed),
            sessions_closed: c.sessions_closed.load(Ordering::Relaxed),
        }
    }

    fn account_sessions(&self, account: &Account) -> Arc<AccountSessions> {
        let caps = self.config.caps(account.preset.kind);
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts
            .entry(account.name.clone())
            .or_insert_with(|| {
                Arc::new(AccountSessions {
                    name: account.name.clone(),
                    permits: Arc::new(Semaphore::new(caps.connections.max(1))),
                    idle: Mutex::new(Vec::new()),
                    max_messages: caps.messages,
                })
            })
            .clone()
    }

    /// Whether a session authenticated under `credentials` may still be
    /// used for `account`.
    fn credentials_current(&self, account: &str, credentials: u64) -> bool {
        self.broker.credentials_version(account) == credentials
    }

    /// Whether `pooled` may carry another transaction: false once the
    /// account's credentials changed after it was authenticated.
    pub fn is_current(&self, pooled: &PooledSession) -> bool {
        self.credentials_current(&pooled.account.name, pooled.credentials)
    }

    fn retired(&self, sessions: &AccountSessions, session: &Session, now: Instant) -> bool {
        !session.is_usable()
            || session.messages_sent() >= sessions.max_messages
            || now.saturating_duration_since(session.connected_at()) >= self.config.max_session_age
    }

    /// A ready session for `account`: an idle one (probed with RSET if it
    /// was idle [`PoolConfig::probe_after_idle`] or more), or a new one.
    /// Waits while the account is at its connection cap.
    pub async fn checkout(&self, account: &Account) -> Result<PooledSession, UpstreamError> {
        self.checkout_probing(account, self.config.probe_after_idle)
            .await
    }

    /// [`SessionPool::checkout`] with every idle session probed with RSET:
    /// after a reused one turned out gone, the others may be too (a server
    /// restarted).
    pub async fn checkout_probed(&self, account: &Account) -> Result<PooledSession, UpstreamError> {
        self.checkout_probing(account, Duration::ZERO).await
    }

    /// Drops a session that turned out gone (closed by the server while
    /// idle), freeing its place under the account's cap.
    pub fn discard_gone(&self, pooled: PooledSession) {
        crate::metrics::global()
            .upstream_session(&pooled.account.name, UpstreamSessionEvent::FoundGone);
        self.counters
            .reused_found_gone
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .sessions_closed
            .fetch_add(1, Ordering::Relaxed);
        drop(pooled);
    }

    async fn checkout_probing(
        &self,
        account: &Account,
        probe_after_idle: Duration,
    ) -> Result<PooledSession, UpstreamError> {
        let sessions = self.account_sessions(account);
        let permit = sessions
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| {
                // The semaphore is never closed; this is unreachable in practice.
                UpstreamError::Smtp(ClientError::Unusable {
                    address: account.smtp.host.clone(),
                })
            })?;
        // At most as many idle sessions as the cap: the loop is bounded.
        loop {
            let candidate = sessions.idle().pop();
            let Some(IdleSession {
                mut session,
                idle_since,
                credentials,
            }) = candidate
            else {
                break;
            };
            let now = Instant::now();
            if self.retired(&sessions, &session, now)
                || now.saturating_duration_since(idle_since) >= self.config.max_idle
                || !self.credentials_current(&account.name, credentials)
            {
                self.close(session);
                continue;
            }
            let unproven = session.is_between_transactions()
                && now.saturating_duration_since(idle_since) < probe_after_idle;
            if !unproven {
                // RSET: a clean transaction state, and proof the server is
                // still there before we commit a message to this connection.
                if let Err(error) = session.reset().await {
                    tracing::debug!(account = %account.name, %error, "a pooled session failed RSET; opening another");
                    self.close(session);
                    continue;
                }
            }
            self.counters
                .sessions_reused
                .fetch_add(1, Ordering::Relaxed);
            crate::metrics::global().upstream_session(&account.name, UpstreamSessionEvent::Reused);
            return Ok(PooledSession {
                session,
                account: sessions,
                counters: self.counters.clone(),
                reused: true,
                unproven,
                credentials,
                _permit: permit,
            });
        }
        // The version before the token is taken: if the credentials change
        // while the session logs in, it may have used the old token.
        // Twice: a change during one login is rare, two in a row rarer;
        // after that the delivery is deferred and retried.
        let metrics = crate::metrics::global();
        for _ in 0..2 {
            let credentials = self.broker.credentials_version(&account.name);
            let session = match open_session(&self.broker, account).await {
                Ok(session) => session,
                Err(error) => {
                    self.counters.open_failures.fetch_add(1, Ordering::Relaxed);
                    metrics.upstream_session(&account.name, UpstreamSessionEvent::OpenFailed);
                    return Err(error);
                }
            };
            self.counters
                .sessions_opened
                .fetch_add(1, Ordering::Relaxed);
            metrics.upstream_session(&account.name, UpstreamSessionEvent::Opened);
            if !self.credentials_current(&account.name, credentials) {
                tracing::info!(account = %account.name, "the account's credentials changed while a session logged in; closing it");
                self.close(session);
                continue;
            }
            return Ok(PooledSession {
                session,
                account: sessions,
                counters: self.counters.clone(),
                reused: false,
                unproven: false,
                credentials,
                _permit: permit,
            });
        }
        Err(UpstreamError::Broker(BrokerError::CredentialsChanged {
            account: account.name.clone(),
        }))
    }

    /// Returns a session for reuse, or closes it if it is spent.
    pub fn checkin(&self, pooled: PooledSession) {
        let PooledSession {
            session,
            account,
            credentials,
            _permit,
            ..
        } = pooled;
        if self.retired(&account, &session, Instant::now())
            || !self.credentials_current(&account.name, credentials)
        {
            self.close(session);
            return;
        }
        account.idle().push(IdleSession {
            session,
            idle_since: Instant::now(),
            credentials,
        });
        // The permit drops here, after the session is back in the idle
        // list, so a waiting checkout finds it.
    }

    /// Closes idle sessions unused for `max_idle` (the engine calls this
    /// now and then so idle connections do not hold server slots), and
    /// those whose account's credentials changed (the engine calls it at
    /// once then). Returns how many it closed.
    pub fn close_idle(&self) -> usize {
        let now = Instant::now();
        let mut closed = 0;
        for sessions in self.all_accounts() {
            let stale: Vec<IdleSession> = {
                let mut idle = sessions.idle();
                let (stale, keep) = idle.drain(..).partition(|i| {
                    now.saturating_duration_since(i.idle_since) >= self.config.max_idle
                        || self.retired(&sessions, &i.session, now)
                        || !self.credentials_current(&sessions.name, i.credentials)
                });
                *idle = keep;
                stale
            };
            closed += stale.len();
            for idle in stale {
                self.close(idle.session);
            }
        }
        closed
    }

    /// QUITs every idle session and waits for it (shutdown).
    pub async fn close_all(&self) {
        for sessions in self.all_accounts() {
            let idle: Vec<IdleSession> = sessions.idle().drain(..).collect();
            for idle in idle {
                self.counters
                    .sessions_closed
                    .fetch_add(1, Ordering::Relaxed);
                let _ = idle.session.quit().await;
            }
        }
    }

    fn all_accounts(&self) -> Vec<Arc<AccountSessions>> {
        let accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts.values().cloned().collect()
    }

    /// QUIT in the background: the answer changes nothing, and a slow
    /// server must not hold up a delivery.
    fn close(&self, session: Session) {
        self.counters
            .sessions_closed
            .fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = session.quit().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_keep_their_caps_and_generic_accounts_get_their_own() {
        let config = PoolConfig::default();
        let provider = SessionCaps {
            connections: 3,
            messages: 100,
        };
        assert_eq!(config.caps(ProviderKind::Microsoft), provider);
        assert_eq!(config.caps(ProviderKind::Google), provider);
        assert_eq!(
            config.caps(ProviderKind::Generic),
            SessionCaps {
                connections: 8,
                messages: 1000,
            }
        );
    }
}
