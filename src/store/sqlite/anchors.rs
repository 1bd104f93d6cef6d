//! The audit logs' anchors on SQLite, one per chain (`Store::audit_anchor`).

use crate::store::{AuditAnchor, StoreError};
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

/// The chain's own row first; the anchor of before (chain '') only while
/// no other chain has one, so a log on another host never takes it.
pub(super) async fn read(
    pool: &SqlitePool,
    chain: &str,
) -> Result<Option<AuditAnchor>, StoreError> {
    let row = sqlx::query(
        "SELECT seq, hash FROM audit_anchors WHERE chain = ?1 \
         OR (chain = '' AND NOT EXISTS (SELECT 1 FROM audit_anchors WHERE chain NOT IN ('', ?1))) \
         ORDER BY chain = '' LIMIT 1",
    )
    .bind(chain)
    .fetch_optional(pool)
    .await?;
    row.map(|row| AuditAnchor::from_stored(row.try_get("seq")?, row.try_get("hash")?))
        .transpose()
}

pub(super) async fn all(pool: &SqlitePool) -> Result<Vec<(String, AuditAnchor)>, StoreError> {
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
    pool: &SqlitePool,
    chain: &str,
    expected: Option<&AuditAnchor>,
    next: &AuditAnchor,
) -> Result<bool, StoreError> {
    let now = crate::clock::now_unix();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let moved = match expected {
        None => {
            sqlx::query(
                "INSERT INTO audit_anchors (chain, seq, hash, updated_at) VALUES (?, ?, ?, ?) \
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
                "UPDATE audit_anchors SET seq = ?, hash = ?, updated_at = ? WHERE chain = ? AND seq = ? AND hash = ?",
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
                        "DELETE FROM audit_anchors WHERE chain = '' AND seq = ? AND hash = ? \
                     AND NOT EXISTS (SELECT 1 FROM audit_anchors WHERE chain = ?)",
                    )
                    .bind(expected.stored_seq()?)
                    .bind(&expected.hash)
                    .bind(chain)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if adopted == 1 {
                        sqlx::query("INSERT INTO audit_anchors (chain, seq, hash, updated_at) VALUES (?, ?, ?, ?)")
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
