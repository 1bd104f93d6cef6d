//! SMTP replies: the one type every part of the server speaks in, and the
//! standard replies of RFC 5321 / RFC 3463 the session sends, in one place so
//! their wording stays consistent.

use std::fmt;

/// One SMTP reply: a three-digit code and one or more lines of text. The text
/// of each line starts with the RFC 3463 enhanced status code where one
/// applies (we advertise ENHANCEDSTATUSCODES).
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// A single-line reply. CR and LF in `text` are replaced by spaces: a
    /// policy's message must never be able to start a second reply.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![sanitize(text.into())],
        }
    }

    /// A multi-line reply (EHLO). An empty list becomes one empty line.
    pub fn multiline(code: u16, lines: impl IntoIterator<Item = String>) -> Self {
        let mut lines: Vec<String> = lines.into_iter().map(sanitize).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Reply { code, lines }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: the client may try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: the client must not retry as is.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// A 421 makes the server close the connection (RFC 5321 section 3.8).
    pub fn closes_connection(&self) -> bool {
        self.code == 421
    }

    /// The bytes on the wire: `code-text` for all lines but the last,
    /// `code text` for the last, each ending in CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let last = self.lines.len().saturating_sub(1);
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{separator}{line}\r\n", self.code).as_bytes());
        }
        out
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reply({:?})", String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

fn sanitize(text: String) -> String {
    if text.contains(['\r', '\n']) {
        text.replace(['\r', '\n'], " ")
    } else {
        text
    }
}

/// The replies the session itself produces. Policies build their own with
/// [`Reply::new`].
pub mod standard {
    use super::Reply;

    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0 OK")
    }
    pub fn reset() -> Reply {
        Reply::new(250, "2.0.0 OK, transaction reset")
    }
    pub fn sender_ok() -> Reply {
        Reply::new(250, "2.1.0 Sender OK")
    }
    pub fn recipient_ok() -> Reply {
        Reply::new(250, "2.1.5 Recipient OK")
    }
    pub fn start_data() -> Reply {
        Reply::new(354, "Start mail input; end with <CRLF>.<CRLF>")
    }
    pub fn accepted(id: &str) -> Reply {
        Reply::new(250, format!("2.0.0 Ok: queued as {id}"))
    }
    pub fn bye(hostname: &str) -> Reply {
        Reply::new(221, format!("2.0.0 {hostname} closing connection"))
    }
    pub fn ready_for_tls() -> Reply {
        Reply::new(220, "2.0.0 Ready to start TLS")
    }
    pub fn auth_succeeded() -> Reply {
        Reply::new(235, "2.7.0 Authentication successful")
    }
    pub fn vrfy() -> Reply {
        Reply::new(252, "2.5.0 Cannot VRFY user; try RCPT to attempt delivery")
    }
    pub fn help() -> Reply {
        Reply::new(214, "2.0.0 See RFC 5321; this server speaks ESMTP")
    }

    pub fn timeout(hostname: &str) -> Reply {
        Reply::new(
            421,
            format!("4.4.2 {hostname} Timeout waiting for the client, closing connection"),
        )
    }
    pub fn data_too_slow(hostname: &str) -> Reply {
        Reply::new(
            421,
            format!(
                "4.4.2 {hostname} Timeout: the message data arrived too slowly, closing connection"
            ),
        )
    }
    pub fn session_too_long(hostname: &str) -> Reply {
        Reply::new(
            421,
            format!("4.4.2 {hostname} Timeout: session time limit reached, closing connection"),
        )
    }
    pub fn too_many_from_address(hostname: &str) -> Reply {
        Reply::new(
            421,
            format!("4.7.0 {hostname} Too many connections from your address, try again later"),
        )
    }
    pub fn too_many_connections(hostname: &str) -> Reply {
        Reply::new(
            421,
            format!("4.3.2 {hostname} Too many connections, try again later"),
        )
    }
    pub fn shutting_down(hostname: &str) -> Reply {
        Reply::new(
            421,
            format!("4.3.2 {hostname} Server shutting down, try again later"),
        )
    }
    pub fn too_many_errors(hostname: &str) -> Reply {
        Reply::new(
            421,
            format!("4.7.0 {hostname} Too many errors, closing connection"),
        )
    }
    pub fn too_many_auth_failures(hostname: &str) -> Reply {
        Reply::new(
            421,
            format!("4.7.0 {hostname} Too many failed authentications, closing connection"),
        )
    }
    pub fn too_many_recipients() -> Reply {
        Reply::new(
            452,
            "4.5.3 Too many recipients; send the rest in another message",
        )
    }
    pub fn tls_not_available() -> Reply {
        Reply::new(454, "4.7.0 TLS not available")
    }
    pub fn auth_temporary_failure() -> Reply {
        Reply::new(
            454,
            "4.7.0 Temporary authentication failure; try again later",
        )
    }

    pub fn unrecognized_command() -> Reply {
        Reply::new(500, "5.5.1 Command unrecognized")
    }
    pub fn line_too_long() -> Reply {
        Reply::new(500, "5.5.6 Line too long")
    }
    pub fn syntax(detail: &str) -> Reply {
        Reply::new(501, format!("5.5.4 Syntax error; expected: {detail}"))
    }
    pub fn invalid_parameter(param: &str) -> Reply {
        Reply::new(501, format!("5.5.4 Invalid parameter {param}"))
    }
    pub fn unsupported_parameter(param: &str) -> Reply {
        Reply::new(555, format!("5.5.4 Unsupported parameter {param}"))
    }
    pub fn invalid_sender() -> Reply {
        Reply::new(501, "5.1.7 Invalid sender address")
    }
    pub fn invalid_recipient() -> Reply {
        Reply::new(501, "5.1.3 Invalid recipient address")
    }
    /// `detail` is a [`crate::message::mailbox::PathError`] sentence.
    pub fn bad_sender_syntax(detail: &str) -> Reply {
        Reply::new(501, format!("5.1.7 Bad sender address syntax: {detail}"))
    }
    pub fn bad_recipient_syntax(detail: &str) -> Reply {
        Reply::new(501, format!("5.1.3 Bad recipient address syntax: {detail}"))
    }
    pub fn null_recipient() -> Reply {
        bad_recipient_syntax("RCPT TO:<> names no recipient; write the recipient's address")
    }
    /// RFC 5321 section 4.5.1 asks every server to take `<postmaster>`;
    /// one with no address to route it to says so.
    pub fn no_postmaster() -> Reply {
        Reply::new(
            550,
            "5.1.1 <postmaster> has no address configured on this server; write to a \
             full address, or ask its administrator to set one (oxirelay: postmaster \
             in [[listener]])",
        )
    }
    pub fn bare_cr_in_command() -> Reply {
        Reply::new(
            500,
            "5.5.2 Bare CR in a command line is not allowed; end every command with \
             CRLF and nothing else",
        )
    }
    /// Sent before the connection is closed: after a line that ends in LF
    /// alone, where the client's next command starts is unknown.
    pub fn bare_lf_in_command() -> Reply {
        Reply::new(
            500,
            "5.5.2 Bare LF in a command line is not allowed; end every command with \
             CRLF. Closing the connection",
        )
    }
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, "5.0.0 Authentication cancelled")
    }
    pub fn not_base64() -> Reply {
        Reply::new(501, "5.5.2 Cannot decode the response as base64")
    }
    pub fn malformed_sasl(detail: &str) -> Reply {
        Reply::new(501, format!("5.5.2 {detail}"))
    }
    pub fn not_implemented(command: &str) -> Reply {
        Reply::new(502, format!("5.5.1 {command} is not implemented here"))
    }
    pub fn hello_first() -> Reply {
        Reply::new(503, "5.5.1 Send EHLO first")
    }
    pub fn mail_first() -> Reply {
        Reply::new(503, "5.5.1 Send MAIL FROM first")
    }
    pub fn rcpt_first() -> Reply {
        Reply::new(503, "5.5.1 Send RCPT TO first; no valid recipients yet")
    }
    pub fn nested_mail() -> Reply {
        Reply::new(
            503,
            "5.5.1 A transaction is already open; send RSET to start over",
        )
    }
    pub fn already_authenticated() -> Reply {
        Reply::new(503, "5.5.1 Already authenticated")
    }
    pub fn auth_in_transaction() -> Reply {
        Reply::new(503, "5.5.1 AUTH is not permitted during a mail transaction")
    }
    pub fn already_tls() -> Reply {
        Reply::new(503, "5.5.1 TLS is already active")
    }
    pub fn unknown_mechanism() -> Reply {
        Reply::new(
            504,
            "5.5.4 Unrecognized authentication type; use one listed in the EHLO reply",
        )
    }
    pub fn starttls_first() -> Reply {
        Reply::new(530, "5.7.0 Must issue a STARTTLS command first")
    }
    pub fn auth_required() -> Reply {
        Reply::new(530, "5.7.0 Authentication required")
    }
    pub fn auth_failed() -> Reply {
        Reply::new(535, "5.7.8 Authentication credentials invalid")
    }
    pub fn message_too_big() -> Reply {
        Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size")
    }
    pub fn bare_line_ending() -> Reply {
        Reply::new(
            550,
            "5.6.0 Message refused: bare CR or LF in the data (SMTP smuggling protection); \
             end every line with CRLF",
        )
    }
    pub fn nul_in_message(line: usize) -> Reply {
        Reply::new(
            550,
            format!(
                "5.6.0 Message refused: line {line} holds a NUL byte, which mail cannot \
                 carry (RFC 5322 section 3.5); remove it, or attach the content \
                 base64-encoded"
            ),
        )
    }
    pub fn long_line_in_message(line: usize) -> Reply {
        Reply::new(
            550,
            format!(
                "5.6.0 Message refused: line {line} is longer than 998 octets (RFC 5322 \
                 section 2.1.1); wrap it, or encode the part quoted-printable or base64"
            ),
        )
    }
    pub fn non_ascii_address() -> Reply {
        Reply::new(
            553,
            "5.6.7 Non-ASCII address requires the SMTPUTF8 parameter on MAIL FROM",
        )
    }
    pub fn chunking_unsupported() -> Reply {
        Reply::new(
            554,
            "5.5.1 BDAT is not supported (CHUNKING is not offered); use DATA. Closing",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_uses_dashes_then_a_space() {
        let reply = Reply::multiline(250, ["a".to_string(), "b".into(), "c".into()]);
        assert_eq!(reply.to_bytes(), b"250-a\r\n250-b\r\n250 c\r\n");
    }

    #[test]
    fn text_cannot_inject_a_second_reply() {
        let reply = Reply::new(550, "5.7.1 no\r\n250 2.0.0 yes");
        assert_eq!(reply.to_bytes(), b"550 5.7.1 no  250 2.0.0 yes\r\n");
    }
}
