//! Envelope addresses as RFC 5321 section 4.1.2 defines them (with RFC
//! 6531's UTF-8), kept exactly as written. The local part belongs to the
//! destination host alone (section 2.4), so nothing is unquoted, unescaped
//! or case-folded: `"a b"@example.net` is queued and sent upstream with its
//! quotes.
//!
//! Written by hand, not taken from smtp-proto: its address parser removes
//! quotes and backslashes, drops CR, turns `<postmaster>` into an empty
//! address and refuses address literals. Its parameter parser is still the
//! one used (see `smtp::server::command`). Both sides use this module: the
//! server to read MAIL FROM and RCPT TO, the client to check what it is
//! about to write upstream.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 section 4.5.3.1.3: a path is at most 256 octets, its angle
/// brackets included.
pub const MAX_PATH_LEN: usize = 256;
/// RFC 5321 section 4.5.3.1.2.
const MAX_DOMAIN_LEN: usize = 255;
/// RFC 1035 section 2.3.4.
const MAX_LABEL_LEN: usize = 63;

/// What is wrong with an address. Each message is a clause that follows
/// "the address" and says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    #[error("is empty: write the whole address, like user@example.com")]
    Empty,
    #[error(
        "is {octets} octets long with its angle brackets; RFC 5321 allows 256 \
         (section 4.5.3.1.3): use a shorter address"
    )]
    TooLong { octets: usize },
    #[error("has no @domain: write the whole address, like user@example.com")]
    NoDomain,
    #[error("has nothing before the @: write the whole address, like user@example.com")]
    EmptyLocalPart,
    #[error(
        "holds a control character (such as CR, LF, TAB or NUL), which no address \
         may contain: remove it"
    )]
    ControlCharacter,
    #[error(
        "has {found:?} in its local part, which is allowed there only inside double \
         quotes: write \"...\"@domain, or remove it"
    )]
    NeedsQuotes { found: char },
    #[error(
        "has a dot at the start or end of its local part, or two dots in a row: \
         remove the extra dot, or put the local part in double quotes"
    )]
    MisplacedDot,
    #[error("opens a double quote that is never closed: close it before the @")]
    UnclosedQuote,
    #[error(
        "has {found:?} after the closing double quote of its local part, where the @ \
         must follow: move it inside the quotes"
    )]
    TextAfterQuote { found: char },
    #[error(
        "has a backslash in its quoted local part that escapes nothing printable: \
         write \\\\ for a backslash"
    )]
    BadEscape,
    #[error(
        "has {found:?} in its domain, where only letters, digits, hyphens and dots \
         may appear: check the part after the @"
    )]
    DomainCharacter { found: char },
    #[error("has an invalid domain after the @ ({detail}): write a host name such as example.com")]
    BadDomain { detail: &'static str },
    #[error(
        "has an invalid address literal after the @: write [192.0.2.1], \
         [IPv6:2001:db8::1] or a host name"
    )]
    BadAddressLiteral,
}

/// Checks one mailbox (`local-part@domain`, no angle brackets), as it will
/// be written between `<` and `>`.
pub fn check_mailbox(mailbox: &str) -> Result<(), MailboxError> {
    if mailbox.is_empty() {
        return Err(MailboxError::Empty);
    }
    if mailbox.len() + 2 > MAX_PATH_LEN {
        return Err(MailboxError::TooLong {
            octets: mailbox.len() + 2,
        });
    }
    // First, so that an injection attempt (CR LF in an address) is named
    // as what it is rather than as a misplaced character.
    if mailbox.chars().any(char::is_control) {
        return Err(MailboxError::ControlCharacter);
    }
    let domain = split_local_part(mailbox)?;
    check_domain(domain)
}

/// RFC 5321 section 4.5.1: `<postmaster>` without a domain, in any case.
pub fn is_postmaster(text: &str) -> bool {
    text.eq_ignore_ascii_case("postmaster")
}

/// Returns what follows the `@` after a valid local part.
fn split_local_part(mailbox: &str) -> Result<&str, MailboxError> {
    let bytes = mailbox.as_bytes();
    if bytes.first() == Some(&b'"') {
        // Quoted-string: qtextSMTP or quoted-pairSMTP (%d92 %d32-126).
        // Control characters were refused already, so every other
        // character is qtext (RFC 6531 adds UTF-8 to it).
        let mut index = 1;
        loop {
            match bytes.get(index) {
                None => return Err(MailboxError::UnclosedQuote),
                Some(b'"') => break,
                Some(b'\\') => match bytes.get(index + 1) {
                    Some(32..=126) => index += 2,
                    _ => return Err(MailboxError::BadEscape),
                },
                Some(_) => index += 1,
            }
        }
        let after = &mailbox[index + 1..];
        return match after.chars().next() {
            Some('@') => Ok(&after[1..]),
            Some(found) => Err(MailboxError::TextAfterQuote { found }),
            None => Err(MailboxError::NoDomain),
        };
    }
    // Dot-string: atoms separated by single dots.
    let mut after_dot = true;
    for (index, c) in mailbox.char_indices() {
        match c {
            '@' if index == 0 => return Err(MailboxError::EmptyLocalPart),
            '@' if after_dot => return Err(MailboxError::MisplacedDot),
            '@' => return Ok(&mailbox[index + 1..]),
            '.' if after_dot => return Err(MailboxError::MisplacedDot),
            '.' => after_dot = true,
            c if is_atext(c) => after_dot = false,
            found => return Err(MailboxError::NeedsQuotes { found }),
        }
    }
    Err(MailboxError::NoDomain)
}

/// RFC 5322 atext, and RFC 6531's UTF8-non-ascii.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_domain(domain: &str) -> Result<(), MailboxError> {
    if domain.is_empty() {
        return Err(MailboxError::NoDomain);
    }
    if domain.starts_with('[') {
        return check_address_literal(domain);
    }
    if domain.len() > MAX_DOMAIN_LEN {
        return Err(MailboxError::BadDomain {
            detail: "it is longer than 255 octets",
        });
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(MailboxError::BadDomain {
                detail: "a dot at its start or end, or two dots in a row",
            });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(MailboxError::BadDomain {
                detail: "a label is longer than 63 octets",
            });
        }
        // U-labels (RFC 6531) are letters too; they are not checked further.
        if let Some(found) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || !c.is_ascii()))
        {
            return Err(MailboxError::DomainCharacter { found });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(MailboxError::BadDomain {
                detail: "a label starts or ends with a hyphen",
            });
        }
    }
    Ok(())
}

/// RFC 5321 section 4.1.3: `[IPv4]`, `[IPv6:...]` or `[tag:text]`.
fn check_address_literal(domain: &str) -> Result<(), MailboxError> {
    let inner = domain
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .ok_or(MailboxError::BadAddressLiteral)?;
    if inner.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let Some((tag, text)) = inner.split_once(':') else {
        return Err(MailboxError::BadAddressLiteral);
    };
    if tag.eq_ignore_ascii_case("IPv6") {
        return match text.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(MailboxError::BadAddressLiteral),
        };
    }
    // General-address-literal: Standardized-tag ":" 1*dcontent.
    let tag_ok = !tag.is_empty()
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !tag.ends_with('-')
        && !tag.starts_with('-');
    let text_ok = !text.is_empty() && text.bytes().all(|b| matches!(b, 33..=90 | 94..=126));
    if tag_ok && text_ok {
        Ok(())
    } else {
        Err(MailboxError::BadAddressLiteral)
    }
}

/// A path read from a MAIL or RCPT command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// `<>`: the null reverse-path (bounces).
    Null,
    /// `<postmaster>` in any case, exactly as written.
    Postmaster(String),
    /// A mailbox, exactly as written, without any source route.
    Mailbox(String),
}

/// Why the bytes after `MAIL FROM:` or `RCPT TO:` are not a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the address must be written in angle brackets, like <user@example.com>")]
    NoOpeningBracket,
    #[error("the address has no closing '>'")]
    Unclosed,
    #[error("the address opens a double quote that is never closed")]
    UnclosedQuote,
    #[error(
        "the address holds bytes that are not UTF-8: send non-ASCII addresses \
         as UTF-8, with SMTPUTF8"
    )]
    NotUtf8,
    #[error(
        "the address has a source route (@host,@host:) that is not well formed: \
         leave the route out and write just the mailbox"
    )]
    BadRoute,
    #[error("the address {0}")]
    Mailbox(#[from] MailboxError),
}

/// Reads a path (`<` ... `>`) at the start of `input`. Returns the path and
/// the bytes after its `>` (the parameters). A source route (`<@a,@b:u@d>`)
/// is accepted and dropped, as RFC 5321 section 4.1.1.3 and appendix C ask.
pub fn parse_path(input: &[u8]) -> Result<(Path, &[u8]), PathError> {
    if input.first() != Some(&b'<') {
        return Err(PathError::NoOpeningBracket);
    }
    let close = closing_bracket(input)?;
    let text = std::str::from_utf8(&input[1..close]).map_err(|_| PathError::NotUtf8)?;
    let rest = &input[close + 1..];
    if text.is_empty() {
        return Ok((Path::Null, rest));
    }
    if text.len() + 2 > MAX_PATH_LEN {
        return Err(MailboxError::TooLong {
            octets: text.len() + 2,
        }
        .into());
    }
    let mailbox = match text.strip_prefix('@') {
        Some(_) => strip_source_route(text)?,
        None => text,
    };
    if is_postmaster(mailbox) {
        return Ok((Path::Postmaster(mailbox.to_string()), rest));
    }
    check_mailbox(mailbox)?;
    Ok((Path::Mailbox(mailbox.to_string()), rest))
}

/// The index of the `>` that ends the path starting at `input[0] == '<'`:
/// the first one outside a quoted string.
fn closing_bracket(input: &[u8]) -> Result<usize, PathError> {
    let mut in_quote = false;
    let mut index = 1;
    while let Some(&byte) = input.get(index) {
        match byte {
            b'\\' if in_quote => index += 1,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => return Ok(index),
            // The line ends here (CRLF): the path was not closed.
            b'\r' | b'\n' => break,
            _ => {}
        }
        index += 1;
    }
    Err(if in_quote {
        PathError::UnclosedQuote
    } else {
        PathError::Unclosed
    })
}

/// `@a,@b:mailbox` → `mailbox`, checking each route domain.
fn strip_source_route(text: &str) -> Result<&str, PathError> {
    // At-domains hold no colon (they are Domains, not address literals),
    // so the first colon ends the route.
    let (route, mailbox) = text.split_once(':').ok_or(PathError::BadRoute)?;
    for hop in route.split(',') {
        let domain = hop.strip_prefix('@').ok_or(PathError::BadRoute)?;
        if domain.starts_with('[') || check_domain(domain).is_err() {
            return Err(PathError::BadRoute);
        }
    }
    Ok(mailbox)
}

/// A checked mailbox, for configuration (`postmaster = "..."`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Mailbox(String);

/// An address in the configuration that [`check_mailbox`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the address {value:?} {reason}")]
pub struct InvalidMailbox {
    pub value: String,
    pub reason: MailboxError,
}

impl Mailbox {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Mailbox {
    type Error = InvalidMailbox;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match check_mailbox(&value) {
            Ok(()) => Ok(Mailbox(value)),
            Err(reason) => Err(InvalidMailbox { value, reason }),
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_mailboxes_from_rfc_5321_and_6531() {
        for good in [
            "user@example.com",
            "first.last@sub.example.co.uk",
            "a!#$%&'*+-/=?^_`{|}~z@example.com",
            "\"a b\"@example.net",
            "\"a@b\"@example.net",
            "\"with \\\" quote and \\\\ backslash\"@example.net",
            "\"\"@example.net",
            "\"a>b\"@example.net",
            "user@[192.0.2.1]",
            "user@[IPv6:2001:db8::1]",
            "user@[ipv6:::1]",
            "user@[x-tag:anything-goes]",
            "j\u{f6}rg@m\u{fc}ller.example",
            "postmaster@example.com",
            "x@a",
        ] {
            assert_eq!(check_mailbox(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn invalid_mailboxes_name_what_is_wrong() {
        use MailboxError::*;
        let long = format!("{}@example.com", "a".repeat(250));
        let cases: Vec<(&str, MailboxError)> = vec![
            ("", Empty),
            (&long, TooLong { octets: 264 }),
            ("user", NoDomain),
            ("user@", NoDomain),
            ("@example.com", EmptyLocalPart),
            ("a b@example.com", NeedsQuotes { found: ' ' }),
            ("a\rRSET\r@example.net", ControlCharacter),
            ("a@x\r\nRCPT TO:<b@y", ControlCharacter),
            ("a\0b@example.net", ControlCharacter),
            ("\"a\tb\"@example.net", ControlCharacter),
            ("a<b@example.com", NeedsQuotes { found: '<' }),
            ("a,b@example.com", NeedsQuotes { found: ',' }),
            (".a@example.com", MisplacedDot),
            ("a.@example.com", MisplacedDot),
            ("a..b@example.com", MisplacedDot),
            ("\"a b@example.com", UnclosedQuote),
            ("\"a\"b@example.com", TextAfterQuote { found: 'b' }),
            ("\"a\"", NoDomain),
            ("\"a\\\u{e9}\"@example.com", BadEscape),
            ("a@b@example.com", DomainCharacter { found: '@' }),
            ("a@exa mple.com", DomainCharacter { found: ' ' }),
            ("a@under_score.com", DomainCharacter { found: '_' }),
            (
                "a@example..com",
                BadDomain {
                    detail: "a dot at its start or end, or two dots in a row",
                },
            ),
            (
                "a@example.com.",
                BadDomain {
                    detail: "a dot at its start or end, or two dots in a row",
                },
            ),
            (
                "a@-example.com",
                BadDomain {
                    detail: "a label starts or ends with a hyphen",
                },
            ),
            ("a@[192.0.2.300]", BadAddressLiteral),
            ("a@[IPv6:not-an-address]", BadAddressLiteral),
            ("a@[192.0.2.1", BadAddressLiteral),
        ];
        for (bad, expected) in cases {
            assert_eq!(check_mailbox(bad), Err(expected), "{bad:?}");
        }
        let label = format!("a@{}.com", "x".repeat(64));
        assert!(matches!(check_mailbox(&label), Err(BadDomain { .. })));
    }

    #[test]
    fn paths_keep_the_mailbox_exact_and_return_the_parameters() {
        let (path, rest) = parse_path(b"<\"a b\"@example.net> NOTIFY=NEVER\r\n").expect("path");
        assert_eq!(path, Path::Mailbox("\"a b\"@example.net".into()));
        assert_eq!(rest, b" NOTIFY=NEVER\r\n");
        let (path, rest) = parse_path(b"<\"a>b\\\"c\"@x>\r\n").expect("quoted >");
        assert_eq!(path, Path::Mailbox("\"a>b\\\"c\"@x".into()));
        assert_eq!(rest, b"\r\n");
        assert_eq!(parse_path(b"<>\r\n").expect("null").0, Path::Null);
        for postmaster in ["postmaster", "Postmaster", "POSTMASTER"] {
            let line = format!("<{postmaster}>\r\n");
            assert_eq!(
                parse_path(line.as_bytes()).expect("postmaster").0,
                Path::Postmaster(postmaster.into())
            );
        }
        // postmaster@domain is an ordinary mailbox.
        assert_eq!(
            parse_path(b"<Postmaster@example.com>").expect("mailbox").0,
            Path::Mailbox("Postmaster@example.com".into())
        );
        // A source route is dropped, the mailbox kept.
        assert_eq!(
            parse_path(b"<@a.example,@b.example:User@c.example>")
                .expect("routed")
                .0,
            Path::Mailbox("User@c.example".into())
        );
    }

    #[test]
    fn bad_paths_are_refused_with_the_reason() {
        assert_eq!(parse_path(b"a@b\r\n"), Err(PathError::NoOpeningBracket));
        assert_eq!(parse_path(b"<a@b\r\n"), Err(PathError::Unclosed));
        assert_eq!(parse_path(b"<\"a>b@c\r\n"), Err(PathError::UnclosedQuote));
        assert_eq!(parse_path(b"<\xff@b>"), Err(PathError::NotUtf8));
        assert_eq!(
            parse_path(b"<@a.example:>"),
            Err(MailboxError::Empty.into())
        );
        assert_eq!(parse_path(b"<@a_b:u@c>"), Err(PathError::BadRoute));
        assert_eq!(parse_path(b"<@a.example u@c>"), Err(PathError::BadRoute));
        assert_eq!(
            parse_path(b"<a b@c>"),
            Err(MailboxError::NeedsQuotes { found: ' ' }.into())
        );
        let long = format!("<{}@example.com>", "a".repeat(250));
        assert_eq!(
            parse_path(long.as_bytes()),
            Err(MailboxError::TooLong { octets: 264 }.into())
        );
    }

    #[test]
    fn config_mailboxes_are_checked_when_read() {
        let good: Mailbox = "admin@contoso.com".to_string().try_into().expect("valid");
        assert_eq!(good.as_str(), "admin@contoso.com");
        let bad = Mailbox::try_from("admin".to_string()).expect_err("no domain");
        assert_eq!(
            bad.to_string(),
            "the address \"admin\" has no @domain: write the whole address, like user@example.com"
        );
    }
}
