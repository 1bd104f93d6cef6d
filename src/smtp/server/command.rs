//! What a command line must pass before smtp-proto sees it, and MAIL FROM /
//! RCPT TO read with their paths exact.
//!
//! - Line endings: a command ends with CRLF and holds no other CR or LF.
//!   smtp-proto silently drops a CR inside a command (so
//!   `RCPT TO:<a\rRSET\r@example.net>` became `aRSET@example.net`), and
//!   frames at a bare LF; both are refused here first.
//! - Paths: read by [`crate::message::mailbox`], which keeps quoted local
//!   parts and `<postmaster>` as written; the parameters after the path are
//!   still parsed by smtp-proto's parameter parser, so there is one parser
//!   of ESMTP parameters.

use super::reply::{Reply, standard};
use crate::message::mailbox::{self, Path, PathError};
use smtp_proto::request::parser::Rfc5321Parser;
use smtp_proto::{MailFrom, RcptTo};

/// How a command line breaks RFC 5321 section 2.3.8 ("lines consist of
/// zero or more data characters terminated by the sequence CR LF").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineDefect {
    /// The line ends with LF alone. Where the client thinks its line ended
    /// is then unknown, so nothing after it can be trusted.
    BareLineFeed,
    /// A CR inside the line that does not start its CRLF.
    BareCarriageReturn,
}

/// Checks a complete line (up to and including its first LF).
pub fn line_defect(line: &[u8]) -> Option<LineDefect> {
    let Some(content) = line.strip_suffix(b"\r\n") else {
        return Some(LineDefect::BareLineFeed);
    };
    content
        .contains(&b'\r')
        .then_some(LineDefect::BareCarriageReturn)
}

/// MAIL FROM or RCPT TO, parsed.
#[derive(Debug)]
pub enum EnvelopeCommand {
    /// `address` is the reverse-path exactly as written; empty for `<>`.
    Mail(MailFrom<String>),
    /// `address` is the forward-path exactly as written. `postmaster` says
    /// it was RFC 5321's `<postmaster>` (no domain, any case).
    Rcpt {
        to: RcptTo<String>,
        postmaster: bool,
    },
}

#[derive(Clone, Copy)]
enum Verb {
    Mail,
    Rcpt,
}

impl Verb {
    fn keyword(self) -> &'static [u8] {
        match self {
            Verb::Mail => b"FROM",
            Verb::Rcpt => b"TO",
        }
    }

    fn syntax(self) -> &'static str {
        match self {
            Verb::Mail => "MAIL FROM:<reverse-path> [parameters]",
            Verb::Rcpt => "RCPT TO:<forward-path> [parameters]",
        }
    }

    fn bad_address(self, error: &PathError) -> Reply {
        match self {
            Verb::Mail => standard::bad_sender_syntax(&error.to_string()),
            Verb::Rcpt => standard::bad_recipient_syntax(&error.to_string()),
        }
    }
}

/// Parses `line` (CRLF-terminated, without bare CR) if it is a MAIL or RCPT
/// command; `None` for any other command. Leading spaces and spaces around
/// the colon are tolerated, as smtp-proto and Postfix tolerate them.
pub fn parse_envelope_command(line: &[u8]) -> Option<Result<EnvelopeCommand, Reply>> {
    let line = trim_start(line);
    let verb = match line.get(..4) {
        Some(word) if word.eq_ignore_ascii_case(b"MAIL") => Verb::Mail,
        Some(word) if word.eq_ignore_ascii_case(b"RCPT") => Verb::Rcpt,
        _ => return None,
    };
    // "MAILX" is another (unknown) command, for smtp-proto to refuse.
    if !matches!(line.get(4), None | Some(b' ' | b'\t' | b'\r' | b'\n')) {
        return None;
    }
    Some(parse_arguments(verb, &line[4..]))
}

fn parse_arguments(verb: Verb, arguments: &[u8]) -> Result<EnvelopeCommand, Reply> {
    let syntax = || standard::syntax(verb.syntax());
    let arguments = trim_start(arguments);
    let keyword = verb.keyword();
    let after_keyword = match arguments.get(..keyword.len()) {
        Some(word) if word.eq_ignore_ascii_case(keyword) => &arguments[keyword.len()..],
        _ => return Err(syntax()),
    };
    let Some(after_colon) = trim_start(after_keyword).strip_prefix(b":") else {
        return Err(syntax());
    };
    let (path, rest) = match mailbox::parse_path(trim_start(after_colon)) {
        Ok(parsed) => parsed,
        Err(PathError::NoOpeningBracket) => return Err(syntax()),
        Err(error) => return Err(verb.bad_address(&error)),
    };
    // `[SP parameters] CRLF`: anything else after the `>` is not a path.
    if !(rest.starts_with(b" ") || rest == b"\r\n") {
        return Err(syntax());
    }
    let mut bytes = rest.iter();
    let mut parameters = Rfc5321Parser::new(&mut bytes);
    match verb {
        Verb::Mail => {
            let address = match path {
                Path::Null => String::new(),
                Path::Mailbox(mailbox) => mailbox,
                // Only RCPT may name the postmaster without a domain.
                Path::Postmaster(_) => {
                    return Err(verb.bad_address(&mailbox::MailboxError::NoDomain.into()));
                }
            };
            let from = parameters
                .mail_from_parameters(address.into())
                .map_err(parse_error_reply)?;
            Ok(EnvelopeCommand::Mail(from.into_owned()))
        }
        Verb::Rcpt => {
            let (address, postmaster) = match path {
                Path::Null => return Err(standard::null_recipient()),
                Path::Postmaster(text) => (text, true),
                Path::Mailbox(mailbox) => (mailbox, false),
            };
            let to = parameters
                .rcpt_to_parameters(address.into())
                .map_err(parse_error_reply)?;
            Ok(EnvelopeCommand::Rcpt {
                to: to.into_owned(),
                postmaster,
            })
        }
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != b' ').unwrap_or(bytes.len());
    &bytes[start..]
}

/// The reply to a command smtp-proto could not parse.
pub fn parse_error_reply(error: smtp_proto::Error) -> Reply {
    match error {
        smtp_proto::Error::UnknownCommand => standard::unrecognized_command(),
        smtp_proto::Error::InvalidSenderAddress => standard::invalid_sender(),
        smtp_proto::Error::InvalidRecipientAddress => standard::invalid_recipient(),
        smtp_proto::Error::SyntaxError { syntax } => standard::syntax(syntax),
        smtp_proto::Error::InvalidParameter { param } => standard::invalid_parameter(param),
        smtp_proto::Error::UnsupportedParameter { param } => {
            standard::unsupported_parameter(&param)
        }
        smtp_proto::Error::ResponseTooLong => standard::line_too_long(),
        smtp_proto::Error::NeedsMoreData { .. } | smtp_proto::Error::InvalidResponse { .. } => {
            standard::syntax("a complete SMTP command")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<EnvelopeCommand, Reply> {
        parse_envelope_command(line.as_bytes()).expect("a MAIL or RCPT command")
    }

    fn reply_text(result: Result<EnvelopeCommand, Reply>) -> String {
        String::from_utf8(result.expect_err("refused").to_bytes()).expect("UTF-8")
    }

    #[test]
    fn line_endings() {
        assert_eq!(line_defect(b"NOOP\r\n"), None);
        assert_eq!(line_defect(b"\r\n"), None);
        assert_eq!(line_defect(b"NOOP\n"), Some(LineDefect::BareLineFeed));
        assert_eq!(line_defect(b"\n"), Some(LineDefect::BareLineFeed));
        assert_eq!(
            line_defect(b"RCPT TO:<a\rRSET\r@example.net>\r\n"),
            Some(LineDefect::BareCarriageReturn)
        );
        assert_eq!(
            line_defect(b"NOOP\r\r\n"),
            Some(LineDefect::BareCarriageReturn)
        );
    }

    #[test]
    fn other_commands_are_left_to_smtp_proto() {
        for line in [
            "NOOP\r\n",
            "MAILX FROM:<a@b>\r\n",
            "RCP TO:<a@b>\r\n",
            "\r\n",
        ] {
            assert!(parse_envelope_command(line.as_bytes()).is_none(), "{line}");
        }
    }

    #[test]
    fn mail_keeps_the_address_exact_and_reads_parameters() {
        let Ok(EnvelopeCommand::Mail(from)) =
            parse("mail from: <\"Scan Desk\"@Contoso.com> SIZE=120 BODY=8BITMIME SMTPUTF8\r\n")
        else {
            panic!("MAIL");
        };
        assert_eq!(from.address, "\"Scan Desk\"@Contoso.com");
        assert_eq!(from.size, 120);
        assert_ne!(from.flags & smtp_proto::MAIL_BODY_8BITMIME, 0);
        assert_ne!(from.flags & smtp_proto::MAIL_SMTPUTF8, 0);
        let Ok(EnvelopeCommand::Mail(null)) = parse("MAIL FROM:<>\r\n") else {
            panic!("null sender");
        };
        assert_eq!(null.address, "");
    }

    #[test]
    fn rcpt_keeps_quotes_and_marks_postmaster() {
        let Ok(EnvelopeCommand::Rcpt { to, postmaster }) =
            parse("RCPT TO:<\"a b\"@example.net>\r\n")
        else {
            panic!("RCPT");
        };
        assert_eq!(
            (to.address.as_str(), postmaster),
            ("\"a b\"@example.net", false)
        );
        let Ok(EnvelopeCommand::Rcpt { to, postmaster }) = parse("RCPT TO:<PostMaster>\r\n") else {
            panic!("RCPT");
        };
        assert_eq!((to.address.as_str(), postmaster), ("PostMaster", true));
        let Ok(EnvelopeCommand::Rcpt { to, .. }) = parse("RCPT TO:<b@x> NOTIFY=NEVER\r\n") else {
            panic!("RCPT");
        };
        assert_ne!(to.flags, 0);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert_eq!(
            reply_text(parse("RCPT TO:<>\r\n")),
            "501 5.1.3 Bad recipient address syntax: RCPT TO:<> names no recipient; \
             write the recipient's address\r\n"
        );
        assert_eq!(
            reply_text(parse("MAIL FROM:<postmaster>\r\n")),
            "501 5.1.7 Bad sender address syntax: the address has no @domain: \
             write the whole address, like user@example.com\r\n"
        );
        assert_eq!(
            reply_text(parse("RCPT TO:<a b@example.net>\r\n")),
            "501 5.1.3 Bad recipient address syntax: the address has ' ' in its local \
             part, which is allowed there only inside double quotes: write \"...\"@domain, \
             or remove it\r\n"
        );
        for line in [
            "RCPT TO:b@x\r\n",
            "RCPT TO<b@x>\r\n",
            "RCPT <b@x>\r\n",
            "RCPT TO:<b@x>junk\r\n",
            "RCPT\r\n",
        ] {
            assert!(
                reply_text(parse(line))
                    .starts_with("501 5.5.4 Syntax error; expected: RCPT TO:<forward-path>"),
                "{line}"
            );
        }
        assert!(reply_text(parse("MAIL FROM:<a@b> FROB=1\r\n")).starts_with("555 5.5.4"));
        assert!(reply_text(parse("RCPT TO:<a@[300.1.1.1]>\r\n")).starts_with("501 5.1.3"));
    }
}
