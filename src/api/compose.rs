//! The request bodies of `POST /v1/messages` (structured) and
//! `/v1/messages/raw`, and their translation into an envelope and RFC 5322
//! bytes: MIME is built by `mail-builder`; this module owns only the checks
//! that keep what a program sends from becoming headers it did not mean
//! (contract 7: a CR or LF in any header field, an invalid address, a
//! header the relay writes itself) and the limits on sizes.

use super::error::ApiError;
use crate::message::{MessageError, check_address, crlf_lines, normalize_text_line_endings};
use crate::store::MessageId;
use base64::Engine as _;
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::text::Text;
use mail_builder::mime::MimePart;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Tags a message may carry, and how long each may be.
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG_LEN: usize = 64;
/// Custom headers a message may carry.
pub const MAX_HEADERS: usize = 50;

/// An address: `"a@example.com"` or `{"email": "a@example.com", "name": "A"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AddressInput {
    Plain(String),
    Named(NamedAddress),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedAddress {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

impl AddressInput {
    pub fn email(&self) -> &str {
        match self {
            AddressInput::Plain(email) => email,
            AddressInput::Named(named) => &named.email,
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            AddressInput::Plain(_) => None,
            AddressInput::Named(named) => named.name.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    pub filename: String,
    pub content_type: String,
    /// The file's bytes, base64 (RFC 4648 section 4, with padding).
    pub content: String,
}

/// `POST /v1/messages`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    pub from: AddressInput,
    #[serde(default)]
    pub to: Vec<AddressInput>,
    #[serde(default)]
    pub cc: Vec<AddressInput>,
    #[serde(default)]
    pub bcc: Vec<AddressInput>,
    #[serde(default)]
    pub reply_to: Option<AddressInput>,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The upstream account; the key's first account when absent.
    #[serde(default)]
    pub account: Option<String>,
}

/// `POST /v1/messages/raw`: a complete message and its envelope.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The RFC 5322 message as text (bare LF line endings become CRLF)...
    #[serde(default)]
    pub message: Option<String>,
    /// ... or its bytes, base64, for a message that is not UTF-8.
    #[serde(default)]
    pub message_base64: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub account: Option<String>,
}

/// `POST /v1/messages/batch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub messages: Vec<serde_json::Value>,
}

/// A message ready for the acceptance path.
#[derive(Debug, Clone)]
pub struct Composed {
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub bytes: Vec<u8>,
    /// The header From is `mail_from`, written by [`MessageRequest::compose`]
    /// (a custom From or Sender is refused); a raw message's is its own.
    pub from_is_sender: bool,
    pub tags: Vec<String>,
    pub account: Option<String>,
}

fn address_error(field: &str, error: MessageError) -> ApiError {
    match error {
        MessageError::LineBreak { .. } => ApiError::HeaderInjection(format!(
            "{field} contains a line break (CR or LF); header values must be one line"
        )),
        MessageError::BadAddress { value, .. } => ApiError::BadAddress(format!(
            "{field} {value:?} is not a valid email address; write it as local-part@domain"
        )),
        other => ApiError::Invalid(format!("{field}: {other}")),
    }
}

fn check_email(field: &str, value: &str) -> Result<(), ApiError> {
    check_address("address", value).map_err(|e| address_error(field, e))
}

/// A header field value (or a name in one) must be one line, without NUL.
fn check_header_text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains(['\r', '\n']) {
        return Err(ApiError::HeaderInjection(format!(
            "{field} contains a line break (CR or LF); header values must be one line (a line break could inject headers)"
        )));
    }
    if has_nul(value) {
        return Err(ApiError::Invalid(format!(
            "{field} holds a NUL byte, which mail cannot carry; remove it"
        )));
    }
    Ok(())
}

/// memchr's search, many bytes at a time: `str::contains` took them one
/// by one, on every body of the send API.
fn has_nul(text: &str) -> bool {
    memchr::memchr(0, text.as_bytes()).is_some()
}

fn check_body_text(field: &str, value: &str) -> Result<(), ApiError> {
    if has_nul(value) {
        return Err(ApiError::Invalid(format!(
            "{field} holds a NUL byte, which mail cannot carry; send the content as a base64 attachment"
        )));
    }
    Ok(())
}

/// Headers the relay writes from the request's own fields (or writes
/// itself): giving them as custom headers would send two, or override
/// what the sender checks looked at.
const RESERVED_HEADERS: &[(&str, &str)] = &[
    ("from", "from"),
    ("sender", "from"),
    ("to", "to"),
    ("cc", "cc"),
    ("bcc", "bcc"),
    ("reply-to", "reply_to"),
    ("subject", "subject"),
    ("date", "nothing (the relay sets it)"),
    ("message-id", "nothing (the relay sets it)"),
    ("mime-version", "nothing (the relay sets it)"),
    ("content-type", "text, html and attachments"),
    (
        "content-transfer-encoding",
        "nothing (the relay chooses it)",
    ),
    ("content-disposition", "attachments"),
    ("received", "nothing (the relay adds its trace)"),
    ("return-path", "from"),
];

fn check_header_name(name: &str) -> Result<(), ApiError> {
    // RFC 5322 section 3.6.8: printable US-ASCII except colon; 76 keeps the
    // name and ": " inside a 78-character line.
    let valid = !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if !valid {
        return Err(ApiError::Invalid(format!(
            "headers: {name:?} is not a header name (printable ASCII without spaces or colons, at most 76 characters)"
        )));
    }
    if let Some((_, field)) = RESERVED_HEADERS
        .iter()
        .find(|(reserved, _)| name.eq_ignore_ascii_case(reserved))
    {
        return Err(ApiError::Invalid(format!(
            "headers: {name} cannot be set as a custom header; use the request's {field} field"
        )));
    }
    Ok(())
}

pub fn check_tags(tags: &[String]) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::Invalid(format!(
            "tags: {} tags given; at most {MAX_TAGS} are kept per message",
            tags.len()
        )));
    }
    for tag in tags {
        let valid = !tag.is_empty()
            && tag.len() <= MAX_TAG_LEN
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !valid {
            return Err(ApiError::Invalid(format!(
                "tags: {tag:?} is not a tag; use 1 to {MAX_TAG_LEN} letters, digits, '-', '_', '.' or ':'"
            )));
        }
    }
    Ok(())
}

fn address<'a>(input: &'a AddressInput) -> Address<'a> {
    Address::new_address(input.name(), input.email())
}

fn address_list<'a>(inputs: &'a [AddressInput]) -> Address<'a> {
    Address::new_list(inputs.iter().map(address).collect())
}

impl MessageRequest {
    /// Checks every field and builds the message under the queue id `id`
    /// (its Message-ID is made from it). `max` bounds the message's size.
    pub fn compose(&self, id: &MessageId, max: usize) -> Result<Composed, ApiError> {
        check_email("from", self.from.email())?;
        if let Some(name) = self.from.name() {
            check_header_text("from.name", name)?;
        }
        let mut recipients = Vec::new();
        for (field, list) in [("to", &self.to), ("cc", &self.cc), ("bcc", &self.bcc)] {
            for (index, input) in list.iter().enumerate() {
                check_email(&format!("{field}[{index}]"), input.email())?;
                if let Some(name) = input.name() {
                    check_header_text(&format!("{field}[{index}].name"), name)?;
                }
                recipients.push(input.email().to_string());
            }
        }
        if recipients.is_empty() {
            return Err(ApiError::Invalid(
                "the message has no recipients; give at least one in to, cc or bcc".into(),
            ));
        }
        if let Some(reply_to) = &self.reply_to {
            check_email("reply_to", reply_to.email())?;
            if let Some(name) = reply_to.name() {
                check_header_text("reply_to.name", name)?;
            }
        }
        check_header_text("subject", &self.subject)?;
        if self.headers.len() > MAX_HEADERS {
            return Err(ApiError::Invalid(format!(
                "headers: {} given; at most {MAX_HEADERS}",
                self.headers.len()
            )));
        }
        for (name, value) in &self.headers {
            check_header_name(name)?;
            check_header_text(&format!("headers.{name}"), value)?;
        }
        check_tags(&self.tags)?;
        let mut attachments = Vec::with_capacity(self.attachments.len());
        let mut total = 0usize;
        for (index, attachment) in self.attachments.iter().enumerate() {
            let field = format!("attachments[{index}]");
            check_header_text(&format!("{field}.filename"), &attachment.filename)?;
            if attachment.filename.is_empty() {
                return Err(ApiError::Invalid(format!("{field}.filename is empty")));
            }
            if !is_content_type(&attachment.content_type) {
                return Err(ApiError::Invalid(format!(
                    "{field}.content_type {:?} is not a media type; write type/subtype, e.g. application/pdf",
                    attachment.content_type
                )));
            }
            // A base64 text of N characters holds about 3N/4 bytes: refuse
            // before decoding what cannot fit.
            if attachment.content.len() / 4 * 3 > max {
                return Err(ApiError::TooLarge(format!(
                    "{field} ({}) is larger than the {max} bytes a message may have; send large files another way",
                    attachment.filename
                )));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(attachment.content.as_bytes())
                .map_err(|e| {
                    ApiError::Invalid(format!(
                        "{field}.content is not base64 ({e}); encode the file's bytes with standard base64"
                    ))
                })?;
            total += bytes.len();
            if total > max {
                return Err(ApiError::TooLarge(format!(
                    "the attachments hold {total} bytes or more; a message may have at most {max}: send large files another way"
                )));
            }
            attachments.push(bytes);
        }
        let text = self
            .text
            .as_deref()
            .map(|t| BodyText::new("text", t))
            .transpose()?;
        let html = self
            .html
            .as_deref()
            .map(|t| BodyText::new("html", t))
            .transpose()?;

        let domain = self
            .from
            .email()
            .rsplit_once('@')
            .map_or("localhost", |(_, domain)| domain);
        let mut builder = MessageBuilder::new()
            .from(address(&self.from))
            .subject(self.subject.as_str())
            .message_id(format!("{}@{domain}", id.0.to_ascii_lowercase()));
        if !self.to.is_empty() {
            builder = builder.to(address_list(&self.to));
        }
        if !self.cc.is_empty() {
            builder = builder.cc(address_list(&self.cc));
        }
        // Bcc recipients go in the envelope only, never in the headers.
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(address(reply_to));
        }
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), Text::new(value.as_str()));
        }
        // The structure mail-builder gives text, html and attachments,
        // built here so that each text part can say its own encoding.
        let empty = BodyText {
            text: Cow::Borrowed(""),
            plain_7bit: true,
        };
        let content = match (
            text.as_ref().map(|t| t.part("text/plain")),
            html.as_ref().map(|t| t.part("text/html")),
        ) {
            (Some(text), Some(html)) => MimePart::new("multipart/alternative", vec![text, html]),
            (Some(part), None) | (None, Some(part)) => part,
            // A body needs a part: an empty text.
            (None, None) => empty.part("text/plain"),
        };
        let attachments: Vec<MimePart> = self
            .attachments
            .iter()
            .zip(attachments)
            .map(|(attachment, bytes)| {
                MimePart::new(attachment.content_type.as_str(), bytes)
                    .attachment(attachment.filename.as_str())
            })
            .collect();
        builder = builder.body(if attachments.is_empty() {
            content
        } else {
            let mut parts = Vec::with_capacity(attachments.len() + 1);
            parts.push(content);
            parts.extend(attachments);
            MimePart::new("multipart/mixed", parts)
        });
        let mut bytes = builder
            .write_to_vec()
            .map_err(|e| ApiError::Invalid(format!("cannot build the message: {e}")))?;
        // A single-part body ends where its text ends; the queue takes
        // messages as DATA does, every line ending in CRLF.
        if !bytes.ends_with(b"\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
        Ok(Composed {
            mail_from: self.from.email().to_string(),
            recipients,
            bytes,
            from_is_sender: true,
            tags: self.tags.clone(),
            account: self.account.clone(),
        })
    }
}

/// A body text as its part carries it: every line ending in CRLF, and
/// whether it is plain 7-bit ([`is_plain_7bit`]).
struct BodyText<'t> {
    text: Cow<'t, str>,
    plain_7bit: bool,
}

impl<'t> BodyText<'t> {
    /// A text without NUL, its line ends made CRLF (mail-builder writes a
    /// lone CR as it is, which RFC 5322 forbids): borrowed when they are
    /// already, and never copied or read again for its UTF-8.
    fn new(field: &str, text: &'t str) -> Result<Self, ApiError> {
        check_body_text(field, text)?;
        let text = normalize_text_line_endings(text);
        let plain_7bit = is_plain_7bit(text.as_bytes());
        Ok(BodyText { text, plain_7bit })
    }

    /// Its MIME part. Left to itself, mail-builder scans the text to
    /// choose its transfer encoding and then copies a 7-bit body a byte at
    /// a time: the largest part of the send API's own CPU per message
    /// (BENCHMARKS.md, issue 12). Plain 7-bit text is labelled so and
    /// written as it is; any other goes to mail-builder's choice.
    fn part(&self, content_type: &'static str) -> MimePart<'_> {
        let part = MimePart::new(content_type, self.text.as_ref());
        if self.plain_7bit {
            part.transfer_encoding("7bit")
        } else {
            part
        }
    }
}

/// Lines of at most 76 printable US-ASCII characters or tabs, each but the
/// last ending in CRLF, none ending in a space or a tab: what RFC 2045's
/// `7bit` carries unchanged (trailing white space may be stripped on the
/// way, and mail-builder quoted-printable-encodes lines longer than that).
fn is_plain_7bit(text: &[u8]) -> bool {
    const MAX_LINE: usize = 76;
    let fits = |line: &[u8]| line.len() <= MAX_LINE && !matches!(line.last(), Some(b' ' | b'\t'));
    // The bytes in one pass over the whole text, with no early exit and
    // no branch per byte, so that the compiler checks many at a time
    // (line by line, the short runs kept it to one: BENCHMARKS.md, issue 12).
    let plain_bytes = text.iter().fold(true, |plain, &b| {
        plain & ((b' '..=b'~').contains(&b) | (b == b'\t') | (b == b'\r') | (b == b'\n'))
    });
    plain_bytes && crlf_lines(text, fits).is_some_and(fits)
}

/// `type/subtype`, each an RFC 2045 token, optionally with parameters.
fn is_content_type(text: &str) -> bool {
    let essence = text.split(';').next().unwrap_or_default().trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
    };
    !text.contains(['\r', '\n'])
        && essence
            .split_once('/')
            .is_some_and(|(kind, sub)| token(kind) && token(sub))
}

impl RawRequest {
    pub fn compose(&self, max: usize) -> Result<Composed, ApiError> {
        check_email("mail_from", &self.mail_from)?;
        if self.rcpt_to.is_empty() {
            return Err(ApiError::Invalid(
                "rcpt_to is empty; give at least one recipient".into(),
            ));
        }
        for (index, rcpt) in self.rcpt_to.iter().enumerate() {
            check_email(&format!("rcpt_to[{index}]"), rcpt)?;
        }
        check_tags(&self.tags)?;
        let bytes = match (&self.message, &self.message_base64) {
            (Some(text), None) => text.as_bytes().to_vec(),
            (None, Some(encoded)) => {
                if encoded.len() / 4 * 3 > max {
                    return Err(too_big_raw(max));
                }
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.as_bytes())
                    .map_err(|e| ApiError::Invalid(format!("message_base64 is not base64 ({e})")))?
            }
            _ => {
                return Err(ApiError::Invalid(
                    "give the message in exactly one of message (text) or message_base64".into(),
                ));
            }
        };
        if bytes.len() > max {
            return Err(too_big_raw(max));
        }
        let bytes = crate::message::from_file_bytes(&bytes)
            .map_err(|e| ApiError::Invalid(format!("message: {e}")))?;
        // As `sendmail -t` and the providers do: Bcc is for the envelope.
        let bytes = crate::message::recipients::without_bcc(&bytes);
        Ok(Composed {
            mail_from: self.mail_from.clone(),
            recipients: self.rcpt_to.clone(),
            bytes,
            from_is_sender: false,
            tags: self.tags.clone(),
            account: self.account.clone(),
        })
    }
}

fn too_big_raw(max: usize) -> ApiError {
    ApiError::TooLarge(format!(
        "the message is larger than the {max} bytes accepted; send large files another way"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_7bit_is_only_what_7bit_carries_unchanged() {
        assert!(is_plain_7bit(b""));
        assert!(is_plain_7bit(b"Hello,\r\n\r\nthe report.\r\n"));
        assert!(is_plain_7bit(b"no line end\tat the end"));
        assert!(is_plain_7bit(&[b'a'; 76]));
        assert!(!is_plain_7bit(&[b'a'; 77]), "a line over 76");
        assert!(!is_plain_7bit("caf\u{e9}\r\n".as_bytes()), "8-bit");
        assert!(!is_plain_7bit(b"trailing space \r\nnext"));
        assert!(!is_plain_7bit(b"trailing tab\t"));
        assert!(!is_plain_7bit(b"bare\nLF"), "not normalized");
        assert!(!is_plain_7bit(b"a\x07bell"));
        assert!(!is_plain_7bit(b"a\rb"));
    }

    /// The labelled part is byte for byte what mail-builder's own choice
    /// writes for the same text, and other text keeps its choice.
    #[test]
    fn a_labelled_text_part_is_what_mail_builder_would_write() {
        let write = |part: MimePart| {
            let mut out = Vec::new();
            part.write_part(&mut out).expect("write");
            out
        };
        for text in [
            "Hello,\r\n\r\nthe quarterly report is attached.\r\n",
            "",
            "one line",
            "caf\u{e9} au lait\r\n",
            "a line of trailing space \r\n",
        ] {
            assert_eq!(
                write(
                    BodyText::new("text", text)
                        .expect("text")
                        .part("text/plain")
                ),
                write(MimePart::new("text/plain", text)),
                "{text:?}"
            );
        }
    }

    fn request(json: serde_json::Value) -> MessageRequest {
        serde_json::from_value(json).expect("request")
    }

    #[test]
    fn line_breaks_in_any_header_field_are_refused() {
        let id = MessageId("00AA".into());
        for json in [
            serde_json::json!({"from": "a@x.org", "to": ["b@y.org"], "subject": "hi\r\nBcc: c@z.org"}),
            serde_json::json!({"from": {"email": "a@x.org", "name": "A\nB"}, "to": ["b@y.org"]}),
            serde_json::json!({"from": "a@x.org", "to": ["b@y.org"], "headers": {"X-A": "1\r\nX-B: 2"}}),
            serde_json::json!({"from": "a@x.org", "to": [{"email": "b@y.org", "name": "\r"}]}),
            serde_json::json!({"from": "a@x.org", "to": ["b@y.org"], "attachments": [{"filename": "a\n.txt", "content_type": "text/plain", "content": ""}]}),
        ] {
            let error = request(json.clone())
                .compose(&id, 1000)
                .expect_err("refused");
            assert_eq!(error.code(), "header_injection", "{json}: {error}");
        }
    }

    #[test]
    fn reserved_and_malformed_header_names_are_refused() {
        let id = MessageId("00AA".into());
        for name in ["Bcc", "content-type", "X A", "X:A", ""] {
            let json =
                serde_json::json!({"from": "a@x.org", "to": ["b@y.org"], "headers": {name: "v"}});
            let error = request(json).compose(&id, 1000).expect_err(name);
            assert_eq!(error.code(), "invalid_request", "{name}: {error}");
        }
    }

    #[test]
    fn content_types_are_media_types() {
        assert!(is_content_type("application/pdf"));
        assert!(is_content_type("text/plain; charset=utf-8"));
        assert!(!is_content_type("pdf"));
        assert!(!is_content_type("text/plain\r\nX: y"));
    }

    /// The rule as it was written first, a byte at a time.
    fn plain_7bit_bytewise(text: &[u8]) -> bool {
        let mut lines = text.split(|&b| b == b'\n').peekable();
        while let Some(line) = lines.next() {
            let content = if lines.peek().is_some() {
                match line.strip_suffix(b"\r") {
                    Some(content) => content,
                    None => return false,
                }
            } else {
                line
            };
            if content.len() > 76
                || content.ends_with(b" ")
                || content.ends_with(b"\t")
                || !content
                    .iter()
                    .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                return false;
            }
        }
        true
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config(512))]

        #[test]
        fn fuzz_plain_7bit_is_decided_as_the_bytewise_rule(
            text in proptest::prop_oneof![
                crate::fuzzing::data_bytes(24),
                proptest::collection::vec(
                    proptest::sample::select(vec![&b"short line\r\n"[..], &[b'a'; 76], &[b'b'; 77], b"\t", b" ", b"\r\n"]),
                    0..8,
                ).prop_map(|pieces| pieces.concat()),
            ],
        ) {
            proptest::prop_assert_eq!(is_plain_7bit(&text), plain_7bit_bytewise(&text));
        }
    }
}
