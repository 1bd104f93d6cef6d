//! Retention on PostgreSQL (`Store::remove_expired`, `usage`), the steps of
//! the SQLite side: each walks one partial index from its oldest entry and
//! stops after the batch. Rows a claim or an operator holds are skipped
//! (`SKIP LOCKED`) and removed by a later step. Space is reclaimed by
//! autovacuum, so `reclaim_space` keeps the trait's default (0).

use crate::store::StoreError;
use crate::store::retention::{RetentionBatch, RetentionCutoffs, StoreUsage};
use sqlx::postgres::PgPool;

const BODIES_SQL: &str = "UPDATE messages SET body_kept = FALSE \
     WHERE id IN (SELECT id FROM messages \
         WHERE state IN ('delivered', 'bounced', 'expired') AND body_kept AND updated_at < $1 \
         ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
     RETURNING id";

const MESSAGES_SQL: &str = "DELETE FROM messages \
     WHERE id IN (SELECT id FROM messages \
         WHERE state IN ('delivered', 'bounced', 'expired') AND updated_at < $1 \
         ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

const EVENTS_SQL: &str = "DELETE FROM events WHERE id IN \
     (SELECT id FROM events WHERE at < $1 ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)";

pub(super) async fn remove_expired(
    pool: &PgPool,
    cutoffs: &RetentionCutoffs,
    batch: u32,
) -> Result<RetentionBatch, StoreError> {
    let batch = i64::from(batch);
    let mut tx = pool.begin().await?;
    let mut removed = RetentionBatch::default();
    if let Some(before) = cutoffs.bodies_before {
        let ids: Vec<String> = sqlx::query_scalar(BODIES_SQL)
            .bind(before)
            .bind(batch)
            .fetch_all(&mut *tx)
            .await?;
        if !ids.is_empty() {
            sqlx::query("DELETE FROM message_bodies WHERE message_id = ANY($1)")
                .bind(&ids)
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

/// The tables of this store's schema, with their indexes and TOAST.
const SIZE_SQL: &str = "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = current_schema() AND c.relkind = 'r'";

pub(super) async fn usage(pool: &PgPool) -> Result<StoreUsage, StoreError> {
    let bytes: i64 = sqlx::query_scalar(SIZE_SQL).fetch_one(pool).await?;
    let oldest = |sql: &'static str| async move {
        sqlx::query_scalar::<_, Option<i64>>(sql)
            .fetch_one(pool)
            .await
    };
    Ok(StoreUsage {
        bytes: u64::try_from(bytes).unwrap_or(0),
        free_bytes: 0,
        // Autovacuum makes freed space reusable without a full VACUUM.
        reclaims_space: true,
        oldest_body_at: oldest(
            "SELECT MIN(updated_at) FROM messages WHERE state IN ('delivered', 'bounced', 'expired') AND body_kept",
        )
        .await?,
        oldest_record_at: oldest(
            "SELECT MIN(updated_at) FROM messages WHERE state IN ('delivered', 'bounced', 'expired')",
        )
        .await?,
        oldest_event_at: oldest("SELECT MIN(at) FROM events").await?,
    })
}
