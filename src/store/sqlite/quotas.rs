//! Each account's sending quotas on SQLite (`Store::admit_delivery`): the
//! decision is `delivery::limits::admit`; here it is read and written
//! back under the file's write lock, so processes sharing the file share
//! the allowance.

use super::queue::WriteGate;
use crate::delivery::limits::{self, AccountLimits, Admission, QuotaState};
use crate::store::StoreError;
use sqlx::sqlite::SqlitePool;
use sqlx::{Row, SqliteConnection};
use std::time::Duration;

async fn read(conn: &mut SqliteConnection, account: &str) -> Result<QuotaState, StoreError> {
    let row = sqlx::query(
        "SELECT updated_at, minute_messages, day_messages, day_recipients, backed_off_until \
         FROM account_quotas WHERE account = ?",
    )
    .bind(account)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(QuotaState::default());
    };
    Ok(QuotaState {
        updated_at: row.try_get("updated_at")?,
        minute_messages: row.try_get("minute_messages")?,
        day_messages: row.try_get("day_messages")?,
        day_recipients: row.try_get("day_recipients")?,
        backed_off_until: row.try_get("backed_off_until")?,
    })
}

async fn write(
    conn: &mut SqliteConnection,
    account: &str,
    state: &QuotaState,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO account_quotas (account, updated_at, minute_messages, day_messages, day_recipients, backed_off_until) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET updated_at = excluded.updated_at, \
         minute_messages = excluded.minute_messages, day_messages = excluded.day_messages, \
         day_recipients = excluded.day_recipients, backed_off_until = excluded.backed_off_until",
    )
    .bind(account)
    .bind(state.updated_at)
    .bind(state.minute_messages)
    .bind(state.day_messages)
    .bind(state.day_recipients)
    .bind(state.backed_off_until)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Decides on a plain read first: an account with nothing to charge (no
/// quotas, no back-off, or a message that must wait) takes no write lock.
pub(super) async fn admit(
    pool: &SqlitePool,
    writer: &WriteGate,
    account: &str,
    limits: &AccountLimits,
    recipients: u32,
    now: f64,
) -> Result<Admission, StoreError> {
    let state = read(&mut *pool.acquire().await?, account).await?;
    if let (admission, None) = limits::admit(limits, &state, recipients, now) {
        return Ok(admission);
    }
    let _writer = writer.lock().await;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let state = read(&mut tx, account).await?;
    let (admission, next) = limits::admit(limits, &state, recipients, now);
    if let Some(next) = next {
        write(&mut tx, account, &next).await?;
    }
    tx.commit().await?;
    Ok(admission)
}

pub(super) async fn back_off(
    pool: &SqlitePool,
    writer: &WriteGate,
    account: &str,
    period: Duration,
    now: f64,
) -> Result<(), StoreError> {
    let _writer = writer.lock().await;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let state = read(&mut tx, account).await?;
    write(&mut tx, account, &limits::back_off(&state, period, now)).await?;
    tx.commit().await?;
    Ok(())
}
