//! `Idempotency-Key`: a retried request gets the first answer (same status,
//! same body) instead of sending again. The key is claimed in the store
//! before anything is queued (a primary key, so a concurrent duplicate
//! finds the claim), with the ids its messages will be queued under; the
//! answer is stored once known. Duplicates in this process wait on a lock
//! per key; one in another process polls the store, bounded. A claim left
//! without an answer by a process that died is taken over after
//! [`STALE_AFTER`], with the same ids, so that what the first one queued is
//! not queued twice. Keys are remembered for [`KEEP_FOR`].

use crate::store::{IdempotencyState, MessageId, Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long an answer is remembered (README says so).
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);
/// A claim without an answer this old belongs to a process that died: no
/// request takes this long (its body is bounded and queueing is a commit).
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// How long a duplicate waits for another process's answer, and how often
/// it looks.
const WAIT_FOR_OTHER: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
/// The longest key accepted (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// One async lock per key in use in this process.
#[derive(Default)]
pub struct LocalLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl LocalLocks {
    pub fn get(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map is still whole: the panicking holder only read it.
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lock) = locks.get(name).and_then(Weak::upgrade) {
            return lock;
        }
        if locks.len() >= 1024 {
            locks.retain(|_, lock| lock.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(name.to_string(), Arc::downgrade(&lock));
        lock
    }
}

pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// What identifies a request: its route and its exact body.
pub fn request_hash(route: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// The outcome of claiming a key, after waiting out another process.
pub enum Claim {
    /// Go ahead with these ids; `recovering` when a dead request's claim
    /// was taken over (some of them may be queued already).
    Go {
        ids: Vec<MessageId>,
        recovering: bool,
    },
    Answered {
        status: u16,
        response: String,
    },
    Mismatch,
    InProgress,
}

pub async fn claim(
    store: &dyn Store,
    key_id: &str,
    idempotency_key: &str,
    hash: &str,
    fresh: Vec<MessageId>,
) -> Result<Claim, StoreError> {
    let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHER;
    loop {
        let now = crate::clock::now_unix();
        let state = store
            .idempotency_begin(
                key_id,
                idempotency_key,
                hash,
                &fresh,
                now,
                now + KEEP_FOR.as_secs() as i64,
                now - STALE_AFTER.as_secs() as i64,
            )
            .await?;
        match state {
            IdempotencyState::Started => {
                return Ok(Claim::Go {
                    ids: fresh,
                    recovering: false,
                });
            }
            IdempotencyState::TakenOver { reserved } => {
                return Ok(Claim::Go {
                    ids: reserved,
                    recovering: true,
                });
            }
            IdempotencyState::Answered { status, response } => {
                return Ok(Claim::Answered { status, response });
            }
            IdempotencyState::Mismatch => return Ok(Claim::Mismatch),
            IdempotencyState::Pending { .. } => {
                if tokio::time::Instant::now() + POLL > deadline {
                    return Ok(Claim::InProgress);
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}
