//! Opening an authenticated upstream session for an account, with
//! contract 4: when the server refuses the token, drop it, refresh once,
//! retry once; if that fails too, mark the account failing and give up.
//! `send_now` is the one-shot path of `oxirelay send`; the queue's workers
//! reuse the same session opening.

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
}

impl UpstreamError {
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Broker(e) => e.is_transient(),
            UpstreamError::Smtp(e) => e.is_transient(),
            UpstreamError::Tls { .. } => false,
            // The grant may be fine and the provider's side still settling
            // (a new service principal takes minutes to apply): defer.
            UpstreamError::AuthFailed { .. } => true,
        }
    }
}

/// The name we give in EHLO: this machine's host name.
pub fn ehlo_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "oxirelay.localdomain".to_string())
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

/// AUTH with `token`; on refusal, contract 4.
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
    match session
        .authenticate(account.sasl, &credentials(&token))
        .await
    {
        Ok(()) => return Ok(token),
        Err(error) if error.is_auth_rejected() => {
            tracing::info!(account = %account.name, token = %token.fingerprint(), "upstream refused the token; refreshing once");
            broker.invalidate(&account.name, &token).await?;
        }
        Err(error) => return Err(error.into()),
    }
    let fresh = broker.access_token(&account.name).await?;
    match session
        .authenticate(account.sasl, &credentials(&fresh))
        .await
    {
        Ok(()) => Ok(fresh),
        Err(error) if error.is_auth_rejected() => {
            let reply = error.reply().map(|r| r.to_string()).unwrap_or_default();
            let hint = error
                .reply()
                .and_then(|r| {
                    crate::delivery::classify::explain(crate::delivery::classify::ReplyFacts {
                        code: r.code,
                        enhanced: r.enhanced,
                        text: &r.text(),
                    })
                })
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
        Err(error) => Err(error.into()),
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
    let mut session = open_session(broker, account).await?;
    let report = session.send(&message.envelope, &message.bytes).await?;
    // The message is accepted or refused already; a failed QUIT changes nothing.
    let _ = session.quit().await;
    Ok(report)
}
