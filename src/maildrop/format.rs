//! The drop file: a short envelope, an empty line, then the message.
//!
//! ```text
//! oxirelay-drop 1
//! from cron@example.com
//! to ops@example.net
//! to team@example.net
//!
//! <the RFC 5322 message, CRLF line endings>
//! ```
//!
//! The envelope is text with LF line endings; an address cannot contain a
//! line break (RFC 5321 mailboxes have no control characters), so there is
//! nothing to escape. Anyone in the drop group can write a file here
//! without `oxirelay sendmail`, so [`parse`] trusts nothing: every address
//! is checked as MAIL FROM and RCPT TO are on the listener, and the
//! envelope is bounded.

use crate::message::mailbox::{MailboxError, check_mailbox};

/// The first line of every drop; a new layout gets a new number.
pub const MAGIC: &str = "oxirelay-drop 1";

/// The envelope is at most this long: 1,000 recipients of 256 octets fit,
/// twice the most any provider takes per message.
pub const MAX_ENVELOPE_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "it does not start with {MAGIC:?}, so it was not written by oxirelay sendmail; submit with oxirelay sendmail"
    )]
    NotADrop,
    #[error("its envelope does not end with an empty line within {MAX_ENVELOPE_BYTES} bytes")]
    Unterminated,
    #[error("envelope line {line} is neither \"from ADDRESS\" nor \"to ADDRESS\"")]
    UnknownLine { line: usize },
    #[error("its envelope has no sender (\"from ADDRESS\" on the second line)")]
    NoSender,
    #[error("its envelope has no recipients (\"to ADDRESS\" lines)")]
    NoRecipients,
    #[error("the {what} <{address}> {reason}")]
    BadAddress {
        what: &'static str,
        address: String,
        reason: MailboxError,
    },
}

/// A drop, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop<'a> {
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub message: &'a [u8],
}

/// The bytes of a drop. Addresses are written as given; [`parse`] checks them.
pub fn encode(mail_from: &str, recipients: &[String], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64 * (recipients.len() + 2));
    out.extend_from_slice(MAGIC.as_bytes());
    out.extend_from_slice(format!("\nfrom {mail_from}\n").as_bytes());
    for recipient in recipients {
        out.extend_from_slice(format!("to {recipient}\n").as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(message);
    out
}

/// Reads a drop, checking every address.
pub fn parse(bytes: &[u8]) -> Result<Drop<'_>, FormatError> {
    let head = &bytes[..bytes.len().min(MAX_ENVELOPE_BYTES)];
    let end = head.windows(2).position(|w| w == b"\n\n").ok_or(
        if bytes.starts_with(MAGIC.as_bytes()) {
            FormatError::Unterminated
        } else {
            FormatError::NotADrop
        },
    )?;
    let envelope = std::str::from_utf8(&bytes[..end]).map_err(|_| FormatError::NotADrop)?;
    let message = &bytes[end + 2..];
    let mut lines = envelope.split('\n');
    if lines.next() != Some(MAGIC) {
        return Err(FormatError::NotADrop);
    }
    let checked = |what: &'static str, address: &str| {
        check_mailbox(address)
            .map(|()| address.to_string())
            .map_err(|reason| FormatError::BadAddress {
                what,
                address: address.escape_debug().to_string(),
                reason,
            })
    };
    let mail_from = match lines.next().and_then(|l| l.strip_prefix("from ")) {
        Some(address) => checked("sender", address)?,
        None => return Err(FormatError::NoSender),
    };
    let mut recipients = Vec::new();
    for (index, line) in lines.enumerate() {
        match line.strip_prefix("to ") {
            Some(address) => recipients.push(checked("recipient", address)?),
            // Line 1 is the magic, 2 the sender.
            None => return Err(FormatError::UnknownLine { line: index + 3 }),
        }
    }
    if recipients.is_empty() {
        return Err(FormatError::NoRecipients);
    }
    Ok(Drop {
        mail_from,
        recipients,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_reads_back_as_written() {
        let recipients = vec!["a@example.net".to_string(), "\"b c\"@example.net".into()];
        let bytes = encode(
            "cron@example.com",
            &recipients,
            b"Subject: x\r\n\r\nbody\r\n",
        );
        assert!(bytes.starts_with(b"oxirelay-drop 1\nfrom cron@example.com\nto a@example.net\n"));
        let drop = parse(&bytes).expect("parses");
        assert_eq!(drop.mail_from, "cron@example.com");
        assert_eq!(drop.recipients, recipients);
        assert_eq!(drop.message, b"Subject: x\r\n\r\nbody\r\n");
        // A message may itself hold empty LF lines: only the first ends the envelope.
        let bytes = encode("a@b.example", &recipients[..1], b"\n\nodd\n");
        assert_eq!(parse(&bytes).expect("parses").message, b"\n\nodd\n");
    }

    #[test]
    fn what_is_not_a_drop_is_named() {
        assert_eq!(parse(b"Subject: hi\n\nbody\n"), Err(FormatError::NotADrop));
        assert_eq!(parse(b""), Err(FormatError::NotADrop));
        assert_eq!(
            parse(b"oxirelay-drop 1\nfrom a@b.example\nto c@d.example\n"),
            Err(FormatError::Unterminated)
        );
        assert_eq!(
            parse(b"oxirelay-drop 1\nto c@d.example\n\n"),
            Err(FormatError::NoSender)
        );
        assert_eq!(
            parse(b"oxirelay-drop 1\nfrom a@b.example\n\nbody"),
            Err(FormatError::NoRecipients)
        );
        assert_eq!(
            parse(b"oxirelay-drop 1\nfrom a@b.example\nto c@d.example\nbcc e@f.example\n\n"),
            Err(FormatError::UnknownLine { line: 4 })
        );
        let bad = parse(b"oxirelay-drop 1\nfrom a@b.example\nto c@d.example\rDATA\n\n")
            .expect_err("control character");
        assert!(matches!(
            bad,
            FormatError::BadAddress {
                what: "recipient",
                reason: MailboxError::ControlCharacter,
                ..
            }
        ));
        assert!(bad.to_string().contains("\\r"), "{bad}");
        assert!(matches!(
            parse(b"oxirelay-drop 1\nfrom root\nto c@d.example\n\n"),
            Err(FormatError::BadAddress { what: "sender", .. })
        ));
        let mut huge = b"oxirelay-drop 1\nfrom a@b.example\n".to_vec();
        huge.extend(std::iter::repeat_n(b'x', MAX_ENVELOPE_BYTES));
        huge.extend_from_slice(b"\n\n");
        assert_eq!(parse(&huge), Err(FormatError::Unterminated));
    }
}
