//! Recipient header fields (`To`, `Cc`, `Bcc`) against an envelope.
//!
//! HTTP sending APIs (Microsoft Graph `sendMail` with MIME, the Gmail API)
//! have no envelope: they send to the addresses in `To`, `Cc` and `Bcc`.
//! The relay's contract is the envelope (RCPT TO), so before such a request
//! the header fields are made to say exactly the envelope:
//!
//! - a `To`/`Cc` field whose every address is in the envelope is kept byte
//!   for byte (display names, folding, encoded words and all);
//! - a `To`/`Cc` field with addresses outside the envelope is rewritten to
//!   hold only the envelope's ones (each kept address's original text), or
//!   dropped if none is left;
//! - every `Bcc` field is dropped, and the envelope recipients that no
//!   kept `To`/`Cc` names go into one new `Bcc` field at the end of the
//!   header section (the APIs remove it before delivery).
//!
//! Group syntax (`team: a@x, b@x;`) with members cannot be split
//! faithfully, so a field that holds one and needs rewriting is refused
//! with a reason (the caller defers), as is an address list this parser
//! cannot read: never a request to the wrong set of people. An empty group
//! (`undisclosed-recipients:;`) names nobody and is kept.
//!
//! The same parser reads the recipients of a message (the sandbox's HTTP
//! APIs use [`header_recipients`] to decide who receives what arrives).

/// Why the header fields cannot be made to match the envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientHeaderError {
    #[error(
        "the {field} header uses group syntax with members and some of them are not in the envelope; the HTTP API sends to header recipients, and a group cannot be split without changing what recipients see. Submit the message without groups in {field}, or use the SMTP transport"
    )]
    Group { field: String },
    #[error(
        "the {field} header cannot be read as an address list ({problem}); the HTTP API sends to header recipients, so the message is not sent until it can be. Fix the header, or use the SMTP transport"
    )]
    Unreadable {
        field: String,
        problem: &'static str,
    },
    #[error("the message has no header section")]
    NoHeader,
}

/// One address of an address list: its text as written, and the address
/// itself, lower-cased for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    raw: String,
    address: String,
}

/// An address list read from a field's value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct AddressList {
    items: Vec<Item>,
    /// Whether a group with at least one member appeared.
    has_group_members: bool,
}

/// One header field: its name and every byte of it, CRLF included.
struct Field<'a> {
    name: &'a str,
    raw: &'a [u8],
}

/// The header section's end: the index just past the CRLF of the last
/// field (the empty line starts there). A message without a body is all
/// header.
fn header_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 0;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |at| at + 2)
}

fn fields(header: &[u8]) -> Vec<Field<'_>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut position = 0;
    while position < header.len() {
        let line_end = header[position..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(header.len(), |at| position + at + 2);
        let next_is_continuation = header
            .get(line_end)
            .is_some_and(|b| *b == b' ' || *b == b'\t');
        if !next_is_continuation {
            let raw = &header[start..line_end];
            let name = raw
                .iter()
                .position(|b| *b == b':')
                .and_then(|colon| std::str::from_utf8(&raw[..colon]).ok())
                .unwrap_or("")
                .trim();
            fields.push(Field { name, raw });
            start = line_end;
        }
        position = line_end;
    }
    fields
}

fn field_value(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let value = text.split_once(':').map_or("", |(_, v)| v);
    // Unfold (RFC 5322 section 2.2.3): CRLF followed by WSP is just WSP.
    value.replace("\r\n", "")
}

fn is_recipient_field(name: &str) -> Option<Kind> {
    if name.eq_ignore_ascii_case("to") {
        Some(Kind::To)
    } else if name.eq_ignore_ascii_case("cc") {
        Some(Kind::Cc)
    } else if name.eq_ignore_ascii_case("bcc") {
        Some(Kind::Bcc)
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    To,
    Cc,
    Bcc,
}

/// Reads an address list (RFC 5322 section 3.4), keeping each address's
/// text. Quoted strings, comments, angle addresses and groups are
/// understood; obsolete routes are not needed by anything that sends today.
fn parse_list(value: &str, field: &str) -> Result<AddressList, RecipientHeaderError> {
    let unreadable = |problem| RecipientHeaderError::Unreadable {
        field: field.to_string(),
        problem,
    };
    let mut list = AddressList::default();
    let mut current = String::new();
    let mut in_quote = false;
    let mut escaped = false;
    let mut comment_depth = 0usize;
    let mut in_angle = false;
    let mut in_group = false;
    let mut group_members = 0usize;
    let finish = |current: &mut String,
                  list: &mut AddressList|
     -> Result<(), RecipientHeaderError> {
        let raw = current.trim().to_string();
        current.clear();
        if raw.is_empty() {
            return Ok(());
        }
        let address = address_of(&raw).ok_or_else(|| unreadable("an item without an address"))?;
        list.items.push(Item { raw, address });
        Ok(())
    };
    for c in value.chars() {
        if escaped {
            escaped = false;
            current.push(c);
            continue;
        }
        match c {
            '\\' if in_quote || comment_depth > 0 => {
                escaped = true;
                current.push(c);
            }
            '"' if comment_depth == 0 => {
                in_quote = !in_quote;
                current.push(c);
            }
            '(' if !in_quote => {
                comment_depth += 1;
                current.push(c);
            }
            ')' if !in_quote && comment_depth > 0 => {
                comment_depth -= 1;
                current.push(c);
            }
            '<' if !in_quote && comment_depth == 0 => {
                in_angle = true;
                current.push(c);
            }
            '>' if !in_quote && comment_depth == 0 => {
                in_angle = false;
                current.push(c);
            }
            ':' if !in_quote && comment_depth == 0 && !in_angle && !in_group => {
                // A group's display name ends here; its members follow.
                in_group = true;
                group_members = 0;
                current.clear();
            }
            ';' if !in_quote && comment_depth == 0 && !in_angle && in_group => {
                if !current.trim().is_empty() {
                    group_members += 1;
                }
                finish(&mut current, &mut list)?;
                in_group = false;
                if group_members > 0 {
                    list.has_group_members = true;
                }
            }
            ',' if !in_quote && comment_depth == 0 && !in_angle => {
                if in_group && !current.trim().is_empty() {
                    group_members += 1;
                }
                finish(&mut current, &mut list)?;
            }
            _ => current.push(c),
        }
    }
    if in_quote || comment_depth > 0 || in_angle {
        return Err(unreadable("an unclosed quote, comment or angle bracket"));
    }
    if in_group {
        return Err(unreadable("a group without its closing semicolon"));
    }
    finish(&mut current, &mut list)?;
    Ok(list)
}

/// The address of one list item: inside `<...>`, or the item itself
/// without comments. Lower-cased: providers compare addresses without case.
fn address_of(raw: &str) -> Option<String> {
    let address = match (raw.rfind('<'), raw.rfind('>')) {
        (Some(open), Some(close)) if open < close => raw[open + 1..close].to_string(),
        _ => strip_comments(raw),
    };
    let address = address.trim().to_ascii_lowercase();
    (address.contains('@') && !address.contains(char::is_whitespace)).then_some(address)
}

fn strip_comments(raw: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in raw.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// A field holding `items`, folded one address a line so no line nears
/// the 998-octet limit however many recipients there are.
fn write_field(out: &mut Vec<u8>, name: &str, items: &[&str]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",\r\n ");
        }
        out.extend_from_slice(item.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The message with `To`, `Cc` and `Bcc` saying exactly `envelope` (see
/// the module header). Returns the bytes unchanged (a copy) when they
/// already do and have no `Bcc`.
pub fn match_envelope(
    message: &[u8],
    envelope: &[String],
) -> Result<Vec<u8>, RecipientHeaderError> {
    let end = header_end(message);
    if end == 0 {
        return Err(RecipientHeaderError::NoHeader);
    }
    let (header, body) = message.split_at(end);
    let wanted: Vec<String> = {
        let mut seen = Vec::new();
        for address in envelope {
            let address = address.trim().to_ascii_lowercase();
            if !seen.contains(&address) {
                seen.push(address);
            }
        }
        seen
    };
    let mut named: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(message.len() + 64);
    for field in fields(header) {
        let Some(kind) = is_recipient_field(field.name) else {
            out.extend_from_slice(field.raw);
            continue;
        };
        if kind == Kind::Bcc {
            continue;
        }
        let list = parse_list(&field_value(field.raw), field.name)?;
        let kept: Vec<&Item> = list
            .items
            .iter()
            .filter(|item| wanted.contains(&item.address))
            .collect();
        for item in &kept {
            if !named.contains(&item.address) {
                named.push(item.address.clone());
            }
        }
        if kept.len() == list.items.len() {
            out.extend_from_slice(field.raw);
        } else if list.has_group_members {
            return Err(RecipientHeaderError::Group {
                field: field.name.to_string(),
            });
        } else if !kept.is_empty() {
            let items: Vec<&str> = kept.iter().map(|item| item.raw.as_str()).collect();
            write_field(&mut out, field.name, &items);
        }
    }
    let hidden: Vec<&str> = wanted
        .iter()
        .filter(|address| !named.contains(address))
        .map(String::as_str)
        .collect();
    if !hidden.is_empty() {
        write_field(&mut out, "Bcc", &hidden);
    }
    out.extend_from_slice(body);
    Ok(out)
}

/// Everyone the `To`, `Cc` and `Bcc` fields name, lower-cased, each once,
/// in order of appearance: whom an HTTP sending API delivers to.
pub fn header_recipients(message: &[u8]) -> Result<Vec<String>, RecipientHeaderError> {
    let (header, _) = message.split_at(header_end(message));
    let mut recipients: Vec<String> = Vec::new();
    for field in fields(header) {
        if is_recipient_field(field.name).is_none() {
            continue;
        }
        for item in parse_list(&field_value(field.raw), field.name)?.items {
            if !recipients.contains(&item.address) {
                recipients.push(item.address);
            }
        }
    }
    Ok(recipients)
}

/// The message without its `Bcc` fields, as the providers deliver it.
pub fn without_bcc(message: &[u8]) -> Vec<u8> {
    let (header, body) = message.split_at(header_end(message));
    let mut out = Vec::with_capacity(message.len());
    for field in fields(header) {
        if is_recipient_field(field.name) != Some(Kind::Bcc) {
            out.extend_from_slice(field.raw);
        }
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn rewrite(message: &str, rcpt: &[&str]) -> String {
        String::from_utf8(match_envelope(message.as_bytes(), &envelope(rcpt)).expect("rewrites"))
            .expect("utf-8")
    }

    #[test]
    fn matching_headers_are_kept_byte_for_byte() {
        let message = "From: a@x\r\nTo: \"Bob, B.\" <Bob@Example.net>,\r\n carol@example.net\r\nCc: =?utf-8?q?D=C3=A9?= <d@example.net>\r\nSubject: s\r\n\r\nbody\r\n";
        assert_eq!(
            rewrite(
                message,
                &["bob@example.net", "carol@example.net", "d@example.net"]
            ),
            message
        );
    }

    #[test]
    fn envelope_only_recipients_go_to_bcc_and_strangers_are_dropped() {
        let message = "From: a@x\r\nTo: bob@example.net, Eve <eve@example.net>\r\nCc: carol@example.net\r\nBcc: old@example.net\r\nSubject: s\r\n\r\nbody\r\n";
        let out = rewrite(
            message,
            &["bob@example.net", "carol@example.net", "hidden@example.net"],
        );
        assert_eq!(
            out,
            "From: a@x\r\nTo: bob@example.net\r\nCc: carol@example.net\r\nSubject: s\r\nBcc: hidden@example.net\r\n\r\nbody\r\n"
        );
        assert_eq!(
            header_recipients(out.as_bytes()).expect("reads"),
            ["bob@example.net", "carol@example.net", "hidden@example.net"]
        );
        assert!(!String::from_utf8_lossy(&without_bcc(out.as_bytes())).contains("Bcc"));
    }

    #[test]
    fn a_field_left_empty_is_dropped() {
        let out = rewrite(
            "From: a@x\r\nTo: eve@example.net\r\n\r\nb\r\n",
            &["bob@example.net"],
        );
        assert_eq!(out, "From: a@x\r\nBcc: bob@example.net\r\n\r\nb\r\n");
    }

    #[test]
    fn groups_are_kept_when_whole_and_refused_when_split() {
        let empty = "From: a@x\r\nTo: undisclosed-recipients:;\r\n\r\nb\r\n";
        assert_eq!(
            rewrite(empty, &["bob@example.net"]),
            "From: a@x\r\nTo: undisclosed-recipients:;\r\nBcc: bob@example.net\r\n\r\nb\r\n"
        );
        let group = "From: a@x\r\nTo: team: bob@example.net, eve@example.net;\r\n\r\nb\r\n";
        let err = match_envelope(group.as_bytes(), &envelope(&["bob@example.net"]))
            .expect_err("cannot split a group");
        assert!(matches!(err, RecipientHeaderError::Group { .. }), "{err}");
        assert_eq!(
            header_recipients(group.as_bytes()).expect("reads"),
            ["bob@example.net", "eve@example.net"]
        );
    }

    #[test]
    fn unreadable_lists_are_refused() {
        let err = match_envelope(
            b"To: \"unclosed <bob@example.net>\r\n\r\nb",
            &envelope(&["bob@example.net"]),
        )
        .expect_err("unclosed quote");
        assert!(
            matches!(err, RecipientHeaderError::Unreadable { .. }),
            "{err}"
        );
    }

    #[test]
    fn comments_and_case_do_not_hide_an_address() {
        assert_eq!(
            header_recipients(b"To: (boss) BOB@example.NET (work)\r\n\r\n").expect("reads"),
            ["bob@example.net"]
        );
    }
}
