//! The queue's data: a message (body stored once) and its recipients, each
//! with its own state (STYLE.md section 3), and the lease a worker holds
//! while it delivers (contract 2: a crashed worker's lease expires and the
//! message goes back to the queue).

use serde::Serialize;
use std::fmt;

/// A queue id: [`MessageId::LEN`] hex digits, the submission time in
/// milliseconds (12) then 48 random bits (12).
///
/// Time first so that ids grow: the three B-trees keyed by the id
/// (`messages`, `message_bodies`, `recipients`) take each new message at
/// their right edge, where a group commit's messages share the last leaf
/// pages, instead of one random leaf per message once the store outgrows
/// the page cache (issue 10: acceptance slowed as the store grew). The
/// random part keeps ids unguessable and says nothing about volume; the
/// time is no secret (the `Received:` header carries it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct MessageId(pub String);

impl MessageId {
    pub const LEN: usize = 24;

    pub fn generate() -> Self {
        Self::generate_at(std::time::SystemTime::now())
    }

    fn generate_at(now: std::time::SystemTime) -> Self {
        use rand::RngExt;
        let millis = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        // 48 bits of milliseconds last until the year 10889.
        let millis = (millis & 0xFFFF_FFFF_FFFF) as u64;
        let random: u64 = rand::rng().random::<u64>() & 0xFFFF_FFFF_FFFF;
        // One format: a string per byte made every id cost seven
        // (BENCHMARKS.md, issue 12).
        MessageId(format!("{millis:012X}{random:012X}"))
    }

    /// Whether `text` has the shape of an id this relay generates.
    pub fn is_well_formed(text: &str) -> bool {
        text.len() == Self::LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
    }
}

/// `pad`, not `write_str`: tables (`queue list`) give ids and states a width.
impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Where a message is. `InFlight` carries a lease; the final states are
/// `Delivered`, `Bounced` and `Expired` (a message is `Bounced` when no
/// recipient was delivered and at least one was refused for good). `Held`
/// is put aside by an operator (`queue hold`, like Postfix's hold queue):
/// never claimed, never expired, not final, until `queue release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    Queued,
    InFlight,
    Deferred,
    Delivered,
    Bounced,
    Expired,
    Held,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::InFlight => "in_flight",
            MessageState::Deferred => "deferred",
            MessageState::Delivered => "delivered",
            MessageState::Bounced => "bounced",
            MessageState::Expired => "expired",
            MessageState::Held => "held",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => MessageState::Queued,
            "in_flight" => MessageState::InFlight,
            "deferred" => MessageState::Deferred,
            "delivered" => MessageState::Delivered,
            "bounced" => MessageState::Bounced,
            "expired" => MessageState::Expired,
            "held" => MessageState::Held,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            MessageState::Delivered | MessageState::Bounced | MessageState::Expired
        )
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientState {
    Pending,
    Delivered,
    /// Refused for now (4xx, network); tried again.
    Deferred,
    /// Refused for good (5xx).
    Bounced,
    /// Still pending when the message reached its maximum age.
    Expired,
}

impl RecipientState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientState::Pending => "pending",
            RecipientState::Delivered => "delivered",
            RecipientState::Deferred => "deferred",
            RecipientState::Bounced => "bounced",
            RecipientState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => RecipientState::Pending,
            "delivered" => RecipientState::Delivered,
            "deferred" => RecipientState::Deferred,
            "bounced" => RecipientState::Bounced,
            "expired" => RecipientState::Expired,
            _ => return None,
        })
    }

    /// Still to be delivered.
    pub fn is_open(self) -> bool {
        matches!(self, RecipientState::Pending | RecipientState::Deferred)
    }
}

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub account: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub body: Vec<u8>,
    /// Who submitted it (user name, API key name, "sendmail").
    pub submitted_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipient {
    pub address: String,
    pub state: RecipientState,
    /// The last reply about this recipient, as the upstream sent it.
    pub reply: Option<String>,
}

/// A message as `queue list`/`show` and the workers see it.
#[derive(Debug, Clone, Serialize)]
pub struct QueuedMessage {
    pub id: MessageId,
    pub account: String,
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
    pub size: i64,
    pub submitted_by: String,
    pub state: MessageState,
    pub attempts: i64,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    /// While the message is in flight: the instance whose worker holds its
    /// lease (`host:pid:random`, as `oxirelay serve` prints it at start),
    /// and until when (Unix seconds). With several relays on one store
    /// this says which one is delivering it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<i64>,
}

impl QueuedMessage {
    /// The lease columns as a listing shows them: the instance part of the
    /// owner (`INSTANCE/worker`), only while the message is in flight.
    pub(crate) fn with_lease(
        mut self,
        owner: Option<String>,
        expires_at: Option<i64>,
    ) -> QueuedMessage {
        if self.state == MessageState::InFlight {
            self.lease_instance = owner.map(|owner| match owner.split_once('/') {
                Some((instance, _worker)) => instance.to_string(),
                None => owner,
            });
            self.lease_expires_at = expires_at;
        }
        self
    }
}

/// A message claimed by a worker: its lease must be named to record an outcome.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub message: QueuedMessage,
    pub body: Vec<u8>,
    pub lease: ClaimLease,
}

impl Claimed {
    /// One claim's batch, each message with its body (keyed by id) and the
    /// lease `owner` holds until `lease_until`; what every backend's claim
    /// returns.
    pub(crate) fn assemble(
        messages: Vec<QueuedMessage>,
        mut bodies: std::collections::HashMap<String, Vec<u8>>,
        owner: &str,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, super::StoreError> {
        messages
            .into_iter()
            .map(|message| {
                // Retention removes bodies of final messages only, and a
                // final message is never claimed: a claimed message without
                // its body means the store was changed behind the relay's back.
                let body = bodies.remove(&message.id.0).ok_or_else(|| {
                    super::StoreError::Corrupt(format!("message {} has no body", message.id))
                })?;
                Ok(Claimed {
                    body,
                    message,
                    lease: ClaimLease {
                        owner: owner.to_string(),
                        expires_at: lease_until,
                    },
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimLease {
    pub owner: String,
    pub expires_at: i64,
}

/// What one delivery attempt did, per recipient, and what happens next.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// Index into the message's recipients → new state and reply.
    pub recipients: Vec<(usize, RecipientState, Option<String>)>,
    /// When to try the open recipients again; `None` when none are open.
    pub next_attempt_at: Option<i64>,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_states_take_a_column_width() {
        let row = format!(
            "{:<17}|{:<10}|",
            MessageId("0123456789ABCDEF".into()),
            MessageState::Queued
        );
        assert_eq!(row, "0123456789ABCDEF |queued    |");
    }

    #[test]
    fn ids_grow_with_time_and_stay_unguessable() {
        let start = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_000_000_000);
        let earlier = MessageId::generate_at(start);
        let later = MessageId::generate_at(start + std::time::Duration::from_millis(1));
        assert!(earlier < later, "{earlier} < {later}");
        assert!(MessageId::is_well_formed(&earlier.0), "{earlier}");
        assert_eq!(&earlier.0[..12], "019AB697E800");
        // Same millisecond: the random half differs.
        let twin = MessageId::generate_at(start);
        assert_eq!(earlier.0[..12], twin.0[..12]);
        assert_ne!(earlier, twin);
        for bad in [
            "0123456789ABCDEF",
            "019aaf3f5c00000000000000",
            "019AAF3F5C00/0000000000",
        ] {
            assert!(!MessageId::is_well_formed(bad), "{bad}");
        }
    }
}
