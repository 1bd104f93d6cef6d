//! How many messages are in each state, for `oxirelay_queue_messages`,
//! read from the store at scrape time so that it is never out of step with
//! the queue (several relays may share one store).
//!
//! Each state is one `Store::count_messages` by state, which SQLite answers
//! from the `messages_listing_by_state` index (its plan is guarded in
//! `store::sqlite::admin`): the cost is the number of index entries in that
//! state, not the size of the table. The waiting states (queued, in flight,
//! deferred, held) are small in a healthy relay and what an alert watches,
//! so they are counted at every scrape. The final states (delivered,
//! bounced, expired) are most of a store that keeps history (200,000 rows
//! and more until retention removes them), change only by growing, and are
//! read for trends, so their counts are kept for [`FINAL_COUNTS_TTL`].

use crate::store::{MessageState, QueueFilter, Store, StoreError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the final states' counts are reused: Prometheus scrapes every
/// 15 s to 1 min by default, so one count in 30 s costs at most one scan of
/// the final rows' index entries per two default scrapes.
pub const FINAL_COUNTS_TTL: Duration = Duration::from_secs(30);

/// Counted at every scrape.
pub const WAITING: [MessageState; 4] = [
    MessageState::Queued,
    MessageState::InFlight,
    MessageState::Deferred,
    MessageState::Held,
];

/// Counted at most once per [`FINAL_COUNTS_TTL`].
pub const FINAL: [MessageState; 3] = [
    MessageState::Delivered,
    MessageState::Bounced,
    MessageState::Expired,
];

/// The cache of the final states' counts.
#[derive(Debug)]
pub struct QueueDepth {
    ttl: Duration,
    finals: Mutex<Option<(Instant, [u64; 3])>>,
}

impl Default for QueueDepth {
    fn default() -> Self {
        QueueDepth::new(FINAL_COUNTS_TTL)
    }
}

impl QueueDepth {
    pub fn new(ttl: Duration) -> Self {
        QueueDepth {
            ttl,
            finals: Mutex::new(None),
        }
    }

    /// Every state with its count, as of `now` (the final states possibly
    /// up to the TTL older).
    pub async fn read(
        &self,
        store: &dyn Store,
        now: Instant,
    ) -> Result<Vec<(MessageState, u64)>, StoreError> {
        let mut counts = Vec::with_capacity(WAITING.len() + FINAL.len());
        for state in WAITING {
            counts.push((state, count(store, state).await?));
        }
        let cached = *self.finals.lock().unwrap_or_else(|p| p.into_inner());
        let finals = match cached {
            Some((at, finals)) if now.saturating_duration_since(at) < self.ttl => finals,
            _ => {
                let mut finals = [0; 3];
                for (slot, state) in finals.iter_mut().zip(FINAL) {
                    *slot = count(store, state).await?;
                }
                *self.finals.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, finals));
                finals
            }
        };
        counts.extend(FINAL.into_iter().zip(finals));
        Ok(counts)
    }
}

async fn count(store: &dyn Store, state: MessageState) -> Result<u64, StoreError> {
    store
        .count_messages(&QueueFilter {
            state: Some(state),
            ..Default::default()
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AttemptOutcome, NewMessage, RecipientState, SqliteStore};

    async fn enqueue(store: &SqliteStore, n: usize) {
        store
            .enqueue(NewMessage {
                account: "office".into(),
                mail_from: "app@example.com".into(),
                recipients: vec![format!("r{n}@example.net")],
                body: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
                submitted_by: "test".into(),
            })
            .await
            .expect("enqueue");
    }

    fn of(counts: &[(MessageState, u64)], state: MessageState) -> u64 {
        counts
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, n)| *n)
            .expect("every state is counted")
    }

    #[tokio::test]
    async fn waiting_states_are_fresh_and_final_ones_cached_for_the_ttl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("q.db").display());
        let store = SqliteStore::open(&url).await.expect("open");
        for n in 0..3 {
            enqueue(&store, n).await;
        }
        let depth = QueueDepth::new(Duration::from_secs(30));
        let start = Instant::now();
        let counts = depth.read(&store, start).await.expect("read");
        assert_eq!(counts.len(), WAITING.len() + FINAL.len());
        assert_eq!(of(&counts, MessageState::Queued), 3);
        assert_eq!(of(&counts, MessageState::Delivered), 0);

        // Deliver one: the waiting count moves at once, the final one only
        // once the TTL has passed.
        let now = crate::clock::now_unix();
        let claimed = store
            .claim("test", now, now + 60, 1)
            .await
            .expect("claim")
            .remove(0);
        store
            .complete_attempt(
                &claimed.message.id,
                &claimed.lease,
                &AttemptOutcome {
                    recipients: vec![(0, RecipientState::Delivered, Some("250 ok".into()))],
                    next_attempt_at: None,
                    error: None,
                },
            )
            .await
            .expect("complete");
        let counts = depth
            .read(&store, start + Duration::from_secs(1))
            .await
            .expect("read");
        assert_eq!(of(&counts, MessageState::Queued), 2);
        assert_eq!(of(&counts, MessageState::InFlight), 0);
        assert_eq!(of(&counts, MessageState::Delivered), 0, "cached");
        let counts = depth
            .read(&store, start + Duration::from_secs(30))
            .await
            .expect("read");
        assert_eq!(of(&counts, MessageState::Delivered), 1, "counted again");
        assert_eq!(of(&counts, MessageState::Queued), 2);
    }
}
