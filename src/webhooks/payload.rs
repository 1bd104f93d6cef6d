//! One event as a webhook receiver sees it, and which events an endpoint
//! takes. The JSON is the event as the store keeps it (its id, kind, time,
//! account, message, detail), plus, for a message event, who submitted the
//! message and each recipient with the upstream's last reply.

use crate::store::{MessageId, QueuedMessage, Recipient, StoredEvent};
use serde::Serialize;

/// Longest `detail` sent, in bytes: details are one-line summaries, but a
/// provider's reply can be long, and a receiver should not need a large
/// body limit for an event.
pub const MAX_DETAIL_BYTES: usize = 4096;
/// Most recipients listed per message event; the rest are counted in
/// `recipients_omitted`. Bounds the body of an event about a message to
/// thousands of recipients.
pub const MAX_RECIPIENTS: usize = 100;

/// The JSON body of one webhook request.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookPayload {
    /// The event's id in the relay's log: grows with every event, the same
    /// on every retry, for de-duplication and ordering. 0 for `webhook.test`.
    pub id: i64,
    pub kind: String,
    /// Unix seconds and RFC 3339, for scripts and people.
    pub at: i64,
    pub time: String,
    pub account: Option<String>,
    pub message_id: Option<MessageId>,
    /// Who submitted the message: `api:<key name>`, a submission user,
    /// `sendmail`; `None` for account and relay events, or when the
    /// message is no longer in the store.
    pub submitted_by: Option<String>,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<Recipient>>,
    #[serde(skip_serializing_if = "is_zero")]
    pub recipients_omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl WebhookPayload {
    /// `message`: the message a message event is about, if still stored.
    pub fn new(event: &StoredEvent, message: Option<&QueuedMessage>) -> Self {
        let (recipients, recipients_omitted) = match message {
            Some(message) => (
                Some(
                    message
                        .recipients
                        .iter()
                        .take(MAX_RECIPIENTS)
                        .cloned()
                        .collect(),
                ),
                message.recipients.len().saturating_sub(MAX_RECIPIENTS),
            ),
            None => (None, 0),
        };
        WebhookPayload {
            id: event.id,
            kind: event.event.kind.clone(),
            at: event.event.at,
            time: crate::clock::format_unix(event.event.at),
            account: event.event.account.clone(),
            message_id: event.event.message_id.clone(),
            submitted_by: message.map(|m| m.submitted_by.clone()),
            detail: truncate(&event.event.detail, MAX_DETAIL_BYTES),
            recipients,
            recipients_omitted,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Which events an endpoint takes: by kind (exact, or a family written
/// `account.*`), and, for an endpoint of one API key, only the events of
/// the messages submitted with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    kinds: Vec<String>,
    api_key: Option<String>,
}

impl EventFilter {
    pub fn new(kinds: Vec<String>, api_key: Option<String>) -> Self {
        EventFilter { kinds, api_key }
    }

    /// By kind alone: whether the event may be the endpoint's.
    pub fn takes_kind(&self, kind: &str) -> bool {
        self.kinds
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(family) => kind.starts_with(family),
                None => pattern == kind,
            })
    }

    /// Whether the message's submitter must be known to decide.
    pub fn needs_message(&self) -> bool {
        self.api_key.is_some()
    }

    /// The whole decision, given the message the event is about (if any,
    /// and if still stored). An endpoint of an API key takes only events
    /// about that key's messages: account and relay events go to the
    /// global endpoints.
    pub fn takes(&self, event: &StoredEvent, message: Option<&QueuedMessage>) -> bool {
        if !self.takes_kind(&event.event.kind) {
            return false;
        }
        match &self.api_key {
            None => true,
            Some(key) => message.is_some_and(|m| {
                m.submitted_by
                    .strip_prefix("api:")
                    .is_some_and(|name| name == key)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Event, MessageState, RecipientState};

    fn event(kind: &str, detail: &str) -> StoredEvent {
        StoredEvent {
            id: 7,
            event: Event {
                at: 1_700_000_000,
                kind: kind.into(),
                account: Some("office".into()),
                message_id: Some(MessageId("00aa".into())),
                detail: detail.into(),
            },
        }
    }

    fn message(submitted_by: &str, recipients: usize) -> QueuedMessage {
        QueuedMessage {
            id: MessageId("00aa".into()),
            account: "office".into(),
            mail_from: "a@x".into(),
            recipients: (0..recipients)
                .map(|i| Recipient {
                    address: format!("r{i}@x"),
                    state: RecipientState::Delivered,
                    reply: Some("250 2.0.0 OK".into()),
                })
                .collect(),
            size: 10,
            submitted_by: submitted_by.into(),
            state: MessageState::Delivered,
            attempts: 1,
            created_at: 1,
            next_attempt_at: 1,
            last_error: None,
            lease_instance: None,
            lease_expires_at: None,
        }
    }

    #[test]
    fn kinds_match_exactly_or_by_family() {
        let filter = EventFilter::new(vec!["message.bounced".into(), "account.*".into()], None);
        assert!(filter.takes_kind("message.bounced"));
        assert!(filter.takes_kind("account.needs_consent"));
        assert!(!filter.takes_kind("message.delivered"));
        assert!(!filter.takes_kind("accounting"));
    }

    #[test]
    fn an_api_key_endpoint_takes_only_that_keys_messages() {
        let filter = EventFilter::new(vec!["message.*".into()], Some("shop".into()));
        let delivered = event("message.delivered", "");
        assert!(filter.takes(&delivered, Some(&message("api:shop", 1))));
        assert!(!filter.takes(&delivered, Some(&message("api:shopping", 1))));
        assert!(!filter.takes(&delivered, Some(&message("scanner", 1))));
        assert!(!filter.takes(&delivered, None), "unknown submitter");
    }

    #[test]
    fn the_payload_is_bounded() {
        let long = "é".repeat(MAX_DETAIL_BYTES);
        let payload = WebhookPayload::new(
            &event("message.delivered", &long),
            Some(&message("api:shop", MAX_RECIPIENTS + 5)),
        );
        assert!(payload.detail.len() <= MAX_DETAIL_BYTES + 3);
        assert_eq!(
            payload.recipients.as_ref().map(Vec::len),
            Some(MAX_RECIPIENTS)
        );
        assert_eq!(payload.recipients_omitted, 5);
        let json: serde_json::Value = serde_json::from_slice(&payload.to_json()).expect("JSON");
        assert_eq!(json["id"], 7);
        assert_eq!(json["submitted_by"], "api:shop");
        assert_eq!(json["recipients"][0]["reply"], "250 2.0.0 OK");
        assert_eq!(json["time"], "2023-11-14T22:13:20Z");
    }
}
