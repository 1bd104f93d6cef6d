//! The audit logs' anchors on PostgreSQL, one per chain (`Store::audit_anchor`).

use crate::store::{AuditAnchor, StoreError};
use sqlx::Row;
use sqlx::postgres::PgPool;

/// The chain's own row first; the anchor of before (chain '') only while
/// no other chain has one, so a log on another host never takes it.
pub(super) async fn read(pool: &PgPool, chain: &str) -> Result<Option<AuditAnchor>, StoreError> {
    let row = sqlx::query(
        "SELECT seq, hash FROM audit_anchors WHERE chain = $1 \
         OR (chain = '' AND NOT EXISTS (SELECT 1 FROM audit_anchors WHERE chain NOT IN ('', $1))) \
         ORDER BY chain = '' LIMIT 1",
    )
    .bind(chain)
    .fetch_optional(pool)
    .await?;
    row.map(|row| AuditAnchor::from_stored(row.try_get("seq")?, row.try_get("hash")?))
        .transpose()
}

pub(super) async fn all(pool: &PgPool) -> Result<Vec<(String, AuditAnchor)>, StoreError> {
    let rows = sqlx::query("SELECT chain, seq, hash FROM audit_anchors ORDER BY chain")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("chain")?,
                AuditAnchor::from_stored(row.try_get("seq")?, row.try_get("hash")?)?,
            ))
        })
        .collect()
}

/// Moves the chain's anchor from `expected` to `next` in one transaction;
/// an `expected` that is the anchor of before is adopted: it becomes this
/// chain's, and the old row goes.
pub(super) async fn advance(
    pool: &PgPool,
    chain: &str,
    expected: Option<&AuditAnchor>,
    next: &AuditAnchor,
) -> Result<bool, StoreError> {
    let now = crate::clock::now_unix();
    let mut tx = pool.begin().await?;
    let moved = match expected {
        None => {
            sqlx::query(
                "INSERT INTO audit_anchors (chain, seq, hash, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT(chain) DO NOTHING",
            )
            .bind(chain)
            .bind(next.stored_seq()?)
            .bind(&next.hash)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1
        }
        Some(expected) => {
            let updated = sqlx::query(
                "UPDATE audit_anchors SET seq = $1, hash = $2, updated_at = $3 WHERE chain = $4 AND seq = $5 AND hash = $6",
            )
            .bind(next.stored_seq()?)
            .bind(&next.hash)
            .bind(now)
            .bind(chain)
            .bind(expected.stored_seq()?)
            .bind(&expected.hash)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            updated == 1
                || {
                    let adopted = sqlx::query(
                        "DELETE FROM audit_anchors WHERE chain = '' AND seq = $1 AND hash = $2 \
                     AND NOT EXISTS (SELECT 1 FROM audit_anchors WHERE chain = $3)",
                    )
                    .bind(expected.stored_seq()?)
                    .bind(&expected.hash)
                    .bind(chain)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if adopted == 1 {
                        sqlx::query("INSERT INTO audit_anchors (chain, seq, hash, updated_at) VALUES ($1, $2, $3, $4)")
                        .bind(chain)
                        .bind(next.stored_seq()?)
                        .bind(&next.hash)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    adopted == 1
                }
        }
    };
    tx.commit().await?;
    Ok(moved)
}
