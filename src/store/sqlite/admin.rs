//! Queue administration on SQLite: the listing behind `queue list` and the
//! bulk operations behind `queue retry|delete|hold|release`.
//!
//! Everything pages by (created_at, id), newest first, through the
//! `messages_listing*` indexes of migration 0009: one index per filter, so
//! that a page costs the same whether the store holds a hundred messages or
//! a million (`listing_queries_search_an_index_and_never_sort` checks the
//! plans). A set of ids travels as one JSON array in one bound variable
//! (`json_each`), never as one variable per row: SQLite refuses statements
//! with more than 32,766 variables, which is how `queue list --limit 200000`
//! used to fail. No query here reads a message's body.

use super::queue::{MESSAGE_COLUMNS, WriteGate, message_from_row};
use crate::store::queue::{MessageId, MessageState, QueuedMessage, Recipient, RecipientState};
use crate::store::{
    AffectedMessage, BatchOutcome, ListCursor, QueueAction, QueueFilter, QueueSelection, StoreError,
};
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Arguments, AssertSqlSafe, Row, SqliteConnection};
use std::collections::HashMap;

/// A filter as SQL: the conditions (in the order of the indexes of
/// migration 0009, so that each filter uses its own) and their arguments,
/// ending with the cursor's row value, which every listing has. The first
/// page starts at a cursor after everything (`i64::MAX`), so that even it
/// is a range search on the index rather than a scan.
struct Where {
    sql: String,
    arguments: SqliteArguments,
}

impl Where {
    fn new(filter: &QueueFilter, after: Option<&ListCursor>) -> Result<Where, StoreError> {
        let mut conditions = Vec::new();
        let mut arguments = SqliteArguments::default();
        if let Some(account) = &filter.account {
            conditions.push("account = ?");
            arguments.add(account.clone()).map_err(encode_error)?;
        }
        if let Some(state) = filter.state {
            conditions.push("state = ?");
            arguments.add(state.as_str()).map_err(encode_error)?;
        }
        // `created_at < T` is the cursor (T, ""): every id sorts after "".
        let mut start = (i64::MAX, String::new());
        if let Some(before) = filter.created_before {
            start = start.min((before, String::new()));
        }
        if let Some(after) = after {
            start = start.min((after.created_at, after.id.0.clone()));
        }
        conditions.push("(created_at, id) < (?, ?)");
        arguments.add(start.0).map_err(encode_error)?;
        arguments.add(start.1).map_err(encode_error)?;
        Ok(Where {
            sql: conditions.join(" AND "),
            arguments,
        })
    }
}

/// A value that could not be bound (it cannot happen for integers and
/// strings, but sqlx says it may).
fn encode_error(error: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(error))
}

/// Listing order; with the row-value cursor above, every filter's index
/// yields rows in this order, so SQLite never sorts.
const ORDER: &str = "ORDER BY created_at DESC, id DESC";

fn list_sql(conditions: &str) -> String {
    format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE {conditions} {ORDER} LIMIT ?")
}

fn count_sql(conditions: &str) -> String {
    format!("SELECT COUNT(*) FROM messages WHERE {conditions}")
}

fn select_batch_sql(conditions: &str) -> String {
    format!(
        "SELECT id, account, state, created_at, body_kept FROM messages WHERE {conditions} {ORDER} LIMIT ?"
    )
}

const BY_IDS_SQL: &str = "SELECT id, account, state, created_at, body_kept FROM messages WHERE id IN (SELECT value FROM json_each(?))";

const RECIPIENTS_SQL: &str = "SELECT message_id, idx, address, state, reply FROM recipients \
     WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY message_id, idx";

fn json_ids<'a>(ids: impl Iterator<Item = &'a MessageId>) -> Result<String, StoreError> {
    serde_json::to_string(&ids.map(|id| id.0.as_str()).collect::<Vec<_>>())
        .map_err(|e| StoreError::Corrupt(format!("a message id that is not JSON: {e}")))
}

pub(super) async fn list(
    pool: &SqlitePool,
    filter: &QueueFilter,
    after: Option<&ListCursor>,
    limit: u32,
) -> Result<Vec<QueuedMessage>, StoreError> {
    // One read transaction: the page and its recipients from one snapshot,
    // even if a message is delivered or deleted in between.
    let mut tx = pool.begin().await?;
    let mut clause = Where::new(filter, after)?;
    clause.arguments.add(limit).map_err(encode_error)?;
    // Built from the constant fragments above; every value is bound.
    let rows = sqlx::query_with(AssertSqlSafe(list_sql(&clause.sql)), clause.arguments)
        .fetch_all(&mut *tx)
        .await?;
    let mut messages = rows
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_recipients(&mut tx, &mut messages).await?;
    tx.commit().await?;
    Ok(messages)
}

/// Fills in the recipients of `messages` with one query and one variable,
/// however many messages there are (claims and expiry use it too: an
/// expiry sweep after a long outage can end more messages at once than
/// SQLite takes variables).
pub(super) async fn attach_recipients(
    conn: &mut SqliteConnection,
    messages: &mut [QueuedMessage],
) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(RECIPIENTS_SQL)
        .bind(json_ids(messages.iter().map(|m| &m.id))?)
        .fetch_all(&mut *conn)
        .await?;
    let mut by_message: HashMap<String, Vec<Recipient>> = HashMap::new();
    for row in &rows {
        let state: String = row.try_get("state")?;
        by_message
            .entry(row.try_get("message_id")?)
            .or_default()
            .push(Recipient {
                address: row.try_get("address")?,
                state: RecipientState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("recipient state {state:?}")))?,
                reply: row.try_get("reply")?,
            });
    }
    for message in messages.iter_mut() {
        message.recipients = by_message.remove(&message.id.0).unwrap_or_default();
    }
    Ok(())
}

pub(super) async fn cursor(
    pool: &SqlitePool,
    id: &MessageId,
) -> Result<Option<ListCursor>, StoreError> {
    let created_at: Option<i64> =
        sqlx::query_scalar("SELECT created_at FROM messages WHERE id = ?")
            .bind(&id.0)
            .fetch_optional(pool)
            .await?;
    Ok(created_at.map(|created_at| ListCursor {
        created_at,
        id: id.clone(),
    }))
}

pub(super) async fn count(pool: &SqlitePool, filter: &QueueFilter) -> Result<u64, StoreError> {
    let clause = Where::new(filter, None)?;
    let count: i64 =
        sqlx::query_scalar_with(AssertSqlSafe(count_sql(&clause.sql)), clause.arguments)
            .fetch_one(pool)
            .await?;
    u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("a count of {count} messages")))
}

fn affected_from_row(row: &SqliteRow) -> Result<AffectedMessage, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(AffectedMessage {
        id: MessageId(row.try_get("id")?),
        account: row.try_get("account")?,
        state: MessageState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("message state {state:?}")))?,
        created_at: row.try_get("created_at")?,
        body_kept: row.try_get("body_kept")?,
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn batch(
    pool: &SqlitePool,
    writer: &WriteGate,
    action: QueueAction,
    selection: &QueueSelection,
    after: Option<&ListCursor>,
    limit: u32,
    now: i64,
    dry_run: bool,
) -> Result<BatchOutcome, StoreError> {
    // One transaction from the selection to the change: IMMEDIATE takes the
    // write lock first, so no message changes state between being chosen
    // and being changed (a worker's claim waits for the commit, and then
    // finds a held message no longer claimable). A dry run only reads.
    let _writer = if dry_run {
        None
    } else {
        Some(writer.lock().await)
    };
    let mut tx = if dry_run {
        pool.begin().await?
    } else {
        pool.begin_with("BEGIN IMMEDIATE").await?
    };
    let (selected, missing, next) = select(&mut tx, selection, after, limit).await?;
    let states = action.states_for(selection);
    // A retry needs the body, which retention may have removed from a
    // finished message.
    let (affected, skipped): (Vec<_>, Vec<_>) = selected
        .into_iter()
        .partition(|m| states.contains(&m.state) && (m.body_kept || action != QueueAction::Retry));
    if !dry_run && !affected.is_empty() {
        let changed = apply(&mut tx, action, &affected, &states, now).await?;
        if changed != affected.len() as u64 {
            // Cannot happen under the write lock; if it does, change nothing.
            return Err(StoreError::Corrupt(format!(
                "{action} changed {changed} of the {} messages it selected; nothing was changed",
                affected.len()
            )));
        }
    }
    tx.commit().await?;
    Ok(BatchOutcome {
        affected,
        skipped,
        missing,
        next,
    })
}

type Selected = (Vec<AffectedMessage>, Vec<MessageId>, Option<ListCursor>);

async fn select(
    conn: &mut SqliteConnection,
    selection: &QueueSelection,
    after: Option<&ListCursor>,
    limit: u32,
) -> Result<Selected, StoreError> {
    match selection {
        QueueSelection::Ids(ids) => {
            let rows = sqlx::query(BY_IDS_SQL)
                .bind(json_ids(ids.iter())?)
                .fetch_all(&mut *conn)
                .await?;
            let mut found: HashMap<MessageId, AffectedMessage> = rows
                .iter()
                .map(|row| affected_from_row(row).map(|m| (m.id.clone(), m)))
                .collect::<Result<_, _>>()?;
            let mut selected = Vec::new();
            let mut missing = Vec::new();
            let mut taken = std::collections::HashSet::new();
            for id in ids {
                match found.remove(id) {
                    Some(message) => {
                        taken.insert(id);
                        selected.push(message);
                    }
                    // Named twice: taken once, and not missing either.
                    None if taken.contains(id) => {}
                    None => missing.push(id.clone()),
                }
            }
            Ok((selected, missing, None))
        }
        QueueSelection::Matching(filter) => {
            let mut clause = Where::new(filter, after)?;
            clause.arguments.add(limit).map_err(encode_error)?;
            let rows = sqlx::query_with(
                AssertSqlSafe(select_batch_sql(&clause.sql)),
                clause.arguments,
            )
            .fetch_all(&mut *conn)
            .await?;
            let selected = rows
                .iter()
                .map(affected_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let next = if selected.len() < limit as usize {
                None
            } else {
                selected.last().map(|m| ListCursor {
                    created_at: m.created_at,
                    id: m.id.clone(),
                })
            };
            Ok((selected, Vec::new(), next))
        }
    }
}

/// As `retry_now`: refused recipients get another chance, delivered ones
/// are never sent to twice. ?1: the ids (JSON), ?2: now.
const RETRY_RECIPIENTS_SQL: &str = "UPDATE recipients SET state = 'pending', updated_at = ?2 \
     WHERE message_id IN (SELECT value FROM json_each(?1)) \
     AND state IN ('bounced', 'expired', 'deferred')";

/// The statement that changes the messages of a batch. ?1: their ids,
/// ?2: the states the action applies to (both JSON arrays; the states are
/// a guard here, not the selection), ?3: now (not for delete).
fn apply_sql(action: QueueAction) -> String {
    let chosen =
        "id IN (SELECT value FROM json_each(?1)) AND state IN (SELECT value FROM json_each(?2))";
    match action {
        // An expired message starts a new lifetime, or the next expiry
        // sweep would end it again at once.
        QueueAction::Retry => format!(
            "UPDATE messages SET state = 'deferred', next_attempt_at = ?3, \
             created_at = CASE WHEN state = 'expired' THEN ?3 ELSE created_at END, updated_at = ?3 \
             WHERE {chosen}"
        ),
        // Recipients (and, with the scale branch, bodies) follow by
        // ON DELETE CASCADE.
        QueueAction::Delete => format!("DELETE FROM messages WHERE {chosen}"),
        QueueAction::Hold => {
            format!("UPDATE messages SET state = 'held', updated_at = ?3 WHERE {chosen}")
        }
        // Back as it was before the hold: queued if never tried, else
        // deferred; due now.
        QueueAction::Release => format!(
            "UPDATE messages SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END, \
             next_attempt_at = ?3, updated_at = ?3 WHERE {chosen}"
        ),
    }
}

/// Changes `messages` (all in one of `states`); returns how many rows of
/// `messages` changed.
async fn apply(
    conn: &mut SqliteConnection,
    action: QueueAction,
    messages: &[AffectedMessage],
    states: &[MessageState],
    now: i64,
) -> Result<u64, StoreError> {
    let ids = json_ids(messages.iter().map(|m| &m.id))?;
    let states = serde_json::to_string(&states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if action == QueueAction::Retry {
        sqlx::query(RETRY_RECIPIENTS_SQL)
            .bind(&ids)
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    let mut query = sqlx::query(AssertSqlSafe(apply_sql(action)))
        .bind(&ids)
        .bind(&states);
    if action != QueueAction::Delete {
        query = query.bind(now);
    }
    Ok(query.execute(&mut *conn).await?.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::NewMessage;
    use crate::store::{SqliteStore, Store};

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("admin.db").display());
        (dir, SqliteStore::open(&url).await.expect("open"))
    }

    fn message(account: &str, n: usize) -> NewMessage {
        NewMessage {
            account: account.into(),
            mail_from: "app@example.com".into(),
            recipients: vec![format!("a{n}@x"), format!("b{n}@x")],
            body: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
            submitted_by: "test".into(),
        }
    }

    /// The plan of `sql` with every `?` bound to a plausible value.
    async fn plan(store: &SqliteStore, sql: &str, binds: usize) -> Vec<String> {
        let mut query = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        for n in 0..binds {
            query = query.bind(n as i64);
        }
        let rows = query.fetch_all(&store.pool).await.expect("plan");
        rows.iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect()
    }

    #[tokio::test]
    async fn listing_queries_search_an_index_and_never_sort() {
        let (_dir, store) = store().await;
        let filters = [
            (QueueFilter::default(), "messages_listing "),
            (
                QueueFilter {
                    state: Some(MessageState::Deferred),
                    ..Default::default()
                },
                "messages_listing_by_state ",
            ),
            (
                QueueFilter {
                    account: Some("office".into()),
                    created_before: Some(100),
                    ..Default::default()
                },
                "messages_listing_by_account ",
            ),
            (
                QueueFilter {
                    account: Some("office".into()),
                    state: Some(MessageState::Held),
                    created_before: None,
                },
                "messages_listing_by_account_state ",
            ),
        ];
        for (filter, index) in filters {
            let clause = Where::new(&filter, None).expect("clause");
            let binds = clause.sql.matches('?').count();
            for sql in [
                list_sql(&clause.sql),
                select_batch_sql(&clause.sql),
                count_sql(&clause.sql),
            ] {
                let with_limit = sql.matches('?').count();
                let steps = plan(&store, &sql, with_limit.max(binds)).await;
                let joined = steps.join(" | ");
                assert!(
                    steps
                        .iter()
                        .any(|s| s.starts_with("SEARCH messages USING") && s.contains(index)),
                    "{filter:?}: {sql}\nsearches {index}: {joined}"
                );
                assert!(
                    !steps.iter().any(|s| s.starts_with("SCAN messages")),
                    "{filter:?}: no scan: {joined}"
                );
                assert!(
                    !steps.iter().any(|s| s.contains("TEMP B-TREE")),
                    "{filter:?}: no sort: {joined}"
                );
            }
        }
        let steps = plan(&store, RECIPIENTS_SQL, 1).await;
        assert!(
            steps
                .iter()
                .any(|s| s.starts_with("SEARCH recipients USING") && s.contains("message_id=?")),
            "recipients by their key: {steps:?}"
        );
        assert!(
            !steps
                .iter()
                .any(|s| s.starts_with("SCAN recipients") || s.contains("TEMP B-TREE")),
            "{steps:?}"
        );
    }

    /// More messages than SQLite takes variables (32,766) in one listing
    /// and one expiry sweep: recipients travel as one JSON variable.
    #[tokio::test]
    async fn more_messages_than_sqlite_has_variables() {
        const MANY: usize = 33_000;
        let (_dir, store) = store().await;
        // Bodies may be kept in `messages` or, after migration 0008, apart.
        let has_body: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM pragma_table_info('messages') WHERE name = 'body'")
                .fetch_optional(&store.pool)
                .await
                .expect("schema");
        let (column, value) = if has_body.is_some() {
            (", body", ", x''")
        } else {
            ("", "")
        };
        sqlx::raw_sql(AssertSqlSafe(format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {MANY} - 1) \
             INSERT INTO messages (id, account, mail_from, size, submitted_by, state, attempts, created_at, next_attempt_at, updated_at{column}) \
             SELECT printf('%016X', i), 'office', 'app@example.com', 0, 'test', 'deferred', 1, 100 + i / 7, 100, 100{value} FROM n; \
             INSERT INTO recipients (message_id, idx, address, state, updated_at) \
             SELECT id, 0, 'r@x', 'deferred', 100 FROM messages;"
        )))
        .execute(&store.pool)
        .await
        .expect("bulk insert");
        let listed = store.messages(None, 50_000).await.expect("list");
        assert_eq!(listed.len(), MANY);
        assert!(listed.iter().all(|m| m.recipients.len() == 1));
        let expired = store.expire(1_000_000).await.expect("expire");
        assert_eq!(expired.len(), MANY);
        assert!(
            expired
                .iter()
                .all(|m| m.recipients[0].state == RecipientState::Expired)
        );
    }

    /// A batch's changes find their rows by key, whatever the queue holds.
    #[tokio::test]
    async fn batch_statements_go_by_key() {
        let (_dir, store) = store().await;
        let mut statements = vec![
            (RETRY_RECIPIENTS_SQL.to_string(), "recipients", 2),
            (BY_IDS_SQL.to_string(), "messages", 1),
        ];
        for action in [
            QueueAction::Retry,
            QueueAction::Delete,
            QueueAction::Hold,
            QueueAction::Release,
        ] {
            let binds = if action == QueueAction::Delete { 2 } else { 3 };
            statements.push((apply_sql(action), "messages", binds));
        }
        for (sql, table, binds) in statements {
            let steps = plan(&store, &sql, binds).await;
            assert!(
                steps
                    .iter()
                    .any(|s| s.starts_with(&format!("SEARCH {table} USING"))),
                "{sql}: {steps:?}"
            );
            assert!(
                !steps
                    .iter()
                    .any(|s| s.starts_with(&format!("SCAN {table}"))),
                "{sql}: {steps:?}"
            );
        }
    }

    #[tokio::test]
    async fn pages_cover_every_message_once_while_mail_arrives() {
        let (_dir, store) = store().await;
        let mut ids = std::collections::HashSet::new();
        for n in 0..25 {
            ids.insert(store.enqueue(message("office", n)).await.expect("enqueue"));
        }
        let filter = QueueFilter::default();
        let mut seen = Vec::new();
        let mut after: Option<ListCursor> = None;
        for page in 0..100 {
            let messages = store
                .list_messages(&filter, after.as_ref(), 4)
                .await
                .expect("page");
            let Some(last) = messages.last() else { break };
            after = Some(ListCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            });
            assert!(messages.iter().all(|m| m.recipients.len() == 2));
            seen.extend(messages.into_iter().map(|m| m.id));
            // New mail between pages.
            store
                .enqueue(message("office", 100 + page))
                .await
                .expect("enqueue");
        }
        let unique: std::collections::HashSet<_> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "no message twice");
        assert!(ids.is_subset(&unique), "every message present at the start");
    }

    #[tokio::test]
    async fn a_finished_message_whose_body_retention_removed_is_not_retried() {
        let (_dir, store) = store().await;
        let id = store.enqueue(message("office", 1)).await.expect("enqueue");
        let now = crate::clock::now_unix();
        let claimed = store.claim("w", now + 1, now + 60, 1).await.expect("claim");
        store
            .complete_attempt(
                &id,
                &claimed[0].lease,
                &crate::store::AttemptOutcome {
                    recipients: vec![
                        (0, crate::store::RecipientState::Bounced, None),
                        (1, crate::store::RecipientState::Bounced, None),
                    ],
                    next_attempt_at: None,
                    error: Some("550 no such user".into()),
                },
            )
            .await
            .expect("bounced");
        let by_id = QueueSelection::Ids(vec![id.clone()]);
        let dry = store
            .queue_batch(QueueAction::Retry, &by_id, None, 10, now, true)
            .await
            .expect("dry run");
        assert_eq!(dry.affected.len(), 1, "with its body it can be retried");
        let removed = store
            .remove_expired(
                &crate::store::retention::RetentionCutoffs {
                    bodies_before: Some(now + 10),
                    records_before: None,
                },
                10,
            )
            .await
            .expect("retention");
        assert!(!removed.is_empty(), "{removed:?}");
        let outcome = store
            .queue_batch(QueueAction::Retry, &by_id, None, 10, now, false)
            .await
            .expect("retry");
        assert!(outcome.affected.is_empty(), "{outcome:?}");
        assert_eq!(outcome.skipped.len(), 1);
        assert!(!outcome.skipped[0].body_kept);
        let state = store
            .message(&id)
            .await
            .expect("read")
            .expect("kept")
            .0
            .state;
        assert_eq!(state, MessageState::Bounced, "left as it was");
    }

    #[tokio::test]
    async fn hold_release_retry_delete_in_batches_and_dry_run() {
        let (_dir, store) = store().await;
        for n in 0..7 {
            store.enqueue(message("office", n)).await.expect("enqueue");
        }
        let other = store.enqueue(message("other", 99)).await.expect("enqueue");
        let office = QueueSelection::Matching(QueueFilter {
            account: Some("office".into()),
            ..Default::default()
        });
        let now = crate::clock::now_unix();
        let run = |action, dry_run| {
            let (store, office) = (&store, &office);
            async move {
                let mut total = Vec::new();
                let mut after = None;
                for _ in 0..100 {
                    let outcome = store
                        .queue_batch(action, office, after.as_ref(), 3, now, dry_run)
                        .await
                        .expect("batch");
                    total.extend(outcome.affected);
                    match outcome.next {
                        Some(next) => after = Some(next),
                        None => return total,
                    }
                }
                panic!("did not end");
            }
        };
        assert_eq!(run(QueueAction::Hold, true).await.len(), 7);
        assert_eq!(
            store
                .count_messages(&QueueFilter {
                    state: Some(MessageState::Held),
                    ..Default::default()
                })
                .await
                .expect("count"),
            0,
            "a dry run changes nothing"
        );
        assert_eq!(run(QueueAction::Hold, false).await.len(), 7);
        assert!(
            store
                .claim("w", now + 5, now + 60, 100)
                .await
                .expect("claim")
                .iter()
                .all(|c| c.message.id == other),
            "held mail is never claimed"
        );
        assert!(
            store.expire(now + 10).await.expect("expire").is_empty(),
            "nor expired"
        );
        assert_eq!(
            store.next_due().await.expect("due"),
            Some(now + 60),
            "only the claimed message is due (when its lease ends)"
        );
        let claimed = store
            .claim("w", now + 61, now + 120, 100)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        let in_flight = store
            .queue_batch(
                QueueAction::Delete,
                &QueueSelection::Ids(vec![other.clone()]),
                None,
                10,
                now,
                false,
            )
            .await
            .expect("delete in flight");
        assert!(
            in_flight.affected.is_empty(),
            "a message in flight is not touched"
        );
        assert_eq!(in_flight.skipped.len(), 1);
        let bounce = crate::store::AttemptOutcome {
            recipients: vec![
                (0, RecipientState::Bounced, Some("550 no".into())),
                (1, RecipientState::Bounced, Some("550 no".into())),
            ],
            next_attempt_at: None,
            error: Some("550 no".into()),
        };
        store
            .complete_attempt(&other, &claimed[0].lease, &bounce)
            .await
            .expect("bounced");
        let flush = |state| {
            QueueSelection::Matching(QueueFilter {
                account: Some("other".into()),
                state,
                ..Default::default()
            })
        };
        let flushed = store
            .queue_batch(QueueAction::Retry, &flush(None), None, 10, now, false)
            .await
            .expect("flush");
        assert!(
            flushed.affected.is_empty(),
            "a flush does not resend bounced mail"
        );
        assert_eq!(flushed.skipped.len(), 1);
        let revived = store
            .queue_batch(
                QueueAction::Retry,
                &flush(Some(MessageState::Bounced)),
                None,
                10,
                now + 200,
                false,
            )
            .await
            .expect("retry bounced");
        assert_eq!(
            revived.affected.len(),
            1,
            "asked for by state, it is retried"
        );
        let (shown, _) = store.message(&other).await.expect("read").expect("exists");
        assert_eq!(shown.state, MessageState::Deferred);
        assert_eq!(shown.next_attempt_at, now + 200);
        assert!(
            shown
                .recipients
                .iter()
                .all(|r| r.state == RecipientState::Pending)
        );
        let released = run(QueueAction::Release, false).await;
        assert_eq!(released.len(), 7);
        assert!(released.iter().all(|m| m.state == MessageState::Held));
        let (shown, _) = store
            .message(&released[0].id)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(shown.state, MessageState::Queued);
        let deleted = run(QueueAction::Delete, false).await;
        assert_eq!(deleted.len(), 7);
        assert_eq!(
            store
                .count_messages(&QueueFilter::default())
                .await
                .expect("count"),
            1
        );
        let by_id = store
            .queue_batch(
                QueueAction::Delete,
                &QueueSelection::Ids(vec![other.clone(), MessageId("0000000000000000".into())]),
                None,
                10,
                now,
                false,
            )
            .await
            .expect("by id");
        assert_eq!(by_id.affected.len(), 1);
        assert_eq!(by_id.missing, [MessageId("0000000000000000".into())]);
    }
}
