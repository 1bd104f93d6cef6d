//! Webhook cursors and notification marks on PostgreSQL (migration 0002),
//! with the semantics of the SQLite side (src/store/sqlite/webhooks.rs):
//! one row per endpoint or open condition, each statement on one row by
//! its key. A new endpoint's cursor starts at the end of the event log,
//! read behind the log's gate (queue::insert_event), so an event still
//! being written with a lower id is not skipped.

use super::admin::attach_recipients;
use super::holder_from_row;
use super::queue::{MESSAGE_COLUMNS, message_from_row};
use crate::instance::Holder;
use crate::store::queue::{MessageId, QueuedMessage};
use crate::store::{NotifyMark, StoreError, WebhookCursor, WebhookHold, WebhookStatus};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{AssertSqlSafe, Row};

const CURSOR_COLUMNS: &str =
    "endpoint, cursor, attempts, next_attempt_at, last_error, delivered, last_delivered_at";

fn cursor_from_row(row: &PgRow) -> Result<WebhookCursor, StoreError> {
    Ok(WebhookCursor {
        endpoint: row.try_get("endpoint")?,
        cursor: row.try_get("cursor")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        delivered: row.try_get("delivered")?,
        last_delivered_at: row.try_get("last_delivered_at")?,
    })
}

pub(super) async fn hold(
    pool: &PgPool,
    gate: i64,
    endpoint: &str,
    holder: &Holder,
    now: i64,
    until: i64,
    take_over_from: Option<&str>,
) -> Result<WebhookHold, StoreError> {
    let mut tx = pool.begin().await?;
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM webhook_cursors WHERE endpoint = $1")
            .bind(endpoint)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        // The end of the log with no event between its id and its commit.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(gate)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO webhook_cursors (endpoint, cursor, created_at, updated_at) \
             VALUES ($1, COALESCE((SELECT MAX(id) FROM events), 0), $2, $2) \
             ON CONFLICT (endpoint) DO NOTHING",
        )
        .bind(endpoint)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let held = sqlx::query(AssertSqlSafe(format!(
        "UPDATE webhook_cursors SET holder_id = $2, holder_pid = $3, holder_locality = $4, held_until = $5 \
         WHERE endpoint = $1 AND (holder_id IS NULL OR held_until < $6 OR holder_id = $2 OR holder_id = $7) \
         RETURNING {CURSOR_COLUMNS}"
    )))
    .bind(endpoint)
    .bind(&holder.id)
    .bind(i64::from(holder.pid))
    .bind(&holder.locality)
    .bind(until)
    .bind(now)
    .bind(take_over_from)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match held {
        Some(row) => WebhookHold::Held(cursor_from_row(&row)?),
        None => {
            let row = sqlx::query(
                "SELECT holder_id, holder_pid, holder_locality, held_until FROM webhook_cursors WHERE endpoint = $1",
            )
            .bind(endpoint)
            .fetch_one(&mut *tx)
            .await?;
            WebhookHold::HeldBy {
                holder: holder_from_row(&row, "holder_id", "holder_pid", "holder_locality")?,
                expires_at: row.try_get("held_until")?,
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

pub(super) async fn release(
    pool: &PgPool,
    endpoint: &str,
    holder_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_cursors SET holder_id = NULL, holder_pid = NULL, holder_locality = NULL, held_until = 0 \
         WHERE endpoint = $1 AND holder_id = $2",
    )
    .bind(endpoint)
    .bind(holder_id)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn advance(
    pool: &PgPool,
    endpoint: &str,
    holder_id: &str,
    cursor: i64,
    delivered: u32,
    now: i64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE webhook_cursors SET cursor = $3, attempts = 0, next_attempt_at = NULL, last_error = NULL, \
         delivered = delivered + $4, \
         last_delivered_at = CASE WHEN $4 > 0 THEN $5 ELSE last_delivered_at END, updated_at = $5 \
         WHERE endpoint = $1 AND holder_id = $2 AND cursor <= $3",
    )
    .bind(endpoint)
    .bind(holder_id)
    .bind(cursor)
    .bind(i64::from(delivered))
    .bind(now)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn failed(
    pool: &PgPool,
    endpoint: &str,
    holder_id: &str,
    attempts: i64,
    next_attempt_at: i64,
    error: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE webhook_cursors SET attempts = $3, next_attempt_at = $4, last_error = $5, updated_at = $6 \
         WHERE endpoint = $1 AND holder_id = $2",
    )
    .bind(endpoint)
    .bind(holder_id)
    .bind(attempts)
    .bind(next_attempt_at)
    .bind(error)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn statuses(pool: &PgPool) -> Result<Vec<WebhookStatus>, StoreError> {
    let now = crate::clock::now_unix();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {CURSOR_COLUMNS}, held_until, holder_id, \
         GREATEST(0, COALESCE((SELECT MAX(id) FROM events), 0) - cursor) AS lag \
         FROM webhook_cursors ORDER BY endpoint"
    )))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let held_until: i64 = row.try_get("held_until")?;
            Ok(WebhookStatus {
                cursor: cursor_from_row(row)?,
                lag: row.try_get("lag")?,
                holder: if held_until >= now {
                    row.try_get("holder_id")?
                } else {
                    None
                },
            })
        })
        .collect()
}

pub(super) async fn message_summary(
    pool: &PgPool,
    id: &MessageId,
) -> Result<Option<QueuedMessage>, StoreError> {
    let mut conn = pool.acquire().await?;
    let Some(row) = sqlx::query(AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1"
    )))
    .bind(&id.0)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let mut found = [message_from_row(&row)?];
    attach_recipients(&mut conn, &mut found).await?;
    let [message] = found;
    Ok(Some(message))
}

pub(super) async fn notify_due(
    pool: &PgPool,
    condition: &str,
    now: i64,
    repeat: i64,
) -> Result<bool, StoreError> {
    // One statement decides, so two relays cannot both tell.
    let result = sqlx::query(
        "INSERT INTO notify_marks (condition, first_at, last_notified_at, times) VALUES ($1, $2, $2, 1) \
         ON CONFLICT (condition) DO UPDATE SET last_notified_at = $2, times = notify_marks.times + 1 \
         WHERE notify_marks.last_notified_at <= $2 - $3",
    )
    .bind(condition)
    .bind(now)
    .bind(repeat)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn notify_marks(pool: &PgPool) -> Result<Vec<NotifyMark>, StoreError> {
    let rows = sqlx::query(
        "SELECT condition, first_at, last_notified_at, times FROM notify_marks ORDER BY condition",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(NotifyMark {
                condition: row.try_get("condition")?,
                first_at: row.try_get("first_at")?,
                last_notified_at: row.try_get("last_notified_at")?,
                times: row.try_get("times")?,
            })
        })
        .collect()
}

pub(super) async fn notify_clear(pool: &PgPool, condition: &str) -> Result<bool, StoreError> {
    let result = sqlx::query("DELETE FROM notify_marks WHERE condition = $1")
        .bind(condition)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}
