//! Retention for SQLite (`Store::remove_expired`, `reclaim_space`, `usage`).
//!
//! Each step walks one partial index from its oldest entry and stops after
//! the batch, so a step costs the same however much is kept or waiting:
//! `messages_final_with_body` for bodies, `messages_final` for final
//! messages, `events_at` for events (migration 0008). Queued, deferred,
//! in-flight (and any other not final) messages are in neither message
//! index, so no step can reach them.

use crate::store::StoreError;
use crate::store::retention::{RetentionBatch, RetentionCutoffs, StoreUsage};
use sqlx::sqlite::SqlitePool;

/// Marks the oldest final messages whose body is past its time as without
/// body, returning their ids (for the next statement). `INDEXED BY`: left
/// to itself the planner takes `messages_final`, the wider index, and
/// would walk past every final message whose body is already gone (up to
/// `keep_events` of them) on each batch.
pub(super) const BODIES_SQL: &str = "UPDATE messages SET body_kept = 0 \
     WHERE id IN (SELECT id FROM messages INDEXED BY messages_final_with_body \
         WHERE state IN ('delivered', 'bounced', 'expired') AND body_kept = 1 AND updated_at < ?1 \
         ORDER BY updated_at LIMIT ?2) \
     RETURNING id";

/// The bodies of the messages `BODIES_SQL` marked, by one bound JSON array
/// (one variable, however large the batch).
pub(super) const DELETE_BODIES_SQL: &str =
    "DELETE FROM message_bodies WHERE message_id IN (SELECT value FROM json_each(?1))";

/// Final messages past `keep_events`; recipients and any body go with them
/// (`ON DELETE CASCADE`). `INDEXED BY`: the listing index by state
/// (migration 0009) would otherwise be taken and sorted.
pub(super) const MESSAGES_SQL: &str = "DELETE FROM messages \
     WHERE id IN (SELECT id FROM messages INDEXED BY messages_final \
         WHERE state IN ('delivered', 'bounced', 'expired') AND updated_at < ?1 \
         ORDER BY updated_at LIMIT ?2)";

pub(super) const EVENTS_SQL: &str =
    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?1 ORDER BY at LIMIT ?2)";

pub(super) const OLDEST_BODY_SQL: &str = "SELECT MIN(updated_at) FROM messages INDEXED BY messages_final_with_body \
     WHERE state IN ('delivered', 'bounced', 'expired') AND body_kept = 1";
pub(super) const OLDEST_RECORD_SQL: &str = "SELECT MIN(updated_at) FROM messages INDEXED BY messages_final WHERE state IN ('delivered', 'bounced', 'expired')";
pub(super) const OLDEST_EVENT_SQL: &str = "SELECT MIN(at) FROM events";

/// One step in one transaction: the first kind that has anything past its
/// time. A crash anywhere in it rolls the whole step back (WAL), so a body
/// is never gone while its row still says it is kept, or the reverse.
pub(super) async fn remove_expired(
    pool: &SqlitePool,
    cutoffs: &RetentionCutoffs,
    batch: u32,
) -> Result<RetentionBatch, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut removed = RetentionBatch::default();
    if let Some(before) = cutoffs.bodies_before {
        let ids: Vec<String> = sqlx::query_scalar(BODIES_SQL)
            .bind(before)
            .bind(batch)
            .fetch_all(&mut *tx)
            .await?;
        if !ids.is_empty() {
            let ids_json = serde_json::to_string(&ids)
                .map_err(|e| StoreError::Corrupt(format!("message ids: {e}")))?;
            sqlx::query(DELETE_BODIES_SQL)
                .bind(ids_json)
                .execute(&mut *tx)
                .await?;
            removed.bodies = ids.len() as u64;
        }
    }
    if removed.is_empty()
        && let Some(before) = cutoffs.records_before
    {
        removed.messages = sqlx::query(MESSAGES_SQL)
            .bind(before)
            .bind(batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed.messages == 0 {
            removed.events = sqlx::query(EVENTS_SQL)
                .bind(before)
                .bind(batch)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
    }
    tx.commit().await?;
    Ok(removed)
}

/// `PRAGMA incremental_vacuum(pages)`: moves up to `pages` free pages to
/// the end of the file and truncates them (in WAL mode the file itself
/// shrinks at the next checkpoint). Returns how many pages left the free list.
pub(super) async fn reclaim_space(pool: &SqlitePool, pages: u32) -> Result<u64, StoreError> {
    let mut conn = pool.acquire().await?;
    let before = pragma(&mut conn, "freelist_count").await?;
    if before == 0 {
        return Ok(0);
    }
    // The pragma's argument cannot be bound; it is a number we format.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PRAGMA incremental_vacuum({pages})"
    )))
    .execute(&mut *conn)
    .await?;
    let after = pragma(&mut conn, "freelist_count").await?;
    Ok(u64::try_from(before.saturating_sub(after)).unwrap_or(0))
}

async fn pragma(conn: &mut sqlx::SqliteConnection, name: &str) -> Result<i64, StoreError> {
    // Names are the constants below, never input.
    Ok(
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {name}")))
            .fetch_one(conn)
            .await?,
    )
}

pub(super) async fn usage(pool: &SqlitePool) -> Result<StoreUsage, StoreError> {
    let mut conn = pool.acquire().await?;
    let page_size = pragma(&mut conn, "page_size").await?;
    let pages = pragma(&mut conn, "page_count").await?;
    let free = pragma(&mut conn, "freelist_count").await?;
    let auto_vacuum = pragma(&mut conn, "auto_vacuum").await?;
    let bytes = |pages: i64| u64::try_from(pages.saturating_mul(page_size)).unwrap_or(0);
    let mut oldest = Vec::with_capacity(3);
    for sql in [OLDEST_BODY_SQL, OLDEST_RECORD_SQL, OLDEST_EVENT_SQL] {
        oldest.push(
            sqlx::query_scalar::<_, Option<i64>>(sql)
                .fetch_one(&mut *conn)
                .await?,
        );
    }
    Ok(StoreUsage {
        bytes: bytes(pages),
        free_bytes: bytes(free),
        // PRAGMA auto_vacuum: 0 NONE, 1 FULL, 2 INCREMENTAL.
        reclaims_space: auto_vacuum != 0,
        oldest_body_at: oldest[0],
        oldest_record_at: oldest[1],
        oldest_event_at: oldest[2],
    })
}
