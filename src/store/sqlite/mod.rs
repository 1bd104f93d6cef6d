//! SQLite backend: one file, WAL journal with `synchronous=FULL` so that a
//! committed transaction survives power loss (contract 1), created with mode
//! 0600. Schema changes are numbered SQL files applied once each, in order.

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
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// The schema, in order. A released file is never edited; add a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("0001_accounts.sql")),
    (2, include_str!("0002_queue.sql")),
    (3, include_str!("0003_users.sql")),
    (4, include_str!("0004_control.sql")),
    (5, include_str!("0005_account_secrets.sql")),
    (6, include_str!("0006_lifecycle.sql")),
    (7, include_str!("0007_audit_anchor.sql")),
    (8, include_str!("0008_scale.sql")),
    (9, include_str!("0009_queue_listing.sql")),
    (10, include_str!("0010_event_messages.sql")),
    (11, include_str!("0011_api.sql")),
    (12, include_str!("0012_webhooks.sql")),
    (13, include_str!("0013_scale_out.sql")),
];

#[derive(Clone)]
pub struct SqliteStore {
    /// `synchronous=FULL`: acknowledgements (enqueue), tokens, users, control.
    pool: SqlitePool,
    /// `synchronous=NORMAL`: the delivery bookkeeping (claims, outcomes,
    /// releases). In WAL mode a commit here survives a process crash; a
    /// power cut may lose the last ones, which only re-delivers messages
    /// (at-least-once, contract 2), while the fsync each would cost is what
    /// limits a relay's throughput: the file has one writer at a time.
    bookkeeping: SqlitePool,
    committer: queue::Committer<queue::Enqueue>,
    /// Delivery outcomes, written together (bookkeeping pool).
    outcomes: queue::Committer<queue::Outcome>,
    /// Taken around every write transaction of this process (group
    /// commits, claims, outcomes, events, leases, heartbeats, the audit
    /// anchor, operator actions): SQLite has one writer at a time, and a
    /// connection that meets a held lock waits in its busy handler, which
    /// sleeps 1, 2, 5, 10 ... 100 ms between tries, holding up whoever is
    /// queued behind it. Queueing in-process writers here instead, first
    /// come first served, keeps a group commit from sleeping behind the
    /// delivery side's bookkeeping or the audit anchor's writes (and lets
    /// the committer take in whoever arrived while it waited). The test
    /// `every_writer_of_one_process_waits_its_turn_without_the_busy_handler`
    /// opens the file with no busy timeout at all and runs the hot writers
    /// and a few rare ones at once. Other processes (the CLI) still meet
    /// the busy handler, as before.
    writer: queue::WriteGate,
}

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        // Several processes (serve, the CLI) share one file; wait for a
        // writer rather than fail at once.
        Self::open_waiting(url, Duration::from_secs(10)).await
    }

    /// Opens `url` with `busy_timeout` as how long a connection waits for
    /// another process's writer.
    async fn open_waiting(url: &str, busy_timeout: Duration) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            url: url.to_string(),
            reason,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| open_error(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Pages that retention frees go back to the file system through
            // `PRAGMA incremental_vacuum` (`Store::reclaim_space`). This
            // takes effect for a new file, whose first table does not exist
            // yet; an older file is converted once by `enable_incremental_vacuum`.
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .busy_timeout(busy_timeout)
            // Each delivery outcome of a group commit runs behind a
            // savepoint, and SQLite keeps the pages a savepoint may need to
            // roll back in a sub-journal: by default a temporary file,
            // created, written page by page and deleted on every commit (a
            // twelfth of the relay's CPU while delivering, BENCHMARKS.md).
            // It is never needed after a crash (the WAL is the recovery),
            // so memory is as safe and much cheaper.
            .pragma("temp_store", "memory");
        let path = options.get_filename().to_path_buf();
        create_private(&path).map_err(|e| open_error(e.to_string()))?;
        // No ping before each use: a connection to a file does not go stale
        // as one over a network does, and each ping is a hand-off to the
        // connection's thread and back (sqlx runs each SQLite connection on
        // its own thread), on every acquire, in front of every query. An
        // I/O error shows in the query itself.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let bookkeeping = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let writer = queue::WriteGate::default();
        let store = SqliteStore {
            committer: queue::Committer::start(pool.clone(), writer.clone()),
            outcomes: queue::Committer::start(bookkeeping.clone(), writer.clone()),
            pool,
            bookkeeping,
            writer,
        };
        store.migrate().await?;
        store.enable_incremental_vacuum().await;
        Ok(store)
    }

    /// A file created before `auto_vacuum = INCREMENTAL` was set keeps
    /// `NONE` until a `VACUUM` rewrites it (SQLite cannot change the mode
    /// of a file with tables otherwise); then retention could free pages
    /// but never give them back. Done once per file: afterwards the mode
    /// reads back as incremental (2). A `VACUUM` needs the file to itself,
    /// so if another process is using it this gives up (after the busy
    /// timeout) and the next start tries again: retention still works,
    /// the file just does not shrink until then.
    async fn enable_incremental_vacuum(&self) {
        let result = async {
            let mut conn = self.pool.acquire().await?;
            let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
                .fetch_one(&mut *conn)
                .await?;
            if mode == 2 {
                return Ok::<bool, sqlx::Error>(false);
            }
            // Warn, not info: shown by default, so that an operator whose
            // first start after the upgrade takes a minute sees why.
            tracing::warn!(
                "converting the store to incremental vacuum: once, with a VACUUM that takes a while on a large store"
            );
            sqlx::raw_sql("PRAGMA auto_vacuum = INCREMENTAL; VACUUM")
                .execute(&mut *conn)
                .await?;
            Ok(true)
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "cannot convert the store to incremental vacuum now; retention will not shrink the file until it is");
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        for (version, sql) in MIGRATIONS {
            apply_migration(&mut conn, *version, sql).await?;
        }
        Ok(())
    }
}

async fn apply_migration(
    conn: &mut SqliteConnection,
    version: i64,
    sql: &'static str,
) -> Result<(), StoreError> {
    // BEGIN IMMEDIATE takes the write lock first, so two processes starting
    // together cannot both apply the same migration.
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
            .bind(version)
            .fetch_optional(&mut *conn)
            .await?;
    if applied.is_none() {
        let result = async {
            sqlx::raw_sql(sql).execute(&mut *conn).await?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
                .bind(version)
                .bind(crate::clock::now_unix())
                .execute(&mut *conn)
                .await
        }
        .await;
        if let Err(e) = result {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            return Err(e.into());
        }
    }
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
    Ok(())
}

/// Creates the database file, if it does not exist, with mode 0600 from its
/// first byte; SQLite gives its `-wal` and `-shm` files the database's mode.
/// Tokens in the file are sealed, but metadata (accounts, recipients) is
/// not anyone else's business either. An existing file keeps its mode
/// (`doctor` reports one that others can read).
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

fn stored_event(row: &SqliteRow) -> Result<StoredEvent, StoreError> {
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

fn record_from_row(row: &SqliteRow) -> Result<TokenRecord, StoreError> {
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

fn holder_from_row(
    row: &SqliteRow,
    id: &str,
    pid: &str,
    locality: &str,
) -> Result<Holder, StoreError> {
    Ok(Holder {
        id: row.try_get(id)?,
        pid: u32::try_from(row.try_get::<i64, _>(pid)?)
            .map_err(|_| StoreError::Corrupt(format!("{pid} out of range")))?,
        locality: row.try_get(locality)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn token_record(&self, account: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM account_tokens WHERE account = ?"
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
        let _writer = self.writer.lock().await;
        let previous = record.generation - 1;
        let bytes = |v: &Option<SealedValue>| v.as_ref().map(|s| s.as_bytes().to_vec());
        let query = if previous == 0 {
            // ON CONFLICT DO NOTHING: a row that appeared meanwhile means
            // another writer won.
            format!(
                "INSERT INTO account_tokens ({RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT(account) DO NOTHING"
            )
        } else {
            "UPDATE account_tokens SET account = ?, generation = ?, state = ?, state_reason = ?, \
             refresh_token = ?, access_token = ?, access_expires_at = ?, access_refresh_at = ?, \
             granted_scope = ?, consented_at = ?, last_success_at = ?, last_failure_at = ?, \
             consecutive_failures = ?, updated_at = ?, credential_epoch = ? WHERE account = ? AND generation = ?"
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
        let result = q.execute(&self.pool).await?;
        Ok(result.rows_affected() == 1)
    }

    async fn credential_epochs(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT account, credential_epoch FROM account_tokens")
            .fetch_all(&self.bookkeeping)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("account")?, row.try_get("credential_epoch")?)))
            .collect()
    }

    async fn acquire_refresh_lease(
        &self,
        account: &str,
        holder: &Holder,
        now: i64,
        until: i64,
        take_over_from: Option<&str>,
    ) -> Result<LeaseGrant, StoreError> {
        let _writer = self.writer.lock().await;
        // The bookkeeping pool: a lease needs to be visible to the other
        // processes (every commit is, in WAL mode), not to survive a power
        // cut, which ends every holder too. One transaction, so a refusal
        // names the holder that caused it.
        let mut tx = self.bookkeeping.begin_with("BEGIN IMMEDIATE").await?;
        let granted = sqlx::query(
            "INSERT INTO refresh_leases (account, holder, holder_pid, holder_locality, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT(account) DO UPDATE SET holder = excluded.holder, holder_pid = excluded.holder_pid, \
             holder_locality = excluded.holder_locality, expires_at = excluded.expires_at \
             WHERE refresh_leases.expires_at < ?6 OR refresh_leases.holder = excluded.holder \
             OR refresh_leases.holder = ?7",
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
            // The insert conflicted, so the row is there.
            let row = sqlx::query(
                "SELECT holder, holder_pid, holder_locality, expires_at FROM refresh_leases WHERE account = ?",
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
        let _writer = self.writer.lock().await;
        sqlx::query("DELETE FROM refresh_leases WHERE account = ? AND holder = ?")
            .bind(account)
            .bind(holder_id)
            .execute(&self.bookkeeping)
            .await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        instance: &Holder,
        started_at: i64,
        heartbeat_until: i64,
    ) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        // An upsert: an instance that was stalled so long that another
        // forgot it comes back (its lost claims fail with LeaseLost).
        sqlx::query(
            "INSERT INTO instances (id, pid, locality, started_at, heartbeat_until) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT(id) DO UPDATE SET heartbeat_until = excluded.heartbeat_until",
        )
        .bind(&instance.id)
        .bind(i64::from(instance.pid))
        .bind(&instance.locality)
        .bind(started_at)
        .bind(heartbeat_until)
        .execute(&self.bookkeeping)
        .await?;
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, pid, locality, started_at, heartbeat_until FROM instances ORDER BY started_at",
        )
        .fetch_all(&self.bookkeeping)
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
        let _writer = self.writer.lock().await;
        queue::release_instance(&self.bookkeeping, id, now).await
    }

    async fn record_event(&self, event: &Event) -> Result<(), StoreError> {
        // Bookkeeping, like the outcomes the delivery events describe: a
        // commit that survives a process crash (WAL), without an fsync of
        // its own. With `synchronous=FULL` every delivered message cost an
        // fsync here (about 4 ms on the benchmark machine's disk), one
        // writer at a time, in front of the next acknowledgement's group
        // commit. (Delivery was capped at about 210 messages/s by this and
        // the audit log's flush per outcome; moving this one alone changed
        // nothing measurable, the audit flush being the tighter.) A power
        // cut may lose the last few events, as it may lose the outcomes
        // recorded with them; the state that matters (queued messages,
        // tokens, lockdown) keeps its own `synchronous=FULL` commits.
        let _writer = self.writer.lock().await;
        let mut conn = self.bookkeeping.acquire().await?;
        queue::insert_event(&mut conn, event).await?;
        Ok(())
    }

    async fn events(&self, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, account, message_id, detail FROM (SELECT * FROM events ORDER BY id DESC LIMIT ?) ORDER BY id",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok(stored_event(row)?.event))
            .collect()
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(queue::EVENTS_AFTER_SQL)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
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
        self.committer.enqueue(message).await
    }

    async fn enqueue_as(&self, id: MessageId, message: NewMessage) -> Result<(), StoreError> {
        self.committer.enqueue_as(id, message).await
    }

    async fn claim(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        queue::claim(
            &self.bookkeeping,
            &self.writer,
            owner,
            now,
            lease_until,
            limit,
        )
        .await
    }

    async fn complete_attempt(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        outcome: &AttemptOutcome,
    ) -> Result<MessageState, StoreError> {
        self.complete_attempt_with_events(id, lease, outcome, &[])
            .await
    }

    async fn complete_attempt_with_events(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        outcome: &AttemptOutcome,
        events: &[Event],
    ) -> Result<MessageState, StoreError> {
        self.outcomes
            .submit(queue::Outcome {
                id: id.clone(),
                lease: lease.clone(),
                outcome: outcome.clone(),
                events: events.to_vec(),
            })
            .await
    }

    async fn release(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        queue::release(&self.bookkeeping, id, lease, next_attempt_at).await
    }

    async fn messages(
        &self,
        state: Option<MessageState>,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let filter = super::QueueFilter {
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
        let _writer = self.writer.lock().await;
        queue::retry_now(&self.pool, id, now).await
    }

    async fn delete(&self, id: &MessageId) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().await;
        queue::delete(&self.pool, id).await
    }

    async fn expire(&self, cutoff: i64) -> Result<Vec<QueuedMessage>, StoreError> {
        let _writer = self.writer.lock().await;
        queue::expire(&self.pool, cutoff).await
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        queue::next_due(&self.pool).await
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
        let _writer = self.writer.lock().await;
        let allowed = serde_json::to_string(&user.allowed_from)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let result = sqlx::query(
            "INSERT INTO users (name, password_hash, allowed_from, account, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
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

    async fn sealed_secret(
        &self,
        account: &str,
        kind: &str,
    ) -> Result<Option<SealedValue>, StoreError> {
        let sealed: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT sealed FROM account_secrets WHERE account = ? AND kind = ?")
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
        let _writer = self.writer.lock().await;
        sqlx::query(
            "INSERT INTO account_secrets (account, kind, sealed, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT(account, kind) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
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
        let _writer = self.writer.lock().await;
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
        let _writer = self.writer.lock().await;
        match reason {
            Some(reason) => {
                sqlx::query(
                    "INSERT INTO control (key, value, updated_at) VALUES ('lockdown', ?, ?) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
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

    // Retention (issue 10, item 2). The bookkeeping pool and the writer
    // gate, like the delivery side's writes: a step is a short write
    // transaction queued in turn with group commits, and a power cut that
    // undoes the last step only means it is done again.
    async fn remove_expired(
        &self,
        cutoffs: &crate::store::RetentionCutoffs,
        batch: u32,
    ) -> Result<crate::store::RetentionBatch, StoreError> {
        let _writer = self.writer.lock().await;
        retention::remove_expired(&self.bookkeeping, cutoffs, batch).await
    }

    async fn reclaim_space(&self, pages: u32) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().await;
        retention::reclaim_space(&self.bookkeeping, pages).await
    }

    async fn usage(&self) -> Result<crate::store::StoreUsage, StoreError> {
        retention::usage(&self.pool).await
    }

    // ---- Webhooks and notifications (webhooks.rs; issue 12, items 2 and 3).
    // A webhook's hold and cursor go through the bookkeeping pool: a power
    // cut that loses the last cursor moves only sends those events again,
    // which at-least-once delivery allows, and an fsync per event received
    // would compete with acceptance for the one writer.

    async fn hold_webhook(
        &self,
        endpoint: &str,
        holder: &Holder,
        now: i64,
        until: i64,
        take_over_from: Option<&str>,
    ) -> Result<crate::store::WebhookHold, StoreError> {
        let _writer = self.writer.lock().await;
        webhooks::hold(
            &self.bookkeeping,
            endpoint,
            holder,
            now,
            until,
            take_over_from,
        )
        .await
    }

    async fn release_webhook(&self, endpoint: &str, holder_id: &str) -> Result<(), StoreError> {
        let _writer = self.writer.lock().await;
        webhooks::release(&self.bookkeeping, endpoint, holder_id).await
    }

    async fn advance_webhook(
        &self,
        endpoint: &str,
        holder_id: &str,
        cursor: i64,
        delivered: u32,
        now: i64,
    ) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().await;
        webhooks::advance(
            &self.bookkeeping,
            endpoint,
            holder_id,
            cursor,
            delivered,
            now,
        )
        .await
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
        let _writer = self.writer.lock().await;
        webhooks::failed(
            &self.bookkeeping,
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
        let _writer = self.writer.lock().await;
        webhooks::notify_due(&self.pool, condition, now, repeat).await
    }

    async fn notify_marks(&self) -> Result<Vec<crate::store::NotifyMark>, StoreError> {
        webhooks::notify_marks(&self.pool).await
    }

    async fn notify_clear(&self, condition: &str) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().await;
        webhooks::notify_clear(&self.pool, condition).await
    }

    async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().await;
        let result = sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    // ---- Queue administration (admin.rs). Operator actions are rare and
    // must survive a power cut like the mail they change: the FULL pool.

    async fn list_messages(
        &self,
        filter: &QueueFilter,
        after: Option<&ListCursor>,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        admin::list(&self.pool, filter, after, limit).await
    }

    async fn list_cursor(&self, id: &MessageId) -> Result<Option<ListCursor>, StoreError> {
        admin::cursor(&self.pool, id).await
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
            &self.writer,
            action,
            selection,
            after,
            limit,
            now,
            dry_run,
        )
        .await
    }

    // ---- The HTTP send API (src/store/sqlite/api.rs).

    async fn create_api_key(&self, key: &crate::store::ApiKeyRecord) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().await;
        api::create_key(&self.pool, key).await
    }

    async fn api_key(&self, id: &str) -> Result<Option<crate::store::ApiKeyRecord>, StoreError> {
        api::key(&self.pool, id).await
    }

    async fn api_keys(&self) -> Result<Vec<crate::store::ApiKeyRecord>, StoreError> {
        api::keys(&self.pool).await
    }

    async fn revoke_api_key(&self, name: &str, at: i64) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().await;
        api::revoke_key(&self.pool, name, at).await
    }

    async fn tag_message(
        &self,
        key_id: &str,
        id: &MessageId,
        tags: &[String],
        at: i64,
    ) -> Result<(), StoreError> {
        api::tag(&self.pool, &self.writer, key_id, id, tags, at).await
    }

    async fn untag_message(&self, id: &MessageId) -> Result<(), StoreError> {
        api::untag(&self.pool, &self.writer, id).await
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
            &self.writer,
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
        api::idempotency_finish(
            &self.pool,
            &self.writer,
            key_id,
            idempotency_key,
            status,
            response,
        )
        .await
    }

    async fn idempotency_forget(
        &self,
        key_id: &str,
        idempotency_key: &str,
    ) -> Result<(), StoreError> {
        api::idempotency_forget(&self.pool, &self.writer, key_id, idempotency_key).await
    }

    async fn admit_delivery(
        &self,
        account: &str,
        limits: &crate::delivery::limits::AccountLimits,
        recipients: u32,
        now: f64,
    ) -> Result<crate::delivery::limits::Admission, StoreError> {
        quotas::admit(
            &self.bookkeeping,
            &self.writer,
            account,
            limits,
            recipients,
            now,
        )
        .await
    }

    async fn back_off_account(
        &self,
        account: &str,
        period: Duration,
        now: f64,
    ) -> Result<(), StoreError> {
        quotas::back_off(&self.bookkeeping, &self.writer, account, period, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Contract 1 rests on this: the transaction whose commit a `250` waits
    /// for runs on a connection in WAL mode with `synchronous=FULL`. A crash
    /// test cannot tell FULL from OFF (the page cache survives a killed
    /// process), so the connection is asked. Triggers record what the very
    /// connection that writes the row reports (`pragma_synchronous` is per
    /// connection), so no other connection of a pool can answer for it; the
    /// claim, on the bookkeeping side (NORMAL by design), shows that the
    /// probe tells the two apart.
    #[tokio::test]
    async fn the_connection_that_commits_a_submission_is_wal_with_synchronous_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        let probe = |event: &str, when: &str| {
            format!(
                "CREATE TRIGGER probe_{event} AFTER {when} ON messages BEGIN \
                 INSERT INTO probe SELECT '{event}', s.synchronous, j.journal_mode \
                 FROM pragma_synchronous AS s, pragma_journal_mode AS j; END;"
            )
        };
        let schema = format!(
            "CREATE TABLE probe (event TEXT NOT NULL, synchronous INTEGER NOT NULL, journal_mode TEXT NOT NULL); {} {}",
            probe("enqueue", "INSERT"),
            probe("claim", "UPDATE OF lease_owner")
        );
        sqlx::raw_sql(AssertSqlSafe(schema))
            .execute(&store.pool)
            .await
            .expect("probe triggers");
        for n in 0..3 {
            store
                .enqueue(crate::store::queue::NewMessage {
                    account: "office".into(),
                    mail_from: "app@example.com".into(),
                    recipients: vec![format!("r{n}@example.net")],
                    body: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
                    submitted_by: "test".into(),
                })
                .await
                .expect("enqueue");
        }
        let now = crate::clock::now_unix() + 1;
        let claimed = store.claim("w1", now, now + 60, 10).await.expect("claim");
        assert_eq!(claimed.len(), 3);
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT event, synchronous, journal_mode FROM probe ORDER BY rowid")
                .fetch_all(&store.pool)
                .await
                .expect("probe rows");
        let of = |event: &str| -> Vec<(i64, String)> {
            rows.iter()
                .filter(|(e, _, _)| e == event)
                .map(|(_, s, j)| (*s, j.clone()))
                .collect()
        };
        // PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA.
        assert_eq!(of("enqueue"), vec![(2, "wal".to_string()); 3], "{rows:?}");
        assert_eq!(of("claim"), vec![(1, "wal".to_string()); 3], "{rows:?}");
    }

    /// Every connection of both pools keeps its temporary files (the
    /// sub-journal of each delivery outcome's savepoint) in memory, not in
    /// a file created and deleted on every commit. All of a pool's
    /// connections are held at once, so each is a different connection.
    #[tokio::test]
    async fn every_connection_keeps_its_sub_journals_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        for pool in [&store.pool, &store.bookkeeping] {
            let mut held = Vec::new();
            for _ in 0..pool.options().get_max_connections() {
                let mut conn = pool.acquire().await.expect("acquire");
                // PRAGMA temp_store: 0 DEFAULT (a file here), 1 FILE, 2 MEMORY.
                let mode: i64 = sqlx::query_scalar("PRAGMA temp_store")
                    .fetch_one(&mut *conn)
                    .await
                    .expect("temp_store");
                assert_eq!(mode, 2);
                held.push(conn);
            }
        }
    }

    /// A store written before migration 0008 (bodies in `messages`, no
    /// auto_vacuum): opening it moves every body to `message_bodies`,
    /// keeps the messages deliverable, and converts the file to
    /// incremental vacuum once.
    #[tokio::test]
    async fn migration_0008_moves_bodies_and_enables_incremental_vacuum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        {
            let options = SqliteConnectOptions::from_str(&url)
                .expect("url")
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            let mut conn = sqlx::ConnectOptions::connect(&options)
                .await
                .expect("connect");
            sqlx::query(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )
            .execute(&mut conn)
            .await
            .expect("table");
            for (version, sql) in &MIGRATIONS[..7] {
                apply_migration(&mut conn, *version, sql)
                    .await
                    .expect("old migration");
            }
            let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
                .fetch_one(&mut conn)
                .await
                .expect("mode");
            assert_eq!(mode, 0, "an old file has no auto_vacuum");
            for (id, state) in [("Q1", "queued"), ("D1", "delivered")] {
                sqlx::query(
                    "INSERT INTO messages (id, account, mail_from, body, size, submitted_by, state, created_at, next_attempt_at, updated_at) \
                     VALUES (?, 'office', 'a@x', ?, 4, 'test', ?, 1, 1, 1)",
                )
                .bind(id)
                .bind(format!("body of {id}").into_bytes())
                .bind(state)
                .execute(&mut conn)
                .await
                .expect("old message");
                sqlx::query(
                    "INSERT INTO recipients (message_id, idx, address, state, updated_at) VALUES (?, 0, 'r@x', 'pending', 1)",
                )
                .bind(id)
                .execute(&mut conn)
                .await
                .expect("old recipient");
            }
        }
        let store = SqliteStore::open(&url).await.expect("open migrates");
        for id in ["Q1", "D1"] {
            let (_, body) = store
                .message(&MessageId(id.into()))
                .await
                .expect("read")
                .expect("kept");
            assert_eq!(body, format!("body of {id}").into_bytes());
        }
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&store.pool)
            .await
            .expect("mode");
        assert_eq!(mode, 2, "converted to incremental");
        let now = crate::clock::now_unix();
        let claimed = store.claim("w", now, now + 60, 10).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].body, b"body of Q1");
    }

    #[tokio::test]
    async fn generation_guards_against_stale_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        let mut record = TokenRecord::new("office");
        record.generation = 1;
        assert!(store.save_token_record(&record).await.expect("insert"));
        assert!(
            !store
                .save_token_record(&record)
                .await
                .expect("second insert loses")
        );
        let mut newer = record.clone();
        newer.generation = 2;
        newer.state = AccountState::Valid;
        assert!(store.save_token_record(&newer).await.expect("update"));
        // A writer that read generation 1 and now tries to write 2 loses.
        assert!(!store.save_token_record(&newer).await.expect("stale update"));
        let stored = store
            .token_record("office")
            .await
            .expect("read")
            .expect("row");
        assert_eq!(stored.state, AccountState::Valid);
        assert_eq!(stored.generation, 2);
        // Reopening applies no migration twice.
        drop(store);
        SqliteStore::open(&url).await.expect("reopen");
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;
    use crate::store::MessageState;
    use crate::store::queue::{AttemptOutcome, NewMessage, RecipientState};

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("l.db").display());
        (dir, SqliteStore::open(&url).await.expect("open"))
    }

    fn holder(id: &str) -> Holder {
        Holder {
            id: id.into(),
            pid: 4242,
            locality: "host boot:b pidns:pid:[1]".into(),
        }
    }

    #[tokio::test]
    async fn refresh_lease_is_exclusive_until_it_expires_or_its_holder_is_gone() {
        let (_dir, store) = store().await;
        let (a, b) = (holder("a"), holder("b"));
        let granted = |grant: LeaseGrant| grant == LeaseGrant::Granted;
        assert!(granted(
            store
                .acquire_refresh_lease("office", &a, 100, 160, None)
                .await
                .expect("store")
        ));
        match store
            .acquire_refresh_lease("office", &b, 110, 170, None)
            .await
            .expect("store")
        {
            LeaseGrant::HeldBy { holder, expires_at } => {
                assert_eq!(holder, a, "names its holder");
                assert_eq!(expires_at, 160);
            }
            LeaseGrant::Granted => panic!("a held lease was granted to another"),
        }
        assert!(
            granted(
                store
                    .acquire_refresh_lease("other", &b, 110, 170, None)
                    .await
                    .expect("store")
            ),
            "one lease per account"
        );
        assert!(
            granted(
                store
                    .acquire_refresh_lease("office", &a, 120, 180, None)
                    .await
                    .expect("store")
            ),
            "the holder renews"
        );
        assert!(
            granted(
                store
                    .acquire_refresh_lease("office", &b, 130, 190, Some("a"))
                    .await
                    .expect("store")
            ),
            "taken over from a holder found gone"
        );
        assert!(
            granted(
                store
                    .acquire_refresh_lease("office", &a, 191, 250, None)
                    .await
                    .expect("store")
            ),
            "free once expired"
        );
        store
            .release_refresh_lease("office", "b")
            .await
            .expect("store");
        assert!(
            !granted(
                store
                    .acquire_refresh_lease("office", &b, 200, 260, None)
                    .await
                    .expect("store")
            ),
            "only the holder gives it back"
        );
        store
            .release_refresh_lease("office", "a")
            .await
            .expect("store");
        assert!(granted(
            store
                .acquire_refresh_lease("office", &b, 200, 260, None)
                .await
                .expect("store")
        ));
    }

    #[tokio::test]
    async fn credential_epochs_are_read_per_account() {
        let (_dir, store) = store().await;
        let mut record = TokenRecord::new("office");
        record.generation = 1;
        record.credential_epoch = 3;
        assert!(store.save_token_record(&record).await.expect("insert"));
        let epochs = store.credential_epochs().await.expect("store");
        assert_eq!(epochs.get("office"), Some(&3));
        assert_eq!(
            store
                .token_record("office")
                .await
                .expect("read")
                .expect("row")
                .credential_epoch,
            3
        );
    }

    fn message() -> NewMessage {
        NewMessage {
            account: "office".into(),
            mail_from: "app@example.com".into(),
            recipients: vec!["a@x".into()],
            body: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
            submitted_by: "test".into(),
        }
    }

    /// The writers that run while `serve` accepts and delivers, and an
    /// operator's lockdown, at once, on a file opened with no busy timeout: a writer that
    /// skipped the write gate would meet another's lock and fail with
    /// "database is locked" here, where in production it would sleep in
    /// SQLite's busy handler (1, 2, 5, 10 ms ...) and hold up the group
    /// commits queued behind it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_writer_of_one_process_waits_its_turn_without_the_busy_handler() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let store = std::sync::Arc::new(
            SqliteStore::open_waiting(&url, Duration::ZERO)
                .await
                .expect("open"),
        );
        let now = crate::clock::now_unix();
        const ROUNDS: u64 = 40;
        let mut writers = tokio::task::JoinSet::new();
        for n in 0..4 {
            let store = store.clone();
            writers.spawn(async move {
                for _ in 0..ROUNDS {
                    store.enqueue(message()).await.map(drop)?;
                }
                let owner = format!("w{n}");
                for claimed in store.claim(&owner, now, now + 300, 20).await? {
                    let outcome = AttemptOutcome {
                        recipients: vec![(0, RecipientState::Delivered, Some("250 ok".into()))],
                        next_attempt_at: None,
                        error: None,
                    };
                    store
                        .complete_attempt(&claimed.message.id, &claimed.lease, &outcome)
                        .await?;
                }
                Ok::<_, StoreError>("enqueue, claim, outcome")
            });
        }
        let anchors = store.clone();
        writers.spawn(async move {
            let mut before: Option<AuditAnchor> = None;
            for seq in 1..=ROUNDS {
                let next = AuditAnchor {
                    seq,
                    hash: format!("{seq:064x}"),
                };
                assert!(
                    anchors
                        .advance_audit_anchor("chain", before.as_ref(), &next)
                        .await?
                );
                before = Some(next);
            }
            Ok("audit anchor")
        });
        let beats = store.clone();
        writers.spawn(async move {
            let me = holder("beating");
            for n in 0..ROUNDS as i64 {
                beats.heartbeat(&me, now, now + 30 + n).await?;
                beats
                    .record_event(&Event {
                        at: now,
                        kind: "test".into(),
                        account: None,
                        message_id: None,
                        detail: format!("{n}"),
                    })
                    .await?;
            }
            Ok("heartbeat, event")
        });
        let leases = store.clone();
        writers.spawn(async move {
            let me = holder("refresher");
            for n in 0..ROUNDS as i64 {
                leases
                    .acquire_refresh_lease("office", &me, now + n, now + n + 60, None)
                    .await?;
                leases.release_refresh_lease("office", &me.id).await?;
                leases.notify_due("test", now + n, 0).await?;
            }
            Ok("refresh lease, notification mark")
        });
        let operator = store.clone();
        writers.spawn(async move {
            let metered = crate::delivery::limits::AccountLimits {
                messages_per_minute: Some(100_000),
                ..Default::default()
            };
            for n in 0..ROUNDS as i64 {
                operator.set_lockdown(Some("test")).await?;
                operator.set_lockdown(None).await?;
                operator
                    .admit_delivery("metered", &metered, 1, (now + n) as f64)
                    .await?;
                operator
                    .back_off_account("throttled", Duration::from_secs(1), (now + n) as f64)
                    .await?;
            }
            Ok("lockdown, quotas, back-off")
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while let Some(done) = tokio::time::timeout_at(deadline.into(), writers.join_next())
            .await
            .expect("the writers finish within a minute")
        {
            let writer = done.expect("no writer panics");
            assert!(writer.is_ok(), "a writer met a held lock: {writer:?}");
        }
    }

    #[tokio::test]
    async fn a_claim_holds_while_its_instance_beats_and_returns_when_it_stops() {
        let (_dir, store) = store().await;
        let id = store.enqueue(message()).await.expect("enqueue");
        let now = crate::clock::now_unix();
        let alive = holder("alive");
        store
            .heartbeat(&alive, now, now + 30)
            .await
            .expect("register");
        let claimed = store
            .claim("alive/w0", now, now + 300, 10)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        assert!(
            store
                .claim("other/w0", now + 10, now + 310, 10)
                .await
                .expect("claim")
                .is_empty(),
            "a live instance keeps its claim"
        );
        assert_eq!(
            store.next_due().await.expect("due"),
            Some(now + 31),
            "due when the heartbeat ends"
        );
        // No heartbeat since: 31 s later the claim is free, long before
        // the 300-second lease ends.
        let taken = store
            .claim("other/w0", now + 31, now + 331, 10)
            .await
            .expect("claim");
        assert_eq!(taken.len(), 1, "a silent death frees the claim");
        let lost = store.release(&id, &claimed[0].lease, now + 31).await;
        assert!(matches!(lost, Err(StoreError::LeaseLost(_))));

        // release_instance gives back what an instance holds at once.
        store
            .heartbeat(&holder("other"), now, now + 60)
            .await
            .expect("register");
        assert_eq!(
            store
                .release_instance("other", now + 32)
                .await
                .expect("store"),
            1
        );
        let (message, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(message.state, MessageState::Queued);
        assert_eq!(message.next_attempt_at, now + 32);
        let instances = store.instances().await.expect("store");
        assert_eq!(
            instances
                .iter()
                .map(|i| i.holder.id.as_str())
                .collect::<Vec<_>>(),
            ["alive"],
            "released instances are forgotten"
        );
        assert_eq!(instances[0].holder, alive);
    }
}
