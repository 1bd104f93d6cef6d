//! The PostgreSQL queue: enqueue with NOTIFY, claims with `FOR UPDATE SKIP
//! LOCKED`, outcomes under the row's lock.
//!
//! A claim locks the rows it takes and skips rows another claimer holds,
//! so claimers on many instances proceed side by side and never take the
//! same message; PostgreSQL rechecks a locked row's conditions against
//! its newest version, so a row another claim just took is dropped, not
//! taken twice. Completing or releasing a message locks its row first
//! (`FOR UPDATE`) and checks the lease under that lock: a late worker
//! whose lease was taken over writes nothing.

use super::admin::attach_recipients;
use crate::store::queue::{
    AttemptOutcome, ClaimLease, Claimed, MessageId, MessageState, NewMessage, QueuedMessage,
    RecipientState,
};
use crate::store::{Event, StoreError};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::collections::HashMap;

pub(super) const MESSAGE_COLUMNS: &str = "id, account, mail_from, size, submitted_by, state, attempts, created_at, next_attempt_at, last_error, lease_owner, lease_expires_at";

pub(super) fn message_from_row(row: &PgRow) -> Result<QueuedMessage, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(QueuedMessage {
        id: MessageId(row.try_get("id")?),
        account: row.try_get("account")?,
        mail_from: row.try_get("mail_from")?,
        recipients: Vec::new(),
        size: row.try_get("size")?,
        submitted_by: row.try_get("submitted_by")?,
        state: MessageState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("message state {state:?}")))?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        lease_instance: None,
        lease_expires_at: None,
    }
    .with_lease(
        row.try_get("lease_owner")?,
        row.try_get("lease_expires_at")?,
    ))
}

/// Announces due work to every instance listening on `channel`; delivered
/// when the transaction commits, dropped if it rolls back.
pub(super) async fn notify_work(conn: &mut PgConnection, channel: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(channel)
        .execute(conn)
        .await?;
    Ok(())
}

/// One message in one transaction, committed before this returns
/// (contract 1). The recipients go in one statement whatever their number.
pub(super) async fn enqueue(
    pool: &PgPool,
    channel: &str,
    id: &MessageId,
    message: &NewMessage,
) -> Result<(), StoreError> {
    let now = crate::clock::now_unix();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO messages (id, account, mail_from, size, submitted_by, state, attempts, created_at, next_attempt_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $6, $6)",
    )
    .bind(&id.0)
    .bind(&message.account)
    .bind(&message.mail_from)
    .bind(message.body.len() as i64)
    .bind(&message.submitted_by)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO message_bodies (message_id, body) VALUES ($1, $2)")
        .bind(&id.0)
        .bind(&message.body)
        .execute(&mut *tx)
        .await?;
    let indexes: Vec<i64> = (0..message.recipients.len() as i64).collect();
    sqlx::query(
        "INSERT INTO recipients (message_id, idx, address, state, updated_at) \
         SELECT $1, idx, address, 'pending', $4 FROM UNNEST($2::BIGINT[], $3::TEXT[]) AS r (idx, address)",
    )
    .bind(&id.0)
    .bind(&indexes)
    .bind(&message.recipients)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    notify_work(&mut tx, channel).await?;
    tx.commit().await?;
    Ok(())
}

/// The claim, in one statement. Three arms, as on SQLite and in the same
/// order of precedence: in-flight messages whose lease ended, in-flight
/// messages of an instance without a live heartbeat, then queued and
/// deferred messages that are due, oldest due first. Each arm is its own
/// locking read over its partial index, limited to `$4` rows; `FOR UPDATE
/// SKIP LOCKED` is not allowed on a `UNION`, so each is a CTE and the
/// union takes their ids. `$1` owner, `$2` lease end, `$3` now, `$4`
/// limit, `$5` the owner's instance.
pub(super) const CLAIM_SQL: &str = "WITH lapsed AS ( \
         SELECT id, 0 AS arm, lease_expires_at AS rank FROM messages \
         WHERE state = 'in_flight' AND lease_expires_at < $3 \
         ORDER BY lease_expires_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
     orphaned AS ( \
         SELECT id, 1 AS arm, 0::BIGINT AS rank FROM messages m \
         WHERE state = 'in_flight' AND lease_instance IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = m.lease_instance AND i.heartbeat_until >= $3) \
         LIMIT $4 FOR UPDATE SKIP LOCKED), \
     due AS ( \
         SELECT id, 2 AS arm, next_attempt_at AS rank FROM messages \
         WHERE state IN ('queued', 'deferred') AND next_attempt_at <= $3 \
         ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
     picked AS ( \
         SELECT id, MIN(arm) AS arm, MIN(rank) AS rank FROM \
             (SELECT * FROM lapsed UNION ALL SELECT * FROM orphaned UNION ALL SELECT * FROM due) AS arms \
         GROUP BY id ORDER BY MIN(arm), MIN(rank) LIMIT $4) \
     UPDATE messages SET state = 'in_flight', lease_owner = $1, lease_expires_at = $2, updated_at = $3, lease_instance = $5 \
     FROM picked WHERE messages.id = picked.id \
     RETURNING messages.id, account, mail_from, size, submitted_by, state, attempts, created_at, next_attempt_at, last_error, lease_owner, lease_expires_at";

pub(super) async fn claim(
    pool: &PgPool,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> Result<Vec<Claimed>, StoreError> {
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query(CLAIM_SQL)
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(limit))
        .bind(instance_of(owner))
        .fetch_all(&mut *conn)
        .await?;
    let mut messages = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let bodies = bodies_of(&mut conn, &messages).await?;
    attach_recipients(&mut conn, &mut messages).await?;
    Claimed::assemble(messages, bodies, owner, lease_until)
}

async fn bodies_of(
    conn: &mut PgConnection,
    messages: &[QueuedMessage],
) -> Result<HashMap<String, Vec<u8>>, StoreError> {
    if messages.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = messages.iter().map(|m| m.id.0.as_str()).collect();
    let rows =
        sqlx::query("SELECT message_id, body FROM message_bodies WHERE message_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows
        .iter()
        .map(|row| Ok((row.try_get("message_id")?, row.try_get("body")?)))
        .collect::<Result<_, sqlx::Error>>()?)
}

/// The instance part of a claim owner (`INSTANCE/worker`), if it has one.
fn instance_of(owner: &str) -> Option<&str> {
    owner.split_once('/').map(|(instance, _)| instance)
}

pub(super) async fn release_instance(
    pool: &PgPool,
    channel: &str,
    instance: &str,
    now: i64,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let released = sqlx::query(
        "UPDATE messages SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END, \
         next_attempt_at = $1, lease_owner = NULL, lease_expires_at = NULL, lease_instance = NULL, updated_at = $1 \
         WHERE state = 'in_flight' AND lease_instance = $2",
    )
    .bind(now)
    .bind(instance)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM instances WHERE id = $1")
        .bind(instance)
        .execute(&mut *tx)
        .await?;
    if released > 0 {
        notify_work(&mut tx, channel).await?;
    }
    tx.commit().await?;
    Ok(released)
}

/// Locks the message's row and checks that `lease` still holds it.
async fn lock_leased(
    conn: &mut PgConnection,
    id: &MessageId,
    lease: &ClaimLease,
) -> Result<(), StoreError> {
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM messages WHERE id = $1 AND state = 'in_flight' AND lease_owner = $2 AND lease_expires_at = $3 FOR UPDATE",
    )
    .bind(&id.0)
    .bind(&lease.owner)
    .bind(lease.expires_at)
    .fetch_optional(&mut *conn)
    .await?;
    held.map(|_| ())
        .ok_or_else(|| StoreError::LeaseLost(id.clone()))
}

/// One attempt's outcome and its events, in one transaction, after the
/// lease check under the row's lock: a worker whose lease was lost writes
/// nothing at all.
pub(super) async fn complete_attempt(
    pool: &PgPool,
    id: &MessageId,
    lease: &ClaimLease,
    outcome: &AttemptOutcome,
    events: &[Event],
    gate: i64,
) -> Result<MessageState, StoreError> {
    let mut tx = pool.begin().await?;
    lock_leased(&mut tx, id, lease).await?;
    let now = crate::clock::now_unix();
    if !outcome.recipients.is_empty() {
        let indexes: Vec<i64> = outcome
            .recipients
            .iter()
            .map(|(i, _, _)| *i as i64)
            .collect();
        let states: Vec<&str> = outcome
            .recipients
            .iter()
            .map(|(_, s, _)| s.as_str())
            .collect();
        let replies: Vec<Option<String>> = outcome
            .recipients
            .iter()
            .map(|(_, _, r)| r.clone())
            .collect();
        sqlx::query(
            "UPDATE recipients SET state = o.state, reply = o.reply, updated_at = $5 \
             FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[]) AS o (idx, state, reply) \
             WHERE recipients.message_id = $1 AND recipients.idx = o.idx",
        )
        .bind(&id.0)
        .bind(&indexes)
        .bind(&states)
        .bind(&replies)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM recipients WHERE message_id = $1")
            .bind(&id.0)
            .fetch_all(&mut *tx)
            .await?;
    let states: Vec<RecipientState> = states
        .iter()
        .map(|s| {
            RecipientState::parse(s)
                .ok_or_else(|| StoreError::Corrupt(format!("recipient state {s:?}")))
        })
        .collect::<Result<_, _>>()?;
    let next_state = if states.iter().any(|s| s.is_open()) {
        MessageState::Deferred
    } else if states.contains(&RecipientState::Delivered) {
        MessageState::Delivered
    } else {
        MessageState::Bounced
    };
    sqlx::query(
        "UPDATE messages SET state = $1, attempts = attempts + 1, next_attempt_at = $2, last_error = $3, \
         lease_owner = NULL, lease_expires_at = NULL, lease_instance = NULL, updated_at = $4 WHERE id = $5",
    )
    .bind(next_state.as_str())
    .bind(outcome.next_attempt_at.unwrap_or(now))
    .bind(&outcome.error)
    .bind(now)
    .bind(&id.0)
    .execute(&mut *tx)
    .await?;
    for event in events {
        insert_event(&mut tx, gate, event).await?;
    }
    tx.commit().await?;
    Ok(next_state)
}

/// Inserts an event, holding the event log's gate (shared) from before its
/// id is drawn until the transaction ends. Ids come from a sequence in the
/// order inserts run, not the order their transactions commit; a reader
/// following the log ([`events_after`]) takes the gate exclusively, so it
/// reads only when no event is between its id and its commit, and never
/// steps over an id that commits after a higher one. Writers share the
/// gate, so they do not wait for each other.
pub(super) async fn insert_event(
    conn: &mut PgConnection,
    gate: i64,
    event: &Event,
) -> Result<(), sqlx::Error> {
    // The gate's subquery runs before the row (and its id) is made.
    sqlx::query(
        "INSERT INTO events (at, kind, account, message_id, detail) \
         SELECT $1, $2, $3, $4, $5 FROM (SELECT pg_advisory_xact_lock_shared($6)) AS gate",
    )
    .bind(event.at)
    .bind(&event.kind)
    .bind(&event.account)
    .bind(event.message_id.as_ref().map(|id| id.0.as_str()))
    .bind(&event.detail)
    .bind(gate)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The event log from a reader's last id on, behind the gate (see
/// [`insert_event`]): waits for the events being written to commit (or
/// roll back), then reads a prefix of the log that no later commit can
/// add a lower id to.
pub(super) async fn events_after(
    pool: &PgPool,
    gate: i64,
    after: i64,
    limit: u32,
) -> Result<Vec<PgRow>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(gate)
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query(EVENTS_AFTER_SQL)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows)
}

const EVENTS_AFTER_SQL: &str = "SELECT id, at, kind, account, message_id, detail FROM events WHERE id > $1 ORDER BY id LIMIT $2";

pub(super) const MESSAGE_EVENTS_SQL: &str = "SELECT id, at, kind, account, message_id, detail \
     FROM events WHERE message_id = $1 ORDER BY id";

pub(super) async fn release(
    pool: &PgPool,
    channel: &str,
    id: &MessageId,
    lease: &ClaimLease,
    next_attempt_at: i64,
) -> Result<(), StoreError> {
    let now = crate::clock::now_unix();
    let mut tx = pool.begin().await?;
    let result = sqlx::query(
        "UPDATE messages SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END, \
         next_attempt_at = $1, lease_owner = NULL, lease_expires_at = NULL, lease_instance = NULL, updated_at = $2 \
         WHERE id = $3 AND state = 'in_flight' AND lease_owner = $4 AND lease_expires_at = $5",
    )
    .bind(next_attempt_at)
    .bind(now)
    .bind(&id.0)
    .bind(&lease.owner)
    .bind(lease.expires_at)
    .execute(&mut *tx)
    .await?;
    if result.rows_affected() != 1 {
        return Err(StoreError::LeaseLost(id.clone()));
    }
    if next_attempt_at <= now {
        // Given back due now (shutdown): another instance may take it.
        notify_work(&mut tx, channel).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn message(
    pool: &PgPool,
    id: &MessageId,
) -> Result<Option<(QueuedMessage, Vec<u8>)>, StoreError> {
    let mut tx = pool.begin().await?;
    // A final message whose body retention removed comes back with an
    // empty body (`Store::message`).
    let Some(row) = sqlx::query(AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS}, COALESCE((SELECT body FROM message_bodies WHERE message_id = id), ''::BYTEA) AS body \
         FROM messages WHERE id = $1"
    )))
    .bind(&id.0)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let body: Vec<u8> = row.try_get("body")?;
    let mut found = [message_from_row(&row)?];
    attach_recipients(&mut tx, &mut found).await?;
    tx.commit().await?;
    let [message] = found;
    Ok(Some((message, body)))
}

pub(super) async fn retry_now(
    pool: &PgPool,
    channel: &str,
    id: &MessageId,
    now: i64,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    // Not a message whose body retention has removed: nothing left to send.
    let result = sqlx::query(
        "UPDATE messages SET state = 'deferred', next_attempt_at = $1, \
         created_at = CASE WHEN state = 'expired' THEN $1 ELSE created_at END, updated_at = $1 \
         WHERE id = $2 AND state IN ('deferred', 'queued', 'bounced', 'expired') AND body_kept",
    )
    .bind(now)
    .bind(&id.0)
    .execute(&mut *tx)
    .await?;
    if result.rows_affected() != 1 {
        return Ok(false);
    }
    // Refused recipients get another chance; delivered ones are never
    // sent twice.
    sqlx::query(
        "UPDATE recipients SET state = 'pending', updated_at = $1 WHERE message_id = $2 AND state IN ('bounced', 'expired', 'deferred')",
    )
    .bind(now)
    .bind(&id.0)
    .execute(&mut *tx)
    .await?;
    notify_work(&mut tx, channel).await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn expire(pool: &PgPool, cutoff: i64) -> Result<Vec<QueuedMessage>, StoreError> {
    let mut tx = pool.begin().await?;
    let now = crate::clock::now_unix();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "UPDATE messages SET state = 'expired', lease_owner = NULL, lease_expires_at = NULL, lease_instance = NULL, updated_at = $1 \
         WHERE created_at < $2 AND state IN ('queued', 'deferred') RETURNING {MESSAGE_COLUMNS}"
    )))
    .bind(now)
    .bind(cutoff)
    .fetch_all(&mut *tx)
    .await?;
    let mut expired = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    if !expired.is_empty() {
        let ids: Vec<&str> = expired.iter().map(|m| m.id.0.as_str()).collect();
        sqlx::query(
            "UPDATE recipients SET state = 'expired', updated_at = $1 WHERE message_id = ANY($2) AND state IN ('pending', 'deferred')",
        )
        .bind(now)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    }
    attach_recipients(&mut tx, &mut expired).await?;
    tx.commit().await?;
    Ok(expired)
}

/// The earliest of: the first due queued or deferred message, the first
/// lease to end, and the second after the heartbeat of an instance holding
/// claims ends (at once if the instance is forgotten); each an indexed
/// lookup, as on SQLite.
pub(super) const NEXT_DUE_SQL: &str = "SELECT MIN(due) FROM ( \
     SELECT MIN(next_attempt_at) AS due FROM messages WHERE state IN ('queued', 'deferred') \
     UNION ALL \
     SELECT MIN(lease_expires_at) FROM messages WHERE state = 'in_flight' \
     UNION ALL \
     SELECT MIN(COALESCE((SELECT heartbeat_until + 1 FROM instances WHERE instances.id = lease_instance), 0)) \
     FROM messages WHERE state = 'in_flight' AND lease_instance IS NOT NULL) AS dues";

/// Guards that fail loudly (STYLE.md section 7): the claim and next_due on
/// a store of realistic shape (most messages delivered, a backlog waiting,
/// a few in flight), after ANALYZE, must read `messages` through their
/// partial indexes, never by a sequential scan: a scan costs a claim time
/// in proportion to everything ever kept. Needs PostgreSQL
/// (`OXIRELAY_TEST_POSTGRES_URL`); skipped, saying so, without.
#[cfg(test)]
mod plan_tests {
    use sqlx::Connection;

    async fn plan(conn: &mut sqlx::PgConnection, sql: &str) -> String {
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
            .fetch_all(&mut *conn)
            .await
            .expect("explain")
            .join("\n")
    }

    #[tokio::test]
    async fn the_claim_and_next_due_use_their_indexes_on_a_large_table() {
        let Ok(base) = std::env::var("OXIRELAY_TEST_POSTGRES_URL") else {
            println!("SKIPPED: OXIRELAY_TEST_POSTGRES_URL is not set (PostgreSQL tests)");
            return;
        };
        let schema = format!("oxr_test_plan_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&base).await.expect("connect");
        let setup = format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema};"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
            .execute(&mut conn)
            .await
            .expect("schema");
        let result = async {
            sqlx::raw_sql(include_str!("0001_schema.sql"))
                .execute(&mut conn)
                .await
                .expect("tables");
            // 50,000 delivered, 500 waiting, 50 in flight.
            sqlx::raw_sql(
                "INSERT INTO messages (id, account, mail_from, size, submitted_by, state, attempts, created_at, next_attempt_at, updated_at, lease_instance, lease_expires_at) \
                 SELECT lpad(to_hex(n), 24, '0'), 'office', 'a@x', 100, 'test', \
                     CASE WHEN n % 100 = 0 THEN 'queued' WHEN n % 1000 = 1 THEN 'in_flight' ELSE 'delivered' END, \
                     1, n, n, n, CASE WHEN n % 1000 = 1 THEN 'i' END, CASE WHEN n % 1000 = 1 THEN n END \
                 FROM generate_series(1, 50000) AS n; \
                 ANALYZE;",
            )
            .execute(&mut conn)
            .await
            .expect("populate");
            // Values in place of the parameters: the plan a claim gets
            // (PostgreSQL plans each execution with its values at first).
            let claim_with_values = super::CLAIM_SQL
                .replace("$1", "'i/w'")
                .replace("$2", "60000")
                .replace("$3", "50000")
                .replace("$4", "10")
                .replace("$5", "'i'");
            let claim = plan(&mut conn, &claim_with_values).await;
            let next_due = plan(&mut conn, super::NEXT_DUE_SQL).await;
            (claim, next_due)
        }
        .await;
        let drop = format!("DROP SCHEMA {schema} CASCADE");
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(&mut conn)
            .await
            .expect("drop");
        let (claim, next_due) = result;
        for (name, steps) in [("claim", &claim), ("next_due", &next_due)] {
            assert!(
                !steps.contains("Seq Scan on messages"),
                "{name} scans messages:\n{steps}"
            );
        }
        for index in [
            "messages_waiting",
            "messages_lease_expiry",
            "messages_in_flight_by_instance",
        ] {
            assert!(
                claim.contains(index),
                "the claim does not use {index}:\n{claim}"
            );
        }
        assert!(
            next_due.contains("messages_waiting") && next_due.contains("messages_lease_expiry"),
            "{next_due}"
        );
    }
}
