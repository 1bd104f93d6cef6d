//! The queue depth of `/metrics` on a store the size the issue names:
//! 200,000 messages in a real SQLite file, most of them delivered. The
//! counts must be exact, and what a scrape costs is printed (fresh: every
//! state counted; cached: the final states reused, as between two scrapes
//! 30 s apart). That no count scans the table is guarded by the query plan
//! test of `store::sqlite::admin` (`count_sql` by state searches
//! `messages_listing_by_state`).

use oxirelay::metrics::queue_depth::QueueDepth;
use oxirelay::store::SqliteStore;
use oxirelay::store::queue::MessageState;
use sqlx::sqlite::SqlitePool;
use std::time::{Duration, Instant};

const TOTAL: i64 = 200_000;

/// `(state, how many)`, adding up to `TOTAL`.
const MIX: [(&str, i64); 6] = [
    ("queued", 3_000),
    ("in_flight", 200),
    ("deferred", 1_500),
    ("held", 50),
    ("bounced", 2_000),
    ("expired", 250),
];

#[tokio::test]
async fn queue_depth_is_exact_at_200000_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("big.db").display());
    let store = SqliteStore::open(&url).await.expect("open");
    let raw = SqlitePool::connect(&url).await.expect("raw pool");
    // Rows as the queue writes them (bodies and recipients are not read by
    // a count), numbered 1..=TOTAL; the first ones get the states of MIX,
    // the rest are delivered.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO messages (id, account, mail_from, size, submitted_by, state, attempts, \
             created_at, next_attempt_at, updated_at) \
         SELECT printf('m%07d', i), 'acct', 'app@example.com', 100, 'test', 'delivered', 1, \
             i, i, i FROM n",
    )
    .bind(TOTAL)
    .execute(&raw)
    .await
    .expect("fill");
    let mut first = 1;
    for (state, count) in MIX {
        sqlx::query("UPDATE messages SET state = ?1 WHERE rowid >= ?2 AND rowid < ?3")
            .bind(state)
            .bind(first)
            .bind(first + count)
            .execute(&raw)
            .await
            .expect("states");
        first += count;
    }
    let delivered = TOTAL - MIX.iter().map(|(_, n)| n).sum::<i64>();

    let depth = QueueDepth::new(Duration::from_secs(30));
    let start = Instant::now();
    let counts = depth.read(&store, start).await.expect("fresh read");
    let fresh = start.elapsed();
    let later = Instant::now();
    let cached = depth
        .read(&store, start + Duration::from_secs(1))
        .await
        .expect("cached read");
    let cached_took = later.elapsed();
    eprintln!(
        "queue depth at {TOTAL} messages: fresh {fresh:?}, with the final states cached {cached_took:?}"
    );
    assert_eq!(counts, cached, "nothing changed between the two reads");
    let of = |state: MessageState| {
        counts
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, n)| *n as i64)
            .expect("every state")
    };
    for (state, count) in MIX {
        let state = MessageState::parse(state).expect("a state");
        assert_eq!(of(state), count, "{state:?}");
    }
    assert_eq!(of(MessageState::Delivered), delivered);
    assert_eq!(counts.iter().map(|(_, n)| *n as i64).sum::<i64>(), TOTAL);
}
