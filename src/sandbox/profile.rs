//! Provider profiles: what the sandbox reproduces of a real provider, as
//! data (STYLE.md section 7: a provider quirk is a row, not a branch). The
//! SMTP server and the authorization server each read their part of the
//! profile; nothing else in the sandbox asks which provider it plays.
//!
//! - `strict`: the RFCs at their tightest. 512-octet command lines (RFC
//!   5321 section 4.5.3.1.4), long RS256 JWTs, every RFC 7628 exchange. The
//!   default: the sandbox must be at least as strict as any real provider.
//! - `microsoft`: Exchange Online and Entra ID: Entra-size JWTs with `scp`
//!   or `roles`, Exchange's replies and limits.
//! - `google`: Gmail and Google's authorization server: opaque `ya29.`
//!   tokens that only introspection can check, Gmail's replies and limits.

use crate::smtp::sasl::Mechanism;
use crate::smtp::server::session::MAX_AUTH_LINE;
use crate::smtp::server::{LineLimit, Reply};
use std::fmt;
use std::time::Duration;

/// Which provider the sandbox plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProfileName {
    #[default]
    Strict,
    Microsoft,
    Google,
}

impl ProfileName {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileName::Strict => "strict",
            ProfileName::Microsoft => "microsoft",
            ProfileName::Google => "google",
        }
    }

    /// The shape of the access tokens the authorization server issues.
    pub fn token_shape(self) -> TokenShape {
        match self {
            // Common identity servers' RS256 JWTs are about 800 characters;
            // 2,000 keeps every AUTH line with an initial response well
            // past 512 octets.
            ProfileName::Strict => TokenShape::Jwt { min_len: 2000 },
            ProfileName::Microsoft => TokenShape::Entra,
            ProfileName::Google => TokenShape::Opaque,
        }
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an access token looks like on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenShape {
    /// The sandbox's own RS256 JWT (RFC 9068 claims), padded to at least
    /// `min_len` characters.
    Jwt { min_len: usize },
    /// An Entra ID access token: RS256 JWT of at least 1,500 characters
    /// with `aud`, `scp` (delegated) or `roles` (app-only), `upn`/`email`,
    /// `tid`, `oid` and the other claims Entra puts in.
    Entra,
    /// Google's opaque `ya29.` token: no structure, checked only by
    /// introspection.
    Opaque,
}

impl ProfileName {
    /// What the SMTP server does for this profile.
    pub fn smtp(self) -> SmtpProfile {
        match self {
            ProfileName::Strict => SmtpProfile {
                line_limit: LineLimit {
                    command: 512,
                    auth_command: 512,
                    sasl_response: MAX_AUTH_LINE,
                    reply: Reply::new(
                        500,
                        "5.5.2 Line too long (a command line is at most 512 octets, RFC 5321 section 4.5.3.1.4)",
                    ),
                },
                mechanisms: vec![Mechanism::OAuthBearer, Mechanism::XOAuth2],
                token_refused: TokenRefusal {
                    challenge: ChallengeStyle::Rfc7628,
                    reply: Reply::new(535, "5.7.8 Authentication credentials invalid"),
                },
                password_refused: None,
                near_expiry: None,
                auth_disabled: Reply::new(535, "5.7.8 SMTP AUTH is disabled for this mailbox"),
                sessions_per_mailbox: None,
                message_limits: Vec::new(),
                failed_logins: None,
                send_as_denied: None,
            },
            ProfileName::Microsoft => SmtpProfile {
                // Exchange Online takes long AUTH lines; the client must
                // still keep to RFC 4954, which the strict profile checks.
                line_limit: LineLimit {
                    command: 2048,
                    auth_command: MAX_AUTH_LINE,
                    sasl_response: MAX_AUTH_LINE,
                    reply: Reply::new(500, "5.3.3 Unrecognized command 'unknown'"),
                },
                mechanisms: vec![Mechanism::Login, Mechanism::XOAuth2],
                // Exchange sends no RFC 7628 error challenge.
                token_refused: TokenRefusal {
                    challenge: ChallengeStyle::None,
                    reply: Reply::new(
                        535,
                        "5.7.3 Authentication unsuccessful [SN4PR0601CA0001.namprd06.prod.outlook.com]",
                    ),
                },
                password_refused: Some(Reply::new(
                    535,
                    "5.7.139 Authentication unsuccessful, basic authentication is disabled. [SN4PR0601CA0001.namprd06.prod.outlook.com]",
                )),
                // Seen on Exchange's high-volume endpoint; the relay's 15
                // minute refresh skew for Microsoft stays clear of it.
                near_expiry: Some(NearExpiry {
                    within: Duration::from_secs(10 * 60),
                    reply: Reply::new(
                        501,
                        "5.5.127 Invalid XOAUTH2 auth data - Token will expire soon",
                    ),
                }),
                auth_disabled: Reply::new(
                    535,
                    "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information. [SN4PR0601CA0001.namprd06.prod.outlook.com]",
                ),
                sessions_per_mailbox: Some(SessionCap {
                    sessions: 3,
                    reply: Reply::new(
                        432,
                        "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=SN4PR0601MB0001]",
                    ),
                }),
                message_limits: vec![Limit {
                    count: 30,
                    window: Duration::from_secs(60),
                    reply: Reply::new(
                        554,
                        "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.",
                    ),
                }],
                failed_logins: None,
                send_as_denied: Some(Reply::new(
                    550,
                    "5.7.60 SMTP; Client does not have permissions to send as this sender [SN4PR0601MB0001]",
                )),
            },
            ProfileName::Google => SmtpProfile {
                // Gmail refuses an AUTH line with a ~1 KB token.
                line_limit: LineLimit {
                    command: 1024,
                    auth_command: 1024,
                    sasl_response: MAX_AUTH_LINE,
                    reply: Reply::new(555, "5.5.2 Syntax error, command line too long. - gsmtp"),
                },
                mechanisms: vec![
                    Mechanism::Login,
                    Mechanism::Plain,
                    Mechanism::XOAuth2,
                    Mechanism::OAuthBearer,
                ],
                token_refused: TokenRefusal {
                    challenge: ChallengeStyle::Google,
                    reply: Reply::multiline(
                        535,
                        [
                            "5.7.8 Username and Password not accepted. For more information, go to".to_string(),
                            "5.7.8  https://support.google.com/mail/?p=BadCredentials - gsmtp".to_string(),
                        ],
                    ),
                },
                password_refused: Some(Reply::multiline(
                    534,
                    [
                        "5.7.9 Application-specific password required. For more information, go to".to_string(),
                        "5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor - gsmtp".to_string(),
                    ],
                )),
                near_expiry: None,
                auth_disabled: Reply::multiline(
                    535,
                    [
                        "5.7.8 Username and Password not accepted. For more information, go to".to_string(),
                        "5.7.8  https://support.google.com/mail/?p=BadCredentials - gsmtp".to_string(),
                    ],
                ),
                sessions_per_mailbox: Some(SessionCap {
                    sessions: 15,
                    reply: Reply::new(421, "4.7.0 Try again later, closing connection. - gsmtp"),
                }),
                // The paid Workspace limit; trial and consumer accounts have lower ones.
                message_limits: vec![Limit {
                    count: 2000,
                    window: Duration::from_secs(24 * 3600),
                    reply: Reply::multiline(
                        550,
                        [
                            "5.4.5 Daily user sending limit exceeded. For more information on Gmail".to_string(),
                            "5.4.5 sending limits go to https://support.google.com/a/answer/166852 - gsmtp".to_string(),
                        ],
                    ),
                }],
                failed_logins: Some(Limit {
                    count: 10,
                    window: Duration::from_secs(10 * 60),
                    reply: Reply::new(
                        454,
                        "4.7.0 Too many login attempts, please try again later. - gsmtp",
                    ),
                }),
                send_as_denied: None,
            },
        }
    }
}

/// What the sandbox SMTP server does, for one profile. Tests may change
/// any row (a smaller daily limit, say) through `SandboxOptions::smtp`.
#[derive(Debug, Clone)]
pub struct SmtpProfile {
    pub line_limit: LineLimit,
    /// The mechanisms listed in EHLO, in order. Password mechanisms are
    /// offered only to be refused with `password_refused`, as providers do.
    pub mechanisms: Vec<Mechanism>,
    /// How a bad bearer token is refused.
    pub token_refused: TokenRefusal,
    /// The answer to AUTH PLAIN or LOGIN with a password.
    pub password_refused: Option<Reply>,
    /// A token this close to its expiry is refused.
    pub near_expiry: Option<NearExpiry>,
    /// The refusal of any login to a mailbox whose SMTP AUTH an
    /// administrator switched off (see `Mailboxes::disable_smtp_auth`).
    pub auth_disabled: Reply,
    /// Concurrent authenticated sessions per mailbox.
    pub sessions_per_mailbox: Option<SessionCap>,
    /// Messages per mailbox in a sliding window, counted at the end of DATA.
    pub message_limits: Vec<Limit>,
    /// Failed logins per mailbox in a sliding window; beyond it AUTH is
    /// refused without looking at the token.
    pub failed_logins: Option<Limit>,
    /// When set, MAIL FROM must be the mailbox or an address it was granted
    /// Send As on (see `Mailboxes::grant_send_as`); otherwise the message
    /// is refused at the end of DATA with this reply.
    pub send_as_denied: Option<Reply>,
}

/// The refusal of a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRefusal {
    pub challenge: ChallengeStyle,
    /// The final reply.
    pub reply: Reply,
}

/// Whether and how the server reports a refused token in an RFC 7628
/// error challenge before its final reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeStyle {
    /// No challenge: the final reply at once (Exchange).
    None,
    /// RFC 7628's status (`invalid_token`, `insufficient_scope`) and scope.
    Rfc7628,
    /// Google's: an HTTP status code as `status` and its scope
    /// `https://mail.google.com/`.
    Google,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearExpiry {
    pub within: Duration,
    pub reply: Reply,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCap {
    pub sessions: usize,
    /// The answer to MAIL FROM in a session beyond the cap.
    pub reply: Reply,
}

/// At most `count` in any `window`; the next one gets `reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub count: u32,
    pub window: Duration,
    pub reply: Reply,
}
