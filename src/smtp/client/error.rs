//! What can go wrong talking to an upstream server, in terms a delivery
//! engine can branch on (`is_transient` / `is_permanent`) and a person can
//! act on (each message says what happened and what to do next).

use super::reply::Reply;
use crate::smtp::sasl::{Mechanism, OAuthErrorStatus};
use std::fmt;
use std::time::Duration;

/// Where in the session something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    TlsHandshake,
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// Sending the message and the reply to the final dot.
    DataEnd,
    Rset,
    Noop,
    Quit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::TlsHandshake => "the TLS handshake",
            Stage::Greeting => "the greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::DataEnd => "the end of the message data",
            Stage::Rset => "RSET",
            Stage::Noop => "NOOP",
            Stage::Quit => "QUIT",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {address}: {reason}; check the host name, the port and that a firewall allows outgoing connections to it"
    )]
    Connect { address: String, reason: String },

    /// For a refused certificate, `reason` is the
    /// [`crate::tls::CertificateRejection`]'s account of what is wrong and
    /// what to do, written for this account's trust settings.
    #[error("TLS handshake with {host} failed: {reason}")]
    TlsHandshake {
        host: String,
        reason: String,
        /// The server's certificate was not accepted (untrusted, expired,
        /// wrong name): a configuration problem, not a passing one.
        certificate: bool,
    },

    #[error("{host:?} is not a valid name for TLS; use the server's DNS name or IP address")]
    InvalidServerName { host: String },

    #[error(
        "the EHLO name {name:?} is not one word of printable ASCII; set it to this host's DNS name"
    )]
    InvalidEhloName { name: String },

    #[error(
        "{address} does not offer STARTTLS; refusing to send credentials over an unencrypted connection (no credentials were sent). Use port 465 with tls = \"implicit\" if the server offers implicit TLS there"
    )]
    StartTlsNotOffered { address: String },

    #[error(
        "refusing to talk to {address} without TLS: plaintext is allowed only to a loopback host (127.0.0.0/8, ::1, localhost) marked as such; set tls = \"starttls\" or \"implicit\""
    )]
    PlaintextNotLoopback { address: String },

    #[error("{address} answered {stage} with \"{reply}\"")]
    Reply {
        address: String,
        stage: Stage,
        reply: Reply,
    },

    #[error("{address} refused the token for {user} with \"{reply}\"{}; refresh the token and try once more, then check the account's grant and permissions", status.as_ref().map(|s| format!(" (OAuth status {:?}{})", s.status, s.scope.as_ref().map(|sc| format!(", scope {sc:?}")).unwrap_or_default())).unwrap_or_default())]
    AuthRejected {
        address: String,
        user: String,
        reply: Reply,
        /// The RFC 7628 error challenge, when the server sent one (boxed to
        /// keep every `Result<_, ClientError>` small).
        status: Option<Box<OAuthErrorStatus>>,
    },

    /// A reply to AUTH that is not a verdict on the credential (a syntax or
    /// line-length error, `421`, `454`): the token was not judged.
    #[error("{}", auth_not_judged(address, reply))]
    AuthNotJudged { address: String, reply: Reply },

    #[error("{address} does not offer AUTH {mechanism} (it offers: {}); no credentials were sent. Set sasl to a mechanism it offers", if offered.is_empty() { "none".to_string() } else { offered.join(" ") })]
    MechanismNotOffered {
        address: String,
        mechanism: Mechanism,
        offered: Vec<String>,
    },

    #[error("the upstream client authenticates only with XOAUTH2 or OAUTHBEARER, not {0}")]
    UnsupportedMechanism(Mechanism),

    #[error(
        "{address} did not answer {stage} within {after:?}; the server or the network is slow or stalled, try again later"
    )]
    Timeout {
        address: String,
        stage: Stage,
        after: Duration,
    },

    #[error("{address} closed the connection unexpectedly during {stage}")]
    Closed { address: String, stage: Stage },

    #[error("reading from or writing to {address} failed during {stage}: {reason}")]
    Io {
        address: String,
        stage: Stage,
        reason: String,
    },

    #[error("{address} sent something that is not SMTP during {stage}: {detail}")]
    Protocol {
        address: String,
        stage: Stage,
        detail: String,
    },

    #[error("the envelope is not valid: {detail}")]
    InvalidEnvelope { detail: String },

    #[error("the message is {size} bytes but {address} accepts at most {limit}")]
    MessageTooLarge {
        address: String,
        size: u64,
        limit: u64,
    },

    #[error(
        "the envelope has non-ASCII addresses but {address} does not offer SMTPUTF8; send to ASCII addresses or through a server that supports SMTPUTF8"
    )]
    SmtpUtf8NotOffered { address: String },

    #[error(
        "the session with {address} is no longer usable after an earlier error; open a new one"
    )]
    Unusable { address: String },
}

impl ClientError {
    /// Worth retrying later on a new or the same connection.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Timeout { .. }
            | ClientError::Closed { .. }
            | ClientError::Io { .. }
            | ClientError::Protocol { .. }
            | ClientError::Unusable { .. } => true,
            ClientError::TlsHandshake { certificate, .. } => !certificate,
            ClientError::Reply { reply, .. }
            | ClientError::AuthRejected { reply, .. }
            | ClientError::AuthNotJudged { reply, .. } => reply.is_transient(),
            ClientError::InvalidServerName { .. }
            | ClientError::InvalidEhloName { .. }
            | ClientError::StartTlsNotOffered { .. }
            | ClientError::PlaintextNotLoopback { .. }
            | ClientError::MechanismNotOffered { .. }
            | ClientError::UnsupportedMechanism(_)
            | ClientError::InvalidEnvelope { .. }
            | ClientError::MessageTooLarge { .. }
            | ClientError::SmtpUtf8NotOffered { .. } => false,
        }
    }

    /// The connection had gone (closed or reset by the server, or its 421
    /// "closing") before any of the message was sent: the failure came at
    /// MAIL, RCPT or DATA, before the server's 354, so the server cannot
    /// have taken the message, and sending it on another connection cannot
    /// deliver it twice. What a pooled session reused without RSET meets
    /// when the server dropped it while idle.
    pub fn is_gone_before_content(&self) -> bool {
        let before_content =
            |stage: &Stage| matches!(stage, Stage::Mail | Stage::Rcpt | Stage::Data);
        match self {
            ClientError::Closed { stage, .. } | ClientError::Io { stage, .. } => {
                before_content(stage)
            }
            ClientError::Reply { stage, reply, .. } => reply.code == 421 && before_content(stage),
            _ => false,
        }
    }

    /// Retrying the same thing will fail the same way.
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// The server refused the credentials (contract 4: drop the cached
    /// token, refresh once, retry once on the same session).
    pub fn is_auth_rejected(&self) -> bool {
        matches!(self, ClientError::AuthRejected { .. })
    }

    /// The reply the server gave, for errors that carry one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ClientError::Reply { reply, .. }
            | ClientError::AuthRejected { reply, .. }
            | ClientError::AuthNotJudged { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

/// What a reply to AUTH that did not judge the token means, said once.
fn auth_not_judged(address: &str, reply: &Reply) -> String {
    let what = match reply.code {
        500..=504 | 555 => {
            "refused the AUTH command itself (its syntax or length), which says nothing about the token; the token is kept. If it persists, the server does not accept this mechanism's exchange: check sasl for the account"
        }
        400..=499 => {
            "is not accepting logins at the moment; the token was not refused and is kept. Delivery is retried later"
        }
        _ => "did not accept the login, without a verdict on the token; the token is kept",
    };
    format!("{address} answered AUTH with \"{reply}\": it {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    #[test]
    fn classification_follows_the_reply_code() {
        let at = |code| ClientError::Reply {
            address: "h:25".into(),
            stage: Stage::Mail,
            reply: reply(code, "x"),
        };
        assert!(at(451).is_transient());
        assert!(at(550).is_permanent());
        let starttls = ClientError::StartTlsNotOffered {
            address: "smtp.example.com:587".into(),
        };
        assert!(starttls.is_permanent());
        assert_eq!(
            starttls.to_string(),
            "smtp.example.com:587 does not offer STARTTLS; refusing to send credentials over an unencrypted connection (no credentials were sent). Use port 465 with tls = \"implicit\" if the server offers implicit TLS there"
        );
    }

    /// Only a failure before the server's 354 may be sent again on another
    /// connection: after it, the server may have taken the message.
    #[test]
    fn only_a_connection_gone_before_the_content_allows_a_resend() {
        let address = || "h:25".to_string();
        let closed = |stage| ClientError::Closed {
            address: address(),
            stage,
        };
        let io = |stage| ClientError::Io {
            address: address(),
            stage,
            reason: "connection reset by peer".into(),
        };
        let replied = |stage, code| ClientError::Reply {
            address: address(),
            stage,
            reply: reply(code, "x"),
        };
        for stage in [Stage::Mail, Stage::Rcpt, Stage::Data] {
            assert!(closed(stage).is_gone_before_content(), "{stage}");
            assert!(io(stage).is_gone_before_content(), "{stage}");
            assert!(replied(stage, 421).is_gone_before_content(), "{stage}");
            assert!(!replied(stage, 451).is_gone_before_content(), "{stage}");
        }
        for stage in [Stage::DataEnd, Stage::Rset, Stage::Auth, Stage::Connect] {
            assert!(!closed(stage).is_gone_before_content(), "{stage}");
            assert!(!io(stage).is_gone_before_content(), "{stage}");
            assert!(!replied(stage, 421).is_gone_before_content(), "{stage}");
        }
        let timeout = ClientError::Timeout {
            address: address(),
            stage: Stage::Mail,
            after: std::time::Duration::from_secs(1),
        };
        assert!(
            !timeout.is_gone_before_content(),
            "a slow server, not a gone one"
        );
    }

    #[test]
    fn auth_rejection_names_the_oauth_status() {
        let error = ClientError::AuthRejected {
            address: "smtp.example.com:587".into(),
            user: "a@example.com".into(),
            reply: reply(535, "5.7.8 Username and Password not accepted"),
            status: Some(Box::new(OAuthErrorStatus {
                status: "invalid_token".into(),
                schemes: Some("bearer".into()),
                scope: Some("smtp".into()),
                openid_configuration: None,
            })),
        };
        let text = error.to_string();
        assert!(text.contains("\"invalid_token\""), "{text}");
        assert!(text.contains("scope \"smtp\""), "{text}");
        assert!(error.is_auth_rejected() && error.is_permanent());
    }

    #[test]
    fn a_line_length_reply_to_auth_says_the_token_was_not_judged() {
        let error = ClientError::AuthNotJudged {
            address: "smtp.gmail.com:587".into(),
            reply: reply(555, "5.5.2 Syntax error, command line too long"),
        };
        assert!(!error.is_auth_rejected() && error.is_permanent());
        assert_eq!(
            error.to_string(),
            "smtp.gmail.com:587 answered AUTH with \"555 5.5.2 Syntax error, command line too long\": it refused the AUTH command itself (its syntax or length), which says nothing about the token; the token is kept. If it persists, the server does not accept this mechanism's exchange: check sasl for the account"
        );
        let busy = ClientError::AuthNotJudged {
            address: "smtp.gmail.com:587".into(),
            reply: reply(454, "4.7.0 Too many login attempts, please try again later"),
        };
        assert!(busy.is_transient());
        assert!(busy.to_string().contains("not accepting logins"));
    }
}
