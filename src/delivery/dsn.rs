//! Delivery status notifications (RFC 3464): the message that tells a
//! sender some recipients will never get their mail (refused for good, or
//! still undelivered at the queue's maximum age). A `multipart/report` with
//! a sentence for people, the machine-readable `message/delivery-status`,
//! and the original's header (not its body: the sender has the body, and a
//! bounce should not carry a large or sensitive message a second time).
//!
//! Envelope sender `<>` (RFC 5321 section 4.5.5), so a DSN that cannot be
//! delivered is never answered by another; and none is made for a message
//! whose own sender was empty, so there are no bounce loops.
//!
//! Composed by hand: mail-builder has no `message/delivery-status` part, and
//! the format is a few fixed header blocks.

use crate::smtp::client::Reply;
use crate::store::{NewMessage, QueuedMessage};

/// Who submits DSNs to the queue (`queue list` shows it).
pub const SUBMITTED_BY: &str = "dsn";

/// Why a recipient failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The upstream refused it for good.
    Refused,
    /// The queue gave up at the maximum age.
    Expired,
}

/// One recipient to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    pub address: String,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    /// The upstream's reply, when there was one.
    pub diagnostic: Option<String>,
    pub kind: FailureKind,
}

impl FailedRecipient {
    /// A recipient the upstream refused with `reply`.
    pub fn refused(address: &str, reply: &Reply) -> Self {
        let status = match reply.enhanced {
            Some((class, subject, detail)) => format!("{class}.{subject}.{detail}"),
            None if reply.is_transient() => "4.0.0".to_string(),
            None => "5.0.0".to_string(),
        };
        FailedRecipient {
            address: address.to_string(),
            status,
            diagnostic: Some(reply.to_string()),
            kind: FailureKind::Refused,
        }
    }

    /// A recipient refused without a reply to quote (a refused envelope).
    pub fn refused_without_reply(address: &str, reason: &str) -> Self {
        FailedRecipient {
            address: address.to_string(),
            status: "5.0.0".to_string(),
            diagnostic: Some(reason.to_string()),
            kind: FailureKind::Refused,
        }
    }

    /// A recipient still undelivered at the maximum age (RFC 3463 4.4.7,
    /// delivery time expired); `last_reply` is the last thing the upstream said.
    pub fn expired(address: &str, last_reply: Option<&str>) -> Self {
        FailedRecipient {
            address: address.to_string(),
            status: "4.4.7".to_string(),
            diagnostic: last_reply.map(str::to_string),
            kind: FailureKind::Expired,
        }
    }
}

/// What a DSN needs to know about where it comes from.
#[derive(Debug, Clone)]
pub struct DsnOrigin<'a> {
    /// The relay's host name (Reporting-MTA).
    pub reporting_mta: &'a str,
    /// The account's mail domain: the DSN is from `MAILER-DAEMON@domain`.
    pub domain: &'a str,
}

/// The DSN to enqueue for `failed` recipients of `original`, through the
/// same account, or `None` when none is due (empty sender, no recipients).
pub fn build_dsn(
    original: &QueuedMessage,
    original_body: &[u8],
    failed: &[FailedRecipient],
    origin: &DsnOrigin<'_>,
) -> Option<NewMessage> {
    let sender = original.mail_from.trim();
    if sender.is_empty() || failed.is_empty() {
        return None;
    }
    let boundary = format!("oxirelay-dsn-{}", original.id);
    let from = format!("MAILER-DAEMON@{}", one_line(origin.domain));
    let expired = failed.iter().all(|f| f.kind == FailureKind::Expired);
    let subject = if expired {
        "Delivery delayed too long: returned to sender"
    } else {
        "Undelivered mail returned to sender"
    };
    let now = chrono::Utc::now();
    let mut out = String::new();
    let mut header = |name: &str, value: &str| {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    };
    header("From", &format!("Mail Delivery System <{from}>"));
    header("To", &format!("<{}>", one_line(sender)));
    header("Subject", subject);
    header("Date", &now.to_rfc2822());
    header(
        "Message-ID",
        &format!(
            "<dsn.{}.{}@{}>",
            original.id,
            now.timestamp(),
            one_line(origin.domain)
        ),
    );
    // RFC 3834: an automatic message, which autoresponders must not answer.
    header("Auto-Submitted", "auto-replied");
    header("MIME-Version", "1.0");
    header(
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    out.push_str("\r\nThis is a delivery status notification in MIME format.\r\n\r\n");

    // Part 1: for people.
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    out.push_str(&format!(
        "Your message (queue id {}) could not be delivered to {}:\r\n\r\n",
        original.id,
        if failed.len() == 1 {
            "this recipient"
        } else {
            "these recipients"
        }
    ));
    for recipient in failed {
        let why = match (recipient.kind, &recipient.diagnostic) {
            (FailureKind::Refused, Some(reply)) => format!("refused: {}", one_line(reply)),
            (FailureKind::Refused, None) => "refused".to_string(),
            (FailureKind::Expired, Some(reply)) => format!(
                "not delivered before the queue's time limit; last reply: {}",
                one_line(reply)
            ),
            (FailureKind::Expired, None) => {
                "not delivered before the queue's time limit".to_string()
            }
        };
        out.push_str(&format!("  <{}>: {why}\r\n", one_line(&recipient.address)));
    }
    out.push_str("\r\nThe original message's header is attached. This message was sent automatically; do not reply.\r\n\r\n");

    // Part 2: RFC 3464 section 2.2 (per message) and 2.3 (per recipient).
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    out.push_str(&format!(
        "Reporting-MTA: dns; {}\r\n",
        one_line(origin.reporting_mta)
    ));
    out.push_str(&format!("X-Oxirelay-Queue-ID: {}\r\n", original.id));
    if let Some(arrival) = chrono::DateTime::from_timestamp(original.created_at, 0) {
        out.push_str(&format!("Arrival-Date: {}\r\n", arrival.to_rfc2822()));
    }
    for recipient in failed {
        out.push_str("\r\n");
        out.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            one_line(&recipient.address)
        ));
        out.push_str("Action: failed\r\n");
        out.push_str(&format!("Status: {}\r\n", one_line(&recipient.status)));
        if let Some(reply) = &recipient.diagnostic {
            out.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", one_line(reply)));
        }
        out.push_str(&format!("Last-Attempt-Date: {}\r\n", now.to_rfc2822()));
    }
    out.push_str("\r\n");

    // Part 3: the original header, as received (CRLF already: the
    // submission side refuses bare LF).
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    let mut body = out.into_bytes();
    let headers = header_section(original_body);
    body.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    Some(NewMessage {
        account: original.account.clone(),
        mail_from: String::new(),
        recipients: vec![sender.to_string()],
        body,
        submitted_by: SUBMITTED_BY.to_string(),
    })
}

/// At most this much of the original header is returned: enough for any
/// real header, bounded for a hostile one.
const MAX_RETURNED_HEADER: usize = 64 * 1024;

/// The header section of a message, without the blank line, bounded.
fn header_section(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 2)
        .unwrap_or(message.len());
    let mut end = end.min(MAX_RETURNED_HEADER);
    // Cut at a line end so no partial line (or lone CR) is left.
    if end < message.len() && !message[..end].ends_with(b"\r\n") {
        end = message[..end]
            .windows(2)
            .rposition(|w| w == b"\r\n")
            .map(|at| at + 2)
            .unwrap_or(0);
    }
    &message[..end]
}

/// A value for one header line: control characters (a CR or LF could
/// inject a line) become spaces, and it is kept to a sane length.
fn one_line(text: &str) -> String {
    const MAX: usize = 900;
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX {
        let mut cut = MAX;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MessageId, MessageState};

    fn original(mail_from: &str) -> QueuedMessage {
        QueuedMessage {
            id: MessageId("00112233AABBCCDD".into()),
            account: "office".into(),
            mail_from: mail_from.into(),
            recipients: vec![],
            size: 10,
            submitted_by: "scanner".into(),
            state: MessageState::Bounced,
            attempts: 1,
            created_at: 1_700_000_000,
            next_attempt_at: 1_700_000_000,
            last_error: None,
            lease_instance: None,
            lease_expires_at: None,
        }
    }

    const BODY: &[u8] = b"From: app@contoso.com\r\nSubject: invoice\r\n\r\nsecret body\r\n";

    #[test]
    fn a_bounce_is_a_multipart_report_from_the_null_sender() {
        let reply = Reply {
            code: 550,
            enhanced: Some((5, 1, 1)),
            lines: vec!["5.1.1 no such user\r\nInjected: yes".into()],
        };
        let dsn = build_dsn(
            &original("app@contoso.com"),
            BODY,
            &[FailedRecipient::refused("gone@example.net", &reply)],
            &DsnOrigin {
                reporting_mta: "relay.contoso.com",
                domain: "contoso.com",
            },
        )
        .expect("a DSN is due");
        assert_eq!(dsn.mail_from, "");
        assert_eq!(dsn.recipients, ["app@contoso.com"]);
        assert_eq!(dsn.account, "office");
        let text = String::from_utf8(dsn.body).expect("utf-8");
        assert!(text.contains("From: Mail Delivery System <MAILER-DAEMON@contoso.com>\r\n"));
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains(
            "Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains("Reporting-MTA: dns; relay.contoso.com\r\n"));
        assert!(text.contains("Subject: invoice\r\n"));
        assert!(!text.contains("secret body"), "the body is not returned");
        assert!(!text.contains("\r\nInjected: yes"), "no header injection");
        // Every line ends in CRLF: no bare LF or CR.
        let bytes = text.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                assert_eq!(bytes[i - 1], b'\r');
            }
            if *b == b'\r' {
                assert_eq!(bytes.get(i + 1), Some(&b'\n'));
            }
        }
        assert!(text.ends_with("--oxirelay-dsn-00112233AABBCCDD--\r\n"));
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .expect("parses");
        assert!(parsed.parts.len() > 3, "three parts and the root");
    }

    #[test]
    fn no_dsn_for_the_null_sender_or_nothing_failed() {
        let origin = DsnOrigin {
            reporting_mta: "relay",
            domain: "contoso.com",
        };
        let failed = [FailedRecipient::expired("a@example.net", None)];
        assert!(build_dsn(&original(""), BODY, &failed, &origin).is_none());
        assert!(build_dsn(&original("app@contoso.com"), BODY, &[], &origin).is_none());
        let expired = build_dsn(&original("app@contoso.com"), BODY, &failed, &origin).expect("due");
        let text = String::from_utf8(expired.body).expect("utf-8");
        assert!(text.contains("Status: 4.4.7\r\n"));
        assert!(text.contains("Subject: Delivery delayed too long"));
    }

    #[test]
    fn the_returned_header_is_bounded_at_a_line_end() {
        let mut long = Vec::new();
        for i in 0..20_000 {
            long.extend_from_slice(format!("X-Filler-{i}: value\r\n").as_bytes());
        }
        long.extend_from_slice(b"\r\nbody");
        let header = header_section(&long);
        assert!(header.len() <= MAX_RETURNED_HEADER);
        assert!(header.ends_with(b"\r\n"));
        assert_eq!(header_section(b"Subject: x\r\n\r\nbody"), b"Subject: x\r\n");
        assert_eq!(header_section(b"no header end"), b"no header end");
    }
}
