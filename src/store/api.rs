//! What the store keeps for the HTTP send API (`crate::api`): API keys
//! (hashed), message tags, and the answers remembered for an
//! `Idempotency-Key`. Plain data; the rules are in `crate::api`.

use super::{ListCursor, MessageId, MessageState};
use serde::Serialize;

/// An API key as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyRecord {
    /// The public part of the key (`oxr_<id>_<secret>`), to find the row.
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret part, hex.
    #[serde(skip)]
    pub secret_hash: String,
    pub scopes: Vec<String>,
    pub allowed_from: Vec<String>,
    pub accounts: Vec<String>,
    /// At most `.0` requests per `.1` seconds; `None`: no limit of its own.
    pub rate: Option<(u32, u32)>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Which messages `GET /v1/messages` lists; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiListQuery {
    pub state: Option<MessageState>,
    /// Only messages created at or after this (Unix seconds).
    pub since: Option<i64>,
    /// Only messages this submitter (`api:<key name>`) sent; `None` for all.
    pub submitted_by: Option<String>,
    /// Only messages the key `tag.0` tagged with `tag.1`.
    pub tag: Option<(String, String)>,
}

/// One row of a listing, with the cursor that continues after it.
#[derive(Debug, Clone)]
pub struct ApiListed {
    pub cursor: ListCursor,
    pub message: super::QueuedMessage,
}

/// What [`crate::store::Store::idempotency_begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyState {
    /// The key is new (or its earlier use expired): this request goes
    /// ahead, with the message ids it reserved.
    Started,
    /// The first request under this key is still being answered.
    Pending { created_at: i64 },
    /// The first request under this key was answered; repeat the answer.
    Answered { status: u16, response: String },
    /// The key was used with a different request.
    Mismatch,
    /// The first request began but left no answer and is older than the
    /// caller's staleness bound (its process died): this request takes it
    /// over, with the ids the first one reserved (some may be queued).
    TakenOver { reserved: Vec<MessageId> },
}
