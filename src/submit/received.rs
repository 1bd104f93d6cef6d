//! The `Received:` trace header the relay puts in front of each submitted
//! message (RFC 5321 section 4.4), with the protocol names of RFC 3848
//! (ESMTPSA = ESMTP + TLS + AUTH). Nothing else in the message changes.
//!
//! The authenticated user is not written into the header: it would tell
//! every recipient which app password a device uses.

use crate::smtp::server::{Channel, SessionContext};

/// Builds the header line for one message, ending in CRLF.
pub fn received_header(
    context: &SessionContext,
    recipients: &[String],
    our_hostname: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let hello = context
        .hello
        .as_deref()
        .map(trace_token)
        .unwrap_or_else(|| "unknown".to_string());
    let protocol = match (context.channel, context.auth.is_some()) {
        (Channel::Tls, true) => "ESMTPSA",
        (Channel::Tls, false) => "ESMTPS",
        (Channel::Plaintext, true) => "ESMTPA",
        (Channel::Plaintext, false) => "ESMTP",
    };
    // A single recipient only: with several, "for" would show every
    // recipient (Bcc included) to all of them.
    let recipient = match recipients {
        [only] => format!("\r\n\tfor <{}>", trace_token(only)),
        _ => String::new(),
    };
    format!(
        "Received: from {hello} ({literal})\r\n\tby {by} (oxirelay) with {protocol}{recipient};\r\n\t{date}\r\n",
        literal = address_literal(context.peer.ip()),
        by = trace_token(our_hostname),
        date = TraceDate(now),
    )
}

/// The header line for a message submitted over the send API (`HTTP` or
/// `HTTPS` as the protocol), ending in CRLF. The key's name is not
/// written: it would tell every recipient which key was used.
pub fn http_received_header(
    peer: std::net::IpAddr,
    https: bool,
    our_hostname: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    format!(
        "Received: from {literal}\r\n\tby {by} (oxirelay) with {protocol};\r\n\t{date}\r\n",
        literal = address_literal(peer),
        by = trace_token(our_hostname),
        protocol = if https { "HTTPS" } else { "HTTP" },
        date = TraceDate(now),
    )
}

/// The client's address as RFC 5321 writes a literal.
fn address_literal(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// A date as RFC 5322 section 3.3 writes it, in UTC. Written out rather
/// than through chrono's `format`, which parses its pattern again on every
/// message (a visible part of each submission's CPU: BENCHMARKS.md).
struct TraceDate(chrono::DateTime<chrono::Utc>);

impl std::fmt::Display for TraceDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use chrono::{Datelike, Timelike};
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let at = self.0;
        write!(
            f,
            "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
            DAYS[at.weekday().num_days_from_monday() as usize],
            at.day(),
            MONTHS[at.month0() as usize],
            at.year(),
            at.hour(),
            at.minute(),
            at.second(),
        )
    }
}

/// Keeps a client-supplied name from breaking out of the header: only
/// characters of domain names, address literals and mailboxes survive.
fn trace_token(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-.[]:@_+=".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "unknown".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::sasl::Mechanism;
    use crate::smtp::server::{Authenticated, Identity};

    fn context(channel: Channel, authenticated: bool, hello: &str) -> SessionContext {
        SessionContext {
            peer: "192.0.2.7:50000".parse().expect("addr"),
            channel,
            hello: Some(hello.to_string()),
            auth: authenticated.then(|| Authenticated {
                identity: Identity {
                    user: "scanner".into(),
                    subject: None,
                },
                mechanism: Mechanism::Plain,
                credential: crate::secret::Secret::new("x").fingerprint(),
            }),
        }
    }

    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time")
    }

    #[test]
    fn esmtpsa_with_single_recipient() {
        let header = received_header(
            &context(Channel::Tls, true, "printer.lan"),
            &["bob@example.com".to_string()],
            "relay.example.com",
            at(),
        );
        assert_eq!(
            header,
            "Received: from printer.lan ([192.0.2.7])\r\n\tby relay.example.com (oxirelay) with ESMTPSA\r\n\tfor <bob@example.com>;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        assert!(!header.contains("scanner"));
    }

    /// The written-out date is chrono's `%a, %d %b %Y %H:%M:%S +0000`,
    /// over every weekday and month and both sides of a leap day.
    #[test]
    fn the_trace_date_is_the_rfc_5322_date() {
        let mut at = chrono::DateTime::from_timestamp(946_684_800 - 86_400 * 3, 59).expect("time");
        for _ in 0..1_500 {
            assert_eq!(
                TraceDate(at).to_string(),
                at.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
            );
            at += chrono::Duration::seconds(86_400 * 7 + 3_601);
        }
    }

    #[test]
    fn an_api_submission_names_its_protocol_and_no_key() {
        let v4 = http_received_header("192.0.2.9".parse().expect("ip"), true, "relay", at());
        assert_eq!(
            v4,
            "Received: from [192.0.2.9]\r\n\tby relay (oxirelay) with HTTPS;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        let mapped =
            http_received_header("::ffff:192.0.2.9".parse().expect("ip"), false, "r\nx", at());
        assert!(
            mapped.starts_with("Received: from [192.0.2.9]\r\n\tby r?x (oxirelay) with HTTP;"),
            "{mapped}"
        );
        let v6 = http_received_header("2001:db8::1".parse().expect("ip"), false, "relay", at());
        assert!(
            v6.starts_with("Received: from [IPv6:2001:db8::1]\r\n"),
            "{v6}"
        );
    }

    #[test]
    fn several_recipients_are_not_listed_and_names_cannot_inject() {
        let header = received_header(
            &context(Channel::Plaintext, true, "evil\r\nBcc: x"),
            &["a@x".to_string(), "b@x".to_string()],
            "relay",
            at(),
        );
        assert!(header.contains("with ESMTPA;"), "{header}");
        assert!(!header.contains("for <"));
        assert!(
            header.starts_with("Received: from evil??Bcc:?x "),
            "{header}"
        );
        assert_eq!(header.matches("\r\n").count(), 3);
    }
}
