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
    let ip = context.peer.ip().to_canonical();
    let literal = match ip {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
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
        by = trace_token(our_hostname),
        date = now.format("%a, %d %b %Y %H:%M:%S +0000"),
    )
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
