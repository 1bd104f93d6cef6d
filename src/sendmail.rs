//! `sendmail` compatibility, the pure part: the classic sendmail command
//! line (as cron, PHP's `mail()` and many scripts call it) parsed into an
//! [`Invocation`], and the message read from standard input turned into an
//! envelope and RFC 5322 bytes ready for the queue ([`prepare`]).
//!
//! Sendmail's syntax is getopt's, not clap's: flags group (`-ti`), values
//! attach (`-fuser@host`, `-oi`, `-bm`) or follow (`-f user@host`), and
//! flags may come after recipients (glibc getopt permutes). So it is parsed
//! here by hand; `cli/sendmail.rs` only wires I/O, config and the queue.
//!
//! Flags (the Postfix and sendmail 8 meanings):
//! - `-t`: recipients also from the To, Cc and Bcc headers (added to those
//!   given as arguments, as Postfix does).
//! - `-f ADDR`, `-r ADDR` (old name): the envelope sender.
//! - `-F NAME`: the full name for a From header that the message lacks.
//! - `-i`, `-oi`: a line holding only `.` does not end the input.
//! - `-bm`: read a message and send it (the default and only mode).
//! - accepted and ignored, because they tune classic sendmail's own queue
//!   and error reporting, which the relay's queue replaces: `-v`, `-U`,
//!   `-n`, `-m`, `-G`, `-od*`, `-oe*`, `-om`, `-oQ*`, `-oL*`, `-O opt=val`,
//!   `-B type`, `-N dsn`, `-R ret`, `-V envid`, `-h hops`, `-L tag`,
//!   `-p proto`, `-C file`.
//! - refused with a pointer to the oxirelay way: `-bs` (SMTP on stdin: use
//!   the submission listener), `-bp` (`oxirelay queue list`), `-bd`/`-q`
//!   (`oxirelay serve`), and every other `-b` mode and unknown flag.
//!
//! The Bcc header is always removed from the message (its recipients are
//! envelope-only), so a blind copy is never shown to the other recipients.

use crate::message::{Envelope, check_address, normalize_line_endings};
use std::io::BufRead;

/// sendmail's exit codes (`sysexits.h`), which cron and PHP understand.
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_NOUSER: u8 = 67;
pub const EX_IOERR: u8 = 74;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_NOPERM: u8 = 77;
pub const EX_CONFIG: u8 = 78;

/// The largest message read from standard input: the submission listener's
/// default SIZE (35 MiB, Microsoft 365's own limit), so the two ways in
/// accept the same messages.
pub const MAX_MESSAGE_BYTES: usize = 35 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendmailError {
    #[error("unknown flag {0}; see `oxirelay sendmail --help` for the flags understood")]
    UnknownFlag(String),
    #[error("flag {0} needs a value (for example -f sender@example.com)")]
    MissingValue(String),
    #[error("{flag} is not supported: {instead}")]
    Unsupported { flag: String, instead: &'static str },
    #[error("{what} {value:?} is not a usable email address: {reason}")]
    BadAddress {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "the full name (-F) contains a line break; it must be one line (a line break could inject headers)"
    )]
    NameLineBreak,
    #[error(
        "no recipients: give them as arguments, or use -t to take them from the To, Cc and Bcc headers"
    )]
    NoRecipients,
    #[error(
        "the message header line {line} is not a header and not a continuation; end the header with an empty line"
    )]
    MalformedHeader { line: usize },
    #[error("the message is larger than {MAX_MESSAGE_BYTES} bytes; send large files another way")]
    TooLarge,
    #[error("cannot read the message from standard input: {0}")]
    Read(String),
}

impl SendmailError {
    /// The sysexits code a sendmail caller expects for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            SendmailError::UnknownFlag(_)
            | SendmailError::MissingValue(_)
            | SendmailError::Unsupported { .. }
            | SendmailError::NameLineBreak
            | SendmailError::NoRecipients => EX_USAGE,
            SendmailError::BadAddress { what, .. } if *what == "recipient" => EX_NOUSER,
            SendmailError::BadAddress { .. } => EX_USAGE,
            SendmailError::MalformedHeader { .. } | SendmailError::TooLarge => EX_DATAERR,
            SendmailError::Read(_) => EX_IOERR,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `-t`: recipients also from the message's To, Cc and Bcc headers.
    pub recipients_from_headers: bool,
    /// `-f`/`-r`: the envelope sender, as given.
    pub envelope_from: Option<String>,
    /// `-F`: the full name for a From header the message lacks.
    pub full_name: Option<String>,
    /// False with `-i`/`-oi`: then only the end of input ends the message.
    pub dot_ends_input: bool,
    /// Recipients given as arguments.
    pub recipients: Vec<String>,
    /// Flags accepted and ignored, as given (for a debug log line).
    pub ignored: Vec<String>,
}

/// Flags that take a value (getopt's `x:`).
const VALUE_FLAGS: &[char] = &[
    'b', 'f', 'r', 'F', 'o', 'O', 'B', 'N', 'R', 'V', 'h', 'L', 'p', 'C', 'q', 'X',
];
/// Flags without a value that change nothing here.
const IGNORED_FLAGS: &[char] = &['v', 'U', 'n', 'm', 'G'];

/// Parses sendmail's arguments (everything after `sendmail`).
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Invocation, SendmailError> {
    let mut invocation = Invocation {
        dot_ends_input: true,
        ..Invocation::default()
    };
    let mut args = args.iter().map(AsRef::as_ref);
    while let Some(arg) = args.next() {
        if arg == "--" {
            invocation
                .recipients
                .extend(args.by_ref().map(String::from));
            break;
        }
        let Some(group) = arg.strip_prefix('-').filter(|g| !g.is_empty()) else {
            invocation.recipients.push(arg.to_string());
            continue;
        };
        if group.starts_with('-') {
            return Err(SendmailError::UnknownFlag(arg.to_string()));
        }
        // getopt: flags group until one that takes a value, which takes the
        // rest of the group or, if nothing is left, the next argument.
        for (at, flag) in group.char_indices() {
            if VALUE_FLAGS.contains(&flag) {
                let rest = &group[at + flag.len_utf8()..];
                let value = if rest.is_empty() {
                    args.next()
                        .ok_or_else(|| SendmailError::MissingValue(format!("-{flag}")))?
                        .to_string()
                } else {
                    rest.to_string()
                };
                apply_value_flag(&mut invocation, flag, value)?;
                break;
            }
            match flag {
                't' => invocation.recipients_from_headers = true,
                'i' => invocation.dot_ends_input = false,
                f if IGNORED_FLAGS.contains(&f) => invocation.ignored.push(format!("-{f}")),
                other => return Err(SendmailError::UnknownFlag(format!("-{other}"))),
            }
        }
    }
    Ok(invocation)
}

fn apply_value_flag(
    invocation: &mut Invocation,
    flag: char,
    value: String,
) -> Result<(), SendmailError> {
    let unsupported = |instead| {
        Err(SendmailError::Unsupported {
            flag: format!("-{flag}{value}"),
            instead,
        })
    };
    match flag {
        'f' | 'r' => invocation.envelope_from = Some(value),
        'F' => invocation.full_name = Some(value),
        'b' => match value.as_str() {
            "m" => {}
            "s" => {
                return unsupported(
                    "SMTP on standard input is not offered; submit over SMTP to the relay's listener instead",
                );
            }
            "p" => return unsupported("list the queue with `oxirelay queue list`"),
            "d" | "D" => return unsupported("run the relay with `oxirelay serve`"),
            _ => return unsupported("the only mode is -bm (read a message and send it)"),
        },
        'q' => return unsupported("`oxirelay serve` runs the queue"),
        'X' => return unsupported("traffic logs would hold message bodies; use -v for a log"),
        'o' => match value.chars().next() {
            Some('i') if value == "i" => invocation.dot_ends_input = false,
            Some('d' | 'e' | 'Q' | 'L') => invocation.ignored.push(format!("-o{value}")),
            Some('m') if value == "m" => invocation.ignored.push("-om".into()),
            _ => return Err(SendmailError::UnknownFlag(format!("-o{value}"))),
        },
        // Options of classic sendmail's own delivery and DSN machinery;
        // the relay's queue and bounces replace them.
        _ => invocation.ignored.push(format!("-{flag} {value}")),
    }
    Ok(())
}

/// Reads the message from `input`: up to the end of input, or up to a line
/// holding only "." when `dot_ends_input` (sendmail's default; the rest of
/// the input is not read, as sendmail does).
pub fn read_message(
    mut input: impl BufRead,
    dot_ends_input: bool,
) -> Result<Vec<u8>, SendmailError> {
    let mut message = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        // The line is read with a bound, so a stream without newlines cannot
        // grow past the size limit before it is noticed.
        let limit = (MAX_MESSAGE_BYTES + 1 - message.len().min(MAX_MESSAGE_BYTES)) as u64;
        let mut bounded = std::io::Read::take(&mut input, limit);
        let read = bounded
            .read_until(b'\n', &mut line)
            .map_err(|e| SendmailError::Read(e.to_string()))?;
        if read == 0 {
            return Ok(message);
        }
        if dot_ends_input && matches!(line.as_slice(), b".\n" | b".\r\n" | b".") {
            return Ok(message);
        }
        message.extend_from_slice(&line);
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(SendmailError::TooLarge);
        }
    }
}

/// Who runs the command, for the defaults: `$USER@hostname` as sender, and
/// the hostname for a Message-ID when the sender has no domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIdentity {
    pub user: String,
    pub hostname: String,
}

/// A message ready to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedMessage {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
}

/// Turns what was read from standard input into the queued message: CRLF
/// line endings, Bcc removed, Date, Message-ID and From added when missing,
/// the envelope from the flags, the headers (with `-t`) and `local`.
/// `now` is Unix seconds (for Date), `unique` makes the Message-ID unique.
pub fn prepare(
    invocation: &Invocation,
    raw: &[u8],
    local: &LocalIdentity,
    now: i64,
    unique: &str,
) -> Result<PreparedMessage, SendmailError> {
    if invocation
        .full_name
        .as_deref()
        .is_some_and(|n| n.contains(['\r', '\n']))
    {
        return Err(SendmailError::NameLineBreak);
    }
    let mut normalized = normalize_line_endings(raw);
    // SMTP text ends with CRLF; a last line without one would otherwise
    // run into the header separator added after it.
    if !normalized.is_empty() && !normalized.ends_with(b"\r\n") {
        normalized.extend_from_slice(b"\r\n");
    }
    let (fields, body) = split_header(&normalized)?;
    let parsed = parse_fields(&fields);

    let mail_from = match &invocation.envelope_from {
        Some(given) => qualify_sender(given, &local.hostname)?,
        None => match parsed.from.first() {
            Some(from) => qualify_sender(from, &local.hostname)?,
            None => qualify_sender(&local.user, &local.hostname)?,
        },
    };

    let mut rcpt_to: Vec<String> = Vec::new();
    let header_recipients = if invocation.recipients_from_headers {
        parsed.recipients.as_slice()
    } else {
        &[]
    };
    for address in invocation
        .recipients
        .iter()
        .flat_map(|a| a.split(',').map(str::trim).filter(|a| !a.is_empty()))
        .chain(header_recipients.iter().map(String::as_str))
    {
        let address = checked("recipient", address)?;
        if !rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(&address)) {
            rcpt_to.push(address);
        }
    }
    if rcpt_to.is_empty() {
        return Err(SendmailError::NoRecipients);
    }

    let mut bytes = Vec::with_capacity(normalized.len() + 256);
    if !parsed.has_date {
        bytes.extend_from_slice(
            format!(
                "Date: {}\r\n",
                mail_builder::headers::date::Date::new(now).to_rfc822()
            )
            .as_bytes(),
        );
    }
    if !parsed.has_from {
        bytes.extend_from_slice(&from_header(&mail_from, invocation.full_name.as_deref()));
    }
    if !parsed.has_message_id {
        let domain = mail_from
            .rsplit_once('@')
            .map_or(local.hostname.as_str(), |(_, d)| d);
        bytes.extend_from_slice(format!("Message-ID: <{unique}@{domain}>\r\n").as_bytes());
    }
    for field in fields
        .iter()
        .filter(|f| !f.name.eq_ignore_ascii_case("bcc"))
    {
        bytes.extend_from_slice(field.raw);
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    Ok(PreparedMessage {
        envelope: Envelope { mail_from, rcpt_to },
        bytes,
    })
}

/// One header field: its name and its raw lines, CRLFs included.
struct Field<'a> {
    name: &'a str,
    raw: &'a [u8],
}

/// Splits CRLF text into header fields and the body. A header ends at the
/// empty line; a message whose first line is not a header field has no
/// header at all (it is all body, as sendmail treats it).
fn split_header(message: &[u8]) -> Result<(Vec<Field<'_>>, &[u8]), SendmailError> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut at = 0;
    let mut line_number = 0;
    while at < message.len() {
        line_number += 1;
        let end = message[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(message.len(), |p| at + p + 2);
        let line = &message[at..end];
        if line == b"\r\n" {
            return Ok((fields, &message[end..]));
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            let Some(last) = fields.last_mut() else {
                return Ok((Vec::new(), message));
            };
            // Extend the previous field over its continuation line; both
            // are consecutive slices of `message`.
            let start = at - last.raw.len();
            last.raw = &message[start..end];
        } else if let Some(name) = field_name(line) {
            let raw = &message[at..end];
            fields.push(Field { name, raw });
        } else if fields.is_empty() {
            return Ok((Vec::new(), message));
        } else {
            return Err(SendmailError::MalformedHeader { line: line_number });
        }
        at = end;
    }
    // Headers only, no body.
    Ok((fields, &message[message.len()..]))
}

/// RFC 5322 field name: printable ASCII except ":", then ":".
fn field_name(line: &[u8]) -> Option<&str> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
        return None;
    }
    std::str::from_utf8(name).ok()
}

#[derive(Default)]
struct ParsedFields {
    from: Vec<String>,
    recipients: Vec<String>,
    has_date: bool,
    has_from: bool,
    has_message_id: bool,
}

/// Reads the addresses with mail-parser (groups, comments, encoded names
/// and folding are its business, not ours).
fn parse_fields(fields: &[Field<'_>]) -> ParsedFields {
    use mail_parser::HeaderName;
    let mut block: Vec<u8> = fields.iter().flat_map(|f| f.raw.iter().copied()).collect();
    block.extend_from_slice(b"\r\n");
    let mut parsed = ParsedFields::default();
    let Some(message) = mail_parser::MessageParser::default().parse_headers(&block) else {
        return parsed;
    };
    for header in message.headers() {
        let addresses = || {
            header
                .value
                .as_address()
                .into_iter()
                .flat_map(|a| a.iter())
                .filter_map(|a| a.address())
                .map(String::from)
        };
        match &header.name {
            HeaderName::From => {
                parsed.has_from = true;
                parsed.from.extend(addresses());
            }
            HeaderName::To | HeaderName::Cc | HeaderName::Bcc => {
                parsed.recipients.extend(addresses());
            }
            HeaderName::Date => parsed.has_date = true,
            HeaderName::MessageId => parsed.has_message_id = true,
            _ => {}
        }
    }
    parsed
}

fn checked(what: &'static str, address: &str) -> Result<String, SendmailError> {
    let address = address.trim();
    let address = address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address);
    check_address("address", address).map_err(|e| SendmailError::BadAddress {
        what,
        value: address.to_string(),
        reason: e.to_string(),
    })?;
    Ok(address.to_string())
}

/// The envelope sender; a bare local part (`-f root`, cron's habit) is
/// qualified with the hostname, as sendmail does.
fn qualify_sender(given: &str, hostname: &str) -> Result<String, SendmailError> {
    let given = given.trim();
    if !given.contains('@') && !given.contains(['<', '>']) && !given.is_empty() {
        return checked("sender", &format!("{given}@{hostname}"));
    }
    checked("sender", given)
}

/// `From: "Full Name" <sender>` (RFC 2047-encoded when not ASCII) or
/// `From: sender`, written by mail-builder.
fn from_header(sender: &str, full_name: Option<&str>) -> Vec<u8> {
    use mail_builder::headers::Header;
    use mail_builder::headers::address::Address;
    let mut out = b"From: ".to_vec();
    let name = full_name.map(str::trim).filter(|n| !n.is_empty());
    let written = Address::new_address(name, sender).write_header(&mut out, "From: ".len());
    if written.is_err() {
        // Writing to a Vec cannot fail; keep a plain header if it ever did.
        out = format!("From: <{sender}>\r\n").into_bytes();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Invocation {
        parse_args(args).expect("parses")
    }

    fn local() -> LocalIdentity {
        LocalIdentity {
            user: "cron".into(),
            hostname: "box.example.org".into(),
        }
    }

    fn prepared(args: &[&str], input: &str) -> PreparedMessage {
        prepare(&parse(args), input.as_bytes(), &local(), 0, "ID1").expect("prepares")
    }

    fn text(message: &PreparedMessage) -> String {
        String::from_utf8(message.bytes.clone()).expect("utf8")
    }

    #[test]
    fn php_and_cron_command_lines_parse() {
        // PHP's default sendmail_path.
        let php = parse(&["-t", "-i"]);
        assert!(php.recipients_from_headers);
        assert!(!php.dot_ends_input);
        // cronie: sendmail -FCronDaemon -i -B8BITMIME -oem -f root -t
        let cron = parse(&[
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "-odi",
            "-f",
            "root",
            "-t",
        ]);
        assert_eq!(cron.full_name.as_deref(), Some("CronDaemon"));
        assert_eq!(cron.envelope_from.as_deref(), Some("root"));
        assert!(cron.recipients_from_headers && !cron.dot_ends_input);
        assert_eq!(cron.ignored, ["-B 8BITMIME", "-oem", "-odi"]);
    }

    #[test]
    fn flags_group_attach_and_permute() {
        let inv = parse(&["-ti", "-fapp@example.com", "a@example.net", "-oi", "-v"]);
        assert!(inv.recipients_from_headers && !inv.dot_ends_input);
        assert_eq!(inv.envelope_from.as_deref(), Some("app@example.com"));
        assert_eq!(inv.recipients, ["a@example.net"]);
        assert_eq!(parse(&["-bm", "x@y.z"]).recipients, ["x@y.z"]);
        assert_eq!(
            parse(&["-r", "s@e.com"]).envelope_from.as_deref(),
            Some("s@e.com")
        );
        assert_eq!(parse(&["--", "-odd@e.com"]).recipients, ["-odd@e.com"]);
        assert!(parse(&["a@b.c"]).dot_ends_input);
    }

    #[test]
    fn unknown_and_unsupported_flags_are_named() {
        let err = parse_args(&["-t", "-x"]).expect_err("unknown");
        assert_eq!(err, SendmailError::UnknownFlag("-x".into()));
        assert!(err.to_string().contains("-x"));
        assert_eq!(err.exit_code(), EX_USAGE);
        assert_eq!(
            parse_args(&["--verbose"]).expect_err("long"),
            SendmailError::UnknownFlag("--verbose".into())
        );
        assert_eq!(
            parse_args(&["-oZ"]).expect_err("-o"),
            SendmailError::UnknownFlag("-oZ".into())
        );
        let bs = parse_args(&["-bs"]).expect_err("-bs");
        assert!(bs.to_string().contains("-bs"), "{bs}");
        assert!(bs.to_string().contains("listener"), "{bs}");
        assert!(
            parse_args(&["-bp"])
                .expect_err("-bp")
                .to_string()
                .contains("queue list")
        );
        assert!(parse_args(&["-q15m"]).is_err());
        assert_eq!(
            parse_args(&["-f"]).expect_err("missing"),
            SendmailError::MissingValue("-f".into())
        );
    }

    #[test]
    fn dot_line_ends_input_unless_i() {
        let input = b"Subject: x\n\nline\n.\nafter\n".as_slice();
        assert_eq!(
            read_message(input, true).expect("reads"),
            b"Subject: x\n\nline\n"
        );
        assert_eq!(read_message(input, false).expect("reads"), input);
        // ".." and ". " are text, not the end.
        assert_eq!(
            read_message(b"..\n. \n".as_slice(), true).expect("reads"),
            b"..\n. \n"
        );
        assert_eq!(
            read_message(b"a\r\n.\r\nb".as_slice(), true).expect("reads"),
            b"a\r\n"
        );
    }

    #[test]
    fn recipients_from_headers_and_bcc_removed() {
        let message = prepared(
            &["-t"],
            "From: App <app@example.com>\nTo: a@example.net, \"B\" <b@example.net>\nCc: c@example.net\nBcc: hidden@example.net,\n  also-hidden@example.net\nSubject: hi\n\nbody\n",
        );
        assert_eq!(message.envelope.mail_from, "app@example.com");
        assert_eq!(
            message.envelope.rcpt_to,
            [
                "a@example.net",
                "b@example.net",
                "c@example.net",
                "hidden@example.net",
                "also-hidden@example.net"
            ]
        );
        let text = text(&message);
        assert!(!text.contains("hidden"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("bcc"), "{text}");
        assert!(text.ends_with("Subject: hi\r\n\r\nbody\r\n"), "{text}");
        assert!(!text.contains("\n\n") && !text.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn bcc_is_removed_even_without_t() {
        let message = prepared(&["x@example.net"], "Bcc: y@example.net\nSubject: s\n\nb\n");
        assert_eq!(message.envelope.rcpt_to, ["x@example.net"]);
        assert!(!text(&message).contains("y@example.net"));
    }

    #[test]
    fn missing_headers_are_added() {
        let message = prepared(
            &["-FCron Daemon", "-froot", "ops@example.net"],
            "Subject: backup\n\ndone\n",
        );
        assert_eq!(message.envelope.mail_from, "root@box.example.org");
        let text = text(&message);
        assert!(
            text.starts_with("Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n"),
            "{text}"
        );
        assert!(
            text.contains("From: \"Cron Daemon\" <root@box.example.org>\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Message-ID: <ID1@box.example.org>\r\n"),
            "{text}"
        );
        // Nothing added when present.
        let full = prepared(
            &["ops@example.net"],
            "Date: Mon, 2 Mar 2026 10:00:00 +0000\nFrom: a@example.com\nMessage-ID: <x@y>\n\nb\n",
        );
        assert!(full.bytes.starts_with(b"Date: Mon, 2 Mar 2026"));
        assert_eq!(full.envelope.mail_from, "a@example.com");
        // An unqualified From (cron's "root") is qualified like -f.
        let cron = prepared(&["ops@example.net"], "From: root (Cron Daemon)\n\nb\n");
        assert_eq!(cron.envelope.mail_from, "root@box.example.org");
    }

    #[test]
    fn sender_defaults_to_user_at_hostname() {
        let message = prepared(&["ops@example.net"], "just a body line\n");
        assert_eq!(message.envelope.mail_from, "cron@box.example.org");
        let text = text(&message);
        // The first line is not a header, so all of it is body.
        assert!(text.ends_with("\r\n\r\njust a body line\r\n"), "{text}");
        assert!(text.contains("From: <cron@box.example.org>\r\n"), "{text}");
    }

    #[test]
    fn non_ascii_full_name_is_encoded() {
        let message = prepared(
            &["-F", "Zoë Ops", "-f", "z@example.com", "a@example.net"],
            "\n",
        );
        let text = text(&message);
        assert!(text.contains("From: \"=?utf-8?"), "{text}");
        assert!(text.contains("<z@example.com>"), "{text}");
    }

    #[test]
    fn header_injection_is_refused() {
        let inv = parse(&["-F", "Evil\nBcc: victim@example.org", "a@example.net"]);
        assert_eq!(
            prepare(&inv, b"\n", &local(), 0, "1"),
            Err(SendmailError::NameLineBreak)
        );
        let inv = parse(&[
            "-f",
            "a@example.com\r\nRCPT TO:<v@example.org>",
            "a@example.net",
        ]);
        assert!(matches!(
            prepare(&inv, b"\n", &local(), 0, "1"),
            Err(SendmailError::BadAddress { what: "sender", .. })
        ));
        let inv = parse(&["a@example.net>\r\nDATA"]);
        let err = prepare(&inv, b"\n", &local(), 0, "1").expect_err("bad rcpt");
        assert_eq!(err.exit_code(), EX_NOUSER);
        // A bare local part as recipient is refused, not guessed.
        assert!(prepare(&parse(&["root"]), b"\n", &local(), 0, "1").is_err());
    }

    #[test]
    fn no_recipients_and_malformed_headers() {
        assert_eq!(
            prepare(&parse(&["-t"]), b"Subject: x\n\nb\n", &local(), 0, "1"),
            Err(SendmailError::NoRecipients)
        );
        let err = prepare(
            &parse(&["a@b.c"]),
            b"Subject: x\nnot a header\n\nb",
            &local(),
            0,
            "1",
        )
        .expect_err("malformed");
        assert_eq!(err, SendmailError::MalformedHeader { line: 2 });
        assert_eq!(err.exit_code(), EX_DATAERR);
    }

    #[test]
    fn headers_without_body_get_their_separator() {
        let message = prepared(&["a@example.net"], "Subject: only\n");
        assert!(text(&message).ends_with("Subject: only\r\n\r\n"));
        let message = prepared(&["a@example.net"], "Subject: no newline");
        assert!(text(&message).ends_with("Subject: no newline\r\n\r\n"));
    }

    #[test]
    fn oversize_input_is_refused() {
        let big = vec![b'a'; MAX_MESSAGE_BYTES + 10];
        assert_eq!(
            read_message(big.as_slice(), false),
            Err(SendmailError::TooLarge)
        );
    }
}
