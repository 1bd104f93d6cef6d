//! [`SubmissionPolicy`]: the relay's decisions for the shared SMTP session
//! ("local users or trusted issuers, store to the queue", DESIGN.md).
//!
//! - Who may connect: the listener's IP allow-list (554 5.7.1 at connect).
//! - Who is authenticated: PLAIN/LOGIN against the submission users'
//!   Argon2id hashes, XOAUTH2/OAUTHBEARER against the `[[issuer]]`s; both
//!   behind the failed-auth throttle. Devices of a `[[network]]` the
//!   listener names need no AUTH: their address is their identity.
//! - Who may send what: the user's `allowed_from` (contract 8).
//! - Where a message goes: a `Received:` header in front, then the durable
//!   queue; the id is returned (and 250 sent) only after the commit
//!   (contract 1).

use super::accept::{AcceptRules, Acceptance, Submission};
use super::allow_list::AllowList;
use super::directory::UserDirectory;
use super::issuers::{TokenError, TrustedIssuers};
use super::networks::Network;
use super::received::received_header;
use super::throttle::{AttemptRefused, AuthThrottle, ThrottleRules};
use crate::config::Config;
use crate::secret::Secret;
use crate::smtp::sasl::{Mechanism, OAuthErrorStatus};
use crate::smtp::server::reply::standard;
use crate::smtp::server::{
    AuthRefusal, BoxFuture, DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSIONS_PER_ADDRESS, Envelope,
    Identity, LineLimit, Refusal, Reply, SessionContext, SessionEvent, SessionLimits,
    SessionPolicy, SessionRules, ShutdownLimits,
};
use crate::store::Store;
use crate::users::SubmissionUser;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// 35 MiB: what Microsoft 365 and Gmail accept per message (after base64,
/// which SMTP clients have already applied). Accepting more would only
/// queue messages the upstream is certain to bounce.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 35 * 1024 * 1024;

/// RFC 5321 section 4.5.3.1.8: a server must accept at least 100
/// recipients. Used when the account's provider states no limit.
pub const MIN_RECIPIENTS: usize = 100;

#[derive(Debug, Clone)]
pub struct SubmissionOptions {
    /// Our name in the greeting and the `Received:` header.
    pub hostname: String,
    /// Sessions per listener; more get 421 4.3.2.
    pub max_sessions: usize,
    /// Sessions per client address (IPv6: per /64) on each listener; more
    /// get 421 4.7.0 at connect.
    pub max_sessions_per_address: usize,
    /// Each session's deadlines, paces and lifetime.
    pub limits: SessionLimits,
    /// How sessions end when the relay stops.
    pub shutdown: ShutdownLimits,
    pub max_message_size: usize,
    pub throttle: ThrottleRules,
}

impl Default for SubmissionOptions {
    fn default() -> Self {
        SubmissionOptions {
            hostname: crate::delivery::upstream::ehlo_name(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_sessions_per_address: DEFAULT_MAX_SESSIONS_PER_ADDRESS,
            limits: SessionLimits::default(),
            shutdown: ShutdownLimits::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            throttle: ThrottleRules::default(),
        }
    }
}

/// What one listener allows, beyond the relay-wide rules.
#[derive(Debug, Clone, Default)]
pub struct ListenerAccess {
    /// Addresses that may connect; empty means all.
    pub allow: AllowList,
    /// PLAIN/LOGIN without TLS. Only ever true together with a non-empty
    /// allow-list (DESIGN.md contract 5); [`ListenerAccess::plaintext`]
    /// enforces that.
    plaintext_auth: bool,
    /// Networks whose devices submit without AUTH. Only ever non-empty
    /// together with a non-empty allow-list; [`ListenerAccess::with_networks`]
    /// enforces that.
    networks: Vec<Arc<Network>>,
    /// Where `RCPT TO:<postmaster>` goes (the listener's `postmaster`).
    pub postmaster: Option<String>,
}

impl ListenerAccess {
    /// A TLS listener, optionally restricted to `allow`.
    pub fn tls(allow: AllowList) -> Self {
        ListenerAccess {
            allow,
            plaintext_auth: false,
            networks: Vec::new(),
            postmaster: None,
        }
    }

    /// A plaintext listener; `None` if `allow` is empty, since passwords
    /// would then cross any network unencrypted.
    pub fn plaintext(allow: AllowList) -> Option<Self> {
        allow.is_restricted().then_some(ListenerAccess {
            allow,
            plaintext_auth: true,
            networks: Vec::new(),
            postmaster: None,
        })
    }

    /// The same, accepting submissions without AUTH from `networks`;
    /// `None` if the listener is open to every address, since an address
    /// then proves nothing.
    pub fn with_networks(self, networks: Vec<Arc<Network>>) -> Option<Self> {
        (networks.is_empty() || self.allow.is_restricted())
            .then_some(ListenerAccess { networks, ..self })
    }

    /// The network `ip` submits from without AUTH, if any.
    fn network_for(&self, ip: std::net::IpAddr) -> Option<&Network> {
        self.networks
            .iter()
            .map(Arc::as_ref)
            .find(|network| network.addrs.holds(ip))
    }
}

struct Shared {
    users: UserDirectory,
    issuers: TrustedIssuers,
    /// The checks and the queue that every way in shares.
    acceptance: Acceptance,
    throttle: Mutex<AuthThrottle>,
    /// Told whenever an attempt ends, for those waiting to begin one.
    throttle_changed: tokio::sync::Notify,
    /// Argon2 runs on the blocking pool; this bounds how many at once so a
    /// burst of logins cannot take every core.
    hashing_slots: Semaphore,
    verified: crate::submit::auth_cache::VerifiedPasswords,
    /// Recipients per message by account name, from the provider presets.
    recipient_limits: HashMap<String, usize>,
    max_recipients: usize,
    options: SubmissionOptions,
}

/// The submission listener's [`SessionPolicy`]. Cheap to clone; one per
/// listener (made with [`SubmissionPolicy::for_listener`]), all sharing
/// the users, issuers, throttle and queue.
#[derive(Clone)]
pub struct SubmissionPolicy {
    shared: Arc<Shared>,
    access: ListenerAccess,
}

impl SubmissionPolicy {
    /// `work_arrived` is notified after each message is queued, to wake
    /// the delivery engine.
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        work_arrived: Arc<Notify>,
        options: SubmissionOptions,
    ) -> Self {
        let recipient_limits = super::accept::recipient_limits(config);
        let max_recipients = recipient_limits
            .values()
            .copied()
            .max()
            .unwrap_or(MIN_RECIPIENTS)
            .max(MIN_RECIPIENTS);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        SubmissionPolicy {
            shared: Arc::new(Shared {
                users: UserDirectory::new(&config.users, store.clone()),
                issuers: TrustedIssuers::new(&config.issuers),
                acceptance: Acceptance::new(
                    AcceptRules::from_config(config, options.max_message_size),
                    store,
                    work_arrived,
                ),
                throttle: Mutex::new(AuthThrottle::new(options.throttle.clone())),
                throttle_changed: tokio::sync::Notify::new(),
                hashing_slots: Semaphore::new(cores),
                // Ten minutes: a device reconnecting for every message costs
                // one Argon2 check per ten minutes.
                verified: crate::submit::auth_cache::VerifiedPasswords::new(Duration::from_secs(
                    600,
                )),
                recipient_limits,
                max_recipients,
                options,
            }),
            access: ListenerAccess::default(),
        }
    }

    /// The same policy for a listener with its own access rules.
    pub fn for_listener(&self, access: ListenerAccess) -> Self {
        SubmissionPolicy {
            shared: self.shared.clone(),
            access,
        }
    }

    pub fn options(&self) -> &SubmissionOptions {
        &self.shared.options
    }

    fn mechanisms(&self) -> Vec<Mechanism> {
        let mut mechanisms = vec![Mechanism::Plain, Mechanism::Login];
        // Bearer tokens are not offered in plaintext even on an allow-listed
        // listener: that exception exists for devices that only know
        // passwords, and a token is worth more to whoever sniffs it.
        if !self.shared.issuers.is_empty() && !self.access.plaintext_auth {
            mechanisms.extend([Mechanism::OAuthBearer, Mechanism::XOAuth2]);
        }
        mechanisms
    }

    fn throttled(&self, context: &SessionContext, user: &str) -> bool {
        let throttle = lock(&self.shared.throttle);
        match throttle.check(context.peer.ip(), user, Instant::now()) {
            Ok(()) => false,
            Err(lockout) => {
                tracing::warn!(peer = %context.peer, ?user, ?lockout, "AUTH refused: too many failures");
                true
            }
        }
    }

    fn auth_failed(&self, context: &SessionContext, user: &str) {
        lock(&self.shared.throttle).record_failure(context.peer.ip(), user, Instant::now());
    }

    /// Runs one AUTH check under the failed-login throttle: the attempt is
    /// counted as pending before `check` starts (so parallel guesses all
    /// count), as a failure if it fails, and forgotten if it could not be
    /// judged. While as many attempts are pending as failures are left
    /// before a lockout, it waits (at most [`THROTTLE_WAIT`]) for one of
    /// them to end instead of being refused: a pool of correct logins
    /// arriving together goes through; guesses meet the lockout.
    async fn throttled_attempt(
        &self,
        context: &SessionContext,
        user: &str,
        check: impl std::future::Future<Output = Result<Identity, AuthRefusal>>,
    ) -> Result<Identity, AuthRefusal> {
        let peer = context.peer.ip();
        let deadline = tokio::time::Instant::now() + THROTTLE_WAIT;
        loop {
            // Registered before the throttle is read, so an attempt ending
            // in between still wakes this one.
            let ended = self.shared.throttle_changed.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            match lock(&self.shared.throttle).begin_attempt(peer, user, Instant::now()) {
                Ok(()) => break,
                Err(AttemptRefused::Locked(lockout)) => {
                    tracing::warn!(peer = %context.peer, ?user, ?lockout, "AUTH refused: too many failures");
                    return Err(AuthRefusal::Temporary);
                }
                Err(AttemptRefused::Busy) => {}
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                tracing::warn!(peer = %context.peer, ?user, wait = ?THROTTLE_WAIT, "AUTH refused: other attempts for this address or user were still being checked");
                return Err(AuthRefusal::Temporary);
            }
        }
        let mut pending = PendingAttempt {
            shared: &self.shared,
            peer,
            user,
            judged: false,
        };
        let outcome = check.await;
        pending.judged = true;
        {
            let mut throttle = lock(&self.shared.throttle);
            match &outcome {
                Ok(_) => throttle.attempt_succeeded(peer, user, Instant::now()),
                Err(AuthRefusal::Temporary) => throttle.attempt_abandoned(peer, user),
                Err(_) => throttle.attempt_failed(peer, user, Instant::now()),
            }
        }
        self.shared.throttle_changed.notify_waiters();
        outcome
    }

    async fn check_password(
        &self,
        context: &SessionContext,
        name: &str,
        password: &Secret,
    ) -> Result<Identity, AuthRefusal> {
        let user = self
            .find_user(name)
            .await
            .map_err(|()| AuthRefusal::Temporary)?;
        let verified = match user {
            // An OAuth-only user has no hash: no password can match.
            Some(user)
                if !user.password_hash.is_empty()
                    && self
                        .shared
                        .verified
                        .contains(&user, password, Instant::now()) =>
            {
                Some(user)
            }
            Some(user) if !user.password_hash.is_empty() => {
                let permit = self
                    .shared
                    .hashing_slots
                    .acquire()
                    .await
                    .map_err(|_| AuthRefusal::Temporary)?;
                // Sessions that arrived together wait here; the first one's
                // success serves the rest.
                if self
                    .shared
                    .verified
                    .contains(&user, password, Instant::now())
                {
                    drop(permit);
                    return self.password_verified(context, user);
                }
                let candidate = password.clone();
                let checked = tokio::task::spawn_blocking(move || {
                    crate::users::verify_password(&user, &candidate).map(|ok| ok.then_some(user))
                })
                .await;
                drop(permit);
                match checked {
                    Ok(Ok(found)) => {
                        if let Some(user) = &found {
                            self.shared
                                .verified
                                .remember(user, password, Instant::now());
                        }
                        found
                    }
                    Ok(Err(error)) => {
                        // The config holds a broken hash: the operator must
                        // fix it; the client cannot.
                        tracing::error!(%error, "cannot check a submission password");
                        return Err(AuthRefusal::Temporary);
                    }
                    Err(error) => {
                        tracing::error!(%error, "the password check task failed");
                        return Err(AuthRefusal::Temporary);
                    }
                }
            }
            _ => {
                self.spend_equal_time(password).await;
                None
            }
        };
        match verified {
            Some(user) => self.password_verified(context, user),
            None => {
                // The password is not logged, not even as a fingerprint: a wrong
                // guess is often a real password of another account or site.
                tracing::info!(peer = %context.peer, user = ?name, "submission AUTH failed");
                Err(AuthRefusal::Credentials)
            }
        }
    }

    fn password_verified(
        &self,
        context: &SessionContext,
        user: SubmissionUser,
    ) -> Result<Identity, AuthRefusal> {
        tracing::info!(peer = %context.peer, user = %user.name, "submission AUTH with password");
        Ok(Identity {
            user: user.name,
            subject: None,
        })
    }

    /// Runs one Argon2 verification whose result is thrown away, so an
    /// unknown user name (or an OAuth-only user) takes as long to refuse as
    /// a wrong password: the reply time must not tell which names exist.
    async fn spend_equal_time(&self, password: &Secret) {
        let Ok(_permit) = self.shared.hashing_slots.acquire().await else {
            return;
        };
        let password = password.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let decoy = decoy_user();
            let _ = crate::users::verify_password(decoy, &password);
        })
        .await;
    }

    async fn check_bearer(
        &self,
        context: &SessionContext,
        sasl_user: &str,
        token: &Secret,
    ) -> Result<Identity, AuthRefusal> {
        let (issuer, validated) = match self.shared.issuers.validate(token).await {
            Ok(validated) => validated,
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "cannot validate a bearer token now");
                return Err(AuthRefusal::Temporary);
            }
            Err(error) => {
                tracing::info!(peer = %context.peer, user = ?sasl_user, token = %token.fingerprint(), %error, "bearer token refused");
                return Err(AuthRefusal::Token(token_status(&error)));
            }
        };
        let subject = validated.subject;
        let Some(user) = self.shared.users.find_bearer(&issuer, &subject) else {
            tracing::info!(%issuer, subject = ?subject, "a valid token names no [[user]]; add a [[user]] with issuer and subject to let it submit");
            return Err(AuthRefusal::Token(invalid_token()));
        };
        // The SASL user may be empty (OAUTHBEARER allows it); if given it
        // must name the token's user: that user's name, or the token's
        // subject when no other user is called that (a token of issuer B
        // whose subject is the name of issuer A's user must not pass as
        // a claim to be that user).
        let names_the_user = sasl_user.is_empty()
            || sasl_user.eq_ignore_ascii_case(&user.name)
            || (sasl_user == subject
                && self
                    .find_user(sasl_user)
                    .await
                    .map_err(|()| AuthRefusal::Temporary)?
                    .is_none());
        if !names_the_user {
            tracing::info!(peer = %context.peer, user = ?sasl_user, subject = ?subject, token = %token.fingerprint(), "bearer token belongs to another user");
            return Err(AuthRefusal::Token(invalid_token()));
        }
        tracing::info!(peer = %context.peer, user = %user.name, %issuer, token = %token.fingerprint(), "submission AUTH with bearer token");
        Ok(Identity {
            user: user.name,
            subject: Some(subject),
        })
    }

    /// `Err(())` when the store cannot be read (already logged).
    async fn find_user(&self, name: &str) -> Result<Option<SubmissionUser>, ()> {
        self.shared.users.find(name).await.map_err(|error| {
            tracing::error!(%error, "cannot read the submission users");
        })
    }

    /// Who submits in this session: the authenticated user, or the
    /// network an unauthenticated device is in; else the refusal to send.
    async fn session_user(&self, context: &SessionContext) -> Result<SubmissionUser, Refusal> {
        let Some(auth) = &context.auth else {
            if let Some(network) = self.access.network_for(context.peer.ip()) {
                return Ok(network.submitter.clone());
            }
            return Err(Reply::new(530, "5.7.0 Authentication required").into());
        };
        match self.find_user(&auth.identity.user).await {
            Ok(Some(user)) => Ok(user),
            Ok(None) => Err(Reply::new(
                550,
                format!(
                    "5.7.1 User {} no longer exists; nothing was accepted",
                    auth.identity.user
                ),
            )
            .into()),
            Err(()) => Err(store_unavailable().into()),
        }
    }

    async fn enqueue(
        &self,
        context: &SessionContext,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<String, Refusal> {
        let user = self.session_user(context).await?;
        let header = received_header(
            context,
            &envelope.rcpt_to,
            &self.shared.options.hostname,
            chrono::Utc::now(),
        );
        let id = self
            .shared
            .acceptance
            .accept(Submission {
                submitter: &user,
                mail_from: &envelope.mail_from,
                recipients: &envelope.rcpt_to,
                trace: &header,
                message,
                id: None,
            })
            .await
            .map_err(|error| error.reply())?;
        Ok(id.to_string())
    }
}

/// A user with the hash of a random password, made once: the decoy that
/// [`SubmissionPolicy::spend_equal_time`] verifies against.
fn decoy_user() -> &'static SubmissionUser {
    static DECOY: std::sync::OnceLock<SubmissionUser> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| SubmissionUser {
        name: "decoy".into(),
        // If hashing fails the check fails fast; only timing is lost.
        password_hash: crate::users::hash_password(&crate::users::generate_app_password())
            .unwrap_or_default(),
        allowed_from: Vec::new(),
        account: String::new(),
        source: "decoy",
        header_from_checked: true,
    })
}

fn store_unavailable() -> Reply {
    Reply::new(
        451,
        "4.3.0 The message could not be queued and was not accepted; try again later",
    )
}

/// How long an AUTH waits for other attempts of its address or user to be
/// judged before it is told to try again (454).
const THROTTLE_WAIT: Duration = Duration::from_secs(10);

/// An attempt begun in the throttle. If the session goes away before the
/// check ends (the client hung up, the relay stops), it counts as a
/// failure, as a guess whose answer was not waited for: otherwise
/// hanging up mid-check would be a way to make the relay hash passwords
/// without ever counting.
struct PendingAttempt<'a> {
    shared: &'a Shared,
    peer: std::net::IpAddr,
    user: &'a str,
    judged: bool,
}

impl Drop for PendingAttempt<'_> {
    fn drop(&mut self) {
        if !self.judged {
            lock(&self.shared.throttle).attempt_failed(self.peer, self.user, Instant::now());
            self.shared.throttle_changed.notify_waiters();
        }
    }
}

fn lock(throttle: &Mutex<AuthThrottle>) -> std::sync::MutexGuard<'_, AuthThrottle> {
    // A panic while holding the lock leaves counters, not broken invariants:
    // keep using them.
    throttle
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn invalid_token() -> OAuthErrorStatus {
    OAuthErrorStatus {
        status: "invalid_token".into(),
        schemes: Some("bearer".into()),
        scope: None,
        openid_configuration: None,
    }
}

fn token_status(error: &TokenError) -> OAuthErrorStatus {
    match error {
        TokenError::Invalid(error) => error.rfc7628_status(),
        TokenError::MissingScope { scope, .. } => OAuthErrorStatus {
            status: "insufficient_scope".into(),
            scope: Some(scope.clone()),
            ..invalid_token()
        },
        TokenError::UnknownIssuer { .. } | TokenError::Discovery { .. } => invalid_token(),
    }
}

impl SessionPolicy for SubmissionPolicy {
    fn on_connect(&self, peer: SocketAddr) -> BoxFuture<'_, Result<SessionRules, Refusal>> {
        Box::pin(async move {
            if !self.access.allow.allows(peer.ip()) {
                tracing::info!(%peer, "connection refused: not in the listener's allow_ips");
                return Err(Reply::new(
                    554,
                    format!(
                        "5.7.1 {} may not use this listener; ask the relay's administrator to add it to allow_ips",
                        peer.ip().to_canonical()
                    ),
                )
                .into());
            }
            Ok(SessionRules {
                // A mapped network's devices need no AUTH; AUTH is still
                // offered, and a user who logs in is that user.
                auth_required: self.access.network_for(peer.ip()).is_none(),
                plaintext_auth_allowed: self.access.plaintext_auth,
                mechanisms: self.mechanisms(),
                offer_starttls: true,
                max_message_size: self.shared.options.max_message_size,
                // The largest of the accounts' limits; the user's own
                // account's limit is applied at RCPT, once AUTH says who.
                max_recipients: self.shared.max_recipients,
                line_limit: LineLimit::default(),
                postmaster: self.access.postmaster.clone(),
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
        Box::pin(self.throttled_attempt(context, user, self.check_bearer(context, user, token)))
    }

    fn verify_password<'a>(
        &'a self,
        context: &'a SessionContext,
        user: &'a str,
        password: &'a Secret,
    ) -> BoxFuture<'a, Result<Identity, AuthRefusal>> {
        Box::pin(self.throttled_attempt(
            context,
            user,
            self.check_password(context, user, password),
        ))
    }

    fn check_sender<'a>(
        &'a self,
        context: &'a SessionContext,
        mail_from: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let user = self.session_user(context).await?;
            // Without AUTH, a refused sender is what a failed login is to a
            // user: counted per address, so a device cannot probe senders.
            let unauthenticated = context.auth.is_none();
            if unauthenticated && self.throttled(context, &user.name) {
                return Err(Reply::new(
                    450,
                    "4.7.1 Too many refused senders from this address; try again later",
                )
                .into());
            }
            if user.may_send_as(mail_from) {
                return Ok(());
            }
            if unauthenticated {
                self.auth_failed(context, &user.name);
            }
            tracing::info!(user = %user.name, ?mail_from, peer = %context.peer, "sender refused");
            Err(Reply::new(
                550,
                format!(
                    "5.7.1 Sender not allowed for {}: <{mail_from}> is not in its allowed_from",
                    user.name
                ),
            )
            .into())
        })
    }

    fn check_recipient<'a>(
        &'a self,
        context: &'a SessionContext,
        envelope: &'a Envelope,
        _rcpt_to: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            // Every account allows at least MIN_RECIPIENTS: look the user's
            // account up only beyond that.
            if envelope.rcpt_to.len() < MIN_RECIPIENTS {
                return Ok(());
            }
            let user = self.session_user(context).await?;
            let limit = self
                .shared
                .recipient_limits
                .get(&user.account)
                .copied()
                .unwrap_or(MIN_RECIPIENTS);
            if envelope.rcpt_to.len() >= limit {
                return Err(standard::too_many_recipients().into());
            }
            Ok(())
        })
    }

    fn accept_message<'a>(
        &'a self,
        context: &'a SessionContext,
        envelope: &'a Envelope,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<String, Refusal>> {
        Box::pin(self.enqueue(context, envelope, message))
    }

    /// Open sessions for `/metrics`: the shell reports `Connected` and
    /// `Closed` once each per session.
    fn observe(&self, event: &SessionEvent) {
        match event {
            SessionEvent::Connected => crate::metrics::global().submission_session_opened(),
            SessionEvent::Closed => crate::metrics::global().submission_session_closed(),
            _ => {}
        }
    }
}
