//! The send API's tables on SQLite (migration 0011): API keys, message
//! tags, idempotency keys, and the listing behind `GET /v1/messages`.
//!
//! The listing pages by (created_at, id) newest first like `queue list`
//! (admin.rs), through an index for each way in: `messages_listing` and
//! `messages_listing_by_state` (0009) for every message, the submitter
//! index (0011) for a key's own messages, and the tags' primary key for a
//! tag. `since` is the lower end of the same range. The plan tests below
//! keep each one a range search without a sort.

use super::admin::attach_recipients;
use super::queue::{MESSAGE_COLUMNS, WriteGate, message_from_row};
use crate::store::{
    ApiKeyRecord, ApiListQuery, ApiListed, IdempotencyState, ListCursor, MessageId, StoreError,
};
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Arguments, AssertSqlSafe, Row};

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

fn json_list(values: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(values).map_err(|e| corrupt("a list that is not JSON", e))
}

fn parse_list(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt("an API key's list", e))
}

fn encode_error(error: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(error))
}

const KEY_COLUMNS: &str = "id, name, secret_hash, scopes, allowed_from, accounts, rate_count, rate_period, created_at, revoked_at";

fn key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord, StoreError> {
    let count: Option<i64> = row.try_get("rate_count")?;
    let period: Option<i64> = row.try_get("rate_period")?;
    let rate = match (count, period) {
        (Some(count), Some(period)) => Some((
            u32::try_from(count).map_err(|e| corrupt("a rate", e))?,
            u32::try_from(period).map_err(|e| corrupt("a rate period", e))?,
        )),
        _ => None,
    };
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        scopes: parse_list(row.try_get("scopes")?)?,
        allowed_from: parse_list(row.try_get("allowed_from")?)?,
        accounts: parse_list(row.try_get("accounts")?)?,
        rate,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

pub(super) async fn create_key(pool: &SqlitePool, key: &ApiKeyRecord) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "INSERT INTO api_keys (id, name, secret_hash, scopes, allowed_from, accounts, rate_count, rate_period, created_at, revoked_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
    )
    .bind(&key.id)
    .bind(&key.name)
    .bind(&key.secret_hash)
    .bind(json_list(&key.scopes)?)
    .bind(json_list(&key.allowed_from)?)
    .bind(json_list(&key.accounts)?)
    .bind(key.rate.map(|r| i64::from(r.0)))
    .bind(key.rate.map(|r| i64::from(r.1)))
    .bind(key.created_at)
    .execute(pool)
    .await;
    match result {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn key(pool: &SqlitePool, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?");
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
}

pub(super) async fn keys(pool: &SqlitePool) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, name");
    sqlx::query(AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
}

pub(super) async fn revoke_key(pool: &SqlitePool, name: &str, at: i64) -> Result<bool, StoreError> {
    let result =
        sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
            .bind(at)
            .bind(name)
            .execute(pool)
            .await?;
    Ok(result.rows_affected() > 0)
}

pub(super) async fn tag(
    pool: &SqlitePool,
    writer: &WriteGate,
    key_id: &str,
    id: &MessageId,
    tags: &[String],
    at: i64,
) -> Result<(), StoreError> {
    if tags.is_empty() {
        return Ok(());
    }
    let _writer = writer.lock().await;
    // One statement and one variable for the tags, however many.
    sqlx::query(
        "INSERT OR IGNORE INTO api_message_tags (key_id, tag, tagged_at, message_id) \
         SELECT ?, value, ?, ? FROM json_each(?)",
    )
    .bind(key_id)
    .bind(at)
    .bind(&id.0)
    .bind(json_list(tags)?)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn untag(
    pool: &SqlitePool,
    writer: &WriteGate,
    id: &MessageId,
) -> Result<(), StoreError> {
    let _writer = writer.lock().await;
    sqlx::query("DELETE FROM api_message_tags WHERE message_id = ?")
        .bind(&id.0)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn tags(pool: &SqlitePool, id: &MessageId) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT tag FROM api_message_tags WHERE message_id = ? ORDER BY tag",
    )
    .bind(&id.0)
    .fetch_all(pool)
    .await?)
}

/// The listing's SQL and arguments; `LIMIT ?` is bound last by the caller.
fn list_statement(
    query: &ApiListQuery,
    after: Option<&ListCursor>,
) -> Result<(String, SqliteArguments), StoreError> {
    let mut arguments = SqliteArguments::default();
    let start = after.map_or((i64::MAX, String::new()), |c| {
        (c.created_at, c.id.0.clone())
    });
    let since = query.since.unwrap_or(i64::MIN);
    let sql = match &query.tag {
        Some((key_id, tag)) => {
            arguments.add(key_id.clone()).map_err(encode_error)?;
            arguments.add(tag.clone()).map_err(encode_error)?;
            let mut conditions = vec![
                "t.key_id = ?",
                "t.tag = ?",
                "(t.tagged_at, t.message_id) < (?, ?)",
                "t.tagged_at >= ?",
            ];
            arguments.add(start.0).map_err(encode_error)?;
            arguments.add(start.1).map_err(encode_error)?;
            arguments.add(since).map_err(encode_error)?;
            if let Some(state) = query.state {
                conditions.push("m.state = ?");
                arguments.add(state.as_str()).map_err(encode_error)?;
            }
            if let Some(submitter) = &query.submitted_by {
                conditions.push("m.submitted_by = ?");
                arguments.add(submitter.clone()).map_err(encode_error)?;
            }
            format!(
                "SELECT {MESSAGE_COLUMNS}, t.tagged_at AS cursor_at FROM api_message_tags t JOIN messages m ON m.id = t.message_id \
                 WHERE {} ORDER BY t.tagged_at DESC, t.message_id DESC LIMIT ?",
                conditions.join(" AND ")
            )
        }
        None => {
            let mut conditions = Vec::new();
            if let Some(submitter) = &query.submitted_by {
                conditions.push("submitted_by = ?");
                arguments.add(submitter.clone()).map_err(encode_error)?;
            } else if let Some(state) = query.state {
                // By state through its index only when the submitter's is
                // not used; with both, the state is checked on the rows.
                conditions.push("state = ?");
                arguments.add(state.as_str()).map_err(encode_error)?;
            }
            conditions.push("(created_at, id) < (?, ?)");
            conditions.push("created_at >= ?");
            arguments.add(start.0).map_err(encode_error)?;
            arguments.add(start.1).map_err(encode_error)?;
            arguments.add(since).map_err(encode_error)?;
            if let (Some(_), Some(state)) = (&query.submitted_by, query.state) {
                conditions.push("state = ?");
                arguments.add(state.as_str()).map_err(encode_error)?;
            }
            format!(
                "SELECT {MESSAGE_COLUMNS}, created_at AS cursor_at FROM messages WHERE {} \
                 ORDER BY created_at DESC, id DESC LIMIT ?",
                conditions.join(" AND ")
            )
        }
    };
    Ok((sql, arguments))
}

pub(super) async fn list(
    pool: &SqlitePool,
    query: &ApiListQuery,
    after: Option<&ListCursor>,
    limit: u32,
) -> Result<Vec<ApiListed>, StoreError> {
    let (sql, mut arguments) = list_statement(query, after)?;
    arguments.add(limit).map_err(encode_error)?;
    let mut tx = pool.begin().await?;
    // Built from the constant fragments above; every value is bound.
    let rows = sqlx::query_with(AssertSqlSafe(sql), arguments)
        .fetch_all(&mut *tx)
        .await?;
    let mut messages = Vec::with_capacity(rows.len());
    let mut cursors = Vec::with_capacity(rows.len());
    for row in &rows {
        let message = message_from_row(row)?;
        cursors.push(ListCursor {
            created_at: row.try_get("cursor_at")?,
            id: message.id.clone(),
        });
        messages.push(message);
    }
    attach_recipients(&mut tx, &mut messages).await?;
    tx.commit().await?;
    Ok(cursors
        .into_iter()
        .zip(messages)
        .map(|(cursor, message)| ApiListed { cursor, message })
        .collect())
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn idempotency_begin(
    pool: &SqlitePool,
    writer: &WriteGate,
    key_id: &str,
    idempotency_key: &str,
    request_hash: &str,
    reserved: &[MessageId],
    now: i64,
    expires_at: i64,
    stale_before: i64,
) -> Result<IdempotencyState, StoreError> {
    let reserved_json = serde_json::to_string(&reserved.iter().map(|id| &id.0).collect::<Vec<_>>())
        .map_err(|e| corrupt("message ids", e))?;
    let _writer = writer.lock().await;
    let mut conn = pool.acquire().await?;
    // IMMEDIATE: the read and the write below see one state, also against
    // another process.
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let result = async {
        // Keys past their time are forgotten, a few at a time.
        sqlx::query(
            "DELETE FROM api_idempotency WHERE rowid IN \
             (SELECT rowid FROM api_idempotency WHERE expires_at < ? LIMIT 100)",
        )
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let existing = sqlx::query(
            "SELECT request_hash, reserved_ids, status, response, created_at FROM api_idempotency \
             WHERE key_id = ? AND idempotency_key = ?",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = existing else {
            sqlx::query(
                "INSERT INTO api_idempotency (key_id, idempotency_key, request_hash, reserved_ids, status, response, created_at, expires_at) \
                 VALUES (?, ?, ?, ?, NULL, NULL, ?, ?)",
            )
            .bind(key_id)
            .bind(idempotency_key)
            .bind(request_hash)
            .bind(&reserved_json)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *conn)
            .await?;
            return Ok(IdempotencyState::Started);
        };
        let hash: String = row.try_get("request_hash")?;
        if hash != request_hash {
            return Ok(IdempotencyState::Mismatch);
        }
        let status: Option<i64> = row.try_get("status")?;
        let response: Option<String> = row.try_get("response")?;
        if let (Some(status), Some(response)) = (status, response) {
            let status = u16::try_from(status).map_err(|e| corrupt("an HTTP status", e))?;
            return Ok(IdempotencyState::Answered { status, response });
        }
        let created_at: i64 = row.try_get("created_at")?;
        if created_at >= stale_before {
            return Ok(IdempotencyState::Pending { created_at });
        }
        let ids: Vec<String> = serde_json::from_str(row.try_get("reserved_ids")?)
            .map_err(|e| corrupt("reserved message ids", e))?;
        sqlx::query(
            "UPDATE api_idempotency SET created_at = ? WHERE key_id = ? AND idempotency_key = ?",
        )
        .bind(now)
        .bind(key_id)
        .bind(idempotency_key)
        .execute(&mut *conn)
        .await?;
        Ok(IdempotencyState::TakenOver {
            reserved: ids.into_iter().map(MessageId).collect(),
        })
    }
    .await;
    match result {
        Ok(state) => {
            sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
            Ok(state)
        }
        Err(error) => {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            Err(error)
        }
    }
}

pub(super) async fn idempotency_finish(
    pool: &SqlitePool,
    writer: &WriteGate,
    key_id: &str,
    idempotency_key: &str,
    status: u16,
    response: &str,
) -> Result<(), StoreError> {
    let _writer = writer.lock().await;
    sqlx::query(
        "UPDATE api_idempotency SET status = ?, response = ? WHERE key_id = ? AND idempotency_key = ?",
    )
    .bind(i64::from(status))
    .bind(response)
    .bind(key_id)
    .bind(idempotency_key)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn idempotency_forget(
    pool: &SqlitePool,
    writer: &WriteGate,
    key_id: &str,
    idempotency_key: &str,
) -> Result<(), StoreError> {
    let _writer = writer.lock().await;
    sqlx::query(
        "DELETE FROM api_idempotency WHERE key_id = ? AND idempotency_key = ? AND status IS NULL",
    )
    .bind(key_id)
    .bind(idempotency_key)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::store::MessageState;
    use crate::store::sqlite::SqliteStore;

    async fn plan(store: &SqliteStore, query: &ApiListQuery) -> Vec<String> {
        let cursor = ListCursor {
            created_at: 100,
            id: MessageId("A".into()),
        };
        let (sql, mut arguments) = list_statement(query, Some(&cursor)).expect("statement");
        arguments.add(50u32).expect("bind");
        let rows = sqlx::query_with(
            AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")),
            arguments,
        )
        .fetch_all(&store.pool)
        .await
        .expect("plan");
        rows.iter()
            .map(|row| row.try_get::<String, _>("detail").expect("detail"))
            .collect()
    }

    /// Every listing the API offers is a range search on an index in
    /// listing order: no table scan, no temporary B-tree for the order.
    #[tokio::test]
    async fn api_listings_search_an_index_and_never_sort() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("plan.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        let tag = Some(("k1".to_string(), "invoice".to_string()));
        let own = Some("api:billing".to_string());
        let cases = [
            ("all", ApiListQuery::default(), "messages_listing"),
            (
                "by state",
                ApiListQuery {
                    state: Some(MessageState::Deferred),
                    since: Some(5),
                    ..Default::default()
                },
                "messages_listing_by_state",
            ),
            (
                "own",
                ApiListQuery {
                    submitted_by: own.clone(),
                    state: Some(MessageState::Queued),
                    ..Default::default()
                },
                "messages_listing_by_submitter",
            ),
            (
                "by tag",
                ApiListQuery {
                    tag: tag.clone(),
                    submitted_by: own,
                    state: Some(MessageState::Queued),
                    since: Some(5),
                },
                "SEARCH t USING PRIMARY KEY",
            ),
        ];
        for (name, query, index) in cases {
            let plan = plan(&store, &query).await;
            let text = plan.join(" | ");
            assert!(text.contains(index), "{name}: {text}");
            assert!(!text.contains("TEMP B-TREE"), "{name} sorts: {text}");
            assert!(
                !plan.iter().any(|line| line.starts_with("SCAN")),
                "{name} scans: {text}"
            );
        }
    }
}

#[cfg(test)]
mod idempotency_tests {
    use crate::store::sqlite::SqliteStore;
    use crate::store::{IdempotencyState, MessageId, Store};

    /// The claim's life: started, pending to a duplicate, taken over with
    /// the same ids once its process is presumed dead, answered, refused
    /// for another request, and new again once expired.
    #[tokio::test]
    async fn a_claim_is_pending_then_taken_over_answered_and_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("idem.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        let ids = vec![MessageId("AA".into()), MessageId("BB".into())];
        let other = vec![MessageId("CC".into())];
        let begin = |hash: &'static str, reserved: Vec<MessageId>, now: i64, stale: i64| {
            let store = store.clone();
            async move {
                store
                    .idempotency_begin("k1", "order-1", hash, &reserved, now, now + 100, stale)
                    .await
                    .expect("begin")
            }
        };
        assert_eq!(
            begin("h", ids.clone(), 10, 0).await,
            IdempotencyState::Started
        );
        assert_eq!(
            begin("h", other.clone(), 11, 0).await,
            IdempotencyState::Pending { created_at: 10 }
        );
        assert_eq!(
            begin("other", other.clone(), 11, 0).await,
            IdempotencyState::Mismatch
        );
        // Its process died: the next one takes the ids it reserved.
        assert_eq!(
            begin("h", other.clone(), 80, 70).await,
            IdempotencyState::TakenOver {
                reserved: ids.clone()
            }
        );
        store
            .idempotency_finish("k1", "order-1", 202, "{\"id\":\"AA\"}")
            .await
            .expect("finish");
        assert_eq!(
            begin("h", other.clone(), 81, 0).await,
            IdempotencyState::Answered {
                status: 202,
                response: "{\"id\":\"AA\"}".into()
            }
        );
        // Another API key's claim of the same name is its own.
        let theirs = store
            .idempotency_begin("k2", "order-1", "x", &other, 81, 181, 0)
            .await
            .expect("begin");
        assert_eq!(theirs, IdempotencyState::Started);
        // Expired (created at 10, kept until 110): new again.
        assert_eq!(
            begin("new", other.clone(), 200, 0).await,
            IdempotencyState::Started
        );
        // A forgotten claim (the store failed) starts afresh.
        store
            .idempotency_forget("k1", "order-1")
            .await
            .expect("forget");
        assert_eq!(begin("again", ids, 201, 0).await, IdempotencyState::Started);
    }
}
