//! Each account's sending quotas on PostgreSQL (`Store::admit_delivery`): the
//! decision is `delivery::limits::admit`; here it is read and written
//! back with the account's row locked (`FOR UPDATE`), so instances
//! sharing the schema share the allowance and never spend it twice.

use crate::delivery::limits::{self, AccountLimits, Admission, QuotaState};
use crate::store::StoreError;
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Row};
use std::time::Duration;

macro_rules! select_quota {
    ($tail:literal) => {
        concat!(
            "SELECT updated_at, minute_messages, day_messages, day_recipients, backed_off_until \
             FROM account_quotas WHERE account = $1",
            $tail
        )
    };
}
const READ: &str = select_quota!("");
const READ_LOCKED: &str = select_quota!(" FOR UPDATE");

/// The account's row, created (full) if it has none and locked until the
/// transaction ends: a second instance charging the same account waits
/// here for the first one's commit, then reads what it wrote.
async fn lock(conn: &mut PgConnection, account: &str, now: f64) -> Result<QuotaState, StoreError> {
    sqlx::query(
        "INSERT INTO account_quotas (account, updated_at) VALUES ($1, $2) ON CONFLICT (account) DO NOTHING",
    )
    .bind(account)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    read(conn, account, READ_LOCKED).await
}

async fn read(
    conn: &mut PgConnection,
    account: &str,
    sql: &'static str,
) -> Result<QuotaState, StoreError> {
    let row = sqlx::query(sql)
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
    conn: &mut PgConnection,
    account: &str,
    state: &QuotaState,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO account_quotas (account, updated_at, minute_messages, day_messages, day_recipients, backed_off_until) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account) DO UPDATE SET updated_at = excluded.updated_at, \
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
    pool: &PgPool,
    account: &str,
    limits: &AccountLimits,
    recipients: u32,
    now: f64,
) -> Result<Admission, StoreError> {
    let state = read(&mut *pool.acquire().await?, account, READ).await?;
    if let (admission, None) = limits::admit(limits, &state, recipients, now) {
        return Ok(admission);
    }
    let mut tx = pool.begin().await?;
    // A charge lost with the server's last moments only lets one more
    // message go; not worth a WAL flush per message of a limited account.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let state = lock(&mut tx, account, now).await?;
    let (admission, next) = limits::admit(limits, &state, recipients, now);
    if let Some(next) = next {
        write(&mut tx, account, &next).await?;
    }
    tx.commit().await?;
    Ok(admission)
}

pub(super) async fn back_off(
    pool: &PgPool,
    account: &str,
    period: Duration,
    now: f64,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let state = lock(&mut tx, account, now).await?;
    write(&mut tx, account, &limits::back_off(&state, period, now)).await?;
    tx.commit().await?;
    Ok(())
}
