//! Queue administration on PostgreSQL: the listing behind `queue list` and
//! the bulk operations behind `queue retry|delete|hold|release`, with the
//! semantics of the SQLite side (src/store/sqlite/admin.rs): pages by
//! (created_at, id), newest first, through the `messages_listing*`
//! indexes; a set of ids travels as one array parameter.

use super::queue::{MESSAGE_COLUMNS, message_from_row, notify_work};
use crate::store::queue::{MessageId, MessageState, QueuedMessage, Recipient, RecipientState};
use crate::store::{
    AffectedMessage, BatchOutcome, ListCursor, QueueAction, QueueFilter, QueueSelection, StoreError,
};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::{Arguments, AssertSqlSafe, PgConnection, Row};
use std::collections::HashMap;

/// A filter as SQL with numbered parameters, ending with the cursor's row
/// value, which every listing has; the first page starts after everything
/// (`i64::MAX`), so that even it is a range search on the index.
struct Where {
    sql: String,
    arguments: PgArguments,
    next: usize,
}

impl Where {
    fn new(filter: &QueueFilter, after: Option<&ListCursor>) -> Result<Where, StoreError> {
        let mut clause = Where {
            sql: String::new(),
            arguments: PgArguments::default(),
            next: 1,
        };
        let mut conditions = Vec::new();
        if let Some(account) = &filter.account {
            conditions.push(format!("account = {}", clause.add(account.clone())?));
        }
        if let Some(state) = filter.state {
            conditions.push(format!("state = {}", clause.add(state.as_str())?));
        }
        // `created_at < T` is the cursor (T, ""): every id sorts after "".
        let mut start = (i64::MAX, String::new());
        if let Some(before) = filter.created_before {
            start = start.min((before, String::new()));
        }
        if let Some(after) = after {
            start = start.min((after.created_at, after.id.0.clone()));
        }
        let created = clause.add(start.0)?;
        let id = clause.add(start.1)?;
        conditions.push(format!("(created_at, id) < ({created}, {id})"));
        clause.sql = conditions.join(" AND ");
        Ok(clause)
    }

    /// Binds `value`; returns its placeholder.
    fn add<'q, T>(&mut self, value: T) -> Result<String, StoreError>
    where
        T: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'q,
    {
        self.arguments.add(value).map_err(encode_error)?;
        let placeholder = format!("${}", self.next);
        self.next += 1;
        Ok(placeholder)
    }
}

fn encode_error(error: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(error))
}

const ORDER: &str = "ORDER BY created_at DESC, id DESC";

pub(super) async fn list(
    pool: &PgPool,
    filter: &QueueFilter,
    after: Option<&ListCursor>,
    limit: u32,
) -> Result<Vec<QueuedMessage>, StoreError> {
    // One read-only snapshot for the page and its recipients.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let mut clause = Where::new(filter, after)?;
    let limit_at = clause.add(i64::from(limit))?;
    // Built from the constant fragments above; every value is bound.
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE {} {ORDER} LIMIT {limit_at}",
        clause.sql
    );
    let rows = sqlx::query_with(AssertSqlSafe(sql), clause.arguments)
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

/// Fills in the recipients of `messages` with one query and one parameter.
pub(super) async fn attach_recipients(
    conn: &mut PgConnection,
    messages: &mut [QueuedMessage],
) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = messages.iter().map(|m| m.id.0.as_str()).collect();
    let rows = sqlx::query(
        "SELECT message_id, idx, address, state, reply FROM recipients \
         WHERE message_id = ANY($1) ORDER BY message_id, idx",
    )
    .bind(&ids)
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

pub(super) async fn count(pool: &PgPool, filter: &QueueFilter) -> Result<u64, StoreError> {
    let clause = Where::new(filter, None)?;
    let sql = format!("SELECT COUNT(*) FROM messages WHERE {}", clause.sql);
    let count: i64 = sqlx::query_scalar_with(AssertSqlSafe(sql), clause.arguments)
        .fetch_one(pool)
        .await?;
    u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("a count of {count} messages")))
}

fn affected_from_row(row: &PgRow) -> Result<AffectedMessage, StoreError> {
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
    pool: &PgPool,
    channel: &str,
    action: QueueAction,
    selection: &QueueSelection,
    after: Option<&ListCursor>,
    limit: u32,
    now: i64,
    dry_run: bool,
) -> Result<BatchOutcome, StoreError> {
    // One transaction from the selection to the change; the selection
    // locks its rows (`FOR UPDATE`), so none changes state in between: a
    // claim skips them, and a row a claim holds is waited for and then
    // seen in its new state. A dry run only reads.
    let mut tx = pool.begin().await?;
    let (selected, missing, next) = select(&mut tx, selection, after, limit, !dry_run).await?;
    let states = action.states_for(selection);
    let (affected, skipped): (Vec<_>, Vec<_>) = selected
        .into_iter()
        .partition(|m| states.contains(&m.state) && (m.body_kept || action != QueueAction::Retry));
    if !dry_run && !affected.is_empty() {
        let changed = apply(&mut tx, action, &affected, &states, now).await?;
        if changed != affected.len() as u64 {
            // Cannot happen under the rows' locks; if it does, change nothing.
            return Err(StoreError::Corrupt(format!(
                "{action} changed {changed} of the {} messages it selected; nothing was changed",
                affected.len()
            )));
        }
        if matches!(action, QueueAction::Retry | QueueAction::Release) {
            notify_work(&mut tx, channel).await?;
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
    conn: &mut PgConnection,
    selection: &QueueSelection,
    after: Option<&ListCursor>,
    limit: u32,
    lock: bool,
) -> Result<Selected, StoreError> {
    let locking = if lock { " FOR UPDATE" } else { "" };
    match selection {
        QueueSelection::Ids(ids) => {
            let names: Vec<&str> = ids.iter().map(|id| id.0.as_str()).collect();
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT id, account, state, created_at, body_kept FROM messages WHERE id = ANY($1){locking}"
            )))
            .bind(&names)
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
            let limit_at = clause.add(i64::from(limit))?;
            let sql = format!(
                "SELECT id, account, state, created_at, body_kept FROM messages WHERE {} {ORDER} LIMIT {limit_at}{locking}",
                clause.sql
            );
            let rows = sqlx::query_with(AssertSqlSafe(sql), clause.arguments)
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

/// The statement that changes the messages of a batch. $1: their ids,
/// $2: the states the action applies to (a guard here, not the
/// selection), $3: now (not for delete).
fn apply_sql(action: QueueAction) -> String {
    let chosen = "id = ANY($1) AND state = ANY($2)";
    match action {
        // An expired message starts a new lifetime, or the next expiry
        // sweep would end it again at once.
        QueueAction::Retry => format!(
            "UPDATE messages SET state = 'deferred', next_attempt_at = $3, \
             created_at = CASE WHEN state = 'expired' THEN $3 ELSE created_at END, updated_at = $3 \
             WHERE {chosen}"
        ),
        // Recipients and bodies follow by ON DELETE CASCADE.
        QueueAction::Delete => format!("DELETE FROM messages WHERE {chosen}"),
        QueueAction::Hold => {
            format!("UPDATE messages SET state = 'held', updated_at = $3 WHERE {chosen}")
        }
        QueueAction::Release => format!(
            "UPDATE messages SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'deferred' END, \
             next_attempt_at = $3, updated_at = $3 WHERE {chosen}"
        ),
    }
}

async fn apply(
    conn: &mut PgConnection,
    action: QueueAction,
    messages: &[AffectedMessage],
    states: &[MessageState],
    now: i64,
) -> Result<u64, StoreError> {
    let ids: Vec<&str> = messages.iter().map(|m| m.id.0.as_str()).collect();
    let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    if action == QueueAction::Retry {
        sqlx::query(
            "UPDATE recipients SET state = 'pending', updated_at = $2 \
             WHERE message_id = ANY($1) AND state IN ('bounced', 'expired', 'deferred')",
        )
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
