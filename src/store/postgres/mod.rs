//! PostgreSQL backend (issue 13): several relay instances share one queue
//! and one token store. Same semantics as the SQLite backend, method by
//! method (the store suite, tests/store_suite.rs, runs both); where the
//! engines differ:
//!
//! - Claims take rows with `FOR UPDATE SKIP LOCKED` (queue.rs), so claimers
//!   on any number of instances never wait for each other and never take
//!   the same message; a lease names its instance, whose heartbeat keeps it.
//! - New work and credential changes are announced with `NOTIFY` on
//!   channels named after the schema, so instances sharing a schema wake
//!   each other at once ([`Store::wait_for_work`],
//!   [`Store::wait_for_credential_change`]) and deployments in other
//!   schemas of the same database do not.
//! - Durability (contract 1) is a committed transaction with
//!   `synchronous_commit` on: a connection whose server default is `off`
//!   is raised to `on` when it opens. PostgreSQL shares WAL flushes between
//!   concurrent commits by itself, so no group committer is needed here.
//! - Migrations are numbered SQL files of this backend's own, applied once
//!   each under an advisory lock, so instances starting together do not
//!   race (`oxirelay migrate` applies them ahead of time).
//!
//! Hand-written on sqlx rather than through `sqlx::migrate!`: that macro
//! needs sqlx's `macros` feature (minutes on every clean build, DESIGN.md),
//! and the runner is the same few lines the SQLite side uses.

mod admin;
mod anchors;
mod api;
mod queue;
mod quotas;
mod retention;
mod webhooks;

use super::queue::{
    AttemptOutcome, ClaimLease, Claimed, MessageId, MessageState, NewMessage, QueuedMessage,
};
use super::{
    AccountState, AuditAnchor, BatchOutcome, Event, InstanceRecord, LeaseGrant, ListCursor,
    Lockdown, QueueAction, QueueFilter, QueueSelection, Store, StoreError, StoredEvent,
    TokenRecord,
};
use crate::instance::Holder;
use crate::secret::SealedValue;
use crate::users::SubmissionUser;
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The schema, in order. A released file is never edited; add a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("0001_schema.sql")),
    (2, include_str!("0002_webhooks.sql")),
    (3, include_str!("0003_api.sql")),
    (4, include_str!("0004_scale_out.sql")),
];

/// Connections per instance when the URL does not say (`pool_size=N`):
/// the delivery workers' claims and outcomes, submissions, the listener
/// and the CLI's reads. PostgreSQL's default `max_connections` is 100, so
/// five instances fit with room to spare.
const DEFAULT_POOL_SIZE: u32 = 16;

/// Taken (per transaction) around each migration: one key for every
/// oxirelay schema in a database. ASCII "oxirelay".
const MIGRATION_LOCK: i64 = 0x6f78_6972_656c_6179;

/// How long the notification listener waits before connecting again after
/// it lost its connection, at first and at most; waiters fall back to their
/// timeouts meanwhile, so nothing is missed for longer than that.
const LISTEN_RETRY_FIRST: Duration = Duration::from_millis(200);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(30);

/// A migration one call applied (`oxirelay migrate` reports them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppliedMigration {
    pub version: i64,
}

pub struct PostgresStore {
    pool: PgPool,
    /// `NOTIFY` channels of this store's schema.
    channels: Channels,
    signals: Arc<Signals>,
    /// Ends the listener task with the store.
    _listener: AbortOnDrop,
}

/// What is named after the store's schema, so that deployments in other
/// schemas of the same database neither wake nor wait for this one.
#[derive(Clone)]
struct Channels {
    work: String,
    credentials: String,
    /// The advisory lock key of the event log's gate (queue::insert_event).
    events_gate: i64,
}

impl Channels {
    /// `oxirelay_work_SCHEMA`; a channel name is an identifier of at most
    /// 63 bytes, so a long schema name is replaced by a hash of it.
    fn of(schema: &str) -> Channels {
        let name = |kind: &str| {
            let plain = format!("oxirelay_{kind}_{schema}");
            if plain.len() <= 63 {
                plain
            } else {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(schema.as_bytes());
                let short = hex::encode(&digest[..8]);
                format!("oxirelay_{kind}_{short}")
            }
        };
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("oxirelay_events_{schema}").as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest[..8]);
        Channels {
            work: name("work"),
            credentials: name("credentials"),
            events_gate: i64::from_be_bytes(key),
        }
    }
}

/// What the listener task tells waiters. `notify_one` keeps a permit when
/// nobody waits, so a notification that arrives between a worker's empty
/// claim and its wait is not lost (at worst one wake-up finds nothing).
#[derive(Default)]
struct Signals {
    work: Notify,
    credentials: Notify,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Splits `pool_size=N` (ours) off the URL; everything else is sqlx's
/// (`sslmode`, `sslrootcert`, `options[search_path]`, `application_name` ...).
fn pool_size(url: &str) -> Result<(String, u32), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let mut size = DEFAULT_POOL_SIZE;
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        if key == "pool_size" {
            size = value
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 2)
                .ok_or_else(|| {
                    format!("pool_size={value} is not a number of connections of 2 or more")
                })?;
        } else {
            kept.push((key.into_owned(), value.into_owned()));
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), size))
}

impl PostgresStore {
    /// Connects, applies the migrations this database lacks, and starts
    /// listening for notifications.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let (store, _) = Self::open_migrated(url).await?;
        Ok(store)
    }

    /// [`PostgresStore::open`], also saying which migrations it applied.
    pub async fn open_migrated(url: &str) -> Result<(Self, Vec<AppliedMigration>), StoreError> {
        let open_error = |reason: String| StoreError::Open {
            url: super::redact_url(url),
            reason,
        };
        let (sqlx_url, size) = pool_size(url).map_err(open_error)?;
        let options =
            PgConnectOptions::from_str(&sqlx_url).map_err(|e| open_error(e.to_string()))?;
        // One connection first, on its own: a pool retries a failing
        // connect until its acquire timeout and then reports only that it
        // timed out; this says why at once (refused, TLS, authentication).
        sqlx::ConnectOptions::connect(&options)
            .await
            .map_err(|e| open_error(connect_hint(&e)))?
            .close()
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Contract 1: an acknowledged message is a committed
                    // one. `off` would acknowledge before the WAL is on
                    // disk; stronger settings (remote_apply ...) are kept.
                    sqlx::query(
                        "SELECT set_config('synchronous_commit', 'on', false) \
                         WHERE current_setting('synchronous_commit') = 'off'",
                    )
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| open_error(connect_hint(&e)))?;
        let applied = migrate(&pool).await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_optional(&pool)
            .await?
            .flatten()
            .ok_or_else(|| {
                open_error(
                    "the connection has no current schema (search_path names none that exists)"
                        .into(),
                )
            })?;
        let channels = Channels::of(&schema);
        let signals = Arc::new(Signals::default());
        // Listening before open returns: a message queued by anyone after
        // this point wakes this store's waiters.
        let listener = listen(&pool, &channels).await?;
        let task = tokio::spawn(follow_notifications(
            pool.clone(),
            channels.clone(),
            listener,
            signals.clone(),
        ));
        Ok((
            PostgresStore {
                pool,
                channels,
                signals,
                _listener: AbortOnDrop(task),
            },
            applied,
        ))
    }

    /// The newest migration applied.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(version) FROM schema_migrations")
                .fetch_one(&self.pool)
                .await?
                .unwrap_or(0),
        )
    }

    async fn notify_credentials(&self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&self.channels.credentials)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The error of a failed connection, with what to check.
fn connect_hint(error: &sqlx::Error) -> String {
    let text = error.to_string();
    let about_tls = text.contains("certificate") || text.contains("TLS") || text.contains("tls");
    match error {
        _ if about_tls => format!(
            "{error} (the URL asks for TLS: check sslmode, and for verify-ca/verify-full that sslrootcert names the CA of the server's certificate)"
        ),
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => {
            format!("{error} (is PostgreSQL running and reachable at the URL's host and port?)")
        }
        _ => text,
    }
}

/// Applies every migration the database lacks, each in its own transaction
/// under the advisory lock; returns those it applied.
pub(super) async fn migrate(pool: &PgPool) -> Result<Vec<AppliedMigration>, StoreError> {
    let mut conn = pool.acquire().await?;
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_none() {
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(crate::clock::now_unix())
                .execute(&mut *tx)
                .await?;
            applied.push(AppliedMigration { version: *version });
        }
        tx.commit().await?;
    }
    Ok(applied)
}

async fn listen(pool: &PgPool, channels: &Channels) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([channels.work.as_str(), channels.credentials.as_str()])
        .await?;
    Ok(listener)
}

/// Turns notifications into wake-ups, for the life of the store. When the
/// connection drops, every waiter is woken (they look for themselves, as
/// they would after a timeout) and the listener connects again.
async fn follow_notifications(
    pool: PgPool,
    channels: Channels,
    first: PgListener,
    signals: Arc<Signals>,
) {
    let mut listener = Some(first);
    let mut retry = LISTEN_RETRY_FIRST;
    loop {
        let Some(active) = listener.as_mut() else {
            tokio::time::sleep(retry).await;
            match listen(&pool, &channels).await {
                Ok(fresh) => {
                    listener = Some(fresh);
                    retry = LISTEN_RETRY_FIRST;
                    // Anything sent while we were away is unknown.
                    signals.work.notify_one();
                    signals.credentials.notify_one();
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for queue notifications; instances wake on their timeouts until this works");
                    retry = (retry * 2).min(LISTEN_RETRY_MAX);
                }
            }
            continue;
        };
        match active.try_recv().await {
            Ok(Some(notification)) => {
                if notification.channel() == channels.work {
                    signals.work.notify_one();
                } else {
                    signals.credentials.notify_waiters();
                    signals.credentials.notify_one();
                }
            }
            // The connection was lost; the next try_recv reconnects.
            Ok(None) => {
                signals.work.notify_waiters();
                signals.credentials.notify_waiters();
            }
            Err(error) => {
                tracing::warn!(%error, "lost the connection that listens for queue notifications; connecting again");
                signals.work.notify_waiters();
                signals.credentials.notify_waiters();
                listener = None;
            }
        }
    }
}

fn stored_event(row: &PgRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id: row.try_get("id")?,
        event: Event {
            at: row.try_get("at")?,
            kind: row.try_get("kind")?,
            account: row.try_get("account")?,
            message_id: row
                .try_get::<Option<String>, _>("message_id")?
                .map(MessageId),
            detail: row.try_get("detail")?,
        },
    })
}

fn record_from_row(row: &PgRow) -> Result<TokenRecord, StoreError> {
    let sealed = |column: &str| -> Result<Option<SealedValue>, StoreError> {
        Ok(row
            .try_get::<Option<Vec<u8>>, _>(column)?
            .map(SealedValue::from_stored))
    };
    Ok(TokenRecord {
        account: row.try_get("account")?,
        generation: row.try_get("generation")?,
        state: AccountState::parse(&row.try_get::<String, _>("state")?)?,
        state_reason: row.try_get("state_reason")?,
        refresh_token: sealed("refresh_token")?,
        access_token: sealed("access_token")?,
        access_expires_at: row.try_get("access_expires_at")?,
        access_refresh_at: row.try_get("access_refresh_at")?,
        granted_scope: row.try_get("granted_scope")?,
        consented_at: row.try_get("consented_at")?,
        last_success_at: row.try_get("last_success_at")?,
        last_failure_at: row.try_get("last_failure_at")?,
        consecutive_failures: row.try_get("consecutive_failures")?,
        updated_at: row.try_get("updated_at")?,
        credential_epoch: row.try_get("credential_epoch")?,
    })
}

const RECORD_COLUMNS: &str = "account, generation, state, state_reason, refresh_token, access_token, \
    access_expires_at, access_refresh_at, granted_scope, consented_at, last_success_at, \
    last_failure_at, consecutive_failures, updated_at, credential_epoch";

fn holder_from_row(row: &PgRow, id: &str, pid: &str, locality: &str) -> Result<Holder, StoreError> {
    Ok(Holder {
        id: row.try_get(id)?,
        pid: u32::try_from(row.try_get::<i64, _>(pid)?)
            .map_err(|_| StoreError::Corrupt(format!("{pid} out of range")))?,
        locality: row.try_get(locality)?,
    })
}

/// A row count or limit as PostgreSQL's BIGINT.
fn big(n: u32) -> i64 {
    i64::from(n)
}

#[async_trait]
impl Store for PostgresStore {
    async fn token_record(&self, account: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM account_tokens WHERE account = $1"
        )))
        .bind(account)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn token_records(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM account_tokens ORDER BY account"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn save_token_record(&self, record: &TokenRecord) -> Result<bool, StoreError> {
        let previous = record.generation - 1;
        let bytes = |v: &Option<SealedValue>| v.as_ref().map(|s| s.as_bytes().to_vec());
        let mut tx = self.pool.begin().await?;
        // The epoch before the write, read under the row's lock: a write
        // that moves it is announced to every instance (commit delivers
        // the notification, a rollback drops it).
        let old_epoch: Option<i64> = if previous == 0 {
            None
        } else {
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT credential_epoch FROM account_tokens WHERE account = $1 AND generation = $2 FOR UPDATE",
            )
            .bind(&record.account)
            .bind(previous)
            .fetch_optional(&mut *tx)
            .await?;
            if found.is_none() {
                return Ok(false);
            }
            found
        };
        let query = if previous == 0 {
            // ON CONFLICT DO NOTHING: a row that appeared meanwhile means
            // another writer won.
            format!(
                "INSERT INTO account_tokens ({RECORD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 ON CONFLICT (account) DO NOTHING"
            )
        } else {
            "UPDATE account_tokens SET account = $1, generation = $2, state = $3, state_reason = $4, \
             refresh_token = $5, access_token = $6, access_expires_at = $7, access_refresh_at = $8, \
             granted_scope = $9, consented_at = $10, last_success_at = $11, last_failure_at = $12, \
             consecutive_failures = $13, updated_at = $14, credential_epoch = $15 WHERE account = $16 AND generation = $17"
                .to_string()
        };
        // Built only from the constant column list above, never from input.
        let mut q = sqlx::query(AssertSqlSafe(query))
            .bind(&record.account)
            .bind(record.generation)
            .bind(record.state.as_str())
            .bind(&record.state_reason)
            .bind(bytes(&record.refresh_token))
            .bind(bytes(&record.access_token))
            .bind(record.access_expires_at)
            .bind(record.access_refresh_at)
            .bind(&record.granted_scope)
            .bind(record.consented_at)
            .bind(record.last_success_at)
            .bind(record.last_failure_at)
            .bind(record.consecutive_failures)
            .bind(record.updated_at)
            .bind(record.credential_epoch);
        if previous != 0 {
            q = q.bind(&record.account).bind(previous);
        }
        let written = q.execute(&mut *tx).await?.rows_affected() == 1;
        if !written {
            return Ok(false);
        }
        if old_epoch.unwrap_or(0) != record.credential_epoch {
            self.notify_credentials(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn credential_epochs(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT account, credential_epoch FROM account_tokens")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("account")?, row.try_get("credential_epoch")?)))
            .collect()
    }

    async fn wait_for_credential_change(&self, poll: Duration) {
        let _ = tokio::time::timeout(poll, self.signals.credentials.notified()).await;
    }

    async fn acquire_refresh_lease(
        &self,
        account: &str,
        holder: &Holder,
        now: i64,
        until: i64,
        take_over_from: Option<&str>,
    ) -> Result<LeaseGrant, StoreError> {
        // One transaction, so a refusal names the holder that caused it:
        // the upsert locks the row when it conflicts, whether it updates
        // it or not.
        let mut tx = self.pool.begin().await?;
        let granted = sqlx::query(
            "INSERT INTO refresh_leases (account, holder, holder_pid, holder_locality, expires_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (account) DO UPDATE SET holder = excluded.holder, holder_pid = excluded.holder_pid, \
             holder_locality = excluded.holder_locality, expires_at = excluded.expires_at \
             WHERE refresh_leases.expires_at < $6 OR refresh_leases.holder = excluded.holder \
             OR refresh_leases.holder = $7",
        )
        .bind(account)
        .bind(&holder.id)
        .bind(i64::from(holder.pid))
        .bind(&holder.locality)
        .bind(until)
        .bind(now)
        .bind(take_over_from)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let grant = if granted {
            LeaseGrant::Granted
        } else {
            // The insert conflicted, so the row is there (and locked by us).
            let row = sqlx::query(
                "SELECT holder, holder_pid, holder_locality, expires_at FROM refresh_leases WHERE account = $1",
            )
            .bind(account)
            .fetch_one(&mut *tx)
            .await?;
            LeaseGrant::HeldBy {
                holder: holder_from_row(&row, "holder", "holder_pid", "holder_locality")?,
                expires_at: row.try_get("expires_at")?,
            }
        };
        tx.commit().await?;
        Ok(grant)
    }

    async fn release_refresh_lease(
        &self,
        account: &str,
        holder_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM refresh_leases WHERE account = $1 AND holder = $2")
            .bind(account)
            .bind(holder_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        instance: &Holder,
        started_at: i64,
        heartbeat_until: i64,
    ) -> Result<(), StoreError> {
        // An upsert: an instance that was stalled so long that another
        // forgot it comes back (its lost claims fail with LeaseLost).
        sqlx::query(
            "INSERT INTO instances (id, pid, locality, started_at, heartbeat_until) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_until = excluded.heartbeat_until",
        )
        .bind(&instance.id)
        .bind(i64::from(instance.pid))
        .bind(&instance.locality)
        .bind(started_at)
        .bind(heartbeat_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, pid, locality, started_at, heartbeat_until FROM instances ORDER BY started_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(InstanceRecord {
                    holder: holder_from_row(row, "id", "pid", "locality")?,
                    started_at: row.try_get("started_at")?,
                    heartbeat_until: row.try_get("heartbeat_until")?,
                })
            })
            .collect()
    }

    async fn release_instance(&self, id: &str, now: i64) -> Result<u64, StoreError> {
        queue::release_instance(&self.pool, &self.channels.work, id, now).await
    }

    async fn record_event(&self, event: &Event) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        queue::insert_event(&mut conn, self.channels.events_gate, event).await?;
        Ok(())
    }

    async fn events(&self, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, account, message_id, detail FROM \
             (SELECT * FROM events ORDER BY id DESC LIMIT $1) AS newest ORDER BY id",
        )
        .bind(big(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok(stored_event(row)?.event))
            .collect()
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = queue::events_after(&self.pool, self.channels.events_gate, after, limit).await?;
        rows.iter().map(stored_event).collect()
    }

    async fn message_events(&self, id: &MessageId) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(queue::MESSAGE_EVENTS_SQL)
            .bind(&id.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_event).collect()
    }

    async fn enqueue(&self, message: NewMessage) -> Result<MessageId, StoreError> {
        let id = MessageId::generate();
        queue::enqueue(&self.pool, &self.channels.work, &id, &message).await?;
        Ok(id)
    }

    async fn enqueue_as(&self, id: MessageId, message: NewMessage) -> Result<(), StoreError> {
        queue::enqueue(&self.pool, &self.channels.work, &id, &message).await
    }

    async fn claim(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        queue::claim(&self.pool, owner, now, lease_until, limit).await
    }

    async fn complete_attempt(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        outcome: &AttemptOutcome,
    ) -> Result<MessageState, StoreError> {
        queue::complete_attempt(
            &self.pool,
            id,
            lease,
            outcome,
            &[],
            self.channels.events_gate,
        )
        .await
    }

    async fn complete_attempt_with_events(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        outcome: &AttemptOutcome,
        events: &[Event],
    ) -> Result<MessageState, StoreError> {
        queue::complete_attempt(
            &self.pool,
            id,
            lease,
            outcome,
            events,
            self.channels.events_gate,
        )
        .await
    }

    async fn release(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        queue::release(&self.pool, &self.channels.work, id, lease, next_attempt_at).await
    }

    async fn messages(
        &self,
        state: Option<MessageState>,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let filter = QueueFilter {
            state,
            ..Default::default()
        };
        admin::list(&self.pool, &filter, None, limit).await
    }

    async fn message(
        &self,
        id: &MessageId,
    ) -> Result<Option<(QueuedMessage, Vec<u8>)>, StoreError> {
        queue::message(&self.pool, id).await
    }

    async fn retry_now(&self, id: &MessageId, now: i64) -> Result<bool, StoreError> {
        queue::retry_now(&self.pool, &self.channels.work, id, now).await
    }

    async fn delete(&self, id: &MessageId) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM messages WHERE id = $1")
            .bind(&id.0)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn expire(&self, cutoff: i64) -> Result<Vec<QueuedMessage>, StoreError> {
        queue::expire(&self.pool, cutoff).await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(queue::NEXT_DUE_SQL)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn users(&self) -> Result<Vec<SubmissionUser>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, password_hash, allowed_from, account FROM users ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let allowed: String = row.try_get("allowed_from")?;
                Ok(SubmissionUser {
                    name: row.try_get("name")?,
                    password_hash: row.try_get("password_hash")?,
                    allowed_from: serde_json::from_str(&allowed)
                        .map_err(|e| StoreError::Corrupt(format!("allowed_from: {e}")))?,
                    account: row.try_get("account")?,
                    source: "store",
                    header_from_checked: true,
                })
            })
            .collect()
    }

    async fn add_user(&self, user: &SubmissionUser) -> Result<bool, StoreError> {
        let allowed = serde_json::to_string(&user.allowed_from)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let result = sqlx::query(
            "INSERT INTO users (name, password_hash, allowed_from, account, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(allowed)
        .bind(&user.account)
        .bind(crate::clock::now_unix())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn sealed_secret(
        &self,
        account: &str,
        kind: &str,
    ) -> Result<Option<SealedValue>, StoreError> {
        let sealed: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT sealed FROM account_secrets WHERE account = $1 AND kind = $2",
        )
        .bind(account)
        .bind(kind)
        .fetch_optional(&self.pool)
        .await?;
        Ok(sealed.map(SealedValue::from_stored))
    }

    async fn put_sealed_secret(
        &self,
        account: &str,
        kind: &str,
        sealed: &SealedValue,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO account_secrets (account, kind, sealed, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account, kind) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(account)
        .bind(kind)
        .bind(sealed.as_bytes())
        .bind(crate::clock::now_unix())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn sealed_secret_names(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT account, kind FROM account_secrets ORDER BY account, kind")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("account")?, row.try_get("kind")?)))
            .collect()
    }

    async fn audit_anchor(&self, chain: &str) -> Result<Option<AuditAnchor>, StoreError> {
        anchors::read(&self.pool, chain).await
    }

    async fn advance_audit_anchor(
        &self,
        chain: &str,
        expected: Option<&AuditAnchor>,
        next: &AuditAnchor,
    ) -> Result<bool, StoreError> {
        anchors::advance(&self.pool, chain, expected, next).await
    }

    async fn audit_anchors(&self) -> Result<Vec<(String, AuditAnchor)>, StoreError> {
        anchors::all(&self.pool).await
    }

    async fn lockdown(&self) -> Result<Option<Lockdown>, StoreError> {
        let row = sqlx::query("SELECT value, updated_at FROM control WHERE key = 'lockdown'")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Lockdown {
                reason: row.try_get("value")?,
                since: row.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    async fn set_lockdown(&self, reason: Option<&str>) -> Result<(), StoreError> {
        match reason {
            Some(reason) => {
                sqlx::query(
                    "INSERT INTO control (key, value, updated_at) VALUES ('lockdown', $1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(reason)
                .bind(crate::clock::now_unix())
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM control WHERE key = 'lockdown'")
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    async fn list_messages(
        &self,
        filter: &QueueFilter,
        after: Option<&ListCursor>,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        admin::list(&self.pool, filter, after, limit).await
    }

    async fn list_cursor(&self, id: &MessageId) -> Result<Option<ListCursor>, StoreError> {
        let created_at: Option<i64> =
            sqlx::query_scalar("SELECT created_at FROM messages WHERE id = $1")
                .bind(&id.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(created_at.map(|created_at| ListCursor {
            created_at,
            id: id.clone(),
        }))
    }

    async fn count_messages(&self, filter: &QueueFilter) -> Result<u64, StoreError> {
        admin::count(&self.pool, filter).await
    }

    async fn queue_batch(
        &self,
        action: QueueAction,
        selection: &QueueSelection,
        after: Option<&ListCursor>,
        limit: u32,
        now: i64,
        dry_run: bool,
    ) -> Result<BatchOutcome, StoreError> {
        admin::batch(
            &self.pool,
            &self.channels.work,
            action,
            selection,
            after,
            limit,
            now,
            dry_run,
        )
        .await
    }

    async fn remove_expired(
        &self,
        cutoffs: &crate::store::RetentionCutoffs,
        batch: u32,
    ) -> Result<crate::store::RetentionBatch, StoreError> {
        retention::remove_expired(&self.pool, cutoffs, batch).await
    }

    async fn usage(&self) -> Result<crate::store::StoreUsage, StoreError> {
        retention::usage(&self.pool).await
    }

    // ---- Webhooks and notifications (webhooks.rs; issue 12, items 2 and 3).

    async fn hold_webhook(
        &self,
        endpoint: &str,
        holder: &Holder,
        now: i64,
        until: i64,
        take_over_from: Option<&str>,
    ) -> Result<crate::store::WebhookHold, StoreError> {
        webhooks::hold(
            &self.pool,
            self.channels.events_gate,
            endpoint,
            holder,
            now,
            until,
            take_over_from,
        )
        .await
    }

    async fn release_webhook(&self, endpoint: &str, holder_id: &str) -> Result<(), StoreError> {
        webhooks::release(&self.pool, endpoint, holder_id).await
    }

    async fn advance_webhook(
        &self,
        endpoint: &str,
        holder_id: &str,
        cursor: i64,
        delivered: u32,
        now: i64,
    ) -> Result<bool, StoreError> {
        webhooks::advance(&self.pool, endpoint, holder_id, cursor, delivered, now).await
    }

    async fn webhook_failed(
        &self,
        endpoint: &str,
        holder_id: &str,
        attempts: i64,
        next_attempt_at: i64,
        error: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        webhooks::failed(
            &self.pool,
            endpoint,
            holder_id,
            attempts,
            next_attempt_at,
            error,
            now,
        )
        .await
    }

    async fn webhook_statuses(&self) -> Result<Vec<crate::store::WebhookStatus>, StoreError> {
        webhooks::statuses(&self.pool).await
    }

    async fn message_summary(&self, id: &MessageId) -> Result<Option<QueuedMessage>, StoreError> {
        webhooks::message_summary(&self.pool, id).await
    }

    async fn notify_due(&self, condition: &str, now: i64, repeat: i64) -> Result<bool, StoreError> {
        webhooks::notify_due(&self.pool, condition, now, repeat).await
    }

    async fn notify_marks(&self) -> Result<Vec<crate::store::NotifyMark>, StoreError> {
        webhooks::notify_marks(&self.pool).await
    }

    async fn notify_clear(&self, condition: &str) -> Result<bool, StoreError> {
        webhooks::notify_clear(&self.pool, condition).await
    }

    // ---- The HTTP send API (api.rs; issue 12, item 1).

    // ---- The HTTP send API (src/store/sqlite/api.rs).

    async fn create_api_key(&self, key: &crate::store::ApiKeyRecord) -> Result<bool, StoreError> {
        api::create_key(&self.pool, key).await
    }

    async fn api_key(&self, id: &str) -> Result<Option<crate::store::ApiKeyRecord>, StoreError> {
        api::key(&self.pool, id).await
    }

    async fn api_keys(&self) -> Result<Vec<crate::store::ApiKeyRecord>, StoreError> {
        api::keys(&self.pool).await
    }

    async fn revoke_api_key(&self, name: &str, at: i64) -> Result<bool, StoreError> {
        api::revoke_key(&self.pool, name, at).await
    }

    async fn tag_message(
        &self,
        key_id: &str,
        id: &MessageId,
        tags: &[String],
        at: i64,
    ) -> Result<(), StoreError> {
        api::tag(&self.pool, key_id, id, tags, at).await
    }

    async fn untag_message(&self, id: &MessageId) -> Result<(), StoreError> {
        api::untag(&self.pool, id).await
    }

    async fn message_tags(&self, id: &MessageId) -> Result<Vec<String>, StoreError> {
        api::tags(&self.pool, id).await
    }

    async fn api_list_messages(
        &self,
        query: &crate::store::ApiListQuery,
        after: Option<&ListCursor>,
        limit: u32,
    ) -> Result<Vec<crate::store::ApiListed>, StoreError> {
        api::list(&self.pool, query, after, limit).await
    }

    async fn idempotency_begin(
        &self,
        key_id: &str,
        idempotency_key: &str,
        request_hash: &str,
        reserved: &[MessageId],
        now: i64,
        expires_at: i64,
        stale_before: i64,
    ) -> Result<crate::store::IdempotencyState, StoreError> {
        api::idempotency_begin(
            &self.pool,
            key_id,
            idempotency_key,
            request_hash,
            reserved,
            now,
            expires_at,
            stale_before,
        )
        .await
    }

    async fn idempotency_finish(
        &self,
        key_id: &str,
        idempotency_key: &str,
        status: u16,
        response: &str,
    ) -> Result<(), StoreError> {
        api::idempotency_finish(&self.pool, key_id, idempotency_key, status, response).await
    }

    async fn idempotency_forget(
        &self,
        key_id: &str,
        idempotency_key: &str,
    ) -> Result<(), StoreError> {
        api::idempotency_forget(&self.pool, key_id, idempotency_key).await
    }

    fn announces_work(&self) -> bool {
        true
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.signals.work.notified()).await;
    }

    async fn admit_delivery(
        &self,
        account: &str,
        limits: &crate::delivery::limits::AccountLimits,
        recipients: u32,
        now: f64,
    ) -> Result<crate::delivery::limits::Admission, StoreError> {
        quotas::admit(&self.pool, account, limits, recipients, now).await
    }

    async fn back_off_account(
        &self,
        account: &str,
        period: Duration,
        now: f64,
    ) -> Result<(), StoreError> {
        quotas::back_off(&self.pool, account, period, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_is_taken_off_the_url_and_the_rest_kept() {
        let (url, size) =
            pool_size("postgres://u@h:5432/db?sslmode=require&pool_size=4").expect("parses");
        assert_eq!(size, 4);
        assert_eq!(url, "postgres://u@h:5432/db?sslmode=require");
        let (url, size) = pool_size("postgres://u@h/db").expect("parses");
        assert_eq!(
            (url.as_str(), size),
            ("postgres://u@h/db", DEFAULT_POOL_SIZE)
        );
        let error = pool_size("postgres://u@h/db?pool_size=x").expect_err("refused");
        assert!(error.contains("pool_size=x"), "{error}");
    }

    #[test]
    fn errors_name_the_url_without_its_password() {
        let shown = super::super::redact_url("postgres://relay:hunter2@db.example:5432/mail");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.example"), "{shown}");
    }

    /// A reader of the event log never steps over an event whose id was
    /// drawn before a later one's but committed after it: it waits for the
    /// open one, then returns both in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_event_log_is_read_in_commit_safe_order() {
        let Ok(base) = std::env::var("OXIRELAY_TEST_POSTGRES_URL") else {
            println!("SKIPPED: OXIRELAY_TEST_POSTGRES_URL is not set (PostgreSQL tests)");
            return;
        };
        let schema = format!("oxr_test_gate_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        )))
        .execute(&mut admin)
        .await
        .expect("schema");
        let url = format!("{base}?options[search_path]={schema}");
        let store = Arc::new(PostgresStore::open(&url).await.expect("open"));
        let event = |kind: &str| Event {
            at: 1,
            kind: kind.into(),
            account: None,
            message_id: None,
            detail: String::new(),
        };
        let mut writer = sqlx::PgConnection::connect(&url).await.expect("connect");
        let mut open = writer.begin().await.expect("begin");
        queue::insert_event(&mut open, store.channels.events_gate, &event("first"))
            .await
            .expect("first, not committed yet");
        store.record_event(&event("second")).await.expect("second");
        let mut reader = {
            let store = store.clone();
            tokio::spawn(async move { store.events_after(0, 10).await })
        };
        // The reader must wait for the open transaction; half a second is
        // far longer than an unblocked read takes.
        let early = tokio::time::timeout(Duration::from_millis(500), &mut reader).await;
        let waited = early.is_err();
        open.commit().await.expect("commit");
        let read = match early {
            Ok(done) => done,
            Err(_) => tokio::time::timeout(Duration::from_secs(30), reader)
                .await
                .expect("reads once the open event commits"),
        }
        .expect("task")
        .expect("events");
        let kinds: Vec<&str> = read.iter().map(|e| e.event.kind.as_str()).collect();
        sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut admin)
            .await
            .expect("drop");
        assert!(
            waited,
            "the reader did not wait for the event still being written"
        );
        assert_eq!(kinds, ["first", "second"]);
    }

    /// Contract 1: a connection whose settings say `synchronous_commit =
    /// off` (here from the URL, as a server or role default would) commits
    /// with it on; a stronger setting is kept.
    #[tokio::test]
    async fn acknowledged_means_durable_even_where_the_server_says_otherwise() {
        let Ok(base) = std::env::var("OXIRELAY_TEST_POSTGRES_URL") else {
            println!("SKIPPED: OXIRELAY_TEST_POSTGRES_URL is not set (PostgreSQL tests)");
            return;
        };
        let schema = format!("oxr_test_sync_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        )))
        .execute(&mut admin)
        .await
        .expect("schema");
        let mut seen = Vec::new();
        for setting in ["off", "remote_apply"] {
            let url = format!(
                "{base}?options[search_path]={schema}&options[synchronous_commit]={setting}&pool_size=2"
            );
            let store = PostgresStore::open(&url).await.expect("open");
            let mut conn = store.pool.acquire().await.expect("connection");
            let now: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(&mut *conn)
                .await
                .expect("show");
            seen.push(now);
        }
        sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut admin)
            .await
            .expect("drop");
        assert_eq!(seen, ["on", "remote_apply"]);
    }

    #[test]
    fn channel_names_fit_an_identifier() {
        let short = Channels::of("public");
        assert_eq!(short.work, "oxirelay_work_public");
        let long = Channels::of(&"s".repeat(63));
        assert!(long.work.len() <= 63 && long.credentials.len() <= 63);
        assert_ne!(long.work, Channels::of(&"t".repeat(63)).work);
    }
}
