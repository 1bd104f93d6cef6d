//! SQLite backend: one file, WAL journal with `synchronous=FULL` so that a
//! committed transaction survives power loss (contract 1), created with mode
//! 0600. Schema changes are numbered SQL files applied once each, in order.

mod queue;

use super::queue::{
    AttemptOutcome, ClaimLease, Claimed, MessageId, MessageState, NewMessage, QueuedMessage,
};
use super::{AccountState, Event, Lockdown, Store, StoreError, TokenRecord};
use crate::secret::SealedValue;
use crate::users::SubmissionUser;
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use std::str::FromStr;
use std::time::Duration;

/// The schema, in order. A released file is never edited; add a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("0001_accounts.sql")),
    (2, include_str!("0002_queue.sql")),
    (3, include_str!("0003_users.sql")),
    (4, include_str!("0004_control.sql")),
    (5, include_str!("0005_account_secrets.sql")),
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
    committer: queue::GroupCommitter,
}

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
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
            // Several processes (serve, the CLI) share one file; wait for a
            // writer rather than fail at once.
            .busy_timeout(Duration::from_secs(10));
        let path = options.get_filename().to_path_buf();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .map_err(|e| open_error(e.to_string()))?;
        restrict_permissions(&path);
        let bookkeeping = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let store = SqliteStore {
            committer: queue::GroupCommitter::start(pool.clone()),
            pool,
            bookkeeping,
        };
        store.migrate().await?;
        Ok(store)
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

#[cfg(unix)]
fn restrict_permissions(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    // Tokens in the file are sealed, but metadata (accounts, recipients) is
    // not anyone else's business either.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &std::path::Path) {}

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
    })
}

const RECORD_COLUMNS: &str = "account, generation, state, state_reason, refresh_token, access_token, \
    access_expires_at, access_refresh_at, granted_scope, consented_at, last_success_at, \
    last_failure_at, consecutive_failures, updated_at";

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
        let previous = record.generation - 1;
        let bytes = |v: &Option<SealedValue>| v.as_ref().map(|s| s.as_bytes().to_vec());
        let query = if previous == 0 {
            // ON CONFLICT DO NOTHING: a row that appeared meanwhile means
            // another writer won.
            format!(
                "INSERT INTO account_tokens ({RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT(account) DO NOTHING"
            )
        } else {
            "UPDATE account_tokens SET account = ?, generation = ?, state = ?, state_reason = ?, \
             refresh_token = ?, access_token = ?, access_expires_at = ?, access_refresh_at = ?, \
             granted_scope = ?, consented_at = ?, last_success_at = ?, last_failure_at = ?, \
             consecutive_failures = ?, updated_at = ? WHERE account = ? AND generation = ?"
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
            .bind(record.updated_at);
        if previous != 0 {
            q = q.bind(&record.account).bind(previous);
        }
        let result = q.execute(&self.pool).await?;
        Ok(result.rows_affected() == 1)
    }

    async fn record_event(&self, event: &Event) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO events (at, kind, account, detail) VALUES (?, ?, ?, ?)")
            .bind(event.at)
            .bind(&event.kind)
            .bind(&event.account)
            .bind(&event.detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn events(&self, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, kind, account, detail FROM (SELECT * FROM events ORDER BY id DESC LIMIT ?) ORDER BY id",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Event {
                    at: row.try_get("at")?,
                    kind: row.try_get("kind")?,
                    account: row.try_get("account")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    async fn enqueue(&self, message: NewMessage) -> Result<MessageId, StoreError> {
        self.committer.enqueue(message).await
    }

    async fn claim(
        &self,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        queue::claim(&self.bookkeeping, owner, now, lease_until, limit).await
    }

    async fn complete_attempt(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        outcome: &AttemptOutcome,
    ) -> Result<MessageState, StoreError> {
        queue::complete_attempt(&self.bookkeeping, id, lease, outcome).await
    }

    async fn release(
        &self,
        id: &MessageId,
        lease: &ClaimLease,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        queue::release(&self.bookkeeping, id, lease, next_attempt_at).await
    }

    async fn messages(
        &self,
        state: Option<MessageState>,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        queue::messages(&self.pool, state, limit).await
    }

    async fn message(
        &self,
        id: &MessageId,
    ) -> Result<Option<(QueuedMessage, Vec<u8>)>, StoreError> {
        queue::message(&self.pool, id).await
    }

    async fn retry_now(&self, id: &MessageId, now: i64) -> Result<bool, StoreError> {
        queue::retry_now(&self.pool, id, now).await
    }

    async fn delete(&self, id: &MessageId) -> Result<bool, StoreError> {
        queue::delete(&self.pool, id).await
    }

    async fn expire(&self, cutoff: i64) -> Result<Vec<QueuedMessage>, StoreError> {
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
                })
            })
            .collect()
    }

    async fn add_user(&self, user: &SubmissionUser) -> Result<bool, StoreError> {
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

    async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
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
