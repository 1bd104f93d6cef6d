//! The SQLite queue: group commit for enqueues, atomic claims, outcomes.
//!
//! Group commit: every enqueue goes to one writer task, which takes all the
//! requests waiting at that moment, writes them in one transaction and
//! commits once (one fsync with `synchronous=FULL`), then acknowledges each.
//! Under load many submissions share a commit; alone, one waits for nothing.

use super::admin::attach_recipients;
use crate::store::queue::{
    AttemptOutcome, ClaimLease, Claimed, MessageId, MessageState, NewMessage, QueuedMessage,
    RecipientState,
};
use crate::store::{Event, StoreError};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Connection, Row, Sqlite, SqliteConnection};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// At most this many requests share one commit, to bound its latency.
const MAX_BATCH: usize = 512;

/// This process's writers, one at a time (see `SqliteStore::writer`).
#[derive(Clone, Default)]
pub(super) struct WriteGate(std::sync::Arc<tokio::sync::Mutex<()>>);

impl WriteGate {
    pub(super) async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.lock().await
    }
}

/// Requests that are written together: one transaction for all that are
/// waiting when the writer is free, each answered on its own.
pub(super) trait Batch: Sized + Send + 'static {
    type Reply: Send + 'static;
    /// Writes `batch` in one transaction on `conn` (readied by
    /// [`Batch::prepare`]) and commits it; `Err` when the transaction as a
    /// whole failed (nothing of it is written).
    fn write(
        conn: &mut SqliteConnection,
        batch: &[Self],
    ) -> impl std::future::Future<Output = Result<Vec<Result<Self::Reply, StoreError>>, sqlx::Error>>
    + Send;

    /// Readies a connection the writer has just taken, before its first
    /// batch (the store's tables exist by then).
    fn prepare(
        conn: &mut SqliteConnection,
    ) -> impl std::future::Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = conn;
        async { Ok(()) }
    }
}

struct Request<B: Batch> {
    item: B,
    done: oneshot::Sender<Result<B::Reply, StoreError>>,
}

/// One writer task per kind of batch: it takes all the requests waiting at
/// that moment, writes them in one transaction (one commit, one fsync with
/// `synchronous=FULL`), then answers each. Under load many requests share
/// a commit; alone, one waits for nothing.
pub(super) struct Committer<B: Batch> {
    requests: mpsc::Sender<Request<B>>,
}

impl<B: Batch> Clone for Committer<B> {
    fn clone(&self) -> Self {
        Committer {
            requests: self.requests.clone(),
        }
    }
}

impl<B: Batch> Committer<B> {
    pub(super) fn start(pool: SqlitePool, writer: WriteGate) -> Self {
        let (requests, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(commit_batches(pool, writer, receiver));
        Committer { requests }
    }

    pub(super) async fn submit(&self, item: B) -> Result<B::Reply, StoreError> {
        let (done, wait) = oneshot::channel();
        self.requests
            .send(Request { item, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }
}

async fn commit_batches<B: Batch>(
    pool: SqlitePool,
    writer: WriteGate,
    mut receiver: mpsc::Receiver<Request<B>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The writer keeps its connection between commits: sqlx pings a
    // connection given back to its pool, one more hand-off to the
    // connection's thread and back per commit. After a failed commit the
    // connection is closed (its state is not known) and a new one taken.
    let mut held: Option<PoolConnection<Sqlite>> = None;
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let result = {
            let _writer = writer.lock().await;
            // Whoever arrived while we waited for the writer joins this commit.
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let (items, dones): (Vec<B>, Vec<_>) =
                batch.drain(..).map(|r| (r.item, r.done)).unzip();
            let conn = match held.take() {
                Some(conn) => Ok(conn),
                None => match pool.acquire().await {
                    Ok(mut conn) => match B::prepare(&mut conn).await {
                        Ok(()) => Ok(conn),
                        Err(error) => {
                            conn.close_on_drop();
                            Err(error)
                        }
                    },
                    Err(error) => Err(error),
                },
            };
            let written = match conn {
                Ok(mut conn) => {
                    let written = B::write(&mut conn, &items).await;
                    if written.is_ok() {
                        held = Some(conn);
                    } else {
                        conn.close_on_drop();
                    }
                    written
                }
                Err(error) => Err(error),
            };
            (written, dones)
        };
        let (written, dones) = result;
        match written {
            Ok(replies) => {
                for (done, reply) in dones.into_iter().zip(replies) {
                    // The requester may have gone (a client disconnected);
                    // what it asked for is committed either way.
                    let _ = done.send(reply);
                }
            }
            Err(e) => {
                for done in dones {
                    let _ = done.send(Err(StoreError::Open {
                        url: "queue".into(),
                        reason: format!("the commit failed: {e}"),
                    }));
                }
            }
        }
    }
}

/// A message to queue under an id chosen by the caller.
pub(super) struct Enqueue {
    id: MessageId,
    message: NewMessage,
}

impl Batch for Enqueue {
    type Reply = ();

    async fn write(
        conn: &mut SqliteConnection,
        batch: &[Self],
    ) -> Result<Vec<Result<(), StoreError>>, sqlx::Error> {
        let now = crate::clock::now_unix();
        if batch.len() <= MESSAGES_PER_STATEMENT {
            // The common case: one statement, atomic in SQLite's own
            // transaction for it.
            insert_in_one_statement(conn, batch, now).await?;
        } else {
            let mut tx = conn.begin().await?;
            for group in batch.chunks(MESSAGES_PER_STATEMENT) {
                insert_in_one_statement(&mut tx, group, now).await?;
            }
            tx.commit().await?;
        }
        Ok(batch.iter().map(|_| Ok(())).collect())
    }

    async fn prepare(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(ONE_STATEMENT_SETUP)
            .execute(conn)
            .await
            .map(drop)
    }
}

impl Committer<Enqueue> {
    pub(super) async fn enqueue(&self, message: NewMessage) -> Result<MessageId, StoreError> {
        let id = MessageId::generate();
        self.enqueue_as(id.clone(), message).await?;
        Ok(id)
    }

    pub(super) async fn enqueue_as(
        &self,
        id: MessageId,
        message: NewMessage,
    ) -> Result<(), StoreError> {
        self.submit(Enqueue { id, message }).await
    }
}

/// One delivery attempt's outcome and its events, to be written with the
/// outcomes of the other workers that finished meanwhile (see
/// [`complete_attempts`]).
pub(super) struct Outcome {
    pub(super) id: MessageId,
    pub(super) lease: ClaimLease,
    pub(super) outcome: AttemptOutcome,
    pub(super) events: Vec<Event>,
}

impl Batch for Outcome {
    type Reply = MessageState;

    async fn write(
        conn: &mut SqliteConnection,
        batch: &[Self],
    ) -> Result<Vec<Result<MessageState, StoreError>>, sqlx::Error> {
        complete_attempts(conn, batch).await
    }
}

/// At most this many messages go in one `INSERT` into the `enqueue` view
/// (eight binds each; a message's recipients are one of them, as JSON):
/// bounded texts and binds, whatever a group commit holds.
const MESSAGES_PER_STATEMENT: usize = 16;

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// `rows` copies of `values`, comma-separated: a multi-row `VALUES` list.
fn values_list(values: &str, rows: usize) -> String {
    vec![values; rows].join(", ")
}

/// The one-statement enqueue: a temporary view whose `INSTEAD OF INSERT`
/// trigger writes a message's row, its body and its recipients (a JSON
/// array, unpacked by `json_each` in order). Created on each connection
/// the writer takes ([`Batch::prepare`]); temporary objects belong to
/// their connection and go with it.
pub(super) const ONE_STATEMENT_SETUP: &str = "\
    CREATE TEMP VIEW IF NOT EXISTS enqueue (id, account, mail_from, size, submitted_by, now, body, recipients) AS \
        SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0; \
    CREATE TEMP TRIGGER IF NOT EXISTS enqueue_rows INSTEAD OF INSERT ON enqueue BEGIN \
        INSERT INTO messages (id, account, mail_from, size, submitted_by, state, attempts, created_at, next_attempt_at, updated_at) \
            VALUES (NEW.id, NEW.account, NEW.mail_from, NEW.size, NEW.submitted_by, 'queued', 0, NEW.now, NEW.now, NEW.now); \
        INSERT INTO message_bodies (message_id, body) VALUES (NEW.id, NEW.body); \
        INSERT INTO recipients (message_id, idx, address, state, updated_at) \
            SELECT NEW.id, key, value, 'pending', NEW.now FROM json_each(NEW.recipients); \
    END;";

/// Messages written as one `INSERT` into the `enqueue` view (at most
/// [`MESSAGES_PER_STATEMENT`]): one statement, so sqlx hands back one
/// result. With BEGIN, an `INSERT` per table and COMMIT in one text, sqlx's
/// worker thread sent the result of each statement as it finished, each a
/// wake-up of the waiting task (five per commit, where one message at a
/// time waits for every commit; BENCHMARKS.md). A failure anywhere rolls
/// the statement back whole (outside a transaction, with SQLite's own for
/// it; inside one, the caller's is dropped), and [`commit_batches`] then
/// closes the connection in any case.
async fn insert_in_one_statement(
    conn: &mut SqliteConnection,
    batch: &[Enqueue],
    now: i64,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO temp.enqueue (id, account, mail_from, size, submitted_by, now, body, recipients) VALUES {}",
        values_list("(?, ?, ?, ?, ?, ?, ?, ?)", batch.len())
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for Enqueue { id, message } in batch {
        let recipients = serde_json::to_string(&message.recipients)
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        query = query
            .bind(&id.0)
            .bind(&message.account)
            .bind(&message.mail_from)
            .bind(message.body.len() as i64)
            .bind(&message.submitted_by)
            .bind(now)
            .bind(&message.body)
            .bind(recipients);
    }
    query.execute(&mut *conn).await.map(drop)
}

/// After a transaction written as raw statements (its BEGIN in the text,
/// not sqlx's `Transaction`) failed: rolls back whatever is still open, so
/// the connection is left without a transaction. SQLite may have rolled it
/// back already (a failed COMMIT on a full disk); this ROLLBACK then fails
/// with "no transaction is active", which is the state wanted.
async fn roll_back_raw(conn: &mut SqliteConnection) {
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
}

pub(super) const MESSAGE_COLUMNS: &str = "id, account, mail_from, size, submitted_by, state, attempts, created_at, next_attempt_at, last_error, lease_owner, lease_expires_at";

pub(super) fn message_from_row(row: &SqliteRow) -> Result<QueuedMessage, StoreError> {
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

/// The claim: one statement, so two claimers can never take the same
/// message. It takes, in this order, in-flight messages whose lease ended,
/// in-flight messages that name an instance without a live heartbeat (a
/// silent death; claims of instances that never registered, from before
/// heartbeats, have only their lease), then queued and deferred messages
/// that are due, oldest due first. Each arm is its own indexed search, not
/// one `OR` over them: SQLite answered the `OR` by collecting every due row
/// and sorting it in a temporary B-tree on every claim, which made a claim
/// cost grow with the backlog (issue 10). Here the due arm walks
/// `messages_waiting` in `next_attempt_at` order and stops after `?4` rows;
/// the in-flight arms read only in-flight rows (bounded by the workers'
/// claims, not the backlog). Each arm names its index (`INDEXED BY`): the
/// listing indexes of `queue list` (migration 0009) lead with `state` too,
/// and the planner took them for the due arm and sorted again; named, the
/// choice cannot drift with statistics or a new index, and a dropped index
/// is an error, not a silent scan. The plan tests below check each arm.
pub(super) fn claim_sql() -> String {
    format!(
        "UPDATE messages SET state = 'in_flight', lease_owner = ?1, lease_expires_at = ?2, updated_at = ?3, lease_instance = ?5 \
         WHERE id IN ( \
             SELECT id FROM (SELECT id FROM messages INDEXED BY messages_lease_expiry \
                 WHERE state = 'in_flight' AND lease_expires_at < ?3 LIMIT ?4) \
             UNION ALL \
             SELECT id FROM (SELECT id FROM messages INDEXED BY messages_in_flight_by_instance \
                 WHERE state = 'in_flight' AND lease_instance IS NOT NULL AND lease_instance NOT IN \
                     (SELECT id FROM instances WHERE heartbeat_until >= ?3) LIMIT ?4) \
             UNION ALL \
             SELECT id FROM (SELECT id FROM messages INDEXED BY messages_waiting \
                 WHERE state IN ('queued', 'deferred') AND next_attempt_at <= ?3 \
                 ORDER BY next_attempt_at LIMIT ?4) \
             LIMIT ?4) \
         RETURNING {MESSAGE_COLUMNS}"
    )
}

pub(super) async fn claim(
    pool: &SqlitePool,
    writer: &WriteGate,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> Result<Vec<Claimed>, StoreError> {
    // The gate for the one statement that writes (its own transaction),
    // not for the reads of the bodies and recipients after it: those are
    // two more hand-offs to the connection's thread, during which a group
    // commit would otherwise wait. Taken before the connection, as every
    // gated writer does: a claim holding a connection while it waits for
    // the gate could leave the gate's holder without one.
    let writing = writer.lock().await;
    let mut conn = pool.acquire().await?;
    let rows = {
        let _writer = writing;
        sqlx::query(AssertSqlSafe(claim_sql()))
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .bind(instance_of(owner))
            .fetch_all(&mut *conn)
            .await?
    };
    let mut messages = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let bodies = bodies_of(&mut conn, &messages).await?;
    attach_recipients(&mut conn, &mut messages).await?;
    Claimed::assemble(messages, bodies, owner, lease_until)
}

/// The bodies of `messages` (one claim's batch, so a few placeholders).
async fn bodies_of(
    conn: &mut SqliteConnection,
    messages: &[QueuedMessage],
) -> Result<HashMap<String, Vec<u8>>, StoreError> {
    if messages.is_empty() {
        return Ok(HashMap::new());
    }
    let placeholders = vec!["?"; messages.len()].join(", ");
    let sql =
        format!("SELECT message_id, body FROM message_bodies WHERE message_id IN ({placeholders})");
    // The SQL holds only placeholders; values are bound.
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for message in messages {
        query = query.bind(&message.id.0);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    Ok(rows
        .iter()
        .map(|row| Ok((row.try_get("message_id")?, row.try_get("body")?)))
        .collect::<Result<_, sqlx::Error>>()?)
}

/// The instance part of a claim owner (`INSTANCE/worker`), if it has one.
fn instance_of(owner: &str) -> Option<&str> {
    owner.split_once('/').map(|(instance, _)| instance)
}

/// Through `messages_in_flight_by_instance` (the plan tests check).
pub(super) const RELEASE_INSTANCE_SQL: &str = "UPDATE messages SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END, \
     next_attempt_at = ?1, lease_owner = NULL, lease_expires_at = NULL, lease_instance = NULL, updated_at = ?1 \
     WHERE state = 'in_flight' AND lease_instance = ?2";

/// Gives every message `instance` claimed back to the queue and forgets
/// the instance (see `Store::release_instance`).
pub(super) async fn release_instance(
    pool: &SqlitePool,
    instance: &str,
    now: i64,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let released = sqlx::query(RELEASE_INSTANCE_SQL)
        .bind(now)
        .bind(instance)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM instances WHERE id = ?")
        .bind(instance)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(released)
}

/// The statements of one outcome, sent to SQLite as one batch: each
/// statement of a transaction is a hand-off to the connection's thread and
/// back (sqlx runs each SQLite connection on a thread of its own), and
/// under the single writer those hand-offs, not SQLite's work, were what
/// limited delivered messages/s (issue 10, item 5). So the lease check is
/// the `WHERE` of the last `UPDATE`, the message's new state is computed
/// there from its recipients, and the caller rolls back to the savepoint
/// in front when that `UPDATE` matched nothing (a lost lease writes
/// nothing).
///
/// Binds, in order: per recipient (state, reply, now, id, index); per
/// event (at, kind, account, message id, detail); then next attempt, last
/// error, now, id, lease owner, lease expiry.
fn outcome_sql(recipients: usize, events: usize) -> String {
    let mut sql = format!("{OUTCOME_SAVEPOINT_SQL};\n");
    for _ in 0..recipients {
        sql.push_str(
            "UPDATE recipients SET state = ?, reply = ?, updated_at = ? WHERE message_id = ? AND idx = ?;\n",
        );
    }
    for _ in 0..events {
        sql.push_str(INSERT_EVENT_SQL);
        sql.push_str(";\n");
    }
    let (pending, deferred) = (
        RecipientState::Pending.as_str(),
        RecipientState::Deferred.as_str(),
    );
    let delivered = RecipientState::Delivered.as_str();
    sql.push_str(&format!(
        "UPDATE messages SET state = CASE \
             WHEN EXISTS (SELECT 1 FROM recipients WHERE message_id = messages.id AND state IN ('{pending}', '{deferred}')) THEN '{}' \
             WHEN EXISTS (SELECT 1 FROM recipients WHERE message_id = messages.id AND state = '{delivered}') THEN '{}' \
             ELSE '{}' END, \
         attempts = attempts + 1, next_attempt_at = ?, last_error = ?, \
         lease_owner = NULL, lease_expires_at = NULL, lease_instance = NULL, updated_at = ? \
         WHERE id = ? AND state = 'in_flight' AND lease_owner = ? AND lease_expires_at = ? RETURNING state",
        MessageState::Deferred.as_str(),
        MessageState::Delivered.as_str(),
        MessageState::Bounced.as_str(),
    ));
    sql
}

/// Delivery attempts' outcomes and the events that describe them, written
/// for several workers in one transaction (one commit, one turn of the
/// writer: issue 10, item 5), each outcome behind a savepoint so a worker
/// whose lease was lost writes nothing at all (neither the outcome nor its
/// events) while the others' are kept. The events share the outcome's
/// durability (bookkeeping, `synchronous=NORMAL`). Per outcome one
/// hand-off to the connection's thread (the batch of [`outcome_sql`], the
/// first with the BEGIN in front), and one for the COMMIT.
pub(super) async fn complete_attempts(
    conn: &mut SqliteConnection,
    batch: &[Outcome],
) -> Result<Vec<Result<MessageState, StoreError>>, sqlx::Error> {
    let written = write_outcomes(conn, batch).await;
    if written.is_err() {
        roll_back_raw(conn).await;
    }
    written
}

async fn write_outcomes(
    conn: &mut SqliteConnection,
    batch: &[Outcome],
) -> Result<Vec<Result<MessageState, StoreError>>, sqlx::Error> {
    let now = crate::clock::now_unix();
    let mut states = Vec::with_capacity(batch.len());
    for (
        n,
        Outcome {
            id,
            lease,
            outcome,
            events,
        },
    ) in batch.iter().enumerate()
    {
        let mut sql = outcome_sql(outcome.recipients.len(), events.len());
        if n == 0 {
            // IMMEDIATE: this transaction reads (the recipients' states)
            // before it writes the message, and a deferred one would then
            // fail at once with "database is locked" when another process
            // commits in between, instead of waiting its turn. If the BEGIN
            // itself fails there is no savepoint either, and the rollback
            // to it below fails the batch.
            sql.insert_str(0, "BEGIN IMMEDIATE;\n");
        }
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (index, state, reply) in &outcome.recipients {
            query = query
                .bind(state.as_str())
                .bind(reply)
                .bind(now)
                .bind(&id.0)
                .bind(*index as i64);
        }
        for event in events {
            query = bind_event(query, event);
        }
        let returned = query
            .bind(outcome.next_attempt_at.unwrap_or(now))
            .bind(&outcome.error)
            .bind(now)
            .bind(&id.0)
            .bind(&lease.owner)
            .bind(lease.expires_at)
            .fetch_all(&mut *conn)
            .await;
        let returned = match returned {
            Ok(rows) => rows,
            Err(error) => {
                // This outcome's statement failed (a constraint, a
                // trigger): undo its statements and keep the others', so
                // one bad outcome does not send every message of the batch
                // out again. When the transaction itself is gone (SQLite
                // rolls it back on a full disk or an I/O error), there is
                // no savepoint to return to and the batch fails, as a
                // failed commit does.
                if sqlx::query(ROLLBACK_OUTCOME_SQL)
                    .execute(&mut *conn)
                    .await
                    .is_err()
                {
                    return Err(error);
                }
                states.push(Err(error.into()));
                continue;
            }
        };
        // Only the last statement returns a row: the message's new state,
        // if the lease was still this worker's.
        let state = match returned.first() {
            Some(row) => {
                let state: String = row.try_get("state")?;
                MessageState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("message state {state:?}")))
            }
            None => Err(StoreError::LeaseLost(id.clone())),
        };
        if state.is_err() {
            // Undo this outcome's statements, and only this outcome's.
            sqlx::query(ROLLBACK_OUTCOME_SQL)
                .execute(&mut *conn)
                .await?;
        }
        states.push(state);
    }
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
    Ok(states)
}

/// Each outcome's statements follow this savepoint (see [`outcome_sql`]);
/// rolling back to it undoes the latest outcome's and keeps the earlier.
const OUTCOME_SAVEPOINT_SQL: &str = "SAVEPOINT outcome";
const ROLLBACK_OUTCOME_SQL: &str = "ROLLBACK TO outcome";

const INSERT_EVENT_SQL: &str =
    "INSERT INTO events (at, kind, account, message_id, detail) VALUES (?, ?, ?, ?, ?)";

fn bind_event<'q>(query: SqliteQuery<'q>, event: &'q Event) -> SqliteQuery<'q> {
    query
        .bind(event.at)
        .bind(&event.kind)
        .bind(&event.account)
        .bind(event.message_id.as_ref().map(|id| id.0.as_str()))
        .bind(&event.detail)
}

pub(super) async fn insert_event(
    conn: &mut SqliteConnection,
    event: &Event,
) -> Result<(), sqlx::Error> {
    bind_event(sqlx::query(INSERT_EVENT_SQL), event)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The event log from a reader's last id on (webhooks follow it).
pub(super) const EVENTS_AFTER_SQL: &str =
    "SELECT id, at, kind, account, message_id, detail FROM events WHERE id > ? ORDER BY id LIMIT ?";

/// One message's history, through the index of events by message.
pub(super) const MESSAGE_EVENTS_SQL: &str = "SELECT id, at, kind, account, message_id, detail \
     FROM events INDEXED BY events_by_message WHERE message_id = ? ORDER BY id";

pub(super) const RELEASE_SQL: &str = "UPDATE messages SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END, \
     next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL, lease_instance = NULL, updated_at = ? \
     WHERE id = ? AND state = 'in_flight' AND lease_owner = ? AND lease_expires_at = ?";

pub(super) async fn release(
    pool: &SqlitePool,
    id: &MessageId,
    lease: &ClaimLease,
    next_attempt_at: i64,
) -> Result<(), StoreError> {
    let result = sqlx::query(RELEASE_SQL)
        .bind(next_attempt_at)
        .bind(crate::clock::now_unix())
        .bind(&id.0)
        .bind(&lease.owner)
        .bind(lease.expires_at)
        .execute(pool)
        .await?;
    if result.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(id.clone()))
    }
}

pub(super) async fn message(
    pool: &SqlitePool,
    id: &MessageId,
) -> Result<Option<(QueuedMessage, Vec<u8>)>, StoreError> {
    let mut conn = pool.acquire().await?;
    // A final message whose body retention removed comes back with an
    // empty body (`Store::message`).
    let Some(row) = sqlx::query(AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS}, COALESCE((SELECT body FROM message_bodies WHERE message_id = id), x'') AS body \
         FROM messages WHERE id = ?"
    )))
    .bind(&id.0)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let body: Vec<u8> = row.try_get("body")?;
    let mut found = [message_from_row(&row)?];
    attach_recipients(&mut conn, &mut found).await?;
    let [message] = found;
    Ok(Some((message, body)))
}

pub(super) async fn retry_now(
    pool: &SqlitePool,
    id: &MessageId,
    now: i64,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    // Not a message whose body retention has removed: there is nothing
    // left to send.
    let result = sqlx::query(
        "UPDATE messages SET state = 'deferred', next_attempt_at = ?, created_at = CASE WHEN state = 'expired' THEN ? ELSE created_at END, updated_at = ? \
         WHERE id = ? AND state IN ('deferred', 'queued', 'bounced', 'expired') AND body_kept = 1",
    )
    .bind(now)
    .bind(now)
    .bind(now)
    .bind(&id.0)
    .execute(&mut *tx)
    .await?;
    if result.rows_affected() != 1 {
        return Ok(false);
    }
    // A bounced or expired message retried by hand gets its refused
    // recipients back; delivered ones are never sent twice. Only when the
    // message itself was retried: a delivered message's recipients stay.
    sqlx::query(
        "UPDATE recipients SET state = 'pending', updated_at = ? WHERE message_id = ? AND state IN ('bounced', 'expired', 'deferred')",
    )
    .bind(now)
    .bind(&id.0)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn delete(pool: &SqlitePool, id: &MessageId) -> Result<bool, StoreError> {
    let result = sqlx::query("DELETE FROM messages WHERE id = ?")
        .bind(&id.0)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Through `messages_waiting_since`, the oldest waiting messages only.
pub(super) fn expire_sql() -> String {
    format!(
        "UPDATE messages INDEXED BY messages_waiting_since SET state = 'expired', lease_owner = NULL, lease_expires_at = NULL, lease_instance = NULL, updated_at = ?1 \
         WHERE created_at < ?2 AND state IN ('queued', 'deferred') RETURNING {MESSAGE_COLUMNS}"
    )
}

pub(super) async fn expire(
    pool: &SqlitePool,
    cutoff: i64,
) -> Result<Vec<QueuedMessage>, StoreError> {
    let mut tx = pool.begin().await?;
    let now = crate::clock::now_unix();
    let rows = sqlx::query(AssertSqlSafe(expire_sql()))
        .bind(now)
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
    let mut expired = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    for message in &expired {
        sqlx::query(
            "UPDATE recipients SET state = 'expired', updated_at = ? WHERE message_id = ? AND state IN ('pending', 'deferred')",
        )
        .bind(now)
        .bind(&message.id.0)
        .execute(&mut *tx)
        .await?;
    }
    attach_recipients(&mut tx, &mut expired).await?;
    tx.commit().await?;
    Ok(expired)
}

/// The earliest of: the first due queued or deferred message, the first
/// lease to end, and the second after the heartbeat of an instance holding
/// claims ends (at once if the instance is forgotten). Three indexed
/// lookups rather than one `MIN(CASE ...)` over every unfinished row, which
/// walked the whole backlog each time a worker went idle. Each names its
/// index, as the claim does.
pub(super) const NEXT_DUE_SQL: &str = "SELECT MIN(due) FROM ( \
     SELECT MIN(next_attempt_at) AS due FROM messages INDEXED BY messages_waiting \
         WHERE state IN ('queued', 'deferred') \
     UNION ALL \
     SELECT MIN(lease_expires_at) FROM messages INDEXED BY messages_lease_expiry WHERE state = 'in_flight' \
     UNION ALL \
     SELECT MIN(COALESCE((SELECT heartbeat_until + 1 FROM instances WHERE instances.id = lease_instance), 0)) \
     FROM messages INDEXED BY messages_in_flight_by_instance \
         WHERE state = 'in_flight' AND lease_instance IS NOT NULL)";

pub(super) async fn next_due(pool: &SqlitePool) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(NEXT_DUE_SQL).fetch_one(pool).await?)
}

#[cfg(test)]
mod tests {
    use crate::store::queue::*;
    use crate::store::{Event, SqliteStore, Store};
    use sqlx::AssertSqlSafe;
    use std::sync::Arc;

    async fn store() -> (tempfile::TempDir, SqliteStore, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("q.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        (dir, store, url)
    }

    fn message(recipients: &[&str]) -> NewMessage {
        NewMessage {
            account: "office".into(),
            mail_from: "app@example.com".into(),
            recipients: recipients.iter().map(|s| s.to_string()).collect(),
            body: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
            submitted_by: "test".into(),
        }
    }

    #[tokio::test]
    async fn lifecycle_with_per_recipient_outcomes() {
        let (_dir, store, _) = store().await;
        let id = store
            .enqueue(message(&["a@x", "b@x", "c@x"]))
            .await
            .expect("enqueue");
        let claimed = store.claim("w1", 100, 200, 10).await.expect("claim");
        assert!(claimed.is_empty(), "not due before its creation time");
        let now = crate::clock::now_unix();
        let claimed = store.claim("w1", now, now + 60, 10).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].message.id, id);
        assert_eq!(claimed[0].body, b"Subject: t\r\n\r\nbody\r\n");
        assert!(
            store
                .claim("w2", now, now + 60, 10)
                .await
                .expect("claim")
                .is_empty(),
            "leased"
        );
        let outcome = AttemptOutcome {
            recipients: vec![
                (0, RecipientState::Delivered, Some("250 ok".into())),
                (1, RecipientState::Deferred, Some("451 later".into())),
                (2, RecipientState::Bounced, Some("550 no such user".into())),
            ],
            next_attempt_at: Some(now + 30),
            error: Some("451 later".into()),
        };
        let state = store
            .complete_attempt(&id, &claimed[0].lease, &outcome)
            .await
            .expect("record");
        assert_eq!(state, MessageState::Deferred);
        assert!(
            store
                .claim("w1", now, now + 60, 10)
                .await
                .expect("claim")
                .is_empty(),
            "not due yet"
        );
        let again = store
            .claim("w1", now + 30, now + 90, 10)
            .await
            .expect("claim");
        let states: Vec<_> = again[0]
            .message
            .recipients
            .iter()
            .map(|r| r.state)
            .collect();
        assert_eq!(
            states,
            [
                RecipientState::Delivered,
                RecipientState::Deferred,
                RecipientState::Bounced
            ]
        );
        let done = AttemptOutcome {
            recipients: vec![(1, RecipientState::Delivered, Some("250 ok".into()))],
            next_attempt_at: None,
            error: None,
        };
        assert_eq!(
            store
                .complete_attempt(&id, &again[0].lease, &done)
                .await
                .expect("record"),
            MessageState::Delivered
        );
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(shown.attempts, 2);
    }

    #[tokio::test]
    async fn expired_lease_returns_the_message_and_the_old_owner_loses_it() {
        let (_dir, store, _) = store().await;
        let id = store.enqueue(message(&["a@x"])).await.expect("enqueue");
        let now = crate::clock::now_unix();
        let first = store
            .claim("crashed", now, now + 5, 10)
            .await
            .expect("claim");
        assert_eq!(first.len(), 1);
        let second = store
            .claim("w2", now + 6, now + 60, 10)
            .await
            .expect("claim");
        assert_eq!(second.len(), 1, "lease expired, claimable again");
        let outcome = AttemptOutcome {
            recipients: vec![(0, RecipientState::Delivered, None)],
            next_attempt_at: None,
            error: None,
        };
        let late = store.complete_attempt(&id, &first[0].lease, &outcome).await;
        assert!(matches!(late, Err(crate::store::StoreError::LeaseLost(_))));
        store
            .complete_attempt(&id, &second[0].lease, &outcome)
            .await
            .expect("current lease");
    }

    /// The event a delivery records, at a fixed time: the tests build it
    /// again to compare, and a clock read would cross a second between.
    fn delivered_event(id: &MessageId) -> Event {
        Event {
            at: 1_800_000_000,
            kind: "message.delivered".into(),
            account: Some("office".into()),
            message_id: Some(id.clone()),
            detail: format!("message {id} attempt 1: 1 of 1 recipients"),
        }
    }

    #[tokio::test]
    async fn an_outcome_and_its_events_are_committed_together() {
        let (_dir, store, _) = store().await;
        let id = store.enqueue(message(&["a@x"])).await.expect("enqueue");
        let now = crate::clock::now_unix();
        let claimed = store.claim("w1", now, now + 60, 10).await.expect("claim");
        let outcome = AttemptOutcome {
            recipients: vec![(0, RecipientState::Delivered, Some("250 ok".into()))],
            next_attempt_at: None,
            error: None,
        };
        let event = delivered_event(&id);
        // An event that cannot be written takes the outcome with it: the
        // message stays in flight under its lease (returns when the lease
        // ends, a repeat at worst), never delivered without its event.
        sqlx::query(
            "CREATE TRIGGER refuse_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&store.bookkeeping)
        .await
        .expect("trigger");
        let refused = store
            .complete_attempt_with_events(
                &id,
                &claimed[0].lease,
                &outcome,
                std::slice::from_ref(&event),
            )
            .await;
        assert!(refused.is_err(), "the event insert failed: {refused:?}");
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(shown.state, MessageState::InFlight);
        assert_eq!(shown.attempts, 0);
        sqlx::query("DROP TRIGGER refuse_events")
            .execute(&store.bookkeeping)
            .await
            .expect("drop trigger");
        let state = store
            .complete_attempt_with_events(
                &id,
                &claimed[0].lease,
                &outcome,
                std::slice::from_ref(&event),
            )
            .await
            .expect("record");
        assert_eq!(state, MessageState::Delivered);
        let events = store.events(10).await.expect("events");
        assert_eq!(events, std::slice::from_ref(&event));
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!((shown.state, shown.attempts), (MessageState::Delivered, 1));
        // The message's history and the log a webhook reader follows.
        let other = store.enqueue(message(&["b@x"])).await.expect("enqueue");
        store
            .record_event(&delivered_event(&other))
            .await
            .expect("event");
        let history = store.message_events(&id).await.expect("history");
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].event, event);
        let log = store.events_after(0, 10).await.expect("log");
        assert_eq!(log.len(), 2);
        assert_eq!(log[1].event.message_id, Some(other));
        assert!(
            store
                .events_after(log[1].id, 10)
                .await
                .expect("log")
                .is_empty()
        );
        assert_eq!(
            store.events_after(log[0].id, 10).await.expect("log").len(),
            1
        );
    }

    /// One outcome whose statement fails (here a trigger in the real file
    /// refuses it) is undone alone: the outcome written with it is
    /// committed, and the failed one's message keeps its lease, to be
    /// delivered again when the lease ends.
    #[tokio::test]
    async fn an_outcome_whose_statement_fails_is_undone_alone() {
        let (_dir, store, _) = store().await;
        let refused = store.enqueue(message(&["a@x"])).await.expect("enqueue");
        let kept = store.enqueue(message(&["b@x"])).await.expect("enqueue");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TRIGGER refuse_one BEFORE UPDATE OF attempts ON messages \
             WHEN NEW.id = '{}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            refused.0
        )))
        .execute(&store.bookkeeping)
        .await
        .expect("trigger");
        let now = crate::clock::now_unix();
        let claims = store.claim("w1", now, now + 60, 10).await.expect("claim");
        assert_eq!(claims.len(), 2);
        let delivered = |id: &MessageId| {
            let claim = claims
                .iter()
                .find(|c| &c.message.id == id)
                .expect("claimed");
            super::Outcome {
                id: id.clone(),
                lease: claim.lease.clone(),
                outcome: AttemptOutcome {
                    recipients: vec![(0, RecipientState::Delivered, Some("250 ok".into()))],
                    next_attempt_at: None,
                    error: None,
                },
                events: vec![delivered_event(id)],
            }
        };
        let batch = [delivered(&refused), delivered(&kept)];
        let states = super::complete_attempts(
            &mut store.bookkeeping.acquire().await.expect("acquire"),
            &batch,
        )
        .await
        .expect("the batch commits");
        let error = states[0].as_ref().expect_err("the refused outcome fails");
        assert!(error.to_string().contains("refused by the test"), "{error}");
        assert_eq!(states[1].as_ref().ok(), Some(&MessageState::Delivered));
        let (shown, _) = store
            .message(&refused)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!((shown.state, shown.attempts), (MessageState::InFlight, 0));
        assert_eq!(
            shown.recipients[0].state,
            RecipientState::Pending,
            "its recipient update undone"
        );
        let (shown, _) = store.message(&kept).await.expect("read").expect("exists");
        assert_eq!((shown.state, shown.attempts), (MessageState::Delivered, 1));
        assert_eq!(
            store.events(10).await.expect("events"),
            vec![delivered_event(&kept)],
            "only the kept outcome's event"
        );
    }

    #[tokio::test]
    async fn outcomes_written_together_keep_each_other_apart() {
        let (_dir, store, _) = store().await;
        let lost = store.enqueue(message(&["a@x"])).await.expect("enqueue");
        let kept = store
            .enqueue(message(&["b@x", "c@x"]))
            .await
            .expect("enqueue");
        let now = crate::clock::now_unix();
        let first = store
            .claim("crashed", now, now + 5, 10)
            .await
            .expect("claim");
        assert_eq!(first.len(), 2);
        // Both leases lapse; the second worker takes both, then the first
        // worker's outcome for `lost` arrives in the same batch as the
        // second worker's for `kept`.
        let second = store
            .claim("w2", now + 6, now + 60, 10)
            .await
            .expect("claim");
        let lease_of = |claims: &[Claimed], id: &MessageId| {
            claims
                .iter()
                .find(|c| &c.message.id == id)
                .expect("claimed")
                .lease
                .clone()
        };
        let outcome = |recipients: Vec<(usize, RecipientState, Option<String>)>| AttemptOutcome {
            recipients,
            next_attempt_at: Some(now + 600),
            error: None,
        };
        let batch = [
            super::Outcome {
                id: lost.clone(),
                lease: lease_of(&first, &lost),
                outcome: outcome(vec![(0, RecipientState::Bounced, Some("550 no".into()))]),
                events: vec![delivered_event(&lost)],
            },
            super::Outcome {
                id: kept.clone(),
                lease: lease_of(&second, &kept),
                outcome: outcome(vec![
                    (0, RecipientState::Delivered, Some("250 ok".into())),
                    (1, RecipientState::Deferred, Some("451 later".into())),
                ]),
                events: vec![delivered_event(&kept)],
            },
        ];
        let states = super::complete_attempts(
            &mut store.bookkeeping.acquire().await.expect("acquire"),
            &batch,
        )
        .await
        .expect("the batch commits");
        assert!(matches!(
            states[0],
            Err(crate::store::StoreError::LeaseLost(_))
        ));
        assert_eq!(states[1].as_ref().ok(), Some(&MessageState::Deferred));
        let (shown, _) = store.message(&lost).await.expect("read").expect("exists");
        assert_eq!((shown.state, shown.attempts), (MessageState::InFlight, 0));
        assert_eq!(shown.recipients[0].state, RecipientState::Pending);
        let (shown, _) = store.message(&kept).await.expect("read").expect("exists");
        assert_eq!((shown.state, shown.attempts), (MessageState::Deferred, 1));
        assert_eq!(shown.recipients[0].state, RecipientState::Delivered);
        assert_eq!(shown.recipients[1].state, RecipientState::Deferred);
        let events = store.events(10).await.expect("events");
        assert_eq!(
            events,
            vec![delivered_event(&kept)],
            "only the kept outcome's event"
        );
    }

    #[tokio::test]
    async fn a_lost_lease_writes_neither_the_outcome_nor_its_events() {
        let (_dir, store, _) = store().await;
        let id = store.enqueue(message(&["a@x"])).await.expect("enqueue");
        let now = crate::clock::now_unix();
        let first = store
            .claim("crashed", now, now + 5, 10)
            .await
            .expect("claim");
        let second = store
            .claim("w2", now + 6, now + 60, 10)
            .await
            .expect("claim");
        assert_eq!(second.len(), 1, "lease expired, claimable again");
        let bounced = AttemptOutcome {
            recipients: vec![(0, RecipientState::Bounced, Some("550 no".into()))],
            next_attempt_at: None,
            error: Some("550 no".into()),
        };
        let late = store
            .complete_attempt_with_events(&id, &first[0].lease, &bounced, &[delivered_event(&id)])
            .await;
        assert!(matches!(late, Err(crate::store::StoreError::LeaseLost(_))));
        assert!(store.events(10).await.expect("events").is_empty());
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(
            shown.state,
            MessageState::InFlight,
            "still the second worker's"
        );
        assert_eq!(shown.recipients[0].state, RecipientState::Pending);
    }

    #[tokio::test]
    async fn a_message_with_more_recipients_than_a_batch_keeps_them_all_in_order() {
        let (_dir, store, _) = store().await;
        let addresses: Vec<String> = (0..2 * MANY_RECIPIENTS + 5)
            .map(|i| format!("r{i}@example.net"))
            .collect();
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let id = store.enqueue(message(&refs)).await.expect("enqueue");
        let (shown, _) = store.message(&id).await.expect("read").expect("exists");
        assert_eq!(addresses_of(&shown), refs);
        assert!(
            shown
                .recipients
                .iter()
                .all(|r| r.state == RecipientState::Pending)
        );
    }

    /// The one-statement enqueue carries recipients through JSON and
    /// `json_each`: addresses with quotes, backslashes, non-ASCII and
    /// control characters, more than ten of them (index 10 after 9 as a
    /// number, not as text), come back exact and in order.
    #[tokio::test]
    async fn the_one_statement_enqueue_keeps_every_address_exact_and_in_order() {
        let (_dir, store, _) = store().await;
        let mut addresses: Vec<String> = vec![
            r#""a b"@example.net"#.into(),
            r#""quote\"inside"@example.net"#.into(),
            r"back\slash@example.net".into(),
            "jos\u{e9}@exampl\u{e9}.net".into(),
            "tab\there@example.net".into(),
            "\u{1F600}@example.net".into(),
            "postmaster".into(),
        ];
        addresses.extend((0..7).map(|i| format!("r{i}@example.net")));
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let batch = [super::Enqueue {
            id: MessageId::generate(),
            message: message(&refs),
        }];
        assert!(batch.len() <= super::MESSAGES_PER_STATEMENT);
        let id = batch[0].id.clone();
        let mut conn = store.pool.acquire().await.expect("acquire");
        <super::Enqueue as super::Batch>::prepare(&mut conn)
            .await
            .expect("the enqueue view");
        super::insert_in_one_statement(&mut conn, &batch, crate::clock::now_unix())
            .await
            .expect("stored");
        drop(conn);
        let (shown, _) = store.message(&id).await.expect("read").expect("stored");
        assert_eq!(addresses_of(&shown), refs);
    }

    /// The recipients one batch of statements held before they went as
    /// JSON: messages with more (and exactly this many) are still among
    /// the shapes the tests store.
    const MANY_RECIPIENTS: usize = 64;

    /// A stored message's recipient addresses, in order.
    fn addresses_of(shown: &QueuedMessage) -> Vec<&str> {
        shown
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect()
    }

    /// One group commit of messages of every shape (one recipient, a few,
    /// many), more of them than one statement takes: every message is
    /// stored whole, its own body and its recipients in order.
    #[tokio::test]
    async fn a_group_commit_of_many_shapes_stores_each_message_whole() {
        let (_dir, store, _) = store().await;
        let shapes = [1, 3, 1, 2 * MANY_RECIPIENTS + 1, 1, MANY_RECIPIENTS, 2];
        let batch: Vec<super::Enqueue> = (0..3 * super::MESSAGES_PER_STATEMENT + 1)
            .map(|n| {
                let addresses: Vec<String> = (0..shapes[n % shapes.len()])
                    .map(|i| format!("m{n}r{i}@example.net"))
                    .collect();
                let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
                let mut new = message(&refs);
                new.body = format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes();
                super::Enqueue {
                    id: MessageId::generate(),
                    message: new,
                }
            })
            .collect();
        let mut conn = store.pool.acquire().await.expect("acquire");
        <super::Enqueue as super::Batch>::prepare(&mut conn)
            .await
            .expect("the enqueue view");
        let replies = <super::Enqueue as super::Batch>::write(&mut conn, &batch)
            .await
            .expect("the group commits");
        assert!(replies.iter().all(Result::is_ok));
        for request in &batch {
            let (shown, body) = store
                .message(&request.id)
                .await
                .expect("read")
                .expect("stored");
            assert_eq!(body, request.message.body);
            assert_eq!(shown.size, request.message.body.len() as i64);
            assert_eq!(addresses_of(&shown), request.message.recipients);
        }
    }

    /// The one-statement enqueue: a statement that fails half-way (here
    /// in the trigger's recipients INSERT of the second message, after the
    /// first message and the second's row and body) leaves nothing of the
    /// batch written and no transaction open on the connection; the next
    /// enqueue is stored.
    #[tokio::test]
    async fn a_group_commit_that_fails_half_way_leaves_nothing_and_no_transaction() {
        let (_dir, store, _) = store().await;
        sqlx::raw_sql(
            "CREATE TRIGGER poison BEFORE INSERT ON recipients WHEN NEW.address = 'poison@example.net' \
             BEGIN SELECT RAISE(ABORT, 'poisoned recipient'); END;",
        )
        .execute(&store.pool)
        .await
        .expect("trigger");
        let batch: Vec<super::Enqueue> = [["ok@example.net"], ["poison@example.net"]]
            .iter()
            .map(|to| super::Enqueue {
                id: MessageId::generate(),
                message: message(to),
            })
            .collect();
        assert!(batch.len() <= super::MESSAGES_PER_STATEMENT);
        let mut conn = store.pool.acquire().await.expect("acquire");
        <super::Enqueue as super::Batch>::prepare(&mut conn)
            .await
            .expect("the enqueue view");
        let error = super::insert_in_one_statement(&mut conn, &batch, crate::clock::now_unix())
            .await
            .expect_err("the trigger refuses the batch");
        assert!(error.to_string().contains("poisoned recipient"), "{error}");
        // No transaction is left open: a new one can begin on it.
        sqlx::raw_sql("BEGIN; ROLLBACK;")
            .execute(&mut *conn)
            .await
            .expect("no transaction open");
        // Closed, not given back: the committer below must take (and
        // ready) a connection of its own.
        conn.close().await.expect("close");
        for table in ["messages", "message_bodies", "recipients"] {
            let rows: i64 =
                sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                    .fetch_one(&store.pool)
                    .await
                    .expect("count");
            assert_eq!(rows, 0, "{table}");
        }
        // Through the committer: the refusal is the caller's error, and
        // the writer goes on with a fresh connection.
        let refused = store.enqueue(message(&["poison@example.net"])).await;
        assert!(refused.is_err());
        let id = store
            .enqueue(message(&["ok@example.net"]))
            .await
            .expect("the next enqueue is stored");
        assert!(store.message(&id).await.expect("read").is_some());
    }

    #[tokio::test]
    async fn concurrent_enqueues_are_all_committed() {
        let (_dir, store, url) = store().await;
        let store = Arc::new(store);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.spawn(async move {
                let mut m = message(&["a@x"]);
                m.body = format!("Subject: {i}\r\n\r\n").into_bytes();
                store.enqueue(m).await
            });
        }
        let mut ids = std::collections::HashSet::new();
        while let Some(result) = tasks.join_next().await {
            ids.insert(result.expect("task").expect("enqueue"));
        }
        assert_eq!(ids.len(), 200);
        // A second connection (another process, after a crash) sees them all.
        let reopened = SqliteStore::open(&url).await.expect("reopen");
        assert_eq!(
            reopened.messages(None, 1000).await.expect("list").len(),
            200
        );
    }

    #[tokio::test]
    async fn a_lapsed_lease_comes_before_due_messages_so_a_backlog_cannot_starve_it() {
        let (_dir, store, _) = store().await;
        let first = store.enqueue(message(&["a@x"])).await.expect("enqueue");
        let now = crate::clock::now_unix();
        assert_eq!(
            store
                .claim("crashed", now, now + 5, 1)
                .await
                .expect("claim")
                .len(),
            1
        );
        for _ in 0..20 {
            store.enqueue(message(&["b@x"])).await.expect("enqueue");
        }
        let taken = store.claim("w", now + 6, now + 60, 1).await.expect("claim");
        assert_eq!(taken[0].message.id, first, "the lapsed lease first");
        assert_eq!(taken[0].body, b"Subject: t\r\n\r\nbody\r\n");
    }

    #[tokio::test]
    async fn expire_retry_and_delete() {
        let (_dir, store, _) = store().await;
        let id = store.enqueue(message(&["a@x"])).await.expect("enqueue");
        let now = crate::clock::now_unix();
        let expired = store.expire(now + 1).await.expect("expire");
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].recipients[0].state, RecipientState::Expired);
        assert!(
            store
                .claim("w", now + 10, now + 70, 10)
                .await
                .expect("claim")
                .is_empty()
        );
        assert!(store.retry_now(&id, now + 10).await.expect("retry"));
        assert_eq!(
            store
                .claim("w", now + 10, now + 70, 10)
                .await
                .expect("claim")
                .len(),
            1
        );
        assert!(store.delete(&id).await.expect("delete"));
        assert!(store.message(&id).await.expect("read").is_none());
    }
}

/// Guards that fail loudly (STYLE.md section 7): the hot queries' plans.
/// A claim, a due-time lookup or a lease query that scans `messages` or
/// sorts in a temporary B-tree costs time in proportion to the backlog
/// (issue 10 measured 600 → 200 delivered/s at 150,000 due).
#[cfg(test)]
mod plan_tests {
    use super::super::retention;
    use crate::store::SqliteStore;
    use crate::store::Store;
    use crate::store::queue::NewMessage;

    /// Indexes that hold only in-flight rows: walking one is bounded by the
    /// workers' claims (workers × claim batch per instance), not by the
    /// backlog, so a `SCAN` through them is allowed.
    const IN_FLIGHT_INDEXES: &[&str] = &["messages_in_flight_by_instance", "messages_lease_expiry"];

    async fn plan(store: &SqliteStore, sql: &str, params: usize) -> Vec<String> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        for _ in 0..params {
            query = query.bind(0_i64);
        }
        let rows = query.fetch_all(&store.bookkeeping).await.expect("plan");
        rows.iter()
            .map(|row| sqlx::Row::get::<String, _>(row, "detail"))
            .collect()
    }

    /// Fails on a temporary B-tree, and on a scan of a big table other than
    /// one through an in-flight index.
    fn assert_indexed(name: &str, steps: &[String]) {
        for step in steps {
            assert!(
                !step.contains("USE TEMP B-TREE"),
                "{name} sorts in a temporary B-tree: {steps:?}"
            );
            for table in ["messages", "message_bodies", "recipients", "events"] {
                let scan = format!("SCAN {table}");
                let through_in_flight = IN_FLIGHT_INDEXES
                    .iter()
                    .any(|index| step.ends_with(&format!("INDEX {index}")));
                assert!(
                    !(step == &scan || step.starts_with(&format!("{scan} ")) && !through_in_flight),
                    "{name} scans {table}: {step:?} in {steps:?}"
                );
            }
        }
    }

    fn uses(name: &str, steps: &[String], index: &str) {
        assert!(
            steps.iter().any(|s| s.contains(&format!("INDEX {index} "))
                || s.ends_with(&format!("INDEX {index}"))),
            "{name} does not use {index}: {steps:?}"
        );
    }

    /// Every hot query, with its parameter count and the index it must use.
    fn hot_queries() -> Vec<(&'static str, String, usize, &'static [&'static str])> {
        vec![
            (
                "claim",
                super::claim_sql(),
                5,
                &[
                    "messages_waiting",
                    "messages_lease_expiry",
                    "messages_in_flight_by_instance",
                ],
            ),
            (
                "next_due",
                super::NEXT_DUE_SQL.into(),
                0,
                &["messages_waiting", "messages_lease_expiry"],
            ),
            ("release", super::RELEASE_SQL.into(), 5, &[]),
            // The outcome's last statement (its new state from the
            // recipients' states); the recipients' updates are by key.
            ("outcome", super::outcome_sql(0, 0), 6, &[]),
            (
                "release_instance",
                super::RELEASE_INSTANCE_SQL.into(),
                2,
                &["messages_in_flight_by_instance"],
            ),
            (
                "expire",
                super::expire_sql(),
                2,
                &["messages_waiting_since"],
            ),
            ("events after", super::EVENTS_AFTER_SQL.into(), 2, &[]),
            (
                "message events",
                super::MESSAGE_EVENTS_SQL.into(),
                1,
                &["events_by_message"],
            ),
            (
                "retention: bodies",
                retention::BODIES_SQL.into(),
                2,
                &["messages_final_with_body"],
            ),
            (
                "retention: body rows",
                retention::DELETE_BODIES_SQL.into(),
                1,
                &[],
            ),
            (
                "retention: messages",
                retention::MESSAGES_SQL.into(),
                2,
                &["messages_final"],
            ),
            (
                "retention: events",
                retention::EVENTS_SQL.into(),
                2,
                &["events_at"],
            ),
            (
                "oldest body",
                retention::OLDEST_BODY_SQL.into(),
                0,
                &["messages_final_with_body"],
            ),
            (
                "oldest record",
                retention::OLDEST_RECORD_SQL.into(),
                0,
                &["messages_final"],
            ),
        ]
    }

    fn check_all(steps_of: &[(String, Vec<String>)], queries: &[(&str, String, usize, &[&str])]) {
        for ((name, steps), (_, _, _, indexes)) in steps_of.iter().zip(queries) {
            assert_indexed(name, steps);
            for index in *indexes {
                uses(name, steps, index);
            }
        }
    }

    async fn all_plans(store: &SqliteStore) -> Vec<(String, Vec<String>)> {
        let mut plans = Vec::new();
        for (name, sql, params, _) in hot_queries() {
            plans.push((name.to_string(), plan(store, &sql, params).await));
        }
        plans
    }

    #[tokio::test]
    async fn hot_queries_need_no_scan_and_no_sort() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        // A fresh store has no statistics (nothing runs ANALYZE), as in
        // production: the plans must hold without them...
        check_all(&all_plans(&store).await, &hot_queries());

        // ...and with them, on a store where most rows are delivered and
        // the rest wait, so that the planner's estimates would favour a
        // scan if any query left it the choice.
        for n in 0..400 {
            store
                .enqueue(NewMessage {
                    account: format!("a{}", n % 4),
                    mail_from: "app@example.com".into(),
                    recipients: vec!["r@example.net".into()],
                    body: vec![b'x'; 512],
                    submitted_by: "test".into(),
                })
                .await
                .expect("enqueue");
        }
        sqlx::raw_sql(
            "UPDATE messages SET state = 'delivered' WHERE rowid % 10 != 0; \
             UPDATE messages SET state = 'in_flight', lease_expires_at = 5, lease_instance = 'i' WHERE rowid % 20 = 0; \
             INSERT INTO events (at, kind, detail) SELECT rowid, 'delivered', '' FROM messages; \
             ANALYZE;",
        )
        .execute(&store.bookkeeping)
        .await
        .expect("populate");
        check_all(&all_plans(&store).await, &hot_queries());
        assert!(store.next_due().await.expect("due").is_some());
    }

    /// The plan the claim had before issue 10: the test's rules reject it,
    /// so they would catch a return of the `OR`.
    #[tokio::test]
    async fn the_old_claim_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        let old = "UPDATE messages SET state = 'in_flight', lease_owner = ?1, lease_expires_at = ?2, updated_at = ?3, lease_instance = ?5 \
         WHERE id IN (SELECT id FROM messages \
             WHERE (state IN ('queued', 'deferred') AND next_attempt_at <= ?3) \
                OR (state = 'in_flight' AND (lease_expires_at < ?3 \
                    OR (lease_instance IS NOT NULL AND lease_instance NOT IN \
                        (SELECT id FROM instances WHERE heartbeat_until >= ?3)))) \
             ORDER BY next_attempt_at LIMIT ?4)";
        let steps = plan(&store, old, 5).await;
        let caught = std::panic::catch_unwind(|| assert_indexed("old claim", &steps));
        assert!(
            caught.is_err(),
            "the old claim's plan passed the rules: {steps:?}"
        );
    }
}
