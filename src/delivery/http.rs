//! What the HTTP transports (Microsoft Graph, the Gmail API) share: the
//! request and reply types the sans-I/O modules `graph` and `gmail_api`
//! build and read, and [`HttpTransports`], which sends them.
//!
//! - One reqwest client per account, kept for the process: HTTP keep-alive
//!   reuses its connections, as the SMTP pool reuses sessions. HTTPS only,
//!   checked with the account's trust (`ca_file`, `tls_pin_sha256`, or the
//!   system roots), the same rustls configuration as the SMTP client; no
//!   redirects (a redirected request would carry the token elsewhere).
//! - At most the API's per-mailbox concurrency (Graph: 4) in flight per
//!   mailbox, whatever the number of workers.
//! - Contract 4 on `401`: drop the token, refresh once, retry once; a
//!   second `401` marks the account failing (`Broker::report_upstream_rejection`).
//! - The envelope is made exact before the request
//!   (`message::recipients::match_envelope`): these APIs send to the
//!   header recipients.
//! - Tokens appear in logs as fingerprints only.

use crate::config::Transport;
use crate::delivery::classify::AdminStep;
use crate::oauth::account::{Account, ApiTarget};
use crate::oauth::broker::{AccessToken, Broker, BrokerError};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use url::Url;

/// How long one API request may take: a 35 MB upload on a slow line
/// included, while a hung server still frees the worker well inside the
/// delivery lease.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of an answer's body that is read (error documents are small).
const MAX_REPLY_BODY: usize = 64 * 1024;
/// The longest `Retry-After` honoured: a provider asking for more is
/// asked again after this (the engine's schedule keeps the mail queued).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// One request to an HTTP sending API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    pub url: Url,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// The message does not fit the API's request limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    pub message_bytes: usize,
    pub request_bytes: usize,
    pub limit: usize,
}

/// An API's answer, reduced to what classification needs.
#[derive(Debug, Clone, Copy)]
pub struct ApiReply<'a> {
    pub status: u16,
    /// `Retry-After`, already read (see [`parse_retry_after`]).
    pub retry_after: Option<Duration>,
    pub body: &'a [u8],
}

impl ApiReply<'_> {
    /// "Microsoft Graph answered 403 ErrorAccessDenied: Access is denied."
    pub(crate) fn describe(&self, api: &str, error: &ApiError) -> String {
        let mut text = format!("{api} answered {}", self.status);
        for part in [&error.code, &error.reason] {
            if !part.is_empty() && !text.contains(part.as_str()) {
                text.push(' ');
                text.push_str(part);
            }
        }
        if !error.message.is_empty() {
            text.push_str(": ");
            text.push_str(&error.message);
        }
        if let Some(pause) = self.retry_after {
            text.push_str(&format!(" (Retry-After: {}s)", pause.as_secs()));
        }
        text
    }
}

/// The error document both APIs send: Graph's `{"error": {"code":
/// "ErrorAccessDenied", "message": ...}}`, Google's `{"error": {"code":
/// 403, "message": ..., "errors": [{"reason": ...}], "status": ...}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// Graph's code, or Google's `status` (the number is the HTTP status).
    pub code: String,
    /// Google's first `errors[].reason`.
    pub reason: String,
    pub message: String,
}

impl ApiError {
    pub(crate) fn parse(body: &[u8]) -> ApiError {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return ApiError::default();
        };
        let error = &value["error"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        ApiError {
            code: error["code"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| text(&error["status"])),
            reason: text(&error["errors"][0]["reason"]),
            // One line, bounded: it goes into last_error and events.
            message: text(&error["message"])
                .replace(['\r', '\n'], " ")
                .chars()
                .take(300)
                .collect(),
        }
    }
}

/// What an API's answer means for the message and the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiVerdict {
    Sent {
        detail: String,
    },
    /// 401: the token was refused (contract 4).
    Unauthorized {
        detail: String,
    },
    /// 429, 503, a rate-limit 403: back off the account (for `pause` if the
    /// API said), keep the mail queued.
    Throttled {
        pause: Option<Duration>,
        detail: String,
    },
    /// Only an administrator can fix this; the mail stays queued.
    NeedsAdmin {
        step: AdminStep,
        detail: String,
    },
    /// Refused for good: bounce.
    Permanent {
        detail: String,
    },
    /// 413: the API refused the size.
    TooLarge {
        detail: String,
    },
    /// 5xx, network: try again later.
    Transient {
        detail: String,
    },
}

impl ApiVerdict {
    pub fn pause(&self) -> Option<Duration> {
        match self {
            ApiVerdict::Throttled { pause, .. } => *pause,
            _ => None,
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            ApiVerdict::Sent { detail }
            | ApiVerdict::Unauthorized { detail }
            | ApiVerdict::Throttled { detail, .. }
            | ApiVerdict::NeedsAdmin { detail, .. }
            | ApiVerdict::Permanent { detail }
            | ApiVerdict::TooLarge { detail }
            | ApiVerdict::Transient { detail } => detail,
        }
    }
}

/// `Retry-After` (RFC 9110 section 10.2.3): seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    let pause = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(pause.min(MAX_RETRY_AFTER))
}

/// The request for `mime` through `api` as `user`.
pub fn request_for(api: &ApiTarget, user: &str, mime: &[u8]) -> Result<ApiRequest, TooLarge> {
    let limit = api.preset.max_request_bytes;
    match api.preset.transport {
        Transport::Graph => crate::delivery::graph::request(&api.base, user, mime, limit),
        Transport::GmailApi | Transport::Smtp => {
            crate::delivery::gmail_api::request(&api.base, user, mime, limit)
        }
    }
}

pub fn classify_for(transport: Transport, reply: &ApiReply<'_>) -> ApiVerdict {
    match transport {
        Transport::Graph => crate::delivery::graph::classify(reply),
        Transport::GmailApi | Transport::Smtp => crate::delivery::gmail_api::classify(reply),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpTransportError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("account {account}: cannot set up TLS for {url}: {source}")]
    Tls {
        account: String,
        url: String,
        #[source]
        source: crate::tls::TlsError,
    },
    #[error("account {account}: cannot build the HTTP client: {detail}")]
    Client { account: String, detail: String },
    #[error(
        "account {account}: the request to {url} failed: {detail}; the mail stays queued and is retried"
    )]
    Network {
        account: String,
        url: String,
        detail: String,
    },
}

impl HttpTransportError {
    pub fn is_transient(&self) -> bool {
        match self {
            HttpTransportError::Broker(e) => e.is_transient(),
            HttpTransportError::Tls { .. } | HttpTransportError::Client { .. } => false,
            HttpTransportError::Network { .. } => true,
        }
    }
}

/// What sending one message through an API came to, after contract 4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiOutcome {
    /// The API's verdict on the (last) request.
    Verdict(ApiVerdict),
    /// A fresh token was refused too; the account is marked failing.
    AuthFailed { detail: String },
}

/// The HTTP transports' clients and per-mailbox limits, for the process.
#[derive(Default)]
pub struct HttpTransports {
    clients: Mutex<HashMap<String, reqwest::Client>>,
    mailboxes: Mutex<HashMap<String, Arc<Semaphore>>>,
    requests: AtomicU64,
}

impl HttpTransports {
    pub fn new() -> Self {
        HttpTransports::default()
    }

    /// API requests sent since the start (token requests not counted).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn client(
        &self,
        account: &Account,
        api: &ApiTarget,
    ) -> Result<reqwest::Client, HttpTransportError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&account.name) {
            return Ok(client.clone());
        }
        let tls = crate::tls::client_config_for(&api.trust).map_err(|source| {
            HttpTransportError::Tls {
                account: account.name.clone(),
                url: api.base.to_string(),
                source,
            }
        })?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("oxirelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpTransportError::Client {
                account: account.name.clone(),
                detail: e.to_string(),
            })?;
        clients.insert(account.name.clone(), client.clone());
        Ok(client)
    }

    fn mailbox(&self, account: &Account, api: &ApiTarget) -> Arc<Semaphore> {
        let mut mailboxes = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        mailboxes
            .entry(account.user.to_ascii_lowercase())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(api.preset.max_concurrent_per_mailbox.max(1)))
            })
            .clone()
    }

    /// Sends `request` for `account`, with contract 4 on a 401.
    pub async fn send(
        &self,
        broker: &Broker,
        account: &Account,
        api: &ApiTarget,
        request: &ApiRequest,
    ) -> Result<ApiOutcome, HttpTransportError> {
        let client = self.client(account, api)?;
        let token = broker.access_token(&account.name).await?;
        let verdict = self.post(&client, account, api, request, &token).await?;
        let ApiVerdict::Unauthorized { detail } = verdict else {
            return Ok(ApiOutcome::Verdict(verdict));
        };
        tracing::info!(account = %account.name, token = %token.fingerprint(), reply = %detail, "the API refused the token; refreshing once");
        broker.invalidate(&account.name, &token).await?;
        let fresh = broker.access_token(&account.name).await?;
        let verdict = self.post(&client, account, api, request, &fresh).await?;
        let ApiVerdict::Unauthorized { detail } = verdict else {
            return Ok(ApiOutcome::Verdict(verdict));
        };
        broker
            .report_upstream_rejection(
                &account.name,
                &fresh,
                &format!(
                    "{} refused a freshly refreshed token: {detail}",
                    api.preset.title
                ),
            )
            .await?;
        Ok(ApiOutcome::AuthFailed {
            detail: format!(
                "{detail}; a freshly refreshed token was refused too, so the account is marked failing. Check that the token is for {} (its audience) and that the app has {}",
                api.base, api.preset.permission
            ),
        })
    }

    async fn post(
        &self,
        client: &reqwest::Client,
        account: &Account,
        api: &ApiTarget,
        request: &ApiRequest,
        token: &AccessToken,
    ) -> Result<ApiVerdict, HttpTransportError> {
        let mailbox = self.mailbox(account, api);
        // Closed never: the semaphore lives as long as `self`.
        let _permit = mailbox.acquire_owned().await.ok();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let network = |detail: String| HttpTransportError::Network {
            account: account.name.clone(),
            url: request.url.to_string(),
            detail,
        };
        let response = client
            .post(request.url.clone())
            .bearer_auth(token.secret.expose())
            .header(reqwest::header::CONTENT_TYPE, request.content_type)
            .body(request.body.clone())
            .send()
            .await
            // reqwest's error names the URL, never the headers: no token.
            .map_err(|e| network(error_chain(&e)))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let body = response
            .bytes()
            .await
            .map_err(|e| network(error_chain(&e)))?;
        let body = &body[..body.len().min(MAX_REPLY_BODY)];
        let verdict = classify_for(
            api.preset.transport,
            &ApiReply {
                status,
                retry_after,
                body,
            },
        );
        tracing::debug!(account = %account.name, token = %token.fingerprint(), status, verdict = ?verdict, "API request answered");
        Ok(verdict)
    }
}

/// An error with its sources, which is where reqwest keeps the cause
/// (refused connection, certificate, timeout).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .expect("date")
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn error_documents_of_both_apis() {
        let graph = ApiError::parse(
            br#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied."}}"#,
        );
        assert_eq!(graph.code, "ErrorAccessDenied");
        let google = ApiError::parse(br#"{"error":{"code":403,"message":"Insufficient Permission","errors":[{"reason":"insufficientPermissions"}],"status":"PERMISSION_DENIED"}}"#);
        assert_eq!(google.code, "PERMISSION_DENIED");
        assert_eq!(google.reason, "insufficientPermissions");
        assert_eq!(ApiError::parse(b"<html>"), ApiError::default());
    }
}
