//! Webhook cursors and notification marks on SQLite (migration 0012): the
//! few rows `src/webhooks` and `src/notify` keep. Every statement here
//! touches one row by its primary key, or reads the two small tables
//! whole (one row per configured endpoint, one per open condition), so
//! none depends on the size of the queue or the event log; the lag is the
//! log's largest id (the end of its primary key) minus the cursor.

use super::admin::attach_recipients;
use super::holder_from_row;
use super::queue::{MESSAGE_COLUMNS, message_from_row};
use crate::instance::Holder;
use crate::store::queue::{MessageId, QueuedMessage};
use crate::store::{NotifyMark, StoreError, WebhookCursor, WebhookHold, WebhookStatus};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Row};

const CURSOR_COLUMNS: &str =
    "endpoint, cursor, attempts, next_attempt_at, last_error, delivered, last_delivered_at";

fn cursor_from_row(row: &SqliteRow) -> Result<WebhookCursor, StoreError> {
    Ok(WebhookCursor {
        endpoint: row.try_get("endpoint")?,
        cursor: row.try_get("cursor")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        delivered: row.try_get("delivered")?,
        last_delivered_at: row.try_get("last_delivered_at")?,
    })
}

pub(super) async fn hold(
    pool: &SqlitePool,
    endpoint: &str,
    holder: &Holder,
    now: i64,
    until: i64,
    take_over_from: Option<&str>,
) -> Result<WebhookHold, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    // A new endpoint starts at the end of the log: it receives what happens
    // from now on, not the relay's whole history.
    sqlx::query(
        "INSERT INTO webhook_cursors (endpoint, cursor, created_at, updated_at) \
         VALUES (?1, COALESCE((SELECT MAX(id) FROM events), 0), ?2, ?2) \
         ON CONFLICT(endpoint) DO NOTHING",
    )
    .bind(endpoint)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let held = sqlx::query(AssertSqlSafe(format!(
        "UPDATE webhook_cursors SET holder_id = ?2, holder_pid = ?3, holder_locality = ?4, held_until = ?5 \
         WHERE endpoint = ?1 AND (holder_id IS NULL OR held_until < ?6 OR holder_id = ?2 OR holder_id = ?7) \
         RETURNING {CURSOR_COLUMNS}"
    )))
    .bind(endpoint)
    .bind(&holder.id)
    .bind(i64::from(holder.pid))
    .bind(&holder.locality)
    .bind(until)
    .bind(now)
    .bind(take_over_from)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match held {
        Some(row) => WebhookHold::Held(cursor_from_row(&row)?),
        None => {
            let row = sqlx::query(
                "SELECT holder_id, holder_pid, holder_locality, held_until FROM webhook_cursors WHERE endpoint = ?",
            )
            .bind(endpoint)
            .fetch_one(&mut *tx)
            .await?;
            WebhookHold::HeldBy {
                holder: holder_from_row(&row, "holder_id", "holder_pid", "holder_locality")?,
                expires_at: row.try_get("held_until")?,
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

pub(super) async fn release(
    pool: &SqlitePool,
    endpoint: &str,
    holder_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_cursors SET holder_id = NULL, holder_pid = NULL, holder_locality = NULL, held_until = 0 \
         WHERE endpoint = ? AND holder_id = ?",
    )
    .bind(endpoint)
    .bind(holder_id)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn advance(
    pool: &SqlitePool,
    endpoint: &str,
    holder_id: &str,
    cursor: i64,
    delivered: u32,
    now: i64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE webhook_cursors SET cursor = ?3, attempts = 0, next_attempt_at = NULL, last_error = NULL, \
         delivered = delivered + ?4, \
         last_delivered_at = CASE WHEN ?4 > 0 THEN ?5 ELSE last_delivered_at END, updated_at = ?5 \
         WHERE endpoint = ?1 AND holder_id = ?2 AND cursor <= ?3",
    )
    .bind(endpoint)
    .bind(holder_id)
    .bind(cursor)
    .bind(i64::from(delivered))
    .bind(now)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn failed(
    pool: &SqlitePool,
    endpoint: &str,
    holder_id: &str,
    attempts: i64,
    next_attempt_at: i64,
    error: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE webhook_cursors SET attempts = ?3, next_attempt_at = ?4, last_error = ?5, updated_at = ?6 \
         WHERE endpoint = ?1 AND holder_id = ?2",
    )
    .bind(endpoint)
    .bind(holder_id)
    .bind(attempts)
    .bind(next_attempt_at)
    .bind(error)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn statuses(pool: &SqlitePool) -> Result<Vec<WebhookStatus>, StoreError> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {CURSOR_COLUMNS}, held_until, holder_id, \
         MAX(0, COALESCE((SELECT MAX(id) FROM events), 0) - cursor) AS lag, ?1 AS now \
         FROM webhook_cursors ORDER BY endpoint"
    )))
    .bind(crate::clock::now_unix())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let held_until: i64 = row.try_get("held_until")?;
            let now: i64 = row.try_get("now")?;
            Ok(WebhookStatus {
                cursor: cursor_from_row(row)?,
                lag: row.try_get("lag")?,
                holder: if held_until >= now {
                    row.try_get("holder_id")?
                } else {
                    None
                },
            })
        })
        .collect()
}

pub(super) async fn message_summary(
    pool: &SqlitePool,
    id: &MessageId,
) -> Result<Option<QueuedMessage>, StoreError> {
    let mut conn = pool.acquire().await?;
    let Some(row) = sqlx::query(AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?"
    )))
    .bind(&id.0)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let mut found = [message_from_row(&row)?];
    attach_recipients(&mut conn, &mut found).await?;
    let [message] = found;
    Ok(Some(message))
}

pub(super) async fn notify_due(
    pool: &SqlitePool,
    condition: &str,
    now: i64,
    repeat: i64,
) -> Result<bool, StoreError> {
    // The insert wins for a new condition; the update only once `repeat`
    // has passed since the last time. Either way one statement decides,
    // so two relays cannot both tell.
    let result = sqlx::query(
        "INSERT INTO notify_marks (condition, first_at, last_notified_at, times) VALUES (?1, ?2, ?2, 1) \
         ON CONFLICT(condition) DO UPDATE SET last_notified_at = ?2, times = times + 1 \
         WHERE notify_marks.last_notified_at <= ?2 - ?3",
    )
    .bind(condition)
    .bind(now)
    .bind(repeat)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn notify_marks(pool: &SqlitePool) -> Result<Vec<NotifyMark>, StoreError> {
    let rows = sqlx::query(
        "SELECT condition, first_at, last_notified_at, times FROM notify_marks ORDER BY condition",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(NotifyMark {
                condition: row.try_get("condition")?,
                first_at: row.try_get("first_at")?,
                last_notified_at: row.try_get("last_notified_at")?,
                times: row.try_get("times")?,
            })
        })
        .collect()
}

pub(super) async fn notify_clear(pool: &SqlitePool, condition: &str) -> Result<bool, StoreError> {
    let result = sqlx::query("DELETE FROM notify_marks WHERE condition = ?")
        .bind(condition)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use crate::instance::Holder;
    use crate::store::{Event, SqliteStore, Store, WebhookHold};

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        (dir, store)
    }

    fn event(kind: &str) -> Event {
        Event {
            at: 1,
            kind: kind.into(),
            account: None,
            message_id: None,
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn a_new_endpoint_starts_at_the_end_of_the_log_and_one_holder_moves_it() {
        let (_dir, store) = store().await;
        store.record_event(&event("a.one")).await.expect("event");
        store.record_event(&event("a.two")).await.expect("event");
        let (one, two) = (Holder::new_in_this_process(), Holder::new_in_this_process());
        let WebhookHold::Held(cursor) = store
            .hold_webhook("hook", &one, 100, 130, None)
            .await
            .expect("hold")
        else {
            panic!("a free endpoint is held")
        };
        assert_eq!(
            cursor.cursor, 2,
            "history is not replayed to a new endpoint"
        );
        assert!(matches!(
            store.hold_webhook("hook", &two, 110, 140, None).await.expect("hold"),
            WebhookHold::HeldBy { holder, expires_at: 130 } if holder == one
        ));
        assert!(
            !store
                .advance_webhook("hook", &two.id, 3, 1, 111)
                .await
                .expect("advance"),
            "only the holder moves the cursor"
        );
        assert!(
            store
                .webhook_failed("hook", &one.id, 1, 200, "HTTP 500", 112)
                .await
                .expect("failed")
        );
        store.record_event(&event("a.three")).await.expect("event");
        let status = &store.webhook_statuses().await.expect("statuses")[0];
        assert_eq!((status.lag, status.cursor.attempts), (1, 1));
        assert_eq!(status.cursor.last_error.as_deref(), Some("HTTP 500"));
        assert!(
            store
                .advance_webhook("hook", &one.id, 3, 1, 113)
                .await
                .expect("advance")
        );
        assert!(
            !store
                .advance_webhook("hook", &one.id, 2, 0, 114)
                .await
                .expect("advance"),
            "a cursor never goes back"
        );
        let status = &store.webhook_statuses().await.expect("statuses")[0];
        assert_eq!(
            (status.lag, status.cursor.attempts, status.cursor.delivered),
            (0, 0, 1)
        );
        assert_eq!(status.cursor.last_error, None);
        // A released endpoint is free for the next process at once.
        store
            .release_webhook("hook", &one.id)
            .await
            .expect("release");
        assert!(matches!(
            store.hold_webhook("hook", &two, 115, 145, None).await.expect("hold"),
            WebhookHold::Held(cursor) if cursor.cursor == 3
        ));
    }

    #[tokio::test]
    async fn a_condition_is_due_once_per_interval() {
        let (_dir, store) = store().await;
        assert!(store.notify_due("lockdown", 1000, 60).await.expect("due"));
        assert!(!store.notify_due("lockdown", 1001, 60).await.expect("due"));
        assert!(!store.notify_due("lockdown", 1059, 60).await.expect("due"));
        assert!(store.notify_due("lockdown", 1060, 60).await.expect("due"));
        let marks = store.notify_marks().await.expect("marks");
        assert_eq!((marks[0].first_at, marks[0].times), (1000, 2));
        assert!(store.notify_clear("lockdown").await.expect("clear"));
        assert!(store.notify_due("lockdown", 1061, 60).await.expect("due"));
    }
    /// The reads that run per event (the message an event is about) and
    /// per listing (the lag) search an index, whatever the size of the
    /// queue and the log.
    #[tokio::test]
    async fn per_event_reads_search_and_never_scan() {
        let (_dir, store) = store().await;
        for (name, sql, params) in [
            (
                "message summary",
                format!("SELECT {} FROM messages WHERE id = ?", super::MESSAGE_COLUMNS),
                1,
            ),
            ("lag", "SELECT MAX(id) FROM events".to_string(), 0),
            (
                "statuses",
                "SELECT endpoint, MAX(0, COALESCE((SELECT MAX(id) FROM events), 0) - cursor) FROM webhook_cursors"
                    .to_string(),
                0,
            ),
        ] {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
            for _ in 0..params {
                query = query.bind("x");
            }
            let steps: Vec<String> = query
                .fetch_all(&store.pool)
                .await
                .expect("plan")
                .iter()
                .map(|row| sqlx::Row::get::<String, _>(row, "detail"))
                .collect();
            for step in &steps {
                assert!(
                    !step.starts_with("SCAN messages") && !step.starts_with("SCAN events"),
                    "{name} scans: {steps:?}"
                );
                assert!(!step.contains("TEMP B-TREE"), "{name} sorts: {steps:?}");
            }
        }
    }
}
