//! The database behind one [`Store`] trait: accounts and their sealed tokens,
//! and events; the queue joins them here. SQLite for one machine,
//! PostgreSQL for several instances sharing one queue ([`open`] picks by
//! URL), so callers never name a backend.

pub mod api;
mod postgres;
pub mod queue;
pub mod retention;
mod sqlite;

pub use api::{ApiKeyRecord, ApiListQuery, ApiListed, IdempotencyState};
pub use postgres::{AppliedMigration, PostgresStore};
pub use queue::{
    AttemptOutcome, ClaimLease, Claimed, MessageId, MessageState, NewMessage, QueuedMessage,
    Recipient, RecipientState,
};
pub use retention::{RetentionBatch, RetentionCutoffs, StoreUsage};
pub use sqlite::SqliteStore;

use crate::delivery::limits::{AccountLimits, Admission};
use crate::instance::Holder;
use crate::secret::SealedValue;
use async_trait::async_trait;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {url}: {reason}")]
    Open { url: String, reason: String },
    #[error(
        "the store URL {0:?} is not supported; use sqlite:///path/to/oxirelay.db or postgres://user@host/database"
    )]
    UnsupportedUrl(String),
    #[error("store error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the store holds a value oxirelay cannot read ({0}); was it written by a newer version?"
    )]
    Corrupt(String),
    #[error("the lease on message {0} was lost (it expired and another worker took the message)")]
    LeaseLost(MessageId),
    #[error("the store is shutting down")]
    Closed,
    #[error("this store does not support {0}; use the SQLite store")]
    Unsupported(&'static str),
}

/// Where an account is in its token lifecycle (DESIGN.md contract 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// No token obtained yet.
    New,
    Valid,
    /// Recent attempts failed for a reason that may pass; retried with backoff.
    Failing,
    /// The grant is dead (`invalid_grant`): a person must consent again.
    NeedsConsent,
    /// Tokens were revoked on purpose; nothing is requested until login.
    Revoked,
    /// The provider refuses the account for a reason no token fixes (SMTP
    /// AUTH turned off, Send As missing): an administrator must act, as the
    /// state reason says. Tokens are still refreshed; mail stays queued.
    NeedsAdmin,
}

impl AccountState {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::New => "new",
            AccountState::Valid => "valid",
            AccountState::Failing => "failing",
            AccountState::NeedsConsent => "needs_consent",
            AccountState::Revoked => "revoked",
            AccountState::NeedsAdmin => "needs_admin",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "new" => AccountState::New,
            "valid" => AccountState::Valid,
            "failing" => AccountState::Failing,
            "needs_consent" => AccountState::NeedsConsent,
            "revoked" => AccountState::Revoked,
            "needs_admin" => AccountState::NeedsAdmin,
            other => return Err(StoreError::Corrupt(format!("account state {other:?}"))),
        })
    }
}

impl fmt::Display for AccountState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// An account's row: its state and its sealed tokens. `generation` grows by
/// one with every write, and a write names the generation it read, so a
/// slow refresh cannot overwrite a newer token (STYLE.md section 2).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub account: String,
    pub generation: i64,
    pub state: AccountState,
    pub state_reason: Option<String>,
    pub refresh_token: Option<SealedValue>,
    pub access_token: Option<SealedValue>,
    /// Unix seconds.
    pub access_expires_at: Option<i64>,
    /// When the access token should be replaced (expiry minus skew).
    pub access_refresh_at: Option<i64>,
    pub granted_scope: Option<String>,
    pub consented_at: Option<i64>,
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    pub consecutive_failures: i64,
    pub updated_at: i64,
    /// Grows by one with every change of the account's credentials that
    /// every running process must act on at once: revocation (and so
    /// lockdown), reinstatement (unlock), a new consent, a new key. Refreshes
    /// leave it alone. Running relays compare it with what they last saw
    /// ([`Store::credential_epochs`]) and drop their cached token and pooled
    /// sessions when it moved.
    pub credential_epoch: i64,
}

impl TokenRecord {
    pub fn new(account: &str) -> Self {
        TokenRecord {
            account: account.to_string(),
            generation: 0,
            state: AccountState::New,
            state_reason: None,
            refresh_token: None,
            access_token: None,
            access_expires_at: None,
            access_refresh_at: None,
            granted_scope: None,
            consented_at: None,
            last_success_at: None,
            last_failure_at: None,
            consecutive_failures: 0,
            updated_at: crate::clock::now_unix(),
            credential_epoch: 0,
        }
    }
}

/// Something that happened, kept for operators and alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at: i64,
    pub kind: String,
    pub account: Option<String>,
    /// The message it is about, for a message's history (`GET
    /// /v1/messages/{id}`) and for webhooks; `None` for account and relay
    /// events.
    pub message_id: Option<MessageId>,
    pub detail: String,
}

/// An event as stored, with its place in the log: ids only grow, so a
/// reader that follows the log (webhooks) resumes after the last id it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEvent {
    pub id: i64,
    #[serde(flatten)]
    pub event: Event,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn token_record(&self, account: &str) -> Result<Option<TokenRecord>, StoreError>;

    async fn token_records(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Writes `record` if the stored row is still at `record.generation - 1`
    /// (or absent when that is 0). Returns false, writing nothing, if
    /// another writer got there first.
    async fn save_token_record(&self, record: &TokenRecord) -> Result<bool, StoreError>;

    /// Each account's [`TokenRecord::credential_epoch`], for processes that
    /// watch for revocations and new consents. Cheap: one small row per account.
    async fn credential_epochs(&self) -> Result<HashMap<String, i64>, StoreError>;

    /// Waits until an account's credentials may have changed, or at most
    /// `poll`. SQLite cannot tell another process, so this just waits `poll`
    /// and the caller compares [`Store::credential_epochs`] again; a backend
    /// with notifications (PostgreSQL LISTEN/NOTIFY) wakes at once.
    async fn wait_for_credential_change(&self, poll: Duration) {
        tokio::time::sleep(poll).await;
    }

    /// Takes the account's refresh lease for `holder` until `until` (Unix
    /// seconds): granted if nobody holds it, its lease ended before `now`,
    /// `holder` holds it already (a renewal), or it is held by
    /// `take_over_from`, a holder the caller found provably gone.
    async fn acquire_refresh_lease(
        &self,
        account: &str,
        holder: &Holder,
        now: i64,
        until: i64,
        take_over_from: Option<&str>,
    ) -> Result<LeaseGrant, StoreError>;

    /// Gives the refresh lease back, if `holder_id` still holds it.
    async fn release_refresh_lease(&self, account: &str, holder_id: &str)
    -> Result<(), StoreError>;

    /// Registers a delivery engine or renews its heartbeat: its claims stay
    /// its own until `heartbeat_until` (Unix seconds), unless renewed.
    async fn heartbeat(
        &self,
        instance: &Holder,
        started_at: i64,
        heartbeat_until: i64,
    ) -> Result<(), StoreError>;

    /// Every registered delivery engine, live or not.
    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError>;

    /// Forgets an instance and gives the messages it had claimed back to
    /// the queue, due at `now` (it is gone, or shutting down). Returns how
    /// many messages came back.
    async fn release_instance(&self, id: &str, now: i64) -> Result<u64, StoreError>;

    async fn record_event(&self, event: &Event) -> Result<(), StoreError>;

    async fn events(&self, limit: u32) -> Result<Vec<Event>, StoreError>;

    /// Up to `limit` events with an id above `after`, oldest first.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError>;

    /// Every event about one message, oldest first.
    async fn message_events(&self, id: &MessageId) -> Result<Vec<StoredEvent>, StoreError>;

    /// Adds a message to the queue. When this returns Ok, the message is
    /// committed (contract 1): only then may the submitter be told 250/202.
    async fn enqueue(&self, message: NewMessage) -> Result<MessageId, StoreError>;

    /// [`Store::enqueue`] under an id the caller chose (a fresh
    /// [`MessageId::generate`]), so that a submission interrupted by a crash
    /// can later be looked up with [`Store::message`] and is never queued
    /// twice: the sendmail pickup names its claim of a drop file after it.
    async fn enqueue_as(&self, id: MessageId, message: NewMessage) -> Result<(), StoreError> {
        let _ = (id, message);
        Err(StoreError::Unsupported(
            "queueing under a chosen id (needed by the sendmail pickup)",
        ))
    }

    /// Leases up to `limit` due messages (queued or deferred and due, or in
    /// flight under an expired lease or of an instance whose heartbeat has
    /// ended) to `owner` until `lease_until`. `owner` is `INSTANCE/worker`:
    /// the part before the first `/` names the instance whose heartbeat
    /// ([`Store::heartbeat`]) keeps the claim; an owner without `/` has
    /// only the lease.
    async fn claim(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Records one delivery attempt; fails with `LeaseLost` if the lease
    /// is no longer held. Returns the message's new state.
    async fn complete_attempt(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        outcome: &AttemptOutcome,
    ) -> Result<MessageState, StoreError>;

    /// [`Store::complete_attempt`] and the events that describe it, written
    /// together: a backend that can (SQLite) commits both in one
    /// transaction, so a delivered message costs one commit, not one for
    /// its outcome and one per event (issue 10, item 5). On `LeaseLost`
    /// nothing is written, events included: the outcome is the other
    /// worker's to record. The default writes the outcome, then each event
    /// on its own, as callers did before; an event that fails to write is
    /// logged, not returned, since the outcome it describes is committed.
    async fn complete_attempt_with_events(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        outcome: &AttemptOutcome,
        events: &[Event],
    ) -> Result<MessageState, StoreError> {
        let state = self.complete_attempt(id, lease, outcome).await?;
        for event in events {
            if let Err(error) = self.record_event(event).await {
                tracing::error!(%error, kind = %event.kind, "cannot record an event");
            }
        }
        Ok(state)
    }

    /// Gives a claimed message back untried, due again at `next_attempt_at`
    /// (shutdown, a paused or throttled account).
    async fn release(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        next_attempt_at: i64,
    ) -> Result<(), StoreError>;

    /// Messages, newest first, optionally only those in `state`.
    async fn messages(
        &self,
        state: Option<MessageState>,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError>;

    async fn message(&self, id: &MessageId)
    -> Result<Option<(QueuedMessage, Vec<u8>)>, StoreError>;

    /// Makes a deferred (or bounced) message due now; false if not found or final.
    async fn retry_now(&self, id: &MessageId, now: i64) -> Result<bool, StoreError>;

    async fn delete(&self, id: &MessageId) -> Result<bool, StoreError>;

    /// Marks every unfinished message created before `cutoff` as expired;
    /// returns them so their senders can be told.
    async fn expire(&self, cutoff: i64) -> Result<Vec<QueuedMessage>, StoreError>;

    /// The earliest time a queued or deferred message is due, if any.
    async fn next_due(&self) -> Result<Option<i64>, StoreError>;

    /// Submission users managed with `oxirelay user` (config users are not here).
    async fn users(&self) -> Result<Vec<crate::users::SubmissionUser>, StoreError>;

    /// False, writing nothing, if a user of that name exists.
    async fn add_user(&self, user: &crate::users::SubmissionUser) -> Result<bool, StoreError>;

    async fn remove_user(&self, name: &str) -> Result<bool, StoreError>;

    /// A secret of an account kept sealed in the store (a service-account key).
    async fn sealed_secret(
        &self,
        account: &str,
        kind: &str,
    ) -> Result<Option<SealedValue>, StoreError>;

    async fn put_sealed_secret(
        &self,
        account: &str,
        kind: &str,
        sealed: &SealedValue,
    ) -> Result<(), StoreError>;

    /// Every sealed secret's (account, kind), for `rotate-key`.
    async fn sealed_secret_names(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// The anchor of the audit log `chain` (`crate::audit::chain_id`: its
    /// host and path; each instance writes its own log): its newest line
    /// known to be on disk. While no log has an anchor of its own, the one
    /// anchor kept before logs were told apart is returned.
    async fn audit_anchor(&self, chain: &str) -> Result<Option<AuditAnchor>, StoreError>;

    /// Moves the chain's anchor from `expected` (`None`: there is none
    /// yet) to `next`. Returns false, writing nothing, if the stored anchor
    /// is not `expected` (another process moved it first). An `expected`
    /// that is the anchor of before is taken over by this chain.
    async fn advance_audit_anchor(
        &self,
        chain: &str,
        expected: Option<&AuditAnchor>,
        next: &AuditAnchor,
    ) -> Result<bool, StoreError>;

    /// Every chain's anchor, by chain (`""`: the anchor of before, not yet
    /// taken over), for `audit verify`.
    async fn audit_anchors(&self) -> Result<Vec<(String, AuditAnchor)>, StoreError> {
        Err(StoreError::Unsupported("listing audit anchors"))
    }

    /// The emergency stop, if it is on: delivery pauses, mail stays queued.
    async fn lockdown(&self) -> Result<Option<Lockdown>, StoreError>;

    /// `Some(reason)` turns the emergency stop on; `None` turns it off.
    async fn set_lockdown(&self, reason: Option<&str>) -> Result<(), StoreError>;

    // ---- Queue administration (`oxirelay queue`): listing by cursor and
    // bulk operations. Every method here reads or changes a bounded number
    // of rows, with a bounded number of SQL variables, whatever the size of
    // the queue: callers page with a [`ListCursor`]. The defaults refuse,
    // so that a store without them (a test's wrapper) says so plainly.

    /// Up to `limit` messages that match `filter`, newest first (by
    /// `created_at`, then id, both descending), starting after `after`
    /// (from the newest when `None`). Mail that arrives while a caller
    /// pages lands before the first page, never behind the cursor, so
    /// every message present when the listing began is returned once.
    async fn list_messages(
        &self,
        filter: &QueueFilter,
        after: Option<&ListCursor>,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let _ = (filter, after, limit);
        Err(StoreError::Unsupported("listing the queue by cursor"))
    }

    /// The position of message `id` in listing order, for `--after ID`;
    /// `None` if there is no such message.
    async fn list_cursor(&self, id: &MessageId) -> Result<Option<ListCursor>, StoreError> {
        let _ = id;
        Err(StoreError::Unsupported("listing the queue by cursor"))
    }

    /// How many messages match `filter` (for progress and dry runs).
    async fn count_messages(&self, filter: &QueueFilter) -> Result<u64, StoreError> {
        let _ = filter;
        Err(StoreError::Unsupported("counting the queue"))
    }

    /// Applies `action` to one batch of messages: those `selection` names
    /// (at most `limit` of them, starting after `after`), each one only if
    /// the action applies to its state ([`QueueAction::applies_to`]),
    /// all in one transaction. With `dry_run` nothing is written and the
    /// outcome says what would have been done. The caller repeats with
    /// [`BatchOutcome::next`] until it is `None`.
    async fn queue_batch(
        &self,
        action: QueueAction,
        selection: &QueueSelection,
        after: Option<&ListCursor>,
        limit: u32,
        now: i64,
        dry_run: bool,
    ) -> Result<BatchOutcome, StoreError> {
        let _ = (action, selection, after, limit, now, dry_run);
        Err(StoreError::Unsupported("bulk queue operations"))
    }

    // Retention and the store's size (issue 10, item 2). Defaults so that
    // a backend without them (a test double) still builds; `serve` logs
    // `Unsupported` once and goes on without retention.

    /// One retention step, in one transaction: removes up to `batch` items
    /// past their time, of the first kind that has any, in this order:
    /// bodies of final messages (delivered, bounced, expired) that reached
    /// their final state before `cutoffs.bodies_before`; final messages
    /// (their rows, recipients and any body) finished before
    /// `cutoffs.records_before`; events older than that. A message that is
    /// not final is never touched. An empty result means nothing is left
    /// to remove; the caller repeats, yielding between steps, so no step
    /// holds the writer for long (`store::retention::run`).
    async fn remove_expired(
        &self,
        cutoffs: &RetentionCutoffs,
        batch: u32,
    ) -> Result<RetentionBatch, StoreError> {
        let _ = (cutoffs, batch);
        Err(StoreError::Unsupported("retention"))
    }

    /// Gives up to `pages` free pages back to the file system (SQLite's
    /// incremental vacuum); returns how many it gave. A backend that
    /// reclaims space by itself returns 0.
    async fn reclaim_space(&self, pages: u32) -> Result<u64, StoreError> {
        let _ = pages;
        Ok(0)
    }

    /// How big the store is and the oldest item retention governs, for `doctor`.
    async fn usage(&self) -> Result<StoreUsage, StoreError> {
        Err(StoreError::Unsupported("reporting the store's size"))
    }

    // ---- Webhooks and notifications (issue 12, items 2 and 3:
    // `src/webhooks`, `src/notify`; SQLite in `sqlite/webhooks.rs`). The
    // defaults refuse, so a store without them says so plainly.

    /// Takes (or renews) the right to deliver to webhook `endpoint` for
    /// `holder` until `until`, creating its cursor at the end of the event
    /// log if it has none (a new endpoint gets what happens from now on,
    /// not the whole history). Granted as [`Store::acquire_refresh_lease`]
    /// grants; `take_over_from` names a holder the caller found gone.
    async fn hold_webhook(
        &self,
        endpoint: &str,
        holder: &Holder,
        now: i64,
        until: i64,
        take_over_from: Option<&str>,
    ) -> Result<WebhookHold, StoreError> {
        let _ = (endpoint, holder, now, until, take_over_from);
        Err(StoreError::Unsupported("webhooks"))
    }

    /// Gives the hold back (a clean stop), if `holder_id` has it.
    async fn release_webhook(&self, endpoint: &str, holder_id: &str) -> Result<(), StoreError> {
        let _ = (endpoint, holder_id);
        Err(StoreError::Unsupported("webhooks"))
    }

    /// Moves the endpoint's cursor forward to `cursor` after a 2xx (or
    /// past events it does not take), clearing its failures; `delivered`
    /// events are added to its count. False, writing nothing, if
    /// `holder_id` no longer holds it or the cursor is already further.
    async fn advance_webhook(
        &self,
        endpoint: &str,
        holder_id: &str,
        cursor: i64,
        delivered: u32,
        now: i64,
    ) -> Result<bool, StoreError> {
        let _ = (endpoint, holder_id, cursor, delivered, now);
        Err(StoreError::Unsupported("webhooks"))
    }

    /// Records a failed POST of the event after the cursor: the attempts
    /// so far, when to try again, and why it failed.
    async fn webhook_failed(
        &self,
        endpoint: &str,
        holder_id: &str,
        attempts: i64,
        next_attempt_at: i64,
        error: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let _ = (endpoint, holder_id, attempts, next_attempt_at, error, now);
        Err(StoreError::Unsupported("webhooks"))
    }

    /// Every endpoint's cursor with its lag, for `webhook list` and the console.
    async fn webhook_statuses(&self) -> Result<Vec<WebhookStatus>, StoreError> {
        Err(StoreError::Unsupported("webhooks"))
    }

    /// A message without its body (webhooks name its sender's API key and
    /// its recipients' replies); `None` if it is gone.
    async fn message_summary(&self, id: &MessageId) -> Result<Option<QueuedMessage>, StoreError> {
        Ok(self.message(id).await?.map(|(message, _)| message))
    }

    /// Whether the operator should be told of `condition` now: true, and
    /// recorded as told at `now`, if it was never told or last told at
    /// least `repeat` seconds ago; false otherwise. One statement, so two
    /// relays on one store never both tell.
    async fn notify_due(&self, condition: &str, now: i64, repeat: i64) -> Result<bool, StoreError> {
        let _ = (condition, now, repeat);
        Err(StoreError::Unsupported("notifications"))
    }

    /// The conditions being notified, with when they were last told.
    async fn notify_marks(&self) -> Result<Vec<NotifyMark>, StoreError> {
        Err(StoreError::Unsupported("notifications"))
    }

    /// Forgets a condition that ended (so that its return is told at once).
    async fn notify_clear(&self, condition: &str) -> Result<bool, StoreError> {
        let _ = condition;
        Err(StoreError::Unsupported("notifications"))
    }

    // ---- The HTTP send API (issue 12 item 1, `crate::api`): API keys,
    // message tags and idempotency. Defaults refuse, as above.

    /// Stores a new API key; false, writing nothing, if an active key has
    /// that name.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<bool, StoreError> {
        let _ = key;
        Err(StoreError::Unsupported("API keys"))
    }

    /// The key with this id, revoked or not.
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let _ = id;
        Err(StoreError::Unsupported("API keys"))
    }

    /// Every key, revoked ones included, oldest first.
    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Err(StoreError::Unsupported("API keys"))
    }

    /// Revokes the active key of that name; false if there is none.
    async fn revoke_api_key(&self, name: &str, at: i64) -> Result<bool, StoreError> {
        let _ = (name, at);
        Err(StoreError::Unsupported("API keys"))
    }

    /// Tags message `id` (queued or about to be) for key `key_id`; committed
    /// when this returns.
    async fn tag_message(
        &self,
        key_id: &str,
        id: &MessageId,
        tags: &[String],
        at: i64,
    ) -> Result<(), StoreError> {
        let _ = (key_id, id, tags, at);
        Err(StoreError::Unsupported("message tags"))
    }

    /// Removes every tag of message `id`.
    async fn untag_message(&self, id: &MessageId) -> Result<(), StoreError> {
        let _ = id;
        Err(StoreError::Unsupported("message tags"))
    }

    /// The tags of message `id`, sorted.
    async fn message_tags(&self, id: &MessageId) -> Result<Vec<String>, StoreError> {
        let _ = id;
        Err(StoreError::Unsupported("message tags"))
    }

    /// Up to `limit` messages matching `query`, newest first, after `after`.
    async fn api_list_messages(
        &self,
        query: &ApiListQuery,
        after: Option<&ListCursor>,
        limit: u32,
    ) -> Result<Vec<ApiListed>, StoreError> {
        let _ = (query, after, limit);
        Err(StoreError::Unsupported("listing messages for the API"))
    }

    /// Claims `idempotency_key` of API key `key_id` for a request whose
    /// hash is `request_hash` and whose messages will have the ids
    /// `reserved`, or says who has it. A begun request with no answer that
    /// began before `stale_before` is taken over. Expired keys (past their
    /// `expires_at`) count as new.
    #[allow(clippy::too_many_arguments)]
    async fn idempotency_begin(
        &self,
        key_id: &str,
        idempotency_key: &str,
        request_hash: &str,
        reserved: &[MessageId],
        now: i64,
        expires_at: i64,
        stale_before: i64,
    ) -> Result<IdempotencyState, StoreError> {
        let _ = (
            key_id,
            idempotency_key,
            request_hash,
            reserved,
            now,
            expires_at,
            stale_before,
        );
        Err(StoreError::Unsupported("idempotency keys"))
    }

    /// Records the answer to the request that began under the key.
    async fn idempotency_finish(
        &self,
        key_id: &str,
        idempotency_key: &str,
        status: u16,
        response: &str,
    ) -> Result<(), StoreError> {
        let _ = (key_id, idempotency_key, status, response);
        Err(StoreError::Unsupported("idempotency keys"))
    }

    /// Forgets a begun request that has no answer worth repeating (the
    /// store failed): a retry starts afresh.
    async fn idempotency_forget(
        &self,
        key_id: &str,
        idempotency_key: &str,
    ) -> Result<(), StoreError> {
        let _ = (key_id, idempotency_key);
        Err(StoreError::Unsupported("idempotency keys"))
    }

    // ---- Several instances on one store (issue 13, the PostgreSQL part).

    /// Waits until new work may be due (a message queued, retried or given
    /// back by any instance), or at most `timeout`. SQLite cannot tell
    /// another process, so this just waits `timeout` (the engine's own
    /// wake-up covers mail queued in the same process); PostgreSQL wakes on
    /// a `NOTIFY` from whichever instance queued it.
    async fn wait_for_work(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }

    /// Whether [`Store::wait_for_work`] wakes for work queued by any
    /// process (PostgreSQL): then `serve` need not poll the queue often.
    fn announces_work(&self) -> bool {
        false
    }

    /// Asks to send one message of `account` to `recipients` recipients at
    /// `now` (Unix seconds) under `limits`, counted for every process on
    /// this store: reads the account's
    /// [`crate::delivery::limits::QuotaState`], decides with
    /// [`crate::delivery::limits::admit`] and writes the charge back in
    /// one transaction, so two instances never spend one allowance twice.
    async fn admit_delivery(
        &self,
        account: &str,
        limits: &AccountLimits,
        recipients: u32,
        now: f64,
    ) -> Result<Admission, StoreError> {
        let _ = (account, limits, recipients, now);
        Err(StoreError::Unsupported("sending quotas"))
    }

    /// The provider throttled `account`: no process sends for it for
    /// `period` from `now` (a longer back-off in force is kept).
    async fn back_off_account(
        &self,
        account: &str,
        period: Duration,
        now: f64,
    ) -> Result<(), StoreError> {
        let _ = (account, period, now);
        Err(StoreError::Unsupported("sending quotas"))
    }
}

/// Which messages a listing or a bulk operation is about; every field set
/// must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<MessageState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Only messages created before this (Unix seconds): `--older-than`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_before: Option<i64>,
}

impl fmt::Display for QueueFilter {
    /// "state=deferred account=office created before 2026-11-25 ...", or
    /// "all messages": how the audit log and the CLI name a selection.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(state) = self.state {
            parts.push(format!("state={state}"));
        }
        if let Some(account) = &self.account {
            parts.push(format!("account={account}"));
        }
        if let Some(before) = self.created_before {
            parts.push(format!(
                "created before {}",
                crate::clock::format_unix(before)
            ));
        }
        if parts.is_empty() {
            f.write_str("all messages")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// A place in listing order: the listing goes on with the message after
/// this one. (`created_at`, id) is unique, and indexed for every filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListCursor {
    pub created_at: i64,
    pub id: MessageId,
}

/// What a bulk operation works through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueSelection {
    /// Messages named by id (`queue hold ID ID ...`); in listing order,
    /// ids that name no message are reported in [`BatchOutcome::missing`].
    Ids(Vec<MessageId>),
    Matching(QueueFilter),
}

/// An operator's action on queued mail, as Postfix's `postqueue -f` and
/// `postsuper -d/-h/-H` offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueAction {
    /// Due now; bounced or expired recipients get another chance (a
    /// delivered recipient is never sent to twice).
    Retry,
    Delete,
    /// Put aside: never claimed for delivery, never expired, until released.
    Hold,
    /// Back from hold, due now.
    Release,
}

impl QueueAction {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueAction::Retry => "retry",
            QueueAction::Delete => "delete",
            QueueAction::Hold => "hold",
            QueueAction::Release => "release",
        }
    }

    /// The states a message must be in for the action to touch it. A
    /// message in flight is never touched: a worker is delivering it, and
    /// its outcome would be lost or would undo the action; it is skipped,
    /// and the operation can be repeated once its attempt ends.
    pub fn applies_to(self) -> &'static [MessageState] {
        use MessageState::*;
        match self {
            QueueAction::Retry => &[Queued, Deferred, Bounced, Expired],
            QueueAction::Delete => &[Queued, Deferred, Delivered, Bounced, Expired, Held],
            QueueAction::Hold => &[Queued, Deferred],
            QueueAction::Release => &[Held],
        }
    }

    /// The states the action touches in `selection`: [`Self::applies_to`],
    /// except that a retry takes bounced and expired mail back only when
    /// it was asked for, by id or by state. A flush of an account (`queue
    /// retry --account A`) must not resend what was refused for good.
    /// Every backend selects with this, so they agree.
    pub fn states_for(self, selection: &QueueSelection) -> Vec<MessageState> {
        let named = match selection {
            QueueSelection::Ids(_) => true,
            QueueSelection::Matching(filter) => filter.state.is_some(),
        };
        self.applies_to()
            .iter()
            .copied()
            .filter(|state| {
                named
                    || self != QueueAction::Retry
                    || matches!(state, MessageState::Queued | MessageState::Deferred)
            })
            .collect()
    }
}

impl fmt::Display for QueueAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A message a bulk operation touched (or, in a dry run, would touch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AffectedMessage {
    pub id: MessageId,
    pub account: String,
    /// Its state before the action.
    pub state: MessageState,
    pub created_at: i64,
    /// False once retention removed the body of a finished message: such a
    /// message can be listed and deleted, never retried.
    pub body_kept: bool,
}

/// What one batch of [`Store::queue_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// In listing order.
    pub affected: Vec<AffectedMessage>,
    /// Selected, but in a state the action does not apply to.
    pub skipped: Vec<AffectedMessage>,
    /// Ids of a [`QueueSelection::Ids`] that name no message.
    pub missing: Vec<MessageId>,
    /// Where the next batch starts; `None` when the selection is done.
    pub next: Option<ListCursor>,
}

/// What [`Store::acquire_refresh_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    Granted,
    HeldBy { holder: Holder, expires_at: i64 },
}

/// A delivery engine as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub holder: Holder,
    pub started_at: i64,
    pub heartbeat_until: i64,
}

/// Where the audit log's chain had got to, kept apart from the log so
/// that lines deleted from its end are evident (`crate::audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditAnchor {
    pub seq: u64,
    /// SHA-256 (hex) of the line as written, without its newline.
    pub hash: String,
}

impl AuditAnchor {
    /// From a row's columns (every backend stores `seq` as a signed integer).
    pub(crate) fn from_stored(seq: i64, hash: String) -> Result<AuditAnchor, StoreError> {
        Ok(AuditAnchor {
            seq: u64::try_from(seq)
                .map_err(|_| StoreError::Corrupt(format!("audit anchor seq {seq}")))?,
            hash,
        })
    }

    /// `seq` as the backends store it.
    pub(crate) fn stored_seq(&self) -> Result<i64, StoreError> {
        i64::try_from(self.seq)
            .map_err(|_| StoreError::Corrupt(format!("audit anchor seq {}", self.seq)))
    }
}

/// Where a webhook endpoint is in the event log (webhooks, issue 12 item 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookCursor {
    pub endpoint: String,
    /// The last event id received (or passed over as not the endpoint's).
    pub cursor: i64,
    /// Failed POSTs of the event after the cursor.
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub delivered: i64,
    pub last_delivered_at: Option<i64>,
}

/// What [`Store::hold_webhook`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookHold {
    Held(WebhookCursor),
    HeldBy { holder: Holder, expires_at: i64 },
}

/// A webhook endpoint as `webhook list` and the console show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookStatus {
    #[serde(flatten)]
    pub cursor: WebhookCursor,
    /// Events in the log after the cursor (all kinds: some may not be the
    /// endpoint's to receive).
    pub lag: i64,
    /// The relay process delivering to it, while its hold lasts.
    pub holder: Option<String>,
}

/// A condition being notified (notifications, issue 12 item 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotifyMark {
    pub condition: String,
    pub first_at: i64,
    pub last_notified_at: i64,
    pub times: i64,
}

/// Why and since when delivery is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lockdown {
    pub reason: String,
    pub since: i64,
}

/// Opens the store a URL names.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if is_postgres(url) {
        Ok(Arc::new(PostgresStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A URL as errors may show it: without a password.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Cannot fail: a URL with a password has a host.
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// The migrations an SQLite file has (none if it does not exist yet), read
/// without creating or changing it.
async fn sqlite_versions(url: &str) -> Result<Vec<i64>, StoreError> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Open {
            url: url.to_string(),
            reason: e.to_string(),
        })?
        .read_only(true);
    if !options.get_filename().exists() {
        return Ok(Vec::new());
    }
    let mut conn = options.connect().await?;
    let has_table: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
    )
    .fetch_optional(&mut conn)
    .await?;
    if has_table.is_none() {
        return Ok(Vec::new());
    }
    Ok(
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await?,
    )
}

/// What `oxirelay migrate` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The migrations this run applied, oldest first (empty: up to date).
    pub applied: Vec<AppliedMigration>,
    /// The schema version the store is at now.
    pub version: i64,
}

/// Brings the store's schema up to date, as opening it for `serve` does,
/// and says what that took.
pub async fn migrate(url: &str) -> Result<MigrationReport, StoreError> {
    if url.starts_with("sqlite:") {
        let before = sqlite_versions(url).await?;
        drop(SqliteStore::open(url).await?);
        let after = sqlite_versions(url).await?;
        Ok(MigrationReport {
            backend: "sqlite",
            applied: after
                .iter()
                .filter(|version| !before.contains(version))
                .map(|&version| AppliedMigration { version })
                .collect(),
            version: after.iter().copied().max().unwrap_or(0),
        })
    } else if is_postgres(url) {
        let (store, applied) = PostgresStore::open_migrated(url).await?;
        let version = store.schema_version().await?;
        Ok(MigrationReport {
            backend: "postgres",
            applied,
            version,
        })
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}
