//! Retention (issue 10, item 2): a store that does not grow without end.
//!
//! Bodies of messages in a final state (delivered, bounced, expired) go
//! after `[store] keep_delivered`; their rows, recipients and the events go
//! after `keep_events`. A message that is not final is never removed.
//! Removal goes in small batches, each one transaction, with a yield in
//! between, so that a pass over a large backlog never holds the store's
//! one writer for long: acceptance (the group commit) waits for at most
//! one batch. After each batch the freed pages go back to the file system.
//! The pass is backend-agnostic: it calls only the [`Store`] trait.

use super::{Store, StoreError};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Which items are old enough to go (Unix seconds); `None`: kept forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionCutoffs {
    /// Bodies of final messages that reached their final state before this.
    pub bodies_before: Option<i64>,
    /// Final messages (rows, recipients) finished before this, and events
    /// recorded before it.
    pub records_before: Option<i64>,
}

/// What one retention step (or a whole pass) removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetentionBatch {
    pub bodies: u64,
    pub messages: u64,
    pub events: u64,
}

impl RetentionBatch {
    pub fn is_empty(&self) -> bool {
        self.bodies == 0 && self.messages == 0 && self.events == 0
    }

    fn add(&mut self, other: RetentionBatch) {
        self.bodies += other.bodies;
        self.messages += other.messages;
        self.events += other.events;
    }
}

/// The store's size and the oldest item retention governs (`doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreUsage {
    /// The database's size (pages × page size), free pages included.
    pub bytes: u64,
    /// Free pages not yet given back to the file system.
    pub free_bytes: u64,
    /// Whether freed pages can be given back without a full `VACUUM`.
    pub reclaims_space: bool,
    /// When the oldest final message whose body is still kept became final.
    pub oldest_body_at: Option<i64>,
    /// When the oldest final message still kept (as metadata) became final.
    pub oldest_record_at: Option<i64>,
    pub oldest_event_at: Option<i64>,
}

/// How long things are kept and how retention paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub keep_bodies: Option<Duration>,
    pub keep_records: Option<Duration>,
    /// Items per transaction. 500 bodies of 5 KB free about 2.5 MB: a
    /// transaction of a few milliseconds, shorter than a group commit's fsync.
    pub batch: u32,
    /// Pages given back after each batch (4 KB each): a little more than a
    /// batch of 5 KB bodies frees, so the free list does not grow.
    pub reclaim_pages: u32,
    /// After each step, retention rests this many times as long as the
    /// step took (at most [`MAX_REST`]). With 1, it holds the store's one
    /// writer at most half the time: measured on the scale run (bench/
    /// scale.sh), back-to-back steps cut the acceptance of mail arriving
    /// during a pass over 100,000 messages to a quarter, because every
    /// group commit queued behind a step and its page moves.
    pub rest_factor: u32,
}

/// The longest rest between two steps, whatever a step took.
pub const MAX_REST: Duration = Duration::from_secs(1);

impl RetentionPolicy {
    pub fn new(keep_bodies: Option<Duration>, keep_records: Option<Duration>) -> Self {
        RetentionPolicy {
            keep_bodies,
            keep_records,
            batch: 500,
            reclaim_pages: 1024,
            rest_factor: 1,
        }
    }

    pub fn cutoffs(&self, now: i64) -> RetentionCutoffs {
        let before = |keep: Option<Duration>| {
            keep.map(|keep| now.saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX)))
        };
        RetentionCutoffs {
            bodies_before: before(self.keep_bodies),
            records_before: before(self.keep_records),
        }
    }
}

/// A pass stops after this many batches (500 × 20,000 = 10 million items)
/// even if more is due; the next pass goes on. It bounds the loop should a
/// store keep reporting work done without the work running out.
const MAX_BATCHES_PER_PASS: u32 = 20_000;
/// After the last batch, at most this many reclaim steps (of
/// `reclaim_pages` each) give back what is left on the free list.
const MAX_RECLAIM_STEPS: u32 = 10_000;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub removed: RetentionBatch,
    pub batches: u32,
    pub pages_reclaimed: u64,
}

/// One pass: batches until nothing is past its time (or `stop`), then the
/// rest of the free pages back to the file system.
pub async fn run_pass(
    store: &dyn Store,
    policy: &RetentionPolicy,
    now: i64,
    stop: &watch::Receiver<bool>,
) -> Result<RetentionReport, StoreError> {
    let cutoffs = policy.cutoffs(now);
    let mut report = RetentionReport::default();
    if cutoffs.bodies_before.is_none() && cutoffs.records_before.is_none() {
        return Ok(report);
    }
    while report.batches < MAX_BATCHES_PER_PASS && !*stop.borrow() {
        let started = tokio::time::Instant::now();
        let removed = store.remove_expired(&cutoffs, policy.batch.max(1)).await?;
        if removed.is_empty() {
            break;
        }
        report.batches += 1;
        report.removed.add(removed);
        report.pages_reclaimed += store.reclaim_space(policy.reclaim_pages).await?;
        rest(policy, started).await;
    }
    for _ in 0..MAX_RECLAIM_STEPS {
        if *stop.borrow() {
            break;
        }
        let started = tokio::time::Instant::now();
        let pages = store.reclaim_space(policy.reclaim_pages).await?;
        if pages == 0 {
            break;
        }
        report.pages_reclaimed += pages;
        rest(policy, started).await;
    }
    Ok(report)
}

/// Pacing, not synchronisation: lets the submissions that queued for the
/// writer during a step go first (`RetentionPolicy::rest_factor`).
async fn rest(policy: &RetentionPolicy, step_started: tokio::time::Instant) {
    let rest = step_started
        .elapsed()
        .saturating_mul(policy.rest_factor)
        .min(MAX_REST);
    if rest.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(rest).await;
    }
}

/// The retention task of `serve`: a pass now and every `every`, until `stop`.
/// A pass that removed anything is told to `audit` (what was removed, in
/// one line), since removing mail records is an action like any other.
pub async fn run<Audit, Written>(
    store: Arc<dyn Store>,
    policy: RetentionPolicy,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    mut audit: Audit,
) where
    Audit: FnMut(String) -> Written,
    Written: std::future::Future<Output = ()>,
{
    loop {
        match run_pass(store.as_ref(), &policy, crate::clock::now_unix(), &stop).await {
            Ok(report) if !report.removed.is_empty() || report.pages_reclaimed > 0 => {
                if !report.removed.is_empty() {
                    audit(format!(
                        "removed {} bodies of finished messages, {} finished messages and {} events past their retention, in {} batches",
                        report.removed.bodies,
                        report.removed.messages,
                        report.removed.events,
                        report.batches
                    ))
                    .await;
                }
                tracing::info!(
                    bodies = report.removed.bodies,
                    messages = report.removed.messages,
                    events = report.removed.events,
                    batches = report.batches,
                    pages_reclaimed = report.pages_reclaimed,
                    "retention removed what had passed its time"
                );
            }
            Ok(_) => {}
            Err(StoreError::Unsupported(what)) => {
                tracing::warn!("this store does not support {what}; nothing will be removed");
                return;
            }
            // A failed batch rolled back whole; the next pass retries it.
            Err(error) => tracing::warn!(%error, "retention pass failed; retrying at the next"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use crate::store::queue::{AttemptOutcome, NewMessage, RecipientState};

    #[tokio::test]
    async fn a_pass_that_removes_anything_is_audited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let store = Arc::new(SqliteStore::open(&url).await.expect("open"));
        let id = store
            .enqueue(NewMessage {
                account: "office".into(),
                mail_from: "a@x".into(),
                recipients: vec!["r@x".into()],
                body: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
                submitted_by: "test".into(),
            })
            .await
            .expect("enqueue");
        let now = crate::clock::now_unix();
        let claimed = store.claim("w", now + 1, now + 60, 1).await.expect("claim");
        store
            .complete_attempt(
                &id,
                &claimed[0].lease,
                &AttemptOutcome {
                    recipients: vec![(0, RecipientState::Delivered, None)],
                    next_attempt_at: None,
                    error: None,
                },
            )
            .await
            .expect("delivered");
        // Finished a minute ago, as far as retention can tell.
        let pool = sqlx::SqlitePool::connect(&url)
            .await
            .expect("second connection");
        sqlx::query("UPDATE messages SET updated_at = updated_at - 60")
            .execute(&pool)
            .await
            .expect("backdate");
        pool.close().await;
        // Bodies kept for no time at all: the first pass removes this one.
        let policy = RetentionPolicy::new(Some(Duration::ZERO), None);
        let (stop_tx, stop) = watch::channel(false);
        let (told_tx, mut told) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            store.clone(),
            policy,
            Duration::from_secs(3600),
            stop,
            move |detail: String| {
                let _ = told_tx.send(detail);
                std::future::ready(())
            },
        ));
        let detail = tokio::time::timeout(Duration::from_secs(30), told.recv())
            .await
            .expect("a pass within 30 s")
            .expect("a line");
        assert!(
            detail.starts_with("removed 1 bodies of finished messages, 0 finished messages"),
            "{detail}"
        );
        stop_tx.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stops")
            .expect("no panic");
    }
}
