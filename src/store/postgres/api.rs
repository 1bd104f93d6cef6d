//! The send API's tables on PostgreSQL (migration 0003), with the
//! semantics of the SQLite side (src/store/sqlite/api.rs): API keys,
//! message tags, idempotency keys, and the listing behind `GET
//! /v1/messages`, paged by (created_at, id) newest first through the same
//! indexes. The idempotency claim locks its row (`FOR UPDATE`) so two
//! instances answering the same key at once see one state.

use super::admin::attach_recipients;
use super::queue::{MESSAGE_COLUMNS, message_from_row};
use crate::store::{
    ApiKeyRecord, ApiListQuery, ApiListed, IdempotencyState, ListCursor, MessageId, StoreError,
};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
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

fn key_from_row(row: &PgRow) -> Result<ApiKeyRecord, StoreError> {
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

pub(super) async fn create_key(pool: &PgPool, key: &ApiKeyRecord) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "INSERT INTO api_keys (id, name, secret_hash, scopes, allowed_from, accounts, rate_count, rate_period, created_at, revoked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)",
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

pub(super) async fn key(pool: &PgPool, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
}

pub(super) async fn keys(pool: &PgPool) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, name");
    sqlx::query(AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
}

pub(super) async fn revoke_key(pool: &PgPool, name: &str, at: i64) -> Result<bool, StoreError> {
    let result =
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
            .bind(at)
            .bind(name)
            .execute(pool)
            .await?;
    Ok(result.rows_affected() > 0)
}

pub(super) async fn tag(
    pool: &PgPool,
    key_id: &str,
    id: &MessageId,
    tags: &[String],
    at: i64,
) -> Result<(), StoreError> {
    if tags.is_empty() {
        return Ok(());
    }
    // One statement and one parameter for the tags, however many.
    sqlx::query(
        "INSERT INTO api_message_tags (key_id, tag, tagged_at, message_id) \
         SELECT $1, tag, $2, $3 FROM UNNEST($4::TEXT[]) AS t (tag) ON CONFLICT DO NOTHING",
    )
    .bind(key_id)
    .bind(at)
    .bind(&id.0)
    .bind(tags)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn untag(pool: &PgPool, id: &MessageId) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM api_message_tags WHERE message_id = $1")
        .bind(&id.0)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn tags(pool: &PgPool, id: &MessageId) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT tag FROM api_message_tags WHERE message_id = $1 ORDER BY tag",
    )
    .bind(&id.0)
    .fetch_all(pool)
    .await?)
}

/// The listing's SQL and arguments; `LIMIT ?` is bound last by the caller.
fn list_statement(
    query: &ApiListQuery,
    after: Option<&ListCursor>,
) -> Result<(String, PgArguments), StoreError> {
    let mut arguments = PgArguments::default();
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
    Ok((numbered(&sql), arguments))
}

/// `?` placeholders (in binding order) as PostgreSQL's `$1`, `$2` ...: the
/// listing's fragments are shared in shape with the SQLite side.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) async fn list(
    pool: &PgPool,
    query: &ApiListQuery,
    after: Option<&ListCursor>,
    limit: u32,
) -> Result<Vec<ApiListed>, StoreError> {
    let (sql, mut arguments) = list_statement(query, after)?;
    arguments.add(i64::from(limit)).map_err(encode_error)?;
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
    pool: &PgPool,
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
    let mut tx = pool.begin().await?;
    // Keys past their time are forgotten, a few at a time, and this one
    // if it is past its time.
    sqlx::query(
        "DELETE FROM api_idempotency WHERE ctid IN \
         (SELECT ctid FROM api_idempotency WHERE expires_at < $1 LIMIT 100 FOR UPDATE SKIP LOCKED)",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM api_idempotency WHERE key_id = $1 AND idempotency_key = $2 AND expires_at < $3",
    )
    .bind(key_id)
    .bind(idempotency_key)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    // The insert decides between concurrent first uses (the primary key);
    // a loser waits for the winner's commit and then reads its row.
    let started = sqlx::query(
        "INSERT INTO api_idempotency (key_id, idempotency_key, request_hash, reserved_ids, status, response, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, NULL, NULL, $5, $6) ON CONFLICT (key_id, idempotency_key) DO NOTHING",
    )
    .bind(key_id)
    .bind(idempotency_key)
    .bind(request_hash)
    .bind(&reserved_json)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let state = if started {
        IdempotencyState::Started
    } else {
        let row = sqlx::query(
            "SELECT request_hash, reserved_ids, status, response, created_at FROM api_idempotency \
             WHERE key_id = $1 AND idempotency_key = $2 FOR UPDATE",
        )
        .bind(key_id)
        .bind(idempotency_key)
        .fetch_one(&mut *tx)
        .await?;
        existing_state(
            &mut tx,
            &row,
            key_id,
            idempotency_key,
            request_hash,
            now,
            stale_before,
        )
        .await?
    };
    tx.commit().await?;
    Ok(state)
}

/// What a key already in use means for a request with `request_hash`.
async fn existing_state(
    conn: &mut sqlx::PgConnection,
    row: &PgRow,
    key_id: &str,
    idempotency_key: &str,
    request_hash: &str,
    now: i64,
    stale_before: i64,
) -> Result<IdempotencyState, StoreError> {
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
        "UPDATE api_idempotency SET created_at = $1 WHERE key_id = $2 AND idempotency_key = $3",
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

pub(super) async fn idempotency_finish(
    pool: &PgPool,
    key_id: &str,
    idempotency_key: &str,
    status: u16,
    response: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE api_idempotency SET status = $1, response = $2 WHERE key_id = $3 AND idempotency_key = $4",
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
    pool: &PgPool,
    key_id: &str,
    idempotency_key: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM api_idempotency WHERE key_id = $1 AND idempotency_key = $2 AND status IS NULL",
    )
    .bind(key_id)
    .bind(idempotency_key)
    .execute(pool)
    .await?;
    Ok(())
}
