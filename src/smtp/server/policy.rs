//! What a listener decides and the session does not: who may connect, which
//! credentials are valid, who may send to whom, and where an accepted
//! message goes. The sandbox ("OAuth required, store to a Maildir") and the
//! submission listener ("local users or trusted issuers, store to the
//! queue") are two implementations of [`SessionPolicy`].

use super::reply::Reply;
use crate::secret::{Fingerprint, Secret};
use crate::smtp::sasl::{Mechanism, OAuthErrorStatus};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, so that [`SessionPolicy`] can be used as `Arc<dyn ...>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a listener treats one connection, decided when it connects.
#[derive(Debug, Clone)]
pub struct SessionRules {
    /// MAIL is refused with 530 until AUTH succeeds.
    pub auth_required: bool,
    /// AUTH is offered and accepted without TLS. Only for listeners
    /// restricted to an IP allow-list (DESIGN.md contract 5).
    pub plaintext_auth_allowed: bool,
    /// The mechanisms listed in EHLO, in that order.
    pub mechanisms: Vec<Mechanism>,
    /// Whether STARTTLS is offered on a plaintext connection (when the
    /// listener has TLS). The sandbox turns it off to test clients that
    /// must then refuse to authenticate.
    pub offer_starttls: bool,
    /// The SIZE advertised and enforced, in bytes.
    pub max_message_size: usize,
    /// Recipients per message; beyond it RCPT gets 452 4.5.3.
    pub max_recipients: usize,
    /// How long a command line may be.
    pub line_limit: LineLimit,
    /// Where `RCPT TO:<postmaster>` goes (RFC 5321 section 4.5.1: every
    /// server must take it, without a domain, in any case). `None` refuses
    /// it with a 550 that says no address is configured.
    pub postmaster: Option<String>,
}

/// The longest lines a session accepts, CRLF included, and the reply to a
/// longer one (providers word it differently: Gmail `555 5.5.2 Syntax
/// error, command line too long`, Dovecot `500 5.5.2 Line too long`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineLimit {
    /// Any command but AUTH.
    pub command: usize,
    /// An AUTH command with its initial response. RFC 4954 section 4 holds
    /// it to the command limit; a lenient server allows more.
    pub auth_command: usize,
    /// A SASL response (the line after a `334`): RFC 4954 allows 12,288
    /// octets, [`super::session::MAX_AUTH_LINE`]; some servers allow less.
    pub sasl_response: usize,
    pub reply: Reply,
}

impl Default for LineLimit {
    /// What the submission listener accepts: RFC 5321's 512 octets with room
    /// for the ESMTP parameters of the extensions it offers, and AUTH lines
    /// as long as a SASL response may be (RFC 4954 section 4: 12,288), since
    /// many clients send long tokens inline and the listener should take them.
    fn default() -> Self {
        LineLimit {
            command: 1024,
            auth_command: super::session::MAX_AUTH_LINE,
            sasl_response: super::session::MAX_AUTH_LINE,
            reply: super::reply::standard::line_too_long(),
        }
    }
}

impl Default for SessionRules {
    fn default() -> Self {
        SessionRules {
            auth_required: true,
            plaintext_auth_allowed: false,
            mechanisms: vec![Mechanism::OAuthBearer, Mechanism::XOAuth2],
            offer_starttls: true,
            // 35 MiB: what Microsoft 365 and Gmail accept after base64.
            max_message_size: 35 * 1024 * 1024,
            // RFC 5321 section 4.5.3.1.8: at least 100 must be accepted.
            max_recipients: 100,
            line_limit: LineLimit::default(),
            postmaster: None,
        }
    }
}

/// Whether the connection is encrypted: the fact every AUTH rule hangs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Plaintext,
    Tls,
}

/// Who the policy says an authenticated client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The SASL user (mailbox) the client authenticated as.
    pub user: String,
    /// The token's subject for bearer tokens, if the policy knows it.
    pub subject: Option<String>,
}

/// A successful AUTH, as the session remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub identity: Identity,
    pub mechanism: Mechanism,
    /// Fingerprint of the token or password used: for logs and the inbox
    /// sidecar, never the value.
    pub credential: Fingerprint,
}

/// What the session knows about the client, passed to every decision.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub peer: SocketAddr,
    pub channel: Channel,
    /// The EHLO/HELO argument, once given.
    pub hello: Option<String>,
    pub auth: Option<Authenticated>,
}

/// The envelope of one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path; empty for a null sender (`MAIL FROM:<>`).
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// `BODY=8BITMIME` was given.
    pub eight_bit: bool,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// The `SIZE=` the client declared, if any.
    pub declared_size: Option<usize>,
}

/// The credentials of one AUTH exchange, decoded.
#[derive(Debug, Clone)]
pub enum Credentials {
    Bearer {
        mechanism: Mechanism,
        user: String,
        token: Secret,
    },
    Password {
        mechanism: Mechanism,
        user: String,
        password: Secret,
    },
}

impl Credentials {
    pub fn mechanism(&self) -> Mechanism {
        match self {
            Credentials::Bearer { mechanism, .. } | Credentials::Password { mechanism, .. } => {
                *mechanism
            }
        }
    }

    pub fn user(&self) -> &str {
        match self {
            Credentials::Bearer { user, .. } | Credentials::Password { user, .. } => user,
        }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        match self {
            Credentials::Bearer { token, .. } => token.fingerprint(),
            Credentials::Password { password, .. } => password.fingerprint(),
        }
    }
}

/// Why credentials were not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRefusal {
    /// The bearer token is not acceptable. The session sends the RFC 7628
    /// error challenge with this status, then 535 5.7.8.
    Token(OAuthErrorStatus),
    /// Wrong user or password: 535 5.7.8 (for OAuth mechanisms, after an
    /// `invalid_token` error challenge, as RFC 7628 requires).
    Credentials,
    /// They could not be checked now (validator unreachable): 454 4.7.0,
    /// and the client may try again later.
    Temporary,
    /// Refused with exactly this exchange, as a provider answers: the RFC
    /// 7628 error challenge first when given (bearer mechanisms only),
    /// then `reply`.
    Reply {
        /// Boxed: a refusal travels in every `Result` of the AUTH path.
        challenge: Option<Box<OAuthErrorStatus>>,
        reply: Reply,
    },
}

/// A refusal of a command by the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Send this reply (a 421 also closes the connection).
    Reply(Reply),
    /// Close the connection without replying (fault injection: the
    /// client's view of a server that crashed at this point).
    Disconnect,
}

impl From<Reply> for Refusal {
    fn from(reply: Reply) -> Self {
        Refusal::Reply(reply)
    }
}

/// How to go on after DATA was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlan {
    /// Reply 354 and receive the message.
    Receive,
    /// Fault injection: reply 354, then close the connection as soon as the
    /// message starts arriving, without reading it.
    DisconnectMidMessage,
}

/// What happened in a session, for statistics and audit. Sent to
/// [`SessionPolicy::observe`] as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Connected,
    Hello {
        extended: bool,
        channel: Channel,
    },
    TlsStarted,
    /// An AUTH command, whatever came of it. `channel` says whether it came
    /// before TLS (a well-behaved client never sends one then).
    AuthAttempt {
        mechanism: Option<Mechanism>,
        channel: Channel,
    },
    AuthSucceeded {
        mechanism: Mechanism,
    },
    AuthFailed {
        mechanism: Mechanism,
    },
    MessageAccepted {
        size: usize,
    },
    MessageRefused {
        reply_code: u16,
    },
    Closed,
}

/// The decisions of one listener. Object-safe; every method but
/// [`SessionPolicy::accept_message`] and the credential checks has a
/// permissive default.
pub trait SessionPolicy: Send + Sync + 'static {
    /// Called when a client connects, before the greeting. `Err` sends that
    /// reply (normally 421 or 554) and closes.
    fn on_connect(&self, peer: SocketAddr) -> BoxFuture<'_, Result<SessionRules, Refusal>>;

    /// Checks a bearer token (XOAUTH2, OAUTHBEARER) for `user`.
    fn verify_bearer<'a>(
        &'a self,
        context: &'a SessionContext,
        mechanism: Mechanism,
        user: &'a str,
        token: &'a Secret,
    ) -> BoxFuture<'a, Result<Identity, AuthRefusal>>;

    /// Checks a password (PLAIN, LOGIN). By default there are no passwords.
    fn verify_password<'a>(
        &'a self,
        _context: &'a SessionContext,
        _user: &'a str,
        _password: &'a Secret,
    ) -> BoxFuture<'a, Result<Identity, AuthRefusal>> {
        Box::pin(async { Err(AuthRefusal::Credentials) })
    }

    /// Called after EHLO/HELO is accepted by the session, before it replies.
    fn check_hello<'a>(
        &'a self,
        _context: &'a SessionContext,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async { Ok(()) })
    }

    /// May this client send as `mail_from`?
    fn check_sender<'a>(
        &'a self,
        _context: &'a SessionContext,
        _mail_from: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async { Ok(()) })
    }

    /// May this client send to `rcpt_to`?
    fn check_recipient<'a>(
        &'a self,
        _context: &'a SessionContext,
        _envelope: &'a Envelope,
        _rcpt_to: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async { Ok(()) })
    }

    /// Called on DATA, before 354.
    fn check_data<'a>(
        &'a self,
        _context: &'a SessionContext,
        _envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<DataPlan, Refusal>> {
        Box::pin(async { Ok(DataPlan::Receive) })
    }

    /// Takes responsibility for a message. Returns its id once it is stored
    /// durably: the session replies 250 only then (DESIGN.md contract 1).
    fn accept_message<'a>(
        &'a self,
        context: &'a SessionContext,
        envelope: &'a Envelope,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<String, Refusal>>;

    /// Told of each [`SessionEvent`]. Must not block.
    fn observe(&self, _event: &SessionEvent) {}

    /// The session from `peer` has ended (whatever ended it), for policies
    /// that keep per-session state such as concurrent logins per mailbox.
    fn on_disconnect(&self, _peer: SocketAddr) {}

    /// A delay before each reply (fault injection: a slow server).
    fn reply_delay(&self) -> Option<Duration> {
        None
    }
}
