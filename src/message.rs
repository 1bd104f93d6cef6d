//! Messages: the envelope, and RFC 5322 bytes composed for `oxirelay send`
//! (with mail-builder) or read from a file. Header values that come from a
//! person or a program are checked here, so a CR or LF cannot inject a
//! header or a recipient (contract 7).

use mail_builder::MessageBuilder;

pub mod mailbox;

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("{field} {value:?} is not a valid email address")]
    BadAddress { field: &'static str, value: String },
    #[error(
        "{field} contains a line break; header values must be one line (a line break could inject headers)"
    )]
    LineBreak { field: &'static str },
    #[error("a message needs at least one recipient (--to, --cc or --bcc)")]
    NoRecipients,
    #[error("the message is empty")]
    Empty,
    #[error("cannot compose the message: {0}")]
    Compose(#[from] std::io::Error),
}

/// Who a message is from and to, as given to MAIL FROM and RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
}

/// A message ready to hand to the queue or the upstream client.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
}

/// What `oxirelay send` composes from its arguments.
#[derive(Debug, Clone, Default)]
pub struct Composition {
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub body: String,
}

/// A conservative check of an addr-spec: one `@`, no spaces, no control
/// characters, no angle brackets. Providers do the full check.
pub fn check_address(field: &'static str, value: &str) -> Result<(), MessageError> {
    let bad = || MessageError::BadAddress {
        field,
        value: value.to_string(),
    };
    if value.chars().any(|c| c == '\r' || c == '\n') {
        return Err(MessageError::LineBreak { field });
    }
    let (local, domain) = value.rsplit_once('@').ok_or_else(bad)?;
    let clean = |s: &str| {
        !s.is_empty()
            && !s
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | ',' | ';'))
    };
    let quoted = local.len() >= 2 && local.starts_with('"') && local.ends_with('"');
    if !clean(local) || !clean(domain) || (local.contains('@') && !quoted) {
        return Err(bad());
    }
    Ok(())
}

fn check_one_line(field: &'static str, value: &str) -> Result<(), MessageError> {
    if value.contains(['\r', '\n']) {
        return Err(MessageError::LineBreak { field });
    }
    Ok(())
}

impl Composition {
    pub fn build(&self) -> Result<OutgoingMessage, MessageError> {
        check_address("from", &self.from)?;
        for (field, list) in [("to", &self.to), ("cc", &self.cc), ("bcc", &self.bcc)] {
            for address in list {
                check_address(field, address)?;
            }
        }
        check_one_line("subject", &self.subject)?;
        let rcpt_to: Vec<String> = self
            .to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .cloned()
            .collect();
        if rcpt_to.is_empty() {
            return Err(MessageError::NoRecipients);
        }
        let mut builder = MessageBuilder::new()
            .from(self.from.as_str())
            .subject(self.subject.as_str())
            .text_body(self.body.as_str());
        if !self.to.is_empty() {
            builder = builder.to(self.to.iter().map(String::as_str).collect::<Vec<_>>());
        }
        if !self.cc.is_empty() {
            builder = builder.cc(self.cc.iter().map(String::as_str).collect::<Vec<_>>());
        }
        // Bcc recipients go in the envelope only, never in the headers.
        let bytes = builder.write_to_vec()?;
        Ok(OutgoingMessage {
            envelope: Envelope {
                mail_from: self.from.clone(),
                rcpt_to,
            },
            bytes,
        })
    }
}

/// A message read from a file (`--file message.eml`): bare LF line endings,
/// as editors write them, become CRLF as SMTP requires.
pub fn from_file_bytes(bytes: &[u8]) -> Result<Vec<u8>, MessageError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(MessageError::Empty);
    }
    Ok(normalize_line_endings(bytes))
}

/// Turns lone LF and lone CR into CRLF, leaving CRLF alone.
pub fn normalize_line_endings(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut iter = bytes.iter().peekable();
    while let Some(&byte) = iter.next() {
        match byte {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if iter.peek() == Some(&&b'\n') {
                    iter.next();
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            other => out.push(other),
        }
    }
    out
}

/// The value of the first header `name` (case-insensitive), unfolded.
pub fn header_value(bytes: &[u8], name: &str) -> Option<String> {
    let message = mail_parser::MessageParser::default().parse_headers(bytes)?;
    message
        .header_raw(name)
        .map(|raw| raw.replace(['\r', '\n'], "").trim().to_string())
}

/// The addresses in the header `From:` (RFC 5322 allows several), empty
/// when there is none. Display names and encodings are the parser's.
pub fn header_from_addresses(bytes: &[u8]) -> Vec<String> {
    mail_parser::MessageParser::default()
        .parse_headers(bytes)
        .and_then(|message| {
            message.from().map(|from| {
                from.iter()
                    .filter_map(|address| address.address().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_from_addresses_reads_names_groups_and_several() {
        assert_eq!(
            header_from_addresses(b"From: \"Scanner, Floor 2\" <scan@contoso.test>\r\n\r\nbody"),
            ["scan@contoso.test"]
        );
        assert_eq!(
            header_from_addresses(b"From: a@x.test, B <b@y.test>\r\nTo: c@z\r\n\r\n"),
            ["a@x.test", "b@y.test"]
        );
        assert!(header_from_addresses(b"Subject: no from\r\n\r\n").is_empty());
    }

    #[test]
    fn composed_message_has_headers_and_bcc_only_in_envelope() {
        let message = Composition {
            from: "app@example.com".into(),
            to: vec!["a@example.net".into()],
            bcc: vec!["hidden@example.net".into()],
            subject: "Report".into(),
            body: "line one\n.line starting with a dot\n".into(),
            ..Default::default()
        }
        .build()
        .expect("builds");
        let text = String::from_utf8(message.bytes).expect("utf8");
        assert!(text.contains("Subject: Report\r\n"));
        assert!(text.contains("Message-ID: "));
        assert!(!text.contains("hidden@"));
        assert_eq!(
            message.envelope.rcpt_to,
            ["a@example.net", "hidden@example.net"]
        );
    }

    #[test]
    fn header_injection_is_refused() {
        let injected = Composition {
            from: "app@example.com".into(),
            to: vec!["a@example.net".into()],
            subject: "hi\r\nBcc: victim@example.org".into(),
            ..Default::default()
        };
        assert!(matches!(
            injected.build(),
            Err(MessageError::LineBreak { .. })
        ));
        assert!(check_address("to", "a@example.net\r\nRCPT TO:<x@y>").is_err());
        assert!(check_address("to", "no-at-sign").is_err());
        assert!(check_address("to", "two@@example").is_err());
    }

    #[test]
    fn line_endings_are_normalised() {
        assert_eq!(normalize_line_endings(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
    }

    #[test]
    fn reads_subject() {
        assert_eq!(
            header_value(
                b"From: a@b\r\nSubject: Hello\r\n world\r\n\r\nbody",
                "Subject"
            )
            .as_deref(),
            Some("Hello world")
        );
    }
}
