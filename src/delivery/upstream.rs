//! Opening an authenticated upstream session for an account, with
//! contract 4: when the server refuses the token, drop it, refresh once,
//! retry once; if that fails too, mark the account failing and give up.
//! What the refusal says decides first (`classify`): a provider reply that
//! only an administrator can fix (SMTP AUTH turned off) marks the account
//! as needing one, without a refresh; a token the provider calls close to
//! expiry is refreshed without counting against the account. A reply to
//! AUTH that did not judge the token (`ClientError::AuthNotJudged`) is
//! passed on untouched.
//! `send_now` is the one-shot path of `oxirelay send`; the queue's workers
//! reuse the same session opening. For accounts with an HTTP transport
//! (`graph`, `gmail_api`) it sends one request through `delivery::http`
//! instead, with the same recipient-header rule as the engine.

use crate::delivery::classify::{self, AdminStep, ReplyClass, ReplyFacts};
use crate::message::OutgoingMessage;
use crate::oauth::account::Account;
use crate::oauth::broker::{AccessToken, Broker, BrokerError};
use crate::smtp::client::{ClientError, SendReport, Session, Timeouts, UpstreamTarget};
use crate::smtp::sasl::BearerCredentials;
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Smtp(#[from] ClientError),
    #[error("account {account}: {source}")]
    Tls {
        account: String,
        #[source]
        source: TlsError,
    },
    #[error(
        "account {account}: {server} refused a freshly refreshed token too ({reply}); the account is marked failing. {hint}"
    )]
    AuthFailed {
        account: String,
        server: String,
        reply: String,
        hint: String,
    },
    #[error("account {account}: {server} answered \"{reply}\". {instruction}")]
    NeedsAdmin {
        account: String,
        server: String,
        reply: String,
        step: AdminStep,
        instruction: String,
    },
    /// Boxed: the TLS error it may carry is large, and this enum is
    /// returned on every path of a delivery.
    #[error(transparent)]
    Http(Box<crate::delivery::http::HttpTransportError>),
    #[error("account {account}: {detail}")]
    Api {
        account: String,
        detail: String,
        transient: bool,
    },
    #[error(
        "account {account}: {server} refused even a freshly issued token as close to expiry ({reply}): the provider issues tokens that live less than its own expiry margin, so no refresh can help; check the token lifetime policy at the provider. The mail stays queued"
    )]
    TokenNearExpiry {
        account: String,
        server: String,
        reply: String,
    },
}

impl UpstreamError {
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Broker(e) => e.is_transient(),
            UpstreamError::Smtp(e) => e.is_transient(),
            UpstreamError::Tls { .. } => false,
            UpstreamError::Http(e) => e.is_transient(),
            UpstreamError::Api { transient, .. } => *transient,
            // The grant may be fine and the provider's side still settling
            // (a new service principal takes minutes to apply): defer.
            UpstreamError::AuthFailed { .. } => true,
            // Queued mail waits for the administrator (or the provider).
            UpstreamError::NeedsAdmin { .. } | UpstreamError::TokenNearExpiry { .. } => true,
        }
    }
}

/// The name we give in EHLO: this machine's host name.
pub fn ehlo_name() -> String {
    crate::instance::host_name()
}

pub fn target_for(account: &Account) -> Result<UpstreamTarget, UpstreamError> {
    let tls_config = crate::tls::client_config_for(&account.smtp.trust).map_err(|source| {
        UpstreamError::Tls {
            account: account.name.clone(),
            source,
        }
    })?;
    Ok(UpstreamTarget {
        host: account.smtp.host.clone(),
        port: account.smtp.port,
        security: account.smtp.tls,
        tls_config,
        ehlo_name: ehlo_name(),
        timeouts: Timeouts::default(),
    })
}

/// Connects, secures and authenticates a session for `account`.
pub async fn open_session(broker: &Broker, account: &Account) -> Result<Session, UpstreamError> {
    let target = target_for(account)?;
    // Get the token first: if the account cannot have one, do not bother
    // the upstream server with a connection.
    let token = broker.access_token(&account.name).await?;
    let mut session = connect(&target).await?;
    authenticate(&mut session, broker, account, token).await?;
    Ok(session)
}

async fn connect(target: &UpstreamTarget) -> Result<Session, ClientError> {
    match target.security {
        crate::config::TlsMode::None => {
            crate::smtp::client::PlaintextSession::connect(target)
                .await?
                .allow_plaintext_on_loopback()
                .await
        }
        _ => Session::connect(target).await,
    }
}

/// AUTH with `token`; on refusal, contract 4, as the refusal's meaning
/// allows (see the module header).
pub async fn authenticate(
    session: &mut Session,
    broker: &Broker,
    account: &Account,
    token: AccessToken,
) -> Result<AccessToken, UpstreamError> {
    let credentials = |token: &AccessToken| BearerCredentials {
        user: account.user.clone(),
        token: token.secret.clone(),
    };
    let error = match session
        .authenticate(account.sasl, &credentials(&token))
        .await
    {
        Ok(()) => {
            logged_in(broker, account).await;
            return Ok(token);
        }
        Err(error) if error.is_auth_rejected() => error,
        Err(error) => return Err(error.into()),
    };
    if let ReplyClass::NeedsAdmin(step) = refusal_class(&error) {
        return Err(needs_admin(broker, account, session, &error, step).await);
    }
    tracing::info!(account = %account.name, token = %token.fingerprint(), reply = ?error.reply().map(ToString::to_string), "upstream refused the token; refreshing once");
    broker.invalidate(&account.name, &token).await?;
    let fresh = broker.access_token(&account.name).await?;
    let error = match session
        .authenticate(account.sasl, &credentials(&fresh))
        .await
    {
        Ok(()) => {
            logged_in(broker, account).await;
            return Ok(fresh);
        }
        Err(error) if error.is_auth_rejected() => error,
        Err(error) => return Err(error.into()),
    };
    let reply = error.reply().map(|r| r.to_string()).unwrap_or_default();
    match refusal_class(&error) {
        ReplyClass::NeedsAdmin(step) => {
            Err(needs_admin(broker, account, session, &error, step).await)
        }
        ReplyClass::TokenNearExpiry => {
            // The token is fine by every measure but the provider's margin;
            // it is not a failure of the account's grant.
            Err(UpstreamError::TokenNearExpiry {
                account: account.name.clone(),
                server: session.target().address(),
                reply,
            })
        }
        _ => {
            let hint = error
                .reply()
                .and_then(|r| classify::explain(ReplyFacts::of(r, &r.text())))
                .unwrap_or("Check that the mailbox in `user` matches the grant and that the app has the SMTP permission.")
                .to_string();
            broker
                .report_upstream_rejection(
                    &account.name,
                    &fresh,
                    &format!("upstream refused the token: {reply}"),
                )
                .await?;
            Err(UpstreamError::AuthFailed {
                account: account.name.clone(),
                server: session.target().address(),
                reply,
                hint,
            })
        }
    }
}

fn refusal_class(error: &ClientError) -> ReplyClass {
    error.reply().map_or(ReplyClass::AuthFailure, |reply| {
        classify::classify(ReplyFacts::of(reply, &reply.text()))
    })
}

/// The provider refuses the account until its administrator acts: record
/// that, with the step, and give the error that carries it.
async fn needs_admin(
    broker: &Broker,
    account: &Account,
    session: &Session,
    error: &ClientError,
    step: AdminStep,
) -> UpstreamError {
    let instruction = step.instruction(&account.user);
    if let Err(store) = broker.report_needs_admin(&account.name, &instruction).await {
        tracing::error!(account = %account.name, error = %store, "cannot record that the account needs an administrator");
    }
    UpstreamError::NeedsAdmin {
        account: account.name.clone(),
        server: session.target().address(),
        reply: error.reply().map(|r| r.to_string()).unwrap_or_default(),
        step,
        instruction,
    }
}

/// A login succeeded: if the account was waiting for an administrator to
/// allow logins, it no longer is.
async fn logged_in(broker: &Broker, account: &Account) {
    let resolved =
        |reason: &str| AdminStep::of_reason(reason).is_some_and(AdminStep::cleared_by_login);
    if let Err(error) = broker.clear_needs_admin(&account.name, resolved).await {
        tracing::warn!(account = %account.name, %error, "cannot record that the account's logins work again");
    }
}

/// AUTH with `token` and QUIT, without the refresh-and-retry of contract 4:
/// the validation check wants to know whether this very token works.
pub async fn probe_auth(account: &Account, token: &AccessToken) -> Result<(), UpstreamError> {
    let target = target_for(account)?;
    let mut session = connect(&target).await?;
    let credentials = BearerCredentials {
        user: account.user.clone(),
        token: token.secret.clone(),
    };
    let result = session.authenticate(account.sasl, &credentials).await;
    let _ = session.quit().await;
    result.map_err(UpstreamError::from)
}

/// Sends one message now, outside the queue (`oxirelay send`).
pub async fn send_now(
    broker: &Broker,
    account: &Account,
    message: &OutgoingMessage,
) -> Result<SendReport, UpstreamError> {
    if let Some(api) = &account.api {
        return send_by_api(broker, account, api, message).await;
    }
    let mut session = open_session(broker, account).await?;
    let report = session.send(&message.envelope, &message.bytes).await?;
    // The message is accepted or refused already; a failed QUIT changes nothing.
    let _ = session.quit().await;
    Ok(report)
}

/// `send_now` through an HTTP API: one request, every envelope recipient
/// accepted or none. The report reads like an SMTP one (250 per recipient)
/// so `oxirelay send` prints the same way for every transport.
async fn send_by_api(
    broker: &Broker,
    account: &Account,
    api: &crate::oauth::account::ApiTarget,
    message: &OutgoingMessage,
) -> Result<SendReport, UpstreamError> {
    use crate::delivery::http::{ApiOutcome, ApiVerdict, HttpTransports, request_for};
    let failed = |detail: String, transient: bool| UpstreamError::Api {
        account: account.name.clone(),
        detail,
        transient,
    };
    let mime =
        crate::message::recipients::match_envelope(&message.bytes, &message.envelope.rcpt_to)
            .map_err(|e| failed(e.to_string(), false))?;
    let request = request_for(api, &account.user, &mime).map_err(|too_large| {
        failed(
            format!(
                "the message is {} bytes, {} bytes as a request to {}, over its limit of {} bytes; send it over an account with transport = \"smtp\", or make it smaller",
                too_large.message_bytes, too_large.request_bytes, api.preset.title, too_large.limit
            ),
            false,
        )
    })?;
    let verdict = match HttpTransports::new()
        .send(broker, account, api, &request)
        .await
        .map_err(|e| UpstreamError::Http(Box::new(e)))?
    {
        ApiOutcome::Verdict(verdict) => verdict,
        ApiOutcome::AuthFailed { detail } => return Err(failed(detail, true)),
    };
    let detail = match verdict {
        ApiVerdict::Sent { detail } => detail,
        ApiVerdict::NeedsAdmin { step, detail } => {
            let instruction = step.instruction(&account.user);
            if let Err(error) = broker.report_needs_admin(&account.name, &instruction).await {
                tracing::error!(account = %account.name, %error, "cannot record that the account needs an administrator");
            }
            return Err(failed(format!("{detail}. {instruction}"), true));
        }
        ApiVerdict::Throttled { .. }
        | ApiVerdict::Transient { .. }
        | ApiVerdict::Unauthorized { .. } => {
            return Err(failed(
                format!("{}; try again later", verdict.detail()),
                true,
            ));
        }
        ApiVerdict::Permanent { detail } | ApiVerdict::TooLarge { detail } => {
            return Err(failed(detail, false));
        }
    };
    let reply = crate::smtp::client::Reply {
        code: 250,
        enhanced: Some((2, 0, 0)),
        lines: vec![detail],
    };
    Ok(SendReport {
        recipients: message
            .envelope
            .rcpt_to
            .iter()
            .map(|address| crate::smtp::client::RecipientReport {
                address: address.clone(),
                reply: reply.clone(),
            })
            .collect(),
        data: crate::smtp::client::DataOutcome::Final(reply),
    })
}
