//! The sandbox's OAuth2-enforcing SMTP server: the shared
//! [`crate::smtp::server`] session with a policy that behaves like Microsoft
//! 365 or Gmail — TLS first, AUTH only with a verified bearer token that
//! carries the required scope and belongs to the SASL user, failures as RFC
//! 7628 error challenges — and stores what it accepts in an [`Inbox`].
//!
//! What it answers, and when, is the provider profile's
//! ([`super::profile::SmtpProfile`]): line limits, the wording of each
//! refusal, tokens close to expiry, sessions per mailbox, sending quotas,
//! failed-login lockouts, Send As. Administrators' switches (SMTP AUTH off
//! for a mailbox, Send As grants) are set at run time on [`Mailboxes`].
//!
//! It counts what it sees ([`SmtpStats`]) and can misbehave on purpose
//! ([`SmtpFaults`]) so the relay's client can be tested against both.

mod faults;
mod mailboxes;
mod stats;

pub use faults::{Fault, FaultStage, FaultTimes, SmtpFaults};
pub use mailboxes::Mailboxes;
pub use stats::SmtpStats;

use super::certs::{CertsError, SandboxCa};
use super::inbox::{Delivery, Inbox, InboxError};
use super::profile::{ChallengeStyle, ProfileName, SmtpProfile};
use crate::secret::Secret;
use crate::smtp::sasl::{Mechanism, OAuthErrorStatus};
use crate::smtp::server::{
    AuthRefusal, BoxFuture, Channel, DataPlan, Envelope, Identity, Refusal, Reply, ServeError,
    ServerOptions, SessionContext, SessionEvent, SessionLimits, SessionPolicy, SessionRules,
    ShutdownTrigger, TlsMode, serve, shutdown_channel,
};
use faults::StageFault;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a valid bearer token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBearer {
    /// Whose token it is: must equal the SASL user.
    pub subject: String,
    pub scopes: Vec<String>,
    /// When the token expires, if the verifier knows.
    pub expires_at: Option<SystemTime>,
}

/// Checks bearer tokens for the sandbox SMTP server. `oauth::validate`
/// implements it with the sandbox authorization server's JWKS.
pub trait BearerVerifier: Send + Sync + 'static {
    /// `Err` carries the RFC 7628 status sent to the client (normally
    /// `invalid_token`).
    fn verify<'a>(
        &'a self,
        token: &'a Secret,
    ) -> BoxFuture<'a, Result<VerifiedBearer, OAuthErrorStatus>>;
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxSmtpError {
    #[error(transparent)]
    Inbox(#[from] InboxError),
    #[error(transparent)]
    Certs(#[from] CertsError),
    #[error("the sandbox SMTP listener has no local address: {0}")]
    Listener(std::io::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("the sandbox SMTP server task failed: {0}")]
    Task(String),
    #[error("waited {waited:?} for the sandbox SMTP server to reach a state; it is at {stats:?}")]
    Timeout { waited: Duration, stats: SmtpStats },
}

pub struct SandboxSmtpConfig {
    pub verifier: Arc<dyn BearerVerifier>,
    /// The Maildir where accepted messages go (created if missing).
    pub inbox_dir: PathBuf,
    /// The scope a token must carry (Microsoft's is `SMTP.Send`).
    pub required_scope: String,
    pub ca: Arc<SandboxCa>,
    /// Where the CA certificate is written for clients to trust; by
    /// default `sandbox-ca.pem` inside the inbox directory.
    pub ca_file: Option<PathBuf>,
    pub tls_mode: TlsMode,
    pub hostname: String,
    /// How long a command may take to arrive complete after a reply.
    pub read_timeout: Duration,
    pub max_sessions: usize,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// What the server answers, and when.
    pub profile: SmtpProfile,
    /// Benchmarks only: count accepted messages and store none
    /// ([`Inbox::count_only`]).
    pub count_only: bool,
}

impl SandboxSmtpConfig {
    /// The defaults: STARTTLS, scope `smtp.send`, Microsoft-like limits.
    pub fn new(verifier: Arc<dyn BearerVerifier>, inbox_dir: PathBuf, ca: Arc<SandboxCa>) -> Self {
        let rules = SessionRules::default();
        SandboxSmtpConfig {
            verifier,
            inbox_dir,
            required_scope: "smtp.send".into(),
            ca,
            ca_file: None,
            tls_mode: TlsMode::Starttls,
            hostname: "localhost".into(),
            // Long enough for a debugger pause, short enough that a stuck
            // test client does not hold a session for the whole run.
            read_timeout: Duration::from_secs(60),
            max_sessions: 32,
            max_message_size: rules.max_message_size,
            max_recipients: rules.max_recipients,
            profile: ProfileName::default().smtp(),
            count_only: false,
        }
    }
}

/// Entry point; see [`SandboxSmtp::start`].
pub struct SandboxSmtp;

impl SandboxSmtp {
    /// Starts serving on `listener` (bind it to `127.0.0.1:0` in tests).
    pub async fn start(
        listener: TcpListener,
        config: SandboxSmtpConfig,
    ) -> Result<RunningSandboxSmtp, SandboxSmtpError> {
        let addr = listener.local_addr().map_err(SandboxSmtpError::Listener)?;
        let inbox = if config.count_only {
            Inbox::count_only(&config.inbox_dir)?
        } else {
            Inbox::open(&config.inbox_dir)?
        };
        let ca_file = config
            .ca_file
            .clone()
            .unwrap_or_else(|| config.inbox_dir.join("sandbox-ca.pem"));
        config.ca.write_ca(&ca_file)?;
        let tls = config.ca.server_config()?;
        let (stats, _) = watch::channel(SmtpStats::default());
        let faults = SmtpFaults::default();
        let mailboxes = Mailboxes::default();
        let policy = Arc::new(SandboxPolicy {
            verifier: config.verifier,
            required_scope: config.required_scope,
            inbox: inbox.clone(),
            stats: stats.clone(),
            faults: faults.clone(),
            mailboxes: mailboxes.clone(),
            rules: SessionRules {
                auth_required: true,
                plaintext_auth_allowed: false,
                mechanisms: config.profile.mechanisms.clone(),
                offer_starttls: true,
                max_message_size: config.max_message_size,
                max_recipients: config.max_recipients,
                line_limit: config.profile.line_limit.clone(),
                // Like a provider's submission port: no local postmaster.
                postmaster: None,
            },
            profile: config.profile,
        });
        let options = ServerOptions {
            tls_mode: config.tls_mode,
            max_sessions: config.max_sessions,
            // Its clients (the relay's delivery pool, tests, benchmarks)
            // all connect from loopback: no cap below the listener's.
            max_sessions_per_address: config.max_sessions,
            hostname: config.hostname,
            limits: SessionLimits {
                command_timeout: config.read_timeout,
                ..SessionLimits::default()
            },
            ..ServerOptions::default()
        };
        let (trigger, signal) = shutdown_channel();
        let task = tokio::spawn(serve(listener, Some(tls), policy, options, signal));
        tracing::info!(%addr, inbox = %inbox.dir().display(), "sandbox SMTP server started");
        Ok(RunningSandboxSmtp {
            addr,
            ca_file,
            inbox,
            stats,
            faults,
            mailboxes,
            trigger,
            task,
        })
    }
}

/// A running sandbox SMTP server. Dropping it stops the server.
pub struct RunningSandboxSmtp {
    addr: SocketAddr,
    ca_file: PathBuf,
    inbox: Inbox,
    stats: watch::Sender<SmtpStats>,
    faults: SmtpFaults,
    mailboxes: Mailboxes,
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), ServeError>>,
}

impl RunningSandboxSmtp {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate clients must trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    pub fn stats(&self) -> SmtpStats {
        self.stats.borrow().clone()
    }

    /// Waits (woken by each event, no polling) until `condition` holds.
    pub async fn wait_until(
        &self,
        condition: impl Fn(&SmtpStats) -> bool,
        timeout: Duration,
    ) -> Result<SmtpStats, SandboxSmtpError> {
        let mut receiver = self.stats.subscribe();
        match tokio::time::timeout(timeout, receiver.wait_for(|stats| condition(stats))).await {
            Ok(Ok(stats)) => Ok(stats.clone()),
            Ok(Err(_)) | Err(_) => Err(SandboxSmtpError::Timeout {
                waited: timeout,
                stats: self.stats(),
            }),
        }
    }

    pub fn faults(&self) -> &SmtpFaults {
        &self.faults
    }

    /// The administrators' switches and the per-mailbox counters.
    pub fn mailboxes(&self) -> &Mailboxes {
        &self.mailboxes
    }

    /// Stops accepting, ends the sessions (421 at their next read) and
    /// waits for them.
    pub async fn shutdown(self) -> Result<(), SandboxSmtpError> {
        self.trigger.trigger();
        self.task
            .await
            .map_err(|error| SandboxSmtpError::Task(error.to_string()))??;
        Ok(())
    }
}

struct SandboxPolicy {
    verifier: Arc<dyn BearerVerifier>,
    required_scope: String,
    inbox: Inbox,
    stats: watch::Sender<SmtpStats>,
    faults: SmtpFaults,
    mailboxes: Mailboxes,
    rules: SessionRules,
    profile: SmtpProfile,
}

impl SandboxPolicy {
    fn stage(&self, stage: FaultStage) -> Result<(), Refusal> {
        match self.faults.at_stage(stage) {
            None => Ok(()),
            Some(StageFault::Reply(reply)) => Err(Refusal::Reply(reply)),
            Some(StageFault::Disconnect) => Err(Refusal::Disconnect),
        }
    }

    async fn check_token(
        &self,
        context: &SessionContext,
        user: &str,
        token: &Secret,
    ) -> Result<Identity, AuthRefusal> {
        // The session never lets AUTH through before TLS here; checking
        // again costs nothing and keeps the rule true if that changes.
        if context.channel != Channel::Tls {
            return Err(AuthRefusal::Token(status("invalid_request", None)));
        }
        self.admit_login(user)?;
        if let Some(reply) = self.faults.at_auth() {
            tracing::info!(%user, token = %token.fingerprint(), "fault: refusing the token at AUTH");
            return Err(self.refuse_token_with(user, status("invalid_token", None), reply));
        }
        let verified = match self.verifier.verify(token).await {
            Ok(verified) => verified,
            Err(status) => return Err(self.refuse_token(user, status)),
        };
        if !verified.scopes.contains(&self.required_scope) {
            tracing::info!(%user, token = %token.fingerprint(), "token lacks the required scope");
            let status = status("insufficient_scope", Some(self.required_scope.clone()));
            return Err(self.refuse_token(user, status));
        }
        if verified.subject != user {
            tracing::info!(
                %user,
                subject = %verified.subject,
                token = %token.fingerprint(),
                "token belongs to another user"
            );
            return Err(self.refuse_token(user, status("invalid_token", None)));
        }
        if let (Some(near), Some(expires_at)) = (&self.profile.near_expiry, verified.expires_at) {
            let left = expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            if left < near.within {
                tracing::info!(%user, token = %token.fingerprint(), left_secs = left.as_secs(), "token too close to expiry");
                return Err(AuthRefusal::Reply {
                    challenge: None,
                    reply: near.reply.clone(),
                });
            }
        }
        self.mailboxes.logged_in(user, context.peer);
        Ok(Identity {
            user: user.to_string(),
            subject: Some(verified.subject),
        })
    }

    /// What is refused before any credential is looked at: a mailbox
    /// locked out after failed logins, or one whose SMTP AUTH is off.
    fn admit_login(&self, user: &str) -> Result<(), AuthRefusal> {
        if let Some(limit) = &self.profile.failed_logins
            && self.mailboxes.failed_logins(user, limit.window) >= limit.count as usize
        {
            return Err(AuthRefusal::Reply {
                challenge: None,
                reply: limit.reply.clone(),
            });
        }
        if self.mailboxes.smtp_auth_disabled(user) {
            return Err(AuthRefusal::Reply {
                challenge: None,
                reply: self.profile.auth_disabled.clone(),
            });
        }
        Ok(())
    }

    /// A refused token, in the profile's words; counted against the mailbox.
    fn refuse_token(&self, user: &str, rfc7628: OAuthErrorStatus) -> AuthRefusal {
        let reply = self.profile.token_refused.reply.clone();
        self.refuse_token_with(user, rfc7628, reply)
    }

    /// As [`SandboxPolicy::refuse_token`], ending with `reply`.
    fn refuse_token_with(
        &self,
        user: &str,
        rfc7628: OAuthErrorStatus,
        reply: Reply,
    ) -> AuthRefusal {
        self.mailboxes.login_failed(user);
        let refusal = &self.profile.token_refused;
        let challenge = match refusal.challenge {
            ChallengeStyle::None => None,
            ChallengeStyle::Rfc7628 => Some(Box::new(rfc7628)),
            // Google reports an HTTP status and its one scope.
            ChallengeStyle::Google => Some(Box::new(OAuthErrorStatus {
                status: match rfc7628.status.as_str() {
                    "invalid_request" => "400",
                    // RFC 6750 section 3.1: a token without the scope is 403.
                    "insufficient_scope" => "403",
                    _ => "401",
                }
                .into(),
                schemes: Some("bearer".into()),
                scope: Some("https://mail.google.com/".into()),
                openid_configuration: None,
            })),
        };
        AuthRefusal::Reply { challenge, reply }
    }

    /// The checks a provider makes when the message is complete: Send As
    /// rights, then the sending quotas (a refused message is not counted).
    fn check_submission(
        &self,
        context: &SessionContext,
        envelope: &Envelope,
    ) -> Result<(), Refusal> {
        let Some(user) = context.auth.as_ref().map(|a| a.identity.user.as_str()) else {
            return Ok(());
        };
        if let Some(reply) = &self.profile.send_as_denied
            && !envelope.mail_from.is_empty()
            && !envelope.mail_from.eq_ignore_ascii_case(user)
            && !self.mailboxes.may_send_as(user, &envelope.mail_from)
        {
            return Err(Refusal::Reply(reply.clone()));
        }
        if let Some(limit) = self
            .mailboxes
            .count_message(user, &self.profile.message_limits)
        {
            return Err(Refusal::Reply(limit.reply.clone()));
        }
        Ok(())
    }
}

fn status(status: &str, scope: Option<String>) -> OAuthErrorStatus {
    OAuthErrorStatus {
        status: status.into(),
        schemes: Some("bearer".into()),
        scope,
        openid_configuration: None,
    }
}

impl SessionPolicy for SandboxPolicy {
    fn on_connect(&self, _peer: SocketAddr) -> BoxFuture<'_, Result<SessionRules, Refusal>> {
        Box::pin(async move {
            self.stage(FaultStage::Greeting)?;
            let no_starttls = self
                .faults
                .fire(|fault| (*fault == Fault::NoStartTls).then_some(()))
                .is_some();
            Ok(SessionRules {
                offer_starttls: !no_starttls,
                ..self.rules.clone()
            })
        })
    }

    fn verify_bearer<'a>(
        &'a self,
        context: &'a SessionContext,
        _mechanism: Mechanism,
        user: &'a str,
        token: &'a Secret,
    ) -> BoxFuture<'a, Result<Identity, AuthRefusal>> {
        Box::pin(self.check_token(context, user, token))
    }

    fn verify_password<'a>(
        &'a self,
        _context: &'a SessionContext,
        user: &'a str,
        _password: &'a Secret,
    ) -> BoxFuture<'a, Result<Identity, AuthRefusal>> {
        Box::pin(async move {
            self.admit_login(user)?;
            self.mailboxes.login_failed(user);
            Err(match &self.profile.password_refused {
                Some(reply) => AuthRefusal::Reply {
                    challenge: None,
                    reply: reply.clone(),
                },
                None => AuthRefusal::Credentials,
            })
        })
    }

    fn check_hello<'a>(
        &'a self,
        _context: &'a SessionContext,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move { self.stage(FaultStage::Ehlo) })
    }

    fn check_sender<'a>(
        &'a self,
        context: &'a SessionContext,
        _mail_from: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            self.stage(FaultStage::Mail)?;
            if let (Some(cap), Some(auth)) = (&self.profile.sessions_per_mailbox, &context.auth)
                && !self.mailboxes.within_session_cap(
                    &auth.identity.user,
                    context.peer,
                    cap.sessions,
                )
            {
                return Err(Refusal::Reply(cap.reply.clone()));
            }
            Ok(())
        })
    }

    fn check_recipient<'a>(
        &'a self,
        _context: &'a SessionContext,
        _envelope: &'a Envelope,
        _rcpt_to: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move { self.stage(FaultStage::Rcpt) })
    }

    fn check_data<'a>(
        &'a self,
        _context: &'a SessionContext,
        _envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<DataPlan, Refusal>> {
        Box::pin(async move {
            self.stage(FaultStage::Data)?;
            let cut = self
                .faults
                .fire(|fault| (*fault == Fault::DisconnectMidData).then_some(()));
            Ok(match cut {
                Some(()) => DataPlan::DisconnectMidMessage,
                None => DataPlan::Receive,
            })
        })
    }

    fn accept_message<'a>(
        &'a self,
        context: &'a SessionContext,
        envelope: &'a Envelope,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<String, Refusal>> {
        Box::pin(async move {
            self.stage(FaultStage::EndOfData)?;
            self.check_submission(context, envelope)?;
            let delivery = Delivery {
                mail_from: envelope.mail_from.clone(),
                rcpt_to: envelope.rcpt_to.clone(),
                user: context.auth.as_ref().map(|a| a.identity.user.clone()),
                mechanism: context.auth.as_ref().map(|a| a.mechanism),
                token_fingerprint: context.auth.as_ref().map(|a| a.credential),
            };
            match self.inbox.store(delivery, message.to_vec()).await {
                Ok(entry) => Ok(entry.id),
                Err(error) => {
                    tracing::error!(%error, "the sandbox inbox could not store a message");
                    Err(Refusal::Reply(Reply::new(
                        451,
                        "4.3.0 The sandbox could not store the message; see its log",
                    )))
                }
            }
        })
    }

    fn observe(&self, event: &SessionEvent) {
        self.stats.send_modify(|stats| stats.record(event));
    }

    fn on_disconnect(&self, peer: SocketAddr) {
        self.mailboxes.disconnected(peer);
    }

    fn reply_delay(&self) -> Option<Duration> {
        self.faults.fire(|fault| match fault {
            Fault::SlowReplies(delay) => Some(*delay),
            _ => None,
        })
    }
}
