//! The token broker: hands out access tokens per account and keeps them
//! fresh (DESIGN.md contract 3).
//!
//! - One refresh per account however many deliveries wait: every caller
//!   takes the account's slot lock, the first one refreshes, the rest find
//!   the fresh token when their turn comes.
//! - A token is replaced `refresh_skew` before it expires (never later than
//!   half its lifetime), and a refresh that fails transiently falls back to
//!   the current token while it is still valid.
//! - A rotated refresh token is sealed and committed to the store before the
//!   new access token is handed out; when a response carries no refresh
//!   token, the old one is kept.
//! - `invalid_grant` moves the account to `NeedsConsent` in the store: no
//!   more requests (also after a restart) until a person consents again.
//! - Other failures back off exponentially, so a broken provider sees a
//!   handful of requests, not a storm.
//! - One refresh per account across processes too (`serve`, `token` called
//!   by msmtp, `send`, `account check` on one store): the refresher holds
//!   the account's refresh lease in the store; the others wait and take the
//!   token it commits. A provider that rotates refresh tokens and detects
//!   reuse revokes the whole grant when two refresh with the same one. The
//!   lease expires, so a crashed holder blocks nobody for long (on its own
//!   host not at all: its death is provable, see `instance`).
//! - A store error after a successful refresh cannot lose the rotated
//!   refresh token: the commit is retried; if the store stays down, the
//!   response is held in memory, the lease kept (nobody else refreshes with
//!   the refresh token it replaced) and the commit retried before anything
//!   else. The new access token is used only once committed.
//! - Changes made by other processes (revocation, lockdown, unlock, a new
//!   consent, a new key) move the account's credential epoch in the store;
//!   [`Broker::watch_credentials`] notices within its poll, drops the
//!   cached token and bumps [`Broker::credentials_version`], which retires
//!   the pooled sessions authenticated before (`delivery::pool`).

use crate::audit::AuditLog;
use crate::clock::{from_unix, now_unix, to_unix};
use crate::instance::Holder;
use crate::oauth::account::{Account, Endpoints};
use crate::oauth::discovery::{DiscoveryError, discover};
use crate::oauth::grant::{GrantRequest, TokenEndpoint, TokenError, TokenResponse, http_client};
use crate::oauth::preset::{GrantKind, ProviderKind};
use crate::secret::{Fingerprint, MasterKey, SealError, Secret};
use crate::store::{AccountState, Event, LeaseGrant, Store, StoreError, TokenRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Mutex, OnceCell, broadcast, watch};

/// Backoff after consecutive failures: 2 s doubling to at most 5 minutes.
const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How many times a lost compare-and-swap is retried before giving up.
const MAX_WRITE_RACES: usize = 3;
/// How long the cross-process refresh lease lasts: the token request may
/// take `HTTP_TIMEOUT` (30 s) and each try of its commit the store's busy
/// timeout (10 s); 60 s covers both with room. A holder that dies without
/// giving the lease back blocks the others this long at most.
const REFRESH_LEASE: Duration = Duration::from_secs(60);
/// How often a process waiting for another's refresh reads the account's
/// row again: SQLite cannot notify, a row read costs microseconds, and a
/// refresh takes a few hundred milliseconds, so waiters see it at once.
const REFRESH_WAIT_POLL: Duration = Duration::from_millis(100);
/// How long a waiter waits beyond one lease: a holder still holding it then
/// is renewing it (its commit is failing), and waiting more does not help.
const REFRESH_WAIT_SLACK: Duration = Duration::from_secs(5);
/// How long the commit of a refreshed token is retried before the caller
/// hears of it: a lock held by another program (a backup, a long
/// transaction) clears within a few busy timeouts (10 s each); a store
/// down longer is down, and the response stays held in memory.
const COMMIT_PATIENCE: Duration = Duration::from_secs(30);
/// Retries of that commit: 100 ms doubling to 2 s, so a brief lock costs
/// little delay and a long one few attempts.
const COMMIT_RETRY_FIRST: Duration = Duration::from_millis(100);
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(2);

/// A usable access token. Holds its generation so that [`Broker::invalidate`]
/// drops exactly this token and not a newer one another caller fetched.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub secret: Secret,
    pub expires_at: SystemTime,
    pub generation: i64,
}

impl AccessToken {
    pub fn fingerprint(&self) -> Fingerprint {
        self.secret.fingerprint()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no account named {0:?} is configured")]
    UnknownAccount(String),
    #[error(
        "account {account} has no token yet: give consent once with `oxirelay account login {account}` (or import a refresh token with `oxirelay account import-token {account}`)"
    )]
    NotConsented { account: String },
    #[error("account {account} needs consent again: {reason}")]
    NeedsConsent { account: String, reason: String },
    #[error(
        "account {account} was revoked{reason}; run `oxirelay account login {account}` to consent again"
    )]
    Revoked { account: String, reason: String },
    #[error("account {account} is failing ({reason}); next attempt {retry}")]
    BackingOff {
        account: String,
        reason: String,
        retry: String,
    },
    #[error("account {account}: {explanation}")]
    Token {
        account: String,
        explanation: String,
        #[source]
        source: TokenError,
    },
    #[error("account {account}: {source}")]
    Discovery {
        account: String,
        #[source]
        source: DiscoveryError,
    },
    #[error("account {account} has no token endpoint; set token_url or issuer")]
    NoTokenEndpoint { account: String },
    #[error("account {account}: the {grant} grant is not available in this version")]
    UnsupportedGrant { account: String, grant: GrantKind },
    #[error("account {account}: {reason}")]
    Assertion { account: String, reason: String },
    #[error("account {account}: {reason}")]
    UpstreamRejected { account: String, reason: String },
    #[error("account {account}: {source}")]
    Seal {
        account: String,
        #[source]
        source: SealError,
    },
    #[error(
        "account {account}: another process ({holder}) has been refreshing its token for {waited_secs} s without finishing; try again shortly (its lease ends by itself if that process died)"
    )]
    RefreshBusy {
        account: String,
        holder: String,
        waited_secs: u64,
    },
    #[error(
        "account {account}: the provider issued a new token but the store refused to save it ({source}); this process holds the rotated refresh token and retries the save before it uses the token. Keep it running and fix the store (disk space, permissions, a lock held by another program); if it stops first, the account may need `oxirelay account login {account}`"
    )]
    CommitPending {
        account: String,
        #[source]
        source: StoreError,
    },
    #[error(
        "account {account}: its credentials changed while it was in use (revoked, or a new consent or key); the work is retried with the new ones"
    )]
    CredentialsChanged { account: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BrokerError {
    /// Worth retrying later without a person doing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            BrokerError::BackingOff { .. }
            | BrokerError::Store(_)
            | BrokerError::UpstreamRejected { .. }
            | BrokerError::RefreshBusy { .. }
            | BrokerError::CommitPending { .. }
            | BrokerError::CredentialsChanged { .. } => true,
            BrokerError::Token { source, .. } => source.is_transient(),
            BrokerError::Discovery { source, .. } => {
                matches!(source, DiscoveryError::Failed { .. })
            }
            _ => false,
        }
    }

    /// How long the provider asked to be left alone (`Retry-After` on a
    /// `429` or `503`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BrokerError::Token { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    /// A person must consent (or re-consent) before this account works.
    pub fn needs_person(&self) -> bool {
        matches!(
            self,
            BrokerError::NotConsented { .. }
                | BrokerError::NeedsConsent { .. }
                | BrokerError::Revoked { .. }
        )
    }
}

/// One line for [`Broker::audit_all`]: what was done, to which account.
#[derive(Debug, Clone)]
pub struct AuditLine {
    pub action: String,
    pub account: Option<String>,
    pub detail: String,
}

/// What the broker tells listeners (the demo, the audit log, metrics).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerEvent {
    pub account: String,
    pub kind: BrokerEventKind,
    pub token_fingerprint: Option<Fingerprint>,
    pub expires_at: Option<i64>,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerEventKind {
    TokenIssued,
    RefreshFailed,
    NeedsConsent,
    Consented,
    TokenInvalidated,
    Revoked,
    Reinstated,
    NeedsAdmin,
    AdminResolved,
}

impl BrokerEventKind {
    fn as_str(self) -> &'static str {
        match self {
            BrokerEventKind::TokenIssued => "token.issued",
            BrokerEventKind::RefreshFailed => "token.refresh_failed",
            BrokerEventKind::NeedsConsent => "account.needs_consent",
            BrokerEventKind::Consented => "account.consented",
            BrokerEventKind::TokenInvalidated => "token.invalidated",
            BrokerEventKind::Revoked => "account.revoked",
            BrokerEventKind::Reinstated => "account.reinstated",
            BrokerEventKind::NeedsAdmin => "account.needs_admin",
            BrokerEventKind::AdminResolved => "account.admin_resolved",
        }
    }
}

struct Cached {
    token: AccessToken,
    refresh_at: SystemTime,
}

#[derive(Default)]
struct SlotState {
    cached: Option<Cached>,
    backoff_until: Option<Instant>,
    last_error: Option<String>,
    /// A token response whose commit failed: saved before anything else.
    pending: Option<PendingCommit>,
}

/// A refreshed token not yet committed (see the module header).
struct PendingCommit {
    /// The row it was obtained from (its credential epoch decides whether
    /// it may still be written).
    base: TokenRecord,
    response: TokenResponse,
    grant: &'static str,
    rotated: bool,
}

struct AccountSlot {
    account: Account,
    http: reqwest::Client,
    endpoints: OnceCell<Endpoints>,
    state: Mutex<SlotState>,
    /// How often this process has seen the account's credentials change;
    /// sessions authenticated under an older value are retired.
    credentials_version: AtomicU64,
    /// The store's credential epoch as this broker last saw it; `None`
    /// before the first look.
    known_epoch: std::sync::Mutex<Option<i64>>,
}

impl AccountSlot {
    fn known_epoch(&self) -> std::sync::MutexGuard<'_, Option<i64>> {
        // An Option stays consistent if a holder panicked: recover it.
        self.known_epoch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An account whose credentials another process changed, as
/// [`Broker::sync_credentials`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialChange {
    pub account: String,
    /// Its state now (`revoked`, `new` after unlock, `valid` after consent).
    pub state: AccountState,
    pub reason: Option<String>,
}

/// How [`Broker::take_refresh_lease`] ended.
enum LeaseWait {
    /// This broker holds the lease; `waited_since` (Unix seconds) if another
    /// process held it first.
    Taken { waited_since: Option<i64> },
    /// Another process refreshed meanwhile: its token.
    RefreshedElsewhere(Cached),
}

pub struct Broker {
    store: Arc<dyn Store>,
    key: Arc<MasterKey>,
    slots: HashMap<String, Arc<AccountSlot>>,
    events: broadcast::Sender<BrokerEvent>,
    audit: Option<Arc<AuditLog>>,
    /// Who the audit log names as the actor of this broker's actions.
    actor: String,
    /// Who this broker is when it holds a refresh lease.
    holder: Holder,
    /// Bumped with every credential change any account sees (wakes the
    /// engine to close the sessions it retired).
    credential_changes: watch::Sender<u64>,
    /// How long a refreshed token's commit is retried within one call.
    commit_patience: Duration,
}

/// What `revoke` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RevocationReport {
    pub account: String,
    /// Token kinds revoked at the provider ("refresh_token", "access_token").
    pub revoked_at_provider: Vec<&'static str>,
    /// Why revocation at the provider failed or was impossible, and what to do.
    pub provider_note: Option<String>,
    pub wiped_locally: bool,
}

impl Broker {
    pub fn new(store: Arc<dyn Store>, key: Arc<MasterKey>, accounts: Vec<Account>) -> Self {
        let slots = accounts
            .into_iter()
            .map(|account| {
                let slot = AccountSlot {
                    http: http_client(account.insecure_loopback),
                    endpoints: OnceCell::new(),
                    state: Mutex::new(SlotState::default()),
                    credentials_version: AtomicU64::new(0),
                    known_epoch: std::sync::Mutex::new(None),
                    account,
                };
                (slot.account.name.clone(), Arc::new(slot))
            })
            .collect();
        let (events, _) = broadcast::channel(256);
        Broker {
            store,
            key,
            slots,
            events,
            audit: None,
            actor: "relay".to_string(),
            holder: Holder::new_in_this_process(),
            credential_changes: watch::Sender::new(0),
            commit_patience: COMMIT_PATIENCE,
        }
    }

    /// How long the commit of a refreshed token is retried before the
    /// caller is told (and the token held for later); 30 s by default.
    pub fn with_commit_patience(mut self, patience: Duration) -> Self {
        self.commit_patience = patience;
        self
    }

    /// Records every event in `audit` too, naming `actor` ("relay", "cli:alice").
    pub fn with_audit(mut self, audit: Arc<AuditLog>, actor: &str) -> Self {
        self.audit = Some(audit);
        self.actor = actor.to_string();
        self
    }

    /// Revokes the account's tokens at the provider (RFC 7009, where the
    /// provider has it), wipes them locally and marks the account revoked:
    /// nothing is requested for it until `reinstate` or a new login.
    pub async fn revoke(&self, name: &str, reason: &str) -> Result<RevocationReport, BrokerError> {
        let slot = self.slot(name)?;
        let mut state = slot.state.lock().await;
        let account = &slot.account;
        let mut report = RevocationReport {
            account: name.to_string(),
            revoked_at_provider: Vec::new(),
            provider_note: None,
            wiped_locally: false,
        };
        let record = self.store.token_record(name).await?;
        let context = account.seal_context();
        let tokens: Vec<(Secret, &'static str)> = record
            .iter()
            .flat_map(|r| {
                [
                    (&r.refresh_token, "refresh_token"),
                    (&r.access_token, "access_token"),
                ]
            })
            .filter_map(|(sealed, hint)| {
                Some((self.key.open_secret(&context, sealed.as_ref()?).ok()?, hint))
            })
            .collect();
        let revoke_url = self
            .endpoints_of(slot)
            .await
            .ok()
            .and_then(|e| e.revoke.clone());
        match (&revoke_url, tokens.is_empty()) {
            (_, true) => {}
            (Some(url), false) => {
                let endpoint = self.token_endpoint_of(slot).await?;
                for (token, hint) in &tokens {
                    match crate::oauth::revoke::revoke(&slot.http, url, &endpoint, token, hint)
                        .await
                    {
                        Ok(()) => report.revoked_at_provider.push(hint),
                        Err(e) => report.provider_note = Some(e.to_string()),
                    }
                }
            }
            (None, false) => {
                report.provider_note = Some(
                    crate::oauth::revoke::manual_revocation_advice(account.preset.kind).to_string(),
                );
            }
        }
        for _ in 0..MAX_WRITE_RACES {
            let mut next = self
                .store
                .token_record(name)
                .await?
                .unwrap_or_else(|| TokenRecord::new(name));
            next.generation += 1;
            next.credential_epoch += 1;
            next.refresh_token = None;
            next.access_token = None;
            next.access_expires_at = None;
            next.access_refresh_at = None;
            next.state = AccountState::Revoked;
            next.state_reason = Some(reason.to_string());
            next.updated_at = now_unix();
            if self.store.save_token_record(&next).await? {
                report.wiped_locally = true;
                self.changed_here(slot, &mut state, next.credential_epoch);
                break;
            }
        }
        state.cached = None;
        state.backoff_until = None;
        // A refreshed token still waiting to be saved is the revoked grant's.
        self.drop_pending(name, &mut state).await;
        let detail = format!(
            "{reason}; revoked at the provider: {}",
            if report.revoked_at_provider.is_empty() {
                "none".to_string()
            } else {
                report.revoked_at_provider.join(", ")
            }
        );
        self.emit(account, BrokerEventKind::Revoked, None, None, detail)
            .await;
        Ok(report)
    }

    /// Makes a revoked account usable again: app-only grants fetch a new
    /// token at once; delegated grants need a new login (their tokens are gone).
    pub async fn reinstate(&self, name: &str, reason: &str) -> Result<(), BrokerError> {
        let slot = self.slot(name)?;
        {
            let mut state = slot.state.lock().await;
            for _ in 0..MAX_WRITE_RACES {
                let Some(mut record) = self.store.token_record(name).await? else {
                    break;
                };
                if record.state != AccountState::Revoked {
                    break;
                }
                record.generation += 1;
                record.credential_epoch += 1;
                record.state = AccountState::New;
                record.state_reason = None;
                record.consecutive_failures = 0;
                record.updated_at = now_unix();
                if self.store.save_token_record(&record).await? {
                    self.changed_here(slot, &mut state, record.credential_epoch);
                    break;
                }
            }
            state.cached = None;
            state.backoff_until = None;
        }
        self.emit(
            &slot.account,
            BrokerEventKind::Reinstated,
            None,
            None,
            reason.to_string(),
        )
        .await;
        Ok(())
    }

    /// Records an event that is not the broker's own (a message outcome) in
    /// the audit log, if there is one, under this broker's actor.
    pub async fn audit(&self, action: &str, account: Option<&str>, detail: &str) {
        self.audit_all(vec![AuditLine {
            action: action.to_string(),
            account: account.map(str::to_string),
            detail: detail.to_string(),
        }])
        .await;
    }

    /// Several lines, in order, in one write of the audit log.
    pub async fn audit_all(&self, lines: Vec<AuditLine>) {
        let Some(audit) = &self.audit else { return };
        let entries = lines
            .into_iter()
            .map(|line| crate::audit::AuditEntry {
                actor: self.actor.clone(),
                action: line.action,
                account: line.account,
                token_fingerprint: None,
                message_id: None,
                detail: line.detail,
            })
            .collect();
        if let Err(e) = audit.append_all_async(entries).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BrokerEvent> {
        self.events.subscribe()
    }

    pub fn account(&self, name: &str) -> Option<&Account> {
        self.slots.get(name).map(|slot| &slot.account)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.slots.values().map(|slot| &slot.account)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn slot(&self, name: &str) -> Result<&Arc<AccountSlot>, BrokerError> {
        self.slots
            .get(name)
            .ok_or_else(|| BrokerError::UnknownAccount(name.to_string()))
    }

    /// The endpoints of an account, discovered once if the config gives an
    /// issuer instead of URLs.
    pub async fn endpoints(&self, name: &str) -> Result<Endpoints, BrokerError> {
        let slot = self.slot(name)?;
        self.endpoints_of(slot).await.cloned()
    }

    async fn endpoints_of<'a>(&self, slot: &'a AccountSlot) -> Result<&'a Endpoints, BrokerError> {
        slot.endpoints
            .get_or_try_init(|| async {
                let account = &slot.account;
                let configured = account.endpoints.clone();
                match &account.issuer {
                    Some(issuer) if account.preset.kind == ProviderKind::Generic => {
                        let found = discover(&slot.http, issuer, account.insecure_loopback)
                            .await
                            .map_err(|source| BrokerError::Discovery {
                                account: account.name.clone(),
                                source,
                            })?;
                        // Explicit URLs in the config win over discovered ones.
                        Ok(Endpoints {
                            token: configured.token.or(found.token),
                            authorize: configured.authorize.or(found.authorize),
                            device: configured.device.or(found.device),
                            revoke: configured.revoke.or(found.revoke),
                            introspect: configured.introspect.or(found.introspect),
                            jwks: configured.jwks.or(found.jwks),
                            metadata: found.metadata,
                        })
                    }
                    _ => Ok(configured),
                }
            })
            .await
    }

    /// The token endpoint of an account with its client credentials.
    pub async fn token_endpoint(&self, name: &str) -> Result<TokenEndpoint, BrokerError> {
        let slot = self.slot(name)?;
        self.token_endpoint_of(slot).await
    }

    async fn token_endpoint_of(&self, slot: &AccountSlot) -> Result<TokenEndpoint, BrokerError> {
        let account = &slot.account;
        let endpoints = self.endpoints_of(slot).await?;
        let url = endpoints
            .token
            .clone()
            .ok_or_else(|| BrokerError::NoTokenEndpoint {
                account: account.name.clone(),
            })?;
        Ok(TokenEndpoint {
            url,
            client_id: account.client_id.clone(),
            client_secret: account.client_secret.clone(),
            client_auth: account.client_auth(&endpoints.metadata),
            insecure_loopback: account.insecure_loopback,
        })
    }

    pub fn http(&self, name: &str) -> Result<reqwest::Client, BrokerError> {
        Ok(self.slot(name)?.http.clone())
    }

    /// A valid access token for `name`, refreshing it first if it is due.
    pub async fn access_token(&self, name: &str) -> Result<AccessToken, BrokerError> {
        let slot = self.slot(name)?;
        let mut state = slot.state.lock().await;
        if let Some(pending) = state.pending.take() {
            // A refreshed token waits to be saved: save it first, and never
            // ask again with the refresh token it replaced.
            let cached = self
                .commit_pending(slot, &mut state, pending, self.commit_patience)
                .await?;
            let token = cached.token.clone();
            state.cached = Some(cached);
            return Ok(token);
        }
        let now = SystemTime::now();
        if let Some(cached) = &state.cached
            && now < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        // Another process (or our previous run) may have stored a fresh token.
        let record = self.store.token_record(name).await?;
        if let Some(record) = &record {
            slot.known_epoch().get_or_insert(record.credential_epoch);
            self.refuse_if_dead(&slot.account, record)?;
            if let Some(stored) = self.usable_stored_token(&slot.account, record, now)? {
                let token = stored.token.clone();
                state.cached = Some(stored);
                return Ok(token);
            }
        }
        if let Some(until) = state.backoff_until
            && Instant::now() < until
        {
            if let Some(still_valid) = state.cached.as_ref().filter(|c| now < c.token.expires_at) {
                return Ok(still_valid.token.clone());
            }
            return Err(BrokerError::BackingOff {
                account: name.to_string(),
                reason: state.last_error.clone().unwrap_or_default(),
                retry: format!(
                    "in {}s",
                    until.saturating_duration_since(Instant::now()).as_secs()
                ),
            });
        }
        let waited_since = match self.take_refresh_lease(slot).await? {
            LeaseWait::RefreshedElsewhere(cached) => {
                let token = cached.token.clone();
                state.cached = Some(cached);
                state.backoff_until = None;
                return Ok(token);
            }
            LeaseWait::Taken { waited_since } => waited_since,
        };
        let result = self
            .refresh_under_lease(slot, &mut state, waited_since)
            .await;
        if state.pending.is_none() {
            self.release_refresh_lease(name).await;
        }
        match result {
            Ok(cached) => {
                state.backoff_until = None;
                state.last_error = None;
                let token = cached.token.clone();
                state.cached = Some(cached);
                Ok(token)
            }
            // Not this process's failure to count: the store, another
            // process's refresh, a change of credentials.
            Err(
                error @ (BrokerError::CommitPending { .. }
                | BrokerError::RefreshBusy { .. }
                | BrokerError::CredentialsChanged { .. }
                | BrokerError::BackingOff { .. }),
            ) => {
                state.cached = None;
                Err(error)
            }
            Err(error) => {
                if error.is_transient() {
                    let failures = self.note_failure(name, &error).await;
                    // Exponential, but never sooner than the provider asked.
                    let wait = backoff_delay(failures).max(error.retry_after().unwrap_or_default());
                    state.backoff_until = Some(Instant::now() + wait);
                    state.last_error = Some(error.to_string());
                    // Refreshing early leaves room for this: use the current
                    // token while it is still valid.
                    if let Some(still_valid) =
                        state.cached.as_ref().filter(|c| now < c.token.expires_at)
                    {
                        return Ok(still_valid.token.clone());
                    }
                } else if !error.needs_person() {
                    self.note_failure(name, &error).await;
                    state.backoff_until = Some(Instant::now() + BACKOFF_MAX);
                    state.last_error = Some(error.to_string());
                }
                state.cached = None;
                Err(error)
            }
        }
    }

    /// Takes the account's refresh lease, waiting while another process
    /// holds it; returns early with that process's token if it committed
    /// one meanwhile, or with its verdict if it found the grant dead.
    async fn take_refresh_lease(&self, slot: &AccountSlot) -> Result<LeaseWait, BrokerError> {
        let account = &slot.account;
        let name = &account.name;
        let started = Instant::now();
        let started_unix = now_unix();
        let lease_secs = i64::try_from(REFRESH_LEASE.as_secs()).unwrap_or(i64::MAX);
        let mut take_over: Option<String> = None;
        let mut waited = false;
        loop {
            let now = now_unix();
            let grant = self
                .store
                .acquire_refresh_lease(
                    name,
                    &self.holder,
                    now,
                    now + lease_secs,
                    take_over.as_deref(),
                )
                .await?;
            match grant {
                LeaseGrant::Granted => {
                    return Ok(LeaseWait::Taken {
                        waited_since: waited.then_some(started_unix),
                    });
                }
                LeaseGrant::HeldBy { holder, .. } => {
                    if take_over.as_deref() != Some(holder.id.as_str()) && holder.is_provably_gone()
                    {
                        tracing::warn!(account = %name, holder = %holder.id, "the process that was refreshing this account's token is gone; taking over its lease");
                        take_over = Some(holder.id);
                        continue;
                    }
                    if !waited {
                        tracing::debug!(account = %name, holder = %holder.id, "another process is refreshing the token; waiting for it");
                        waited = true;
                    }
                    if started.elapsed() >= REFRESH_LEASE + REFRESH_WAIT_SLACK {
                        return Err(BrokerError::RefreshBusy {
                            account: name.clone(),
                            holder: holder.id,
                            waited_secs: started.elapsed().as_secs(),
                        });
                    }
                }
            }
            tokio::time::sleep(REFRESH_WAIT_POLL).await;
            if let Some(record) = self.store.token_record(name).await? {
                self.refuse_if_dead(account, &record)?;
                if let Some(stored) =
                    self.usable_stored_token(account, &record, SystemTime::now())?
                {
                    return Ok(LeaseWait::RefreshedElsewhere(stored));
                }
            }
        }
    }

    /// Gives the refresh lease back; a failure only delays the others
    /// until it expires.
    async fn release_refresh_lease(&self, name: &str) {
        if let Err(error) = self
            .store
            .release_refresh_lease(name, &self.holder.id)
            .await
        {
            tracing::warn!(account = %name, %error, "cannot give the refresh lease back; other processes wait until it expires");
        }
    }

    /// Extends the refresh lease while a commit is being retried, so that
    /// nobody refreshes with the refresh token this one replaced.
    async fn renew_refresh_lease(&self, name: &str) {
        let now = now_unix();
        let until = now + i64::try_from(REFRESH_LEASE.as_secs()).unwrap_or(i64::MAX);
        match self
            .store
            .acquire_refresh_lease(name, &self.holder, now, until, None)
            .await
        {
            Ok(LeaseGrant::Granted) => {}
            Ok(LeaseGrant::HeldBy { holder, .. }) => {
                tracing::error!(account = %name, holder = %holder.id, "the refresh lease expired while a refreshed token waited to be saved, and another process took it; if it refreshes with the replaced refresh token, the provider may revoke the grant");
            }
            Err(error) => {
                tracing::warn!(account = %name, %error, "cannot renew the refresh lease");
            }
        }
    }

    /// With the lease held: refresh, unless another process did (or found
    /// the grant dead, or failed) just before the lease came to us.
    async fn refresh_under_lease(
        &self,
        slot: &AccountSlot,
        state: &mut SlotState,
        waited_since: Option<i64>,
    ) -> Result<Cached, BrokerError> {
        let account = &slot.account;
        let record = self.store.token_record(&account.name).await?;
        if let Some(record) = &record {
            self.refuse_if_dead(account, record)?;
            if let Some(stored) = self.usable_stored_token(account, record, SystemTime::now())? {
                return Ok(stored);
            }
            // The holder we waited for failed: its backoff is ours too, or
            // every waiting process would ask a failing provider in turn.
            if let Some(since) = waited_since
                && record.state == AccountState::Failing
                && record.last_failure_at.is_some_and(|at| at >= since)
            {
                return Err(BrokerError::BackingOff {
                    account: account.name.clone(),
                    reason: record.state_reason.clone().unwrap_or_default(),
                    retry: "shortly (another process's refresh just failed)".to_string(),
                });
            }
        }
        let record = record.unwrap_or_else(|| TokenRecord::new(&account.name));
        self.refresh(slot, state, record).await
    }

    /// Retries, once each, the commits the store refused earlier (the
    /// credential watcher calls this every poll).
    async fn retry_pending_commits(&self) {
        for slot in self.slots.values() {
            let mut state = slot.state.lock().await;
            let Some(pending) = state.pending.take() else {
                continue;
            };
            match self
                .commit_pending(slot, &mut state, pending, Duration::ZERO)
                .await
            {
                Ok(cached) => state.cached = Some(cached),
                Err(error) => {
                    tracing::debug!(account = %slot.account.name, %error, "the refreshed token is still not saved")
                }
            }
        }
    }

    /// Commits the held token response; on success gives the lease back.
    async fn commit_pending(
        &self,
        slot: &AccountSlot,
        state: &mut SlotState,
        pending: PendingCommit,
        patience: Duration,
    ) -> Result<Cached, BrokerError> {
        self.renew_refresh_lease(&slot.account.name).await;
        let result = self.commit_refresh(slot, state, pending, patience).await;
        if state.pending.is_none() {
            self.release_refresh_lease(&slot.account.name).await;
        }
        result
    }

    /// Contract 4: the upstream refused `token`; forget it so that the next
    /// call fetches a new one. A newer token is left alone.
    pub async fn invalidate(&self, name: &str, token: &AccessToken) -> Result<(), BrokerError> {
        let slot = self.slot(name)?;
        crate::metrics::global().upstream_token_refused(name);
        let mut state = slot.state.lock().await;
        if state
            .cached
            .as_ref()
            .is_some_and(|c| c.token.generation == token.generation)
        {
            state.cached = None;
        }
        for _ in 0..MAX_WRITE_RACES {
            let Some(mut record) = self.store.token_record(name).await? else {
                return Ok(());
            };
            if record.generation != token.generation || record.access_token.is_none() {
                return Ok(());
            }
            record.access_token = None;
            record.access_expires_at = None;
            record.access_refresh_at = None;
            record.generation += 1;
            record.updated_at = now_unix();
            if self.store.save_token_record(&record).await? {
                self.emit(
                    &slot.account,
                    BrokerEventKind::TokenInvalidated,
                    Some(token.fingerprint()),
                    None,
                    "the upstream server refused the token".to_string(),
                )
                .await;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Contract 4, second half: the upstream refused a freshly issued token
    /// too. Drop it and mark the account failing (with backoff) so that
    /// deliveries defer instead of hammering the provider.
    pub async fn report_upstream_rejection(
        &self,
        name: &str,
        token: &AccessToken,
        reason: &str,
    ) -> Result<(), BrokerError> {
        crate::metrics::global().upstream_auth_failed(name);
        self.invalidate(name, token).await?;
        let error = BrokerError::UpstreamRejected {
            account: name.to_string(),
            reason: reason.to_string(),
        };
        let failures = self.note_failure(name, &error).await;
        let slot = self.slot(name)?;
        let mut state = slot.state.lock().await;
        state.backoff_until = Some(Instant::now() + backoff_delay(failures));
        state.last_error = Some(error.to_string());
        state.cached = None;
        Ok(())
    }

    /// The provider refuses the account for a reason only its administrator
    /// can fix, which `reason` spells out. Tokens are kept (they are fine);
    /// the state and its reason tell `account list` and `doctor`. An event
    /// is emitted only when the state or the reason is new, so retries do
    /// not repeat the alert. Returns whether anything changed.
    pub async fn report_needs_admin(&self, name: &str, reason: &str) -> Result<bool, BrokerError> {
        let slot = self.slot(name)?;
        for _ in 0..MAX_WRITE_RACES {
            let mut record = self
                .store
                .token_record(name)
                .await?
                .unwrap_or_else(|| TokenRecord::new(name));
            if matches!(
                record.state,
                AccountState::NeedsConsent | AccountState::Revoked
            ) || (record.state == AccountState::NeedsAdmin
                && record.state_reason.as_deref() == Some(reason))
            {
                return Ok(false);
            }
            record.generation += 1;
            record.state = AccountState::NeedsAdmin;
            record.state_reason = Some(reason.to_string());
            record.last_failure_at = Some(now_unix());
            record.updated_at = now_unix();
            if self.store.save_token_record(&record).await? {
                // The cached token's generation is now behind the row's:
                // drop it so the next use reads the row again.
                slot.state.lock().await.cached = None;
                tracing::warn!(account = %name, "{reason}");
                self.emit(
                    &slot.account,
                    BrokerEventKind::NeedsAdmin,
                    None,
                    None,
                    reason.to_string(),
                )
                .await;
                return Ok(true);
            }
        }
        Err(StoreError::Corrupt("the account row kept changing during the write".into()).into())
    }

    /// The administrator's step was taken, as a delivery just showed: back
    /// to valid, if the account needs an administrator for a reason that
    /// `resolved` accepts. Returns whether the state changed.
    pub async fn clear_needs_admin(
        &self,
        name: &str,
        resolved: impl Fn(&str) -> bool,
    ) -> Result<bool, BrokerError> {
        let slot = self.slot(name)?;
        for _ in 0..MAX_WRITE_RACES {
            let Some(mut record) = self.store.token_record(name).await? else {
                return Ok(false);
            };
            if record.state != AccountState::NeedsAdmin
                || !resolved(record.state_reason.as_deref().unwrap_or_default())
            {
                return Ok(false);
            }
            let was = record.state_reason.take().unwrap_or_default();
            record.generation += 1;
            record.state = AccountState::Valid;
            record.last_success_at = Some(now_unix());
            record.updated_at = now_unix();
            if self.store.save_token_record(&record).await? {
                slot.state.lock().await.cached = None;
                self.emit(
                    &slot.account,
                    BrokerEventKind::AdminResolved,
                    None,
                    None,
                    format!("resolved: {was}"),
                )
                .await;
                return Ok(true);
            }
        }
        Err(StoreError::Corrupt("the account row kept changing during the write".into()).into())
    }

    /// Stores the tokens of a fresh consent (authorization code, device code,
    /// or an imported refresh token) and makes the account usable again.
    pub async fn store_consent(
        &self,
        name: &str,
        response: TokenResponse,
    ) -> Result<AccessToken, BrokerError> {
        let slot = self.slot(name)?;
        let mut state = slot.state.lock().await;
        for _ in 0..MAX_WRITE_RACES {
            let record = self
                .store
                .token_record(name)
                .await?
                .unwrap_or_else(|| TokenRecord::new(name));
            let mut next = self.record_from_response(&slot.account, record, &response);
            next.consented_at = Some(now_unix());
            next.credential_epoch += 1;
            if self.store.save_token_record(&next).await? {
                self.changed_here(slot, &mut state, next.credential_epoch);
                self.drop_pending(name, &mut state).await;
                let cached = self.cached_from(&slot.account, &next, &response);
                let token = cached.token.clone();
                state.cached = Some(cached);
                state.backoff_until = None;
                state.last_error = None;
                self.emit(
                    &slot.account,
                    BrokerEventKind::Consented,
                    Some(token.fingerprint()),
                    next.access_expires_at,
                    format!(
                        "granted scope: {}",
                        next.granted_scope.as_deref().unwrap_or("(as requested)")
                    ),
                )
                .await;
                return Ok(token);
            }
        }
        Err(StoreError::Corrupt("the account row kept changing during the write".into()).into())
    }

    /// Seals a Google service-account key into the store, after checking that
    /// it signs an assertion.
    pub async fn import_service_account_key(
        &self,
        name: &str,
        key_json: Secret,
    ) -> Result<(), BrokerError> {
        let slot = self.slot(name)?;
        let account = &slot.account;
        crate::oauth::jwt_bearer::sign_assertion(
            &key_json,
            &account.user,
            &account.scopes,
            "https://oauth2.googleapis.com/token",
        )
        .map_err(|e| BrokerError::Assertion {
            account: name.to_string(),
            reason: e.to_string(),
        })?;
        let sealed = self.key.seal_secret(&account.seal_context(), &key_json);
        self.store
            .put_sealed_secret(name, crate::oauth::account::SERVICE_ACCOUNT_KEY, &sealed)
            .await?;
        // Tokens minted with the old key (which may be why it was replaced)
        // go, here and in every running process.
        self.announce_credential_change(name).await
    }

    /// Moves the account's credential epoch without changing its tokens, so
    /// every running process drops its cached token and its pooled sessions
    /// (a re-sealed store after `rotate-key`, a new service-account key).
    pub async fn announce_credential_change(&self, name: &str) -> Result<(), BrokerError> {
        let slot = self.slot(name)?;
        let mut state = slot.state.lock().await;
        for _ in 0..MAX_WRITE_RACES {
            let mut record = self
                .store
                .token_record(name)
                .await?
                .unwrap_or_else(|| TokenRecord::new(name));
            record.generation += 1;
            record.credential_epoch += 1;
            record.updated_at = now_unix();
            if self.store.save_token_record(&record).await? {
                self.changed_here(slot, &mut state, record.credential_epoch);
                state.backoff_until = None;
                return Ok(());
            }
        }
        Err(StoreError::Corrupt("the account row kept changing during the write".into()).into())
    }

    /// Forgets a refreshed token that waited to be saved (the grant it
    /// belongs to was just replaced or revoked) and the lease it held.
    async fn drop_pending(&self, name: &str, state: &mut SlotState) {
        if state.pending.take().is_some() {
            self.release_refresh_lease(name).await;
        }
    }

    /// This broker changed the account's credentials (epoch `epoch` is now
    /// in the store): forget the cached token, retire the sessions.
    fn changed_here(&self, slot: &AccountSlot, state: &mut SlotState, epoch: i64) {
        *slot.known_epoch() = Some(epoch);
        self.retire_credentials(slot, state);
    }

    /// Drops the cached token, then bumps the version, under the slot's
    /// lock: a session that took the old token took the old version too.
    fn retire_credentials(&self, slot: &AccountSlot, state: &mut SlotState) {
        state.cached = None;
        slot.credentials_version.fetch_add(1, Ordering::SeqCst);
        self.credential_changes.send_modify(|n| *n += 1);
    }

    /// How often this process has seen the credentials of `name` change. A
    /// session authenticated under an older value must not be used again.
    pub fn credentials_version(&self, name: &str) -> u64 {
        self.slots
            .get(name)
            .map_or(0, |slot| slot.credentials_version.load(Ordering::SeqCst))
    }

    /// Changes whenever any account's credentials version does.
    pub fn credential_changes(&self) -> watch::Receiver<u64> {
        self.credential_changes.subscribe()
    }

    /// Looks at the store for credential changes made by other processes
    /// (see the module header); returns the accounts that changed since the
    /// last look. The first look only learns the epochs. Also retries the
    /// commit of refreshed tokens the store refused before.
    pub async fn sync_credentials(&self) -> Result<Vec<CredentialChange>, BrokerError> {
        self.retry_pending_commits().await;
        let epochs = self.store.credential_epochs().await?;
        let mut changes = Vec::new();
        for slot in self.slots.values() {
            let name = &slot.account.name;
            let stored = epochs.get(name).copied().unwrap_or(0);
            let moved = {
                let mut known = slot.known_epoch();
                let moved = known.is_some_and(|k| k != stored);
                *known = Some(stored);
                moved
            };
            if !moved {
                continue;
            }
            {
                let mut state = slot.state.lock().await;
                self.retire_credentials(slot, &mut state);
                state.backoff_until = None;
                state.last_error = None;
            }
            let record = self
                .store
                .token_record(name)
                .await?
                .unwrap_or_else(|| TokenRecord::new(name));
            tracing::info!(account = %name, state = %record.state, "the account's credentials changed in the store; cached token dropped, its sessions retired");
            changes.push(CredentialChange {
                account: name.clone(),
                state: record.state,
                reason: record.state_reason,
            });
        }
        Ok(changes)
    }

    /// Calls [`Broker::sync_credentials`] every `poll` (or when the store
    /// says something changed) until `stop`, telling `on_change` of each
    /// change. `serve` runs this.
    pub async fn watch_credentials(
        &self,
        poll: Duration,
        mut stop: watch::Receiver<bool>,
        mut on_change: impl FnMut(&CredentialChange),
    ) {
        loop {
            match self.sync_credentials().await {
                Ok(changes) => changes.iter().for_each(&mut on_change),
                Err(error) => {
                    tracing::warn!(%error, "cannot look for credential changes in the store; looking again shortly")
                }
            }
            tokio::select! {
                _ = self.store.wait_for_credential_change(poll) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Replaces the stored refresh token (migration from another tool).
    pub async fn import_refresh_token(
        &self,
        name: &str,
        refresh_token: Secret,
    ) -> Result<(), BrokerError> {
        let slot = self.slot(name)?;
        let mut state = slot.state.lock().await;
        for _ in 0..MAX_WRITE_RACES {
            let mut record = self
                .store
                .token_record(name)
                .await?
                .unwrap_or_else(|| TokenRecord::new(name));
            record.generation += 1;
            record.refresh_token = Some(
                self.key
                    .seal_secret(&slot.account.seal_context(), &refresh_token),
            );
            record.access_token = None;
            record.access_expires_at = None;
            record.access_refresh_at = None;
            record.state = AccountState::Valid;
            record.state_reason = None;
            record.consecutive_failures = 0;
            record.consented_at = Some(now_unix());
            record.updated_at = now_unix();
            record.credential_epoch += 1;
            if self.store.save_token_record(&record).await? {
                self.changed_here(slot, &mut state, record.credential_epoch);
                state.backoff_until = None;
                self.drop_pending(name, &mut state).await;
                return Ok(());
            }
        }
        Err(StoreError::Corrupt("the account row kept changing during the write".into()).into())
    }

    fn refuse_if_dead(&self, account: &Account, record: &TokenRecord) -> Result<(), BrokerError> {
        match record.state {
            AccountState::NeedsConsent => Err(BrokerError::NeedsConsent {
                account: account.name.clone(),
                reason: record.state_reason.clone().unwrap_or_default(),
            }),
            AccountState::Revoked => Err(BrokerError::Revoked {
                account: account.name.clone(),
                reason: record
                    .state_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
            }),
            _ => Ok(()),
        }
    }

    fn usable_stored_token(
        &self,
        account: &Account,
        record: &TokenRecord,
        now: SystemTime,
    ) -> Result<Option<Cached>, BrokerError> {
        let (Some(sealed), Some(expires_at), Some(refresh_at)) = (
            &record.access_token,
            record.access_expires_at,
            record.access_refresh_at,
        ) else {
            return Ok(None);
        };
        if now >= from_unix(refresh_at) {
            return Ok(None);
        }
        let secret = self
            .key
            .open_secret(&account.seal_context(), sealed)
            .map_err(|source| BrokerError::Seal {
                account: account.name.clone(),
                source,
            })?;
        Ok(Some(Cached {
            token: AccessToken {
                secret,
                expires_at: from_unix(expires_at),
                generation: record.generation,
            },
            refresh_at: from_unix(refresh_at),
        }))
    }

    /// Asks the token endpoint for a new access token and commits it.
    async fn refresh(
        &self,
        slot: &AccountSlot,
        state: &mut SlotState,
        record: TokenRecord,
    ) -> Result<Cached, BrokerError> {
        let account = &slot.account;
        let endpoint = self.token_endpoint_of(slot).await?;
        let refresh_token = match account.grant {
            GrantKind::AuthorizationCode | GrantKind::DeviceCode => {
                let sealed =
                    record
                        .refresh_token
                        .as_ref()
                        .ok_or_else(|| BrokerError::NotConsented {
                            account: account.name.clone(),
                        })?;
                Some(
                    self.key
                        .open_secret(&account.seal_context(), sealed)
                        .map_err(|source| BrokerError::Seal {
                            account: account.name.clone(),
                            source,
                        })?,
                )
            }
            GrantKind::ClientCredentials | GrantKind::JwtBearer => None,
        };
        let assertion = match account.grant {
            GrantKind::JwtBearer => Some(self.jwt_assertion(account, &endpoint).await?),
            _ => None,
        };
        let grant = match (&refresh_token, &assertion) {
            (Some(refresh_token), _) => GrantRequest::RefreshToken { refresh_token },
            (None, Some(assertion)) => GrantRequest::JwtBearer { assertion },
            (None, None) => GrantRequest::ClientCredentials {
                scopes: &account.scopes,
            },
        };
        tracing::debug!(account = %account.name, grant = grant.grant_type(), "requesting a token");
        let metrics = crate::metrics::global();
        metrics.token_request(&account.name);
        let response = match endpoint.request(&slot.http, &grant).await {
            Ok(response) => response,
            Err(source) => {
                metrics.token_request_failed(&account.name, failure_reason(&source));
                return Err(self.token_failure(account, record, source).await);
            }
        };
        let pending = PendingCommit {
            rotated: response.refresh_token.is_some() && refresh_token.is_some(),
            grant: grant.grant_type(),
            base: record,
            response,
        };
        self.commit_refresh(slot, state, pending, self.commit_patience)
            .await
    }

    /// Commits a token response (contract 3: before its access token is
    /// used). Lost races build on the newer row, unless the account's
    /// credentials changed meanwhile (revoked, a new consent): then the
    /// response belongs to a grant that is no longer the account's and is
    /// dropped. Store errors are retried for `patience`; after that the
    /// response is kept in `state.pending` (see the module header).
    async fn commit_refresh(
        &self,
        slot: &AccountSlot,
        state: &mut SlotState,
        pending: PendingCommit,
        patience: Duration,
    ) -> Result<Cached, BrokerError> {
        let account = &slot.account;
        let PendingCommit {
            mut base,
            response,
            grant,
            rotated,
        } = pending;
        let started = Instant::now();
        let mut delay = COMMIT_RETRY_FIRST;
        let mut races = 0;
        loop {
            let next = self.record_from_response(account, base.clone(), &response);
            let error = match self.store.save_token_record(&next).await {
                Ok(true) => {
                    let cached = self.cached_from(account, &next, &response);
                    tracing::info!(
                        account = %account.name,
                        token = %cached.token.fingerprint(),
                        rotated,
                        "access token issued"
                    );
                    self.emit(
                        account,
                        BrokerEventKind::TokenIssued,
                        Some(cached.token.fingerprint()),
                        next.access_expires_at,
                        format!("grant {grant}"),
                    )
                    .await;
                    return Ok(cached);
                }
                // Someone else wrote meanwhile (another process, a consent).
                Ok(false) => match self.store.token_record(&account.name).await {
                    Ok(current) => {
                        let current = current.unwrap_or_else(|| TokenRecord::new(&account.name));
                        if current.credential_epoch != base.credential_epoch
                            || matches!(
                                current.state,
                                AccountState::Revoked | AccountState::NeedsConsent
                            )
                        {
                            tracing::warn!(account = %account.name, "the account's credentials changed while its token was refreshed; the refreshed token is dropped");
                            self.refuse_if_dead(account, &current)?;
                            return Err(BrokerError::CredentialsChanged {
                                account: account.name.clone(),
                            });
                        }
                        base = current;
                        races += 1;
                        if races <= MAX_WRITE_RACES {
                            continue;
                        }
                        races = 0;
                        StoreError::Corrupt("the account row kept changing during the write".into())
                    }
                    Err(error) => error,
                },
                Err(error) => error,
            };
            if started.elapsed() >= patience {
                tracing::error!(account = %account.name, %error, "cannot save a refreshed token; it is held in memory and the save retried");
                state.pending = Some(PendingCommit {
                    base,
                    response,
                    grant,
                    rotated,
                });
                return Err(BrokerError::CommitPending {
                    account: account.name.clone(),
                    source: error,
                });
            }
            tracing::warn!(account = %account.name, %error, ?delay, "cannot save a refreshed token; retrying (it is not used before it is saved)");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(COMMIT_RETRY_MAX);
            self.renew_refresh_lease(&account.name).await;
        }
    }

    /// The service-account key: the config's reference, else the copy sealed
    /// in the store by `account import-key`.
    async fn service_account_key(&self, account: &Account) -> Result<Secret, BrokerError> {
        if let Some(key) = &account.service_account_key {
            return Ok(key.clone());
        }
        let sealed = self
            .store
            .sealed_secret(&account.name, crate::oauth::account::SERVICE_ACCOUNT_KEY)
            .await?
            .ok_or_else(|| BrokerError::Assertion {
                account: account.name.clone(),
                reason: format!(
                    "no service-account key: run `oxirelay account import-key {} < key.json` (it is stored sealed), or set service_account_key",
                    account.name
                ),
            })?;
        self.key
            .open_secret(&account.seal_context(), &sealed)
            .map_err(|source| BrokerError::Seal {
                account: account.name.clone(),
                source,
            })
    }

    async fn jwt_assertion(
        &self,
        account: &Account,
        endpoint: &TokenEndpoint,
    ) -> Result<Secret, BrokerError> {
        let key = self.service_account_key(account).await?;
        crate::oauth::jwt_bearer::sign_assertion(
            &key,
            &account.user,
            &account.scopes,
            endpoint.url.as_str(),
        )
        .map(|assertion| assertion.jwt)
        .map_err(|e| BrokerError::Assertion {
            account: account.name.clone(),
            reason: e.to_string(),
        })
    }

    fn record_from_response(
        &self,
        account: &Account,
        mut record: TokenRecord,
        response: &TokenResponse,
    ) -> TokenRecord {
        let context = account.seal_context();
        let received = to_unix(response.received_at);
        // Without expires_in, assume the common one hour (RFC 6749 leaves it
        // optional; every provider we know sends it).
        let lifetime = response.expires_in.unwrap_or(Duration::from_secs(3600));
        let skew = account.refresh_skew.min(lifetime / 2);
        record.generation += 1;
        record.access_token = Some(self.key.seal_secret(&context, &response.access_token));
        record.access_expires_at = Some(received + lifetime.as_secs() as i64);
        record.access_refresh_at = Some(received + (lifetime - skew).as_secs() as i64);
        if let Some(rotated) = &response.refresh_token {
            record.refresh_token = Some(self.key.seal_secret(&context, rotated));
        }
        if response.scope.is_some() {
            record.granted_scope = response.scope.clone();
        }
        // A new token does not undo an administrator's setting at the
        // provider: that state ends when a delivery shows it has changed.
        if record.state != AccountState::NeedsAdmin {
            record.state = AccountState::Valid;
            record.state_reason = None;
        }
        record.consecutive_failures = 0;
        record.last_success_at = Some(received);
        record.updated_at = now_unix();
        record
    }

    fn cached_from(
        &self,
        _account: &Account,
        record: &TokenRecord,
        response: &TokenResponse,
    ) -> Cached {
        Cached {
            token: AccessToken {
                secret: response.access_token.clone(),
                expires_at: from_unix(record.access_expires_at.unwrap_or_default()),
                generation: record.generation,
            },
            refresh_at: from_unix(record.access_refresh_at.unwrap_or_default()),
        }
    }

    async fn token_failure(
        &self,
        account: &Account,
        record: TokenRecord,
        source: TokenError,
    ) -> BrokerError {
        let explanation = match source.oauth_error() {
            Some(oauth) => crate::oauth::explain::explain(oauth, &account.name),
            None => source.to_string(),
        };
        if source.oauth_error().is_some_and(|e| e.needs_consent()) {
            let error = BrokerError::NeedsConsent {
                account: account.name.clone(),
                reason: explanation.clone(),
            };
            let mut next = record;
            next.generation += 1;
            next.state = AccountState::NeedsConsent;
            next.state_reason = Some(explanation.clone());
            next.access_token = None;
            next.access_expires_at = None;
            next.access_refresh_at = None;
            next.last_failure_at = Some(now_unix());
            next.updated_at = now_unix();
            if let Err(e) = self.store.save_token_record(&next).await {
                tracing::error!(account = %account.name, error = %e, "cannot record that the account needs consent");
            }
            tracing::warn!(account = %account.name, "{error}");
            self.emit(
                account,
                BrokerEventKind::NeedsConsent,
                None,
                None,
                explanation,
            )
            .await;
            return error;
        }
        BrokerError::Token {
            account: account.name.clone(),
            explanation,
            source,
        }
    }

    /// Records a failure in the store and returns the number in a row.
    async fn note_failure(&self, name: &str, error: &BrokerError) -> u32 {
        let Some(slot) = self.slots.get(name) else {
            return 1;
        };
        let mut failures = 1;
        for _ in 0..MAX_WRITE_RACES {
            let Ok(current) = self.store.token_record(name).await else {
                break;
            };
            let mut record = current.unwrap_or_else(|| TokenRecord::new(name));
            record.generation += 1;
            record.consecutive_failures += 1;
            failures = u32::try_from(record.consecutive_failures).unwrap_or(u32::MAX);
            if record.state != AccountState::NeedsConsent && record.state != AccountState::Revoked {
                record.state = AccountState::Failing;
            }
            record.state_reason = Some(error.to_string());
            record.last_failure_at = Some(now_unix());
            record.updated_at = now_unix();
            if matches!(self.store.save_token_record(&record).await, Ok(true)) {
                break;
            }
        }
        tracing::warn!(account = %name, failures, "{error}");
        self.emit(
            &slot.account,
            BrokerEventKind::RefreshFailed,
            None,
            None,
            error.to_string(),
        )
        .await;
        failures
    }

    async fn emit(
        &self,
        account: &Account,
        kind: BrokerEventKind,
        token_fingerprint: Option<Fingerprint>,
        expires_at: Option<i64>,
        detail: String,
    ) {
        let event = Event {
            at: now_unix(),
            kind: kind.as_str().to_string(),
            account: Some(account.name.clone()),
            message_id: None,
            detail: match token_fingerprint {
                Some(fp) => format!("{detail} (token {fp})"),
                None => detail.clone(),
            },
        };
        if let Err(e) = self.store.record_event(&event).await {
            tracing::error!(error = %e, "cannot record an event");
        }
        if let Some(audit) = &self.audit {
            let entry = crate::audit::AuditEntry {
                actor: self.actor.clone(),
                action: kind.as_str().to_string(),
                account: Some(account.name.clone()),
                token_fingerprint: token_fingerprint.map(|f| f.to_string()),
                message_id: None,
                detail: detail.clone(),
            };
            if let Err(e) = audit.append_async(entry).await {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
        // Nobody listening is fine.
        let _ = self.events.send(BrokerEvent {
            account: account.name.clone(),
            kind,
            token_fingerprint,
            expires_at,
            detail,
        });
    }
}

/// The `reason` label of `oxirelay_token_request_failures_total`: one word
/// per kind of failure, never the error's text.
fn failure_reason(error: &TokenError) -> &'static str {
    match error {
        TokenError::Rejected(_) => "rejected",
        TokenError::Unavailable { .. } => "unavailable",
        TokenError::Transport { .. } => "transport",
        TokenError::Malformed { .. } => "malformed",
        TokenError::Insecure(_) => "insecure",
    }
}

fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BACKOFF_BASE
        .saturating_mul(1u32 << exponent)
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_delay(1), Duration::from_secs(2));
        assert_eq!(backoff_delay(2), Duration::from_secs(4));
        assert_eq!(backoff_delay(5), Duration::from_secs(32));
        assert_eq!(backoff_delay(40), BACKOFF_MAX);
    }
}
