//! Messages: the envelope, and RFC 5322 bytes composed for `oxirelay send`
//! (with mail-builder) or read from a file. Header values that come from a
//! person or a program are checked here, so a CR or LF cannot inject a
//! header or a recipient (contract 7).

use mail_builder::MessageBuilder;

pub mod mailbox;
pub mod recipients;

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("{field} {value:?} is not a valid email address")]
    BadAddress { field: &'static str, value: String },
    #[error(
        "{field} contains a line break; header values must be one line (a line break could inject headers)"
    )]
    LineBreak { field: &'static str },
    #[error(
        "{field} holds a NUL byte, which mail cannot carry (RFC 5322 section 3.5); remove it, or send the content as a base64 attachment"
    )]
    Nul { field: &'static str },
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

/// An addr-spec as an envelope can carry it (RFC 5321 section 4.1.2, via
/// `mailbox::check_mailbox`), after a plainer first look so a line break
/// gets its own error. A backslash outside quotes, which header readers
/// drop (`\@x` reads as `@x`), is refused here, not sent (found by the
/// composition fuzz target).
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
    mailbox::check_mailbox(value).map_err(|_| bad())
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
        // mail-builder writes a NUL as it is (7bit) rather than encode it.
        for (field, value) in [("subject", &self.subject), ("body", &self.body)] {
            if value.contains('\0') {
                return Err(MessageError::Nul { field });
            }
        }
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
        // mail-builder encodes a body with bare LFs but writes a lone CR
        // as it is, which RFC 5322 forbids: make every line end CRLF first.
        // Only ASCII bytes change, so the text stays UTF-8.
        let body = String::from_utf8(normalize_line_endings(self.body.as_bytes()))
            .unwrap_or_else(|_| self.body.clone());
        let mut builder = MessageBuilder::new()
            .from(self.from.as_str())
            .subject(self.subject.as_str())
            .text_body(body);
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
    let mut from = 0;
    // Whole runs between line ends are copied at once: a byte at a time,
    // this was a visible part of the send API's CPU per message.
    for end in bare_line_ends(bytes) {
        out.extend_from_slice(&bytes[from..end.start]);
        out.extend_from_slice(b"\r\n");
        from = end.end;
    }
    out.extend_from_slice(&bytes[from..]);
    out
}

/// [`normalize_line_endings`] for text: the text itself when every line
/// end is already CRLF, and never a second look at its UTF-8 (only ASCII
/// bytes change, at character boundaries).
pub fn normalize_text_line_endings(text: &str) -> std::borrow::Cow<'_, str> {
    let mut ends = bare_line_ends(text.as_bytes()).peekable();
    if ends.peek().is_none() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    let mut from = 0;
    for end in ends {
        out.push_str(&text[from..end.start]);
        out.push_str("\r\n");
        from = end.end;
    }
    out.push_str(&text[from..]);
    std::borrow::Cow::Owned(out)
}

/// Where `bytes` has a line end other than CRLF (a lone CR or a lone LF),
/// in order, as the range of the one byte.
fn bare_line_ends(bytes: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        while let Some(found) = memchr::memchr2(b'\r', b'\n', &bytes[at..]) {
            let end = at + found;
            if bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n') {
                at = end + 2;
            } else {
                at = end + 1;
                return Some(end..end + 1);
            }
        }
        at = bytes.len();
        None
    })
}

/// Whether every LF of `bytes` has its CR before it, no other CR is there,
/// and every line so ended fits (`fits` sees it without its CRLF): then
/// the rest after the last LF, which has no line end. One stop per LF and
/// a count of CRs, both by SIMD search: the check every accepted message
/// and every API text part passes (BENCHMARKS.md, issue 12).
pub fn crlf_lines(bytes: &[u8], mut fits: impl FnMut(&[u8]) -> bool) -> Option<&[u8]> {
    let mut line_start = 0;
    let mut line_ends = 0;
    for at in memchr::memchr_iter(b'\n', bytes) {
        let crlf = at > line_start && bytes[at - 1] == b'\r';
        if !crlf || !fits(&bytes[line_start..at - 1]) {
            return None;
        }
        line_ends += 1;
        line_start = at + 1;
    }
    // Every LF has its CR before it; a CR beyond those is a bare one.
    (memchr::memchr_iter(b'\r', bytes).count() == line_ends).then(|| &bytes[line_start..])
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
    use proptest::prelude::*;

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

    /// An address as people and programs type them, and as attackers do.
    fn address() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[a-zA-Z0-9.+_-]{1,12}@[a-z0-9-]{1,10}\\.[a-z]{2,4}",
            1 => "\"[a-z .@]{1,8}\"@example\\.com",
            1 => "[a-z]{1,6}@[a-z]{1,6}\\.com(\\r\\n|\\n|\\r)(RCPT TO:<x@y>|Bcc: v@x)",
            1 => "(\\PC|[\\r\\n\\t<>,;@\"]){0,16}",
        ]
    }

    /// Header text: ASCII, any Unicode, long enough to need folding, or
    /// carrying a line break.
    fn subject() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[ -~]{0,80}",
            2 => "\\PC{0,40}",
            1 => "[a-z ]{900,1100}",
            1 => "\\PC{1,10}(\\r\\n|\\n|\\r)(Bcc: victim@example\\.org|\\PC{0,10})",
        ]
    }

    /// A body: any text, bare line ends, dots at line starts, long lines.
    fn body() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => "\\PC{0,20}",
            3 => prop::sample::select(vec!["\n", "\r\n", "\r", ".", "..", "\n.\n", "\r\n.\r\n", "\0", "=", " "])
                .prop_map(str::to_string),
            1 => "[a-z]{990,1010}",
        ];
        prop::collection::vec(piece, 0..30).prop_map(|pieces| pieces.concat())
    }

    /// Line ends as text: CRLF, LF and CR all mean "a new line".
    fn lines_of(text: &str) -> String {
        text.replace("\r\n", "\n").replace('\r', "\n")
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config(256))]

        /// Whatever a person or a program gives `oxirelay send`: no panic;
        /// a line break in a header value is refused (no injected header or
        /// recipient); what is built is RFC 5322 (CRLF only, no NUL, no
        /// line over 998 octets), reads back as what was given, keeps Bcc
        /// out of the headers, and passes the relay's own DATA checks.
        #[test]
        fn fuzz_message_composition_builds_what_was_asked_or_refuses(
            from in address(),
            to in prop::collection::vec(address(), 0..3),
            cc in prop::collection::vec(address(), 0..2),
            bcc in prop::collection::vec(address(), 0..2),
            subject in subject(),
            body in body(),
        ) {
            let composition = Composition {
                from: from.clone(),
                to: to.clone(),
                cc: cc.clone(),
                bcc: bcc.clone(),
                subject: subject.clone(),
                body: body.clone(),
            };
            let built = composition.build();
            let line_break = std::iter::once(&from)
                .chain(&to)
                .chain(&cc)
                .chain(&bcc)
                .chain([&subject])
                .any(|value| value.contains(['\r', '\n']));
            let message = match built {
                Err(MessageError::LineBreak { .. } | MessageError::BadAddress { .. }) if line_break => return Ok(()),
                Err(MessageError::Nul { .. }) if subject.contains('\0') || body.contains('\0') => return Ok(()),
                Err(error) => {
                    prop_assert!(!line_break);
                    if !matches!(error, MessageError::NoRecipients) {
                        prop_assert!(matches!(error, MessageError::BadAddress { .. }), "{error}");
                    }
                    return Ok(());
                }
                Ok(message) => {
                    prop_assert!(!line_break, "a line break got through: {:?}", subject);
                    message
                }
            };
            let all: Vec<String> = to.iter().chain(&cc).chain(&bcc).cloned().collect();
            prop_assert_eq!(&message.envelope.rcpt_to, &all);
            prop_assert_eq!(&message.envelope.mail_from, &from);

            let bytes = &message.bytes;
            for (index, byte) in bytes.iter().enumerate() {
                match byte {
                    b'\r' => prop_assert_eq!(bytes.get(index + 1), Some(&b'\n')),
                    b'\n' => prop_assert!(index > 0 && bytes[index - 1] == b'\r'),
                    0 => prop_assert!(false, "NUL at {}", index),
                    _ => {}
                }
            }
            for line in bytes.split(|b| *b == b'\n') {
                prop_assert!(line.len() <= 999, "a line of {} octets", line.len());
            }

            let parsed = mail_parser::MessageParser::default()
                .parse(bytes)
                .ok_or_else(|| TestCaseError::fail("mail-parser cannot read it"))?;
            let named = |name: &str| {
                parsed.headers().iter().filter(|h| h.name().eq_ignore_ascii_case(name)).count()
            };
            prop_assert_eq!(named("Subject"), 1);
            prop_assert_eq!(named("From"), 1);
            prop_assert_eq!(named("Bcc"), 0);
            // Blanks around an unstructured value are not its content:
            // readers drop them (found by the long run: " A" reads as "A").
            let blanks: &[char] = &[' ', '\t'];
            prop_assert_eq!(
                parsed.subject().unwrap_or_default().trim_matches(blanks),
                subject.trim_matches(blanks)
            );
            let addresses = |list: Option<&mail_parser::Address>| -> Vec<String> {
                list.map(|a| a.iter().filter_map(|a| a.address().map(str::to_string)).collect())
                    .unwrap_or_default()
            };
            prop_assert_eq!(addresses(parsed.from()), vec![from.clone()]);
            prop_assert_eq!(addresses(parsed.to()), to);
            prop_assert_eq!(addresses(parsed.cc()), cc);
            let text = parsed.body_text(0).unwrap_or_default();
            prop_assert_eq!(lines_of(&text), lines_of(&body));

            let wire = crate::smtp::client::data::encode_data(bytes);
            let received = crate::smtp::server::data::DataReceiver::new(usize::MAX).ingest(&wire);
            let mut expected = bytes.clone();
            if !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(
                received,
                Some((crate::smtp::server::data::DataOutcome::Message(expected), wire.len()))
            );
        }
    }

    #[test]
    fn a_lone_cr_in_the_body_becomes_a_line_end() {
        // Found by fuzz_message_composition_builds_what_was_asked_or_refuses:
        // mail-builder wrote the CR as it was.
        let message = Composition {
            from: "a@example.com".into(),
            to: vec!["b@example.net".into()],
            body: "one\rtwo".into(),
            ..Default::default()
        }
        .build()
        .expect("builds");
        let text = String::from_utf8(message.bytes).expect("utf8");
        assert!(
            text.ends_with("one\r\ntwo\r\n") || text.contains("one\r\ntwo"),
            "{text:?}"
        );
        assert!(!text.replace("\r\n", "").contains('\r'), "{text:?}");
    }

    #[test]
    fn a_nul_in_the_body_or_subject_is_refused() {
        // Found by the fuzz target: mail-builder wrote it as it was.
        for (subject, body) in [("ok", "a\0b"), ("a\0b", "ok")] {
            let built = Composition {
                from: "a@example.com".into(),
                to: vec!["b@example.net".into()],
                subject: subject.into(),
                body: body.into(),
                ..Default::default()
            }
            .build();
            assert!(matches!(built, Err(MessageError::Nul { .. })), "{built:?}");
        }
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

    /// The rule a byte at a time, as it was written first: the SIMD
    /// version must give the same bytes for every input.
    fn normalized_bytewise(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
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

    proptest! {
        #![proptest_config(crate::fuzzing::config(512))]

        #[test]
        fn fuzz_line_ends_are_normalized_as_the_bytewise_rule(bytes in crate::fuzzing::data_bytes(48)) {
            prop_assert_eq!(normalize_line_endings(&bytes), normalized_bytewise(&bytes));
        }

        /// The text version gives the same bytes, and borrows exactly
        /// when nothing changes.
        #[test]
        fn fuzz_text_line_ends_are_normalized_as_the_bytewise_rule(
            text in proptest::collection::vec(
                proptest::sample::select(vec!["line", "\r\n", "\n", "\r", "caf\u{e9}", "\u{1F600}", " "]),
                0..24,
            ).prop_map(|pieces| pieces.concat()),
        ) {
            let normalized = normalize_text_line_endings(&text);
            let expected = normalized_bytewise(text.as_bytes());
            prop_assert_eq!(normalized.as_bytes(), &expected[..]);
            prop_assert_eq!(
                matches!(normalized, std::borrow::Cow::Borrowed(_)),
                expected == text.as_bytes()
            );
        }
    }
}
