//! One mail transaction without I/O: checking the envelope, building the
//! MAIL FROM and RCPT TO commands with the parameters the server offers, and
//! the report of what happened to each recipient.

use super::capabilities::Capabilities;
use super::data::{encode_data, has_eight_bit, header_section};
use super::error::{ClientError, Stage};
use super::reply::Reply;
use crate::message::mailbox::check_mailbox;

pub use crate::message::Envelope;

/// What happened to one recipient at RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    pub address: String,
    pub reply: Reply,
}

impl RecipientReport {
    pub fn accepted(&self) -> bool {
        self.reply.is_positive()
    }
}

/// What happened to the message content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    /// No recipient was accepted, so the content was not sent.
    NotSent,
    /// The DATA command itself was refused.
    Refused(Reply),
    /// The content was sent; this is the reply to the final dot.
    Final(Reply),
}

/// The outcome of one `send`: one report per recipient, in envelope order,
/// and what became of the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    pub recipients: Vec<RecipientReport>,
    pub data: DataOutcome,
}

/// Where one recipient stands once the transaction is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientOutcome<'a> {
    /// The server took responsibility for the message to this recipient.
    Accepted(&'a Reply),
    /// Refused at `stage` with `reply`; `reply.is_transient()` says whether
    /// to try again later.
    Refused { stage: Stage, reply: &'a Reply },
}

impl SendReport {
    /// The server accepted the message for at least one recipient.
    pub fn accepted(&self) -> bool {
        matches!(&self.data, DataOutcome::Final(reply) if reply.is_positive())
    }

    /// Each recipient with its final outcome, in envelope order.
    pub fn outcomes(&self) -> impl Iterator<Item = (&str, RecipientOutcome<'_>)> {
        self.recipients.iter().map(|recipient| {
            let outcome = if !recipient.accepted() {
                RecipientOutcome::Refused {
                    stage: Stage::Rcpt,
                    reply: &recipient.reply,
                }
            } else {
                match &self.data {
                    DataOutcome::Final(reply) if reply.is_positive() => {
                        RecipientOutcome::Accepted(reply)
                    }
                    DataOutcome::Final(reply) => RecipientOutcome::Refused {
                        stage: Stage::DataEnd,
                        reply,
                    },
                    DataOutcome::Refused(reply) => RecipientOutcome::Refused {
                        stage: Stage::Data,
                        reply,
                    },
                    // Not sent although this recipient was accepted: only a
                    // broken server gets here (see `Session::send`); the
                    // recipient's own reply is the best evidence there is.
                    DataOutcome::NotSent => RecipientOutcome::Refused {
                        stage: Stage::Data,
                        reply: &recipient.reply,
                    },
                }
            };
            (recipient.address.as_str(), outcome)
        })
    }
}

/// The commands and payload of one transaction, ready to write.
#[derive(Debug)]
pub(crate) struct Transaction {
    pub mail: String,
    pub rcpts: Vec<String>,
    /// Dot-stuffed content with the terminator.
    pub data: Vec<u8>,
}

impl Transaction {
    pub fn plan(
        envelope: &Envelope,
        message: &[u8],
        capabilities: &Capabilities,
        address: &str,
    ) -> Result<Self, ClientError> {
        if envelope.rcpt_to.is_empty() {
            return Err(ClientError::InvalidEnvelope {
                detail: "it has no recipients".into(),
            });
        }
        check_path(&envelope.mail_from, true)?;
        for recipient in &envelope.rcpt_to {
            check_path(recipient, false)?;
        }

        let size = message.len() as u64;
        if let Some(limit) = capabilities.size.filter(|&limit| limit > 0 && size > limit) {
            return Err(ClientError::MessageTooLarge {
                address: address.to_string(),
                size,
                limit,
            });
        }
        let utf8_envelope =
            !envelope.mail_from.is_ascii() || envelope.rcpt_to.iter().any(|r| !r.is_ascii());
        if utf8_envelope && !capabilities.smtp_utf8 {
            return Err(ClientError::SmtpUtf8NotOffered {
                address: address.to_string(),
            });
        }

        let mut mail = format!("MAIL FROM:<{}>", envelope.mail_from);
        if capabilities.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        // Without 8BITMIME on offer the message goes as it is: most servers
        // take it, and rewriting MIME is not a relay's business.
        if capabilities.eight_bit_mime && has_eight_bit(message) {
            mail.push_str(" BODY=8BITMIME");
        }
        // RFC 6531: needed for UTF-8 addresses, and for UTF-8 header fields
        // (RFC 6532), which a message with 8-bit headers has.
        if capabilities.smtp_utf8 && (utf8_envelope || has_eight_bit(header_section(message))) {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");

        let rcpts = envelope
            .rcpt_to
            .iter()
            .map(|recipient| format!("RCPT TO:<{recipient}>\r\n"))
            .collect();
        Ok(Transaction {
            mail,
            rcpts,
            data: encode_data(message),
        })
    }
}

/// Refuses what is not an RFC 5321 mailbox, before anything is written:
/// a path that could break or inject into the command line (CR, LF, `>`
/// outside quotes) never is one. Quoted local parts pass as they are, so
/// `"a b"@example.net` goes upstream as `RCPT TO:<"a b"@example.net>`.
fn check_path(path: &str, may_be_empty: bool) -> Result<(), ClientError> {
    if path.is_empty() && may_be_empty {
        return Ok(());
    }
    check_mailbox(path).map_err(|error| ClientError::InvalidEnvelope {
        detail: format!("the address {path:?} {error}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(from: &str, to: &[&str]) -> Envelope {
        Envelope {
            mail_from: from.into(),
            rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn reply(code: u16) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec!["x".into()],
        }
    }

    #[test]
    fn mail_parameters_follow_what_the_server_offers() {
        let all = Capabilities {
            size: Some(1000),
            eight_bit_mime: true,
            smtp_utf8: true,
            ..Capabilities::default()
        };
        let ascii = Transaction::plan(&envelope("a@x", &["b@y"]), b"S: x\r\n\r\nhi", &all, "h:25")
            .expect("valid");
        assert_eq!(ascii.mail, "MAIL FROM:<a@x> SIZE=10\r\n");
        assert_eq!(ascii.rcpts, ["RCPT TO:<b@y>\r\n"]);
        assert_eq!(ascii.data, b"S: x\r\n\r\nhi\r\n.\r\n");

        let body8 = Transaction::plan(
            &envelope("a@x", &["b@y"]),
            "S: x\r\n\r\ncaf\u{e9}".as_bytes(),
            &all,
            "h:25",
        )
        .expect("valid");
        assert_eq!(body8.mail, "MAIL FROM:<a@x> SIZE=13 BODY=8BITMIME\r\n");

        let header8 = Transaction::plan(
            &envelope("a@x", &["b@y"]),
            "S: caf\u{e9}\r\n\r\nx".as_bytes(),
            &all,
            "h:25",
        )
        .expect("valid");
        assert!(header8.mail.ends_with(" BODY=8BITMIME SMTPUTF8\r\n"));

        let utf8 =
            Transaction::plan(&envelope("", &["j\u{f6}rg@y"]), b"x", &all, "h:25").expect("valid");
        assert_eq!(utf8.mail, "MAIL FROM:<> SIZE=1 SMTPUTF8\r\n");

        let none = Capabilities::default();
        let plain = Transaction::plan(&envelope("a@x", &["b@y"]), "\u{e9}".as_bytes(), &none, "h")
            .expect("valid");
        assert_eq!(plain.mail, "MAIL FROM:<a@x>\r\n");
    }

    #[test]
    fn bad_envelopes_are_refused_before_anything_is_sent() {
        let caps = Capabilities {
            size: Some(10),
            ..Capabilities::default()
        };
        let cases = [
            (envelope("a@x", &[]), "no recipients"),
            (
                envelope("a@x", &["b@y>\r\nRCPT TO:<c@z"]),
                "control character",
            ),
            (envelope("a@x\r\nDATA", &["b@y"]), "control character"),
            (envelope("a@x", &[""]), "is empty"),
            (envelope("a b@x", &["b@y"]), "only inside double quotes"),
            (envelope("a@x", &["b@y>"]), "in its domain"),
            (envelope("a@x", &["postmaster"]), "no @domain"),
            (envelope("a@x", &["j\u{f6}rg@y"]), "SMTPUTF8"),
        ];
        for (envelope, expected) in cases {
            let error = Transaction::plan(&envelope, b"x", &caps, "h:25").expect_err("refused");
            assert!(error.to_string().contains(expected), "{error}");
            assert!(error.is_permanent());
        }
        let too_big = Transaction::plan(&envelope("a@x", &["b@y"]), &[b'x'; 11], &caps, "h:25")
            .expect_err("too large");
        assert_eq!(
            too_big.to_string(),
            "the message is 11 bytes but h:25 accepts at most 10"
        );
    }

    #[test]
    fn quoted_local_parts_go_upstream_exactly() {
        let plan = Transaction::plan(
            &envelope("\"scan desk\"@x", &["\"a b\"@example.net", "\"a\\\"q\"@y"]),
            b"x",
            &Capabilities::default(),
            "h:25",
        )
        .expect("valid");
        assert_eq!(plan.mail, "MAIL FROM:<\"scan desk\"@x>\r\n");
        assert_eq!(
            plan.rcpts,
            [
                "RCPT TO:<\"a b\"@example.net>\r\n",
                "RCPT TO:<\"a\\\"q\"@y>\r\n"
            ]
        );
    }

    #[test]
    fn outcomes_combine_rcpt_and_data_replies() {
        let report = SendReport {
            recipients: vec![
                RecipientReport {
                    address: "ok@y".into(),
                    reply: reply(250),
                },
                RecipientReport {
                    address: "no@y".into(),
                    reply: reply(550),
                },
            ],
            data: DataOutcome::Final(reply(250)),
        };
        assert!(report.accepted());
        let outcomes: Vec<_> = report.outcomes().collect();
        assert_eq!(
            outcomes[0],
            ("ok@y", RecipientOutcome::Accepted(&reply(250)))
        );
        assert_eq!(
            outcomes[1],
            (
                "no@y",
                RecipientOutcome::Refused {
                    stage: Stage::Rcpt,
                    reply: &reply(550)
                }
            )
        );

        let deferred = SendReport {
            data: DataOutcome::Final(reply(451)),
            ..report
        };
        assert!(!deferred.accepted());
        assert_eq!(
            deferred.outcomes().next(),
            Some((
                "ok@y",
                RecipientOutcome::Refused {
                    stage: Stage::DataEnd,
                    reply: &reply(451)
                }
            ))
        );
    }
}
