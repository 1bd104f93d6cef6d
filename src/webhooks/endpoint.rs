//! One webhook endpoint, resolved from its `[[webhook]]` (its secret read
//! once, at start), and one POST to it: bounded in time, never redirected
//! (a redirect would carry signed events to a host nobody configured), the
//! answer read only as far as a short excerpt for the error.

use super::payload::{EventFilter, WebhookPayload};
use super::signature::{EVENT_ID_HEADER, SIGNATURE_HEADER, sign};
use crate::config::WebhookConfig;
use crate::delivery::schedule::RetrySchedule;
use crate::secret::Secret;
use std::time::Duration;

/// How long one POST may take, connecting included, unless the endpoint
/// sets `timeout`: receivers are expected to answer at once and work
/// later; ten seconds covers a slow TLS handshake across the world.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries start after 5 s and double up to 10 min unless configured: a
/// receiver that restarts is back within seconds; one that is down for
/// hours is tried six times an hour, and gets its backlog within minutes
/// of coming back.
pub const DEFAULT_RETRY_FIRST: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(600);
/// How much of a refusing receiver's answer goes into `last_error`.
const ERROR_EXCERPT_BYTES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {name:?}: {source}")]
    Secret {
        name: String,
        source: crate::config::ConfigError,
    },
    #[error("webhook {name:?}: url: {reason}")]
    Url { name: String, reason: String },
    #[error("webhook {name:?}: cannot build the HTTP client: {reason}")]
    Client { name: String, reason: String },
    #[error("no [[webhook]] named {name:?} in the config; known: {known}")]
    Unknown { name: String, known: String },
}

/// Why a POST did not count as received. The text is what `webhook list`
/// shows as the last error: it names no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP {status}{excerpt}")]
    Status { status: u16, excerpt: String },
    #[error("{0}")]
    Other(String),
}

#[derive(Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: url::Url,
    secret: Secret,
    pub filter: EventFilter,
    pub schedule: RetrySchedule,
    pub timeout: Duration,
    client: reqwest::Client,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.origin())
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub fn from_config(config: &WebhookConfig) -> Result<Self, WebhookError> {
        let secret = config
            .secret
            .resolve()
            .map_err(|source| WebhookError::Secret {
                name: config.name.clone(),
                source,
            })?;
        let url = url::Url::parse(&config.url).map_err(|e| WebhookError::Url {
            name: config.name.clone(),
            reason: e.to_string(),
        })?;
        let timeout = config.timeout.unwrap_or(DEFAULT_TIMEOUT);
        crate::tls::install_crypto_provider();
        // http:// was allowed by the config's validation for loopback
        // hosts only, so https_only cannot be set for them; redirects are
        // off for every endpoint.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .https_only(url.scheme() == "https")
            .user_agent(concat!("oxirelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client {
                name: config.name.clone(),
                reason: e.to_string(),
            })?;
        let first = config.retry_first.unwrap_or(DEFAULT_RETRY_FIRST);
        Ok(Endpoint {
            name: config.name.clone(),
            url,
            secret,
            filter: EventFilter::new(config.events(), config.api_key.clone()),
            schedule: RetrySchedule {
                first,
                max_interval: config.retry_max.unwrap_or(DEFAULT_RETRY_MAX).max(first),
                // Unused: a webhook event is retried until it is received.
                max_age: Duration::MAX,
            },
            timeout,
            client,
        })
    }

    /// Scheme, host and port: how logs and listings name the URL, whose
    /// path or query may hold a token (chat services' hooks do).
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }

    /// Every `[[webhook]]` of the config, resolved.
    pub fn all(config: &crate::config::Config) -> Result<Vec<Endpoint>, WebhookError> {
        config.webhooks.iter().map(Endpoint::from_config).collect()
    }

    /// The endpoint of that name.
    pub fn named(config: &crate::config::Config, name: &str) -> Result<Endpoint, WebhookError> {
        match config.webhooks.iter().find(|w| w.name == name) {
            Some(webhook) => Endpoint::from_config(webhook),
            None => Err(WebhookError::Unknown {
                name: name.to_string(),
                known: if config.webhooks.is_empty() {
                    "none".to_string()
                } else {
                    config
                        .webhooks
                        .iter()
                        .map(|w| w.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        }
    }

    /// POSTs one event, signed now. Ok with the status for any 2xx.
    pub async fn post(&self, payload: &WebhookPayload) -> Result<u16, PostError> {
        let body = payload.to_json();
        let timestamp = crate::clock::now_unix();
        let signature = sign(self.secret.expose().as_bytes(), timestamp, &body);
        let request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(EVENT_ID_HEADER, payload.id.to_string())
            .body(body);
        let response = request.send().await.map_err(|e| self.describe(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        Err(PostError::Status {
            status: status.as_u16(),
            excerpt: excerpt(response).await,
        })
    }

    fn describe(&self, error: reqwest::Error) -> PostError {
        // The URL stays out of the text, which goes to the store and logs.
        let error = error.without_url();
        if error.is_timeout() {
            PostError::Timeout(self.timeout)
        } else if error.is_connect() {
            PostError::Connect(error_chain(&error))
        } else {
            PostError::Other(error_chain(&error))
        }
    }
}

/// reqwest's message and its causes ("error sending request": connection
/// refused), without the URL twice.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// `": first line of the answer"`, at most [`ERROR_EXCERPT_BYTES`], read
/// chunk by chunk so a huge answer is never held, control characters out.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(ERROR_EXCERPT_BYTES);
    let text: String = String::from_utf8_lossy(&bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}
