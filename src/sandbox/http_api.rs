//! The sandbox's HTTP sending APIs, shaped like the real ones, over HTTPS
//! with the sandbox CA's certificate (the SMTP server's):
//!
//! - Microsoft Graph: `POST /v1.0/users/{mailbox}/sendMail`, the MIME in
//!   base64 with `Content-Type: text/plain`; `202 Accepted`, empty body.
//! - The Gmail API: `POST /gmail/v1/users/{user}/messages/send` with JSON
//!   `{"raw": base64url}`, and the media upload
//!   `POST /upload/gmail/v1/users/{user}/messages/send?uploadType=media`
//!   with `message/rfc822`; `200` and `{"id", "threadId", "labelIds"}`.
//!
//! Each checks the bearer token as the SMTP server does (signature,
//! issuer, audience and expiry for a JWT, then introspection; see
//! `SandboxVerifier::check`), then the API's own permission: Graph wants
//! `Mail.Send` (delegated `scp`, an app's `roles`, or the sandbox's
//! `https://graph.microsoft.com/...` scope names), Gmail `gmail.send` or a
//! scope that includes it. A token with only an SMTP scope gets the real
//! APIs' `403` (`ErrorAccessDenied`; `insufficientPermissions` with
//! `WWW-Authenticate: ... error="insufficient_scope"`). A mailbox in the
//! path that is not the token's subject is refused the same way.
//!
//! Recipients are the `To`, `Cc` and `Bcc` header fields, as with the real
//! APIs; the message is stored without `Bcc` (as delivered copies are),
//! in the SMTP server's inbox, with the transport recorded.
//!
//! Faults ([`ApiFaults`]) answer before the token is looked at, with the
//! API's own error document for the status: 401 (a good token refused, as
//! happens), 403, 413, 429 and 503 with `Retry-After`, and slow replies.

use super::armed::ArmedFaults;
use super::inbox::{Delivery, Inbox};
use super::smtp::FaultTimes;
use super::{SandboxVerifier, certs::SandboxCa};
use crate::message::recipients::{header_recipients, without_bcc};
use crate::secret::Secret;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Graph's request limit (base64 body), as the real service refuses.
const GRAPH_MAX_REQUEST: usize = 4 * 1024 * 1024;
/// Gmail's message limit through the upload endpoint.
const GMAIL_MAX_MESSAGE: usize = 35 * 1024 * 1024;
/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which API a request, a fault or a stored message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Graph,
    Gmail,
}

impl Api {
    /// The inbox's `transport` for what arrives here.
    pub fn transport(self) -> &'static str {
        match self {
            Api::Graph => "graph",
            Api::Gmail => "gmail_api",
        }
    }

    /// Whether a token with these scopes and roles may send here. The
    /// scopes are the real ones (`Mail.Send` short as Entra's `scp` has
    /// it, or the full resource names the sandbox's other profiles issue).
    pub fn grants(self, scopes: &[String], roles: &[String]) -> bool {
        let any =
            |names: &[&str], list: &[String]| list.iter().any(|s| names.contains(&s.as_str()));
        match self {
            Api::Graph => {
                any(
                    &[
                        "Mail.Send",
                        "https://graph.microsoft.com/Mail.Send",
                        "https://graph.microsoft.com/.default",
                    ],
                    scopes,
                ) || any(&["Mail.Send"], roles)
            }
            // What users.messages.send accepts.
            Api::Gmail => any(
                &[
                    "https://www.googleapis.com/auth/gmail.send",
                    "https://www.googleapis.com/auth/gmail.compose",
                    "https://www.googleapis.com/auth/gmail.modify",
                    "https://mail.google.com/",
                ],
                scopes,
            ),
        }
    }
}

/// An error answer in the API's own shape.
fn error_response(api: Api, status: u16, retry_after: Option<u64>) -> Response {
    let (code, message) = match (api, status) {
        (Api::Graph, 401) => (
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        ),
        (Api::Graph, 403) => (
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        ),
        (Api::Graph, 404) => (
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        ),
        (Api::Graph, 413) => (
            "RequestBodyTooLarge",
            "The maximum request length supported is 4MB.",
        ),
        (Api::Graph, 429) => (
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
        ),
        (Api::Graph, 503) => (
            "ServiceUnavailable",
            "The service is temporarily unavailable.",
        ),
        (Api::Graph, _) => ("ErrorInvalidRequest", "The request is invalid."),
        (Api::Gmail, 401) => (
            "authError",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        ),
        (Api::Gmail, 403) => (
            "insufficientPermissions",
            "Request had insufficient authentication scopes.",
        ),
        (Api::Gmail, 404) => ("notFound", "Requested entity was not found."),
        (Api::Gmail, 413) => ("uploadTooLarge", "Message too large."),
        (Api::Gmail, 429) => (
            "rateLimitExceeded",
            "Too many concurrent requests for user.",
        ),
        (Api::Gmail, 503) => ("backendError", "The service is currently unavailable."),
        (Api::Gmail, _) => ("invalidArgument", "Invalid argument."),
    };
    api_error(api, status, code, message, retry_after)
}

fn api_error(
    api: Api,
    status: u16,
    code: &str,
    message: &str,
    retry_after: Option<u64>,
) -> Response {
    let body = match api {
        Api::Graph => serde_json::json!({ "error": { "code": code, "message": message } }),
        Api::Gmail => serde_json::json!({ "error": {
            "code": status,
            "message": message,
            "errors": [{ "message": message, "domain": "global", "reason": code }],
            "status": google_status(status),
        } }),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    if status == StatusCode::FORBIDDEN && api == Api::Gmail && code == "insufficientPermissions" {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Bearer realm=\"https://accounts.google.com/\", error=\"insufficient_scope\", scope=\"https://www.googleapis.com/auth/gmail.send\"",
            ),
        );
    }
    response
}

fn google_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        413 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// A fault the APIs inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFault {
    /// Answer `status` (with the API's error document for it, and
    /// `Retry-After` if given) instead of looking at the request; `api`
    /// `None` hits both APIs.
    Status {
        api: Option<Api>,
        status: u16,
        retry_after: Option<u64>,
    },
    /// Wait this long before answering.
    Slow(Duration),
}

/// The faults in force. Cheap to clone; clones share the same set.
#[derive(Debug, Clone, Default)]
pub struct ApiFaults {
    armed: ArmedFaults<ApiFault>,
}

impl ApiFaults {
    pub fn inject(&self, fault: ApiFault, times: FaultTimes) {
        self.armed.inject(fault, times);
    }

    pub fn clear(&self) {
        self.armed.clear();
    }

    fn fire<T>(&self, select: impl Fn(&ApiFault) -> Option<T>) -> Option<T> {
        self.armed.fire(select)
    }
}

/// What the APIs have seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiStats {
    pub graph_requests: u64,
    pub gmail_requests: u64,
    /// Messages accepted and stored.
    pub accepted: u64,
    /// Requests refused for the token (401) or its permissions (403).
    pub unauthorized: u64,
    pub forbidden: u64,
    /// The most requests that were in progress at once (per-mailbox
    /// concurrency limits are checked against it).
    pub max_in_flight: u64,
}

#[derive(Default)]
struct Counters {
    graph_requests: AtomicU64,
    gmail_requests: AtomicU64,
    accepted: AtomicU64,
    unauthorized: AtomicU64,
    forbidden: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// When each request arrived, per API: tests check a client's pauses.
    arrivals: Mutex<Vec<(Api, Instant)>>,
}

struct ApiCore {
    verifier: Arc<SandboxVerifier>,
    inbox: Inbox,
    faults: ApiFaults,
    counters: Counters,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpApiError {
    #[error("cannot listen on {addr}: {source}; choose another port")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the listening address: {0}")]
    LocalAddr(std::io::Error),
    #[error("cannot set up the APIs' TLS: {0}")]
    Certs(#[from] super::certs::CertsError),
}

/// The running APIs.
pub struct RunningHttpApi {
    core: Arc<ApiCore>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningHttpApi {
    pub(crate) async fn start(
        addr: SocketAddr,
        verifier: Arc<SandboxVerifier>,
        inbox: Inbox,
        ca: &SandboxCa,
    ) -> Result<RunningHttpApi, HttpApiError> {
        let listener = crate::listen::bind(addr)
            .await
            .map_err(|source| HttpApiError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(HttpApiError::LocalAddr)?;
        let tls = tokio_rustls::TlsAcceptor::from(ca.server_config()?);
        let core = Arc::new(ApiCore {
            verifier,
            inbox,
            faults: ApiFaults::default(),
            counters: Counters::default(),
        });
        let router = Router::new()
            .route("/v1.0/users/{mailbox}/sendMail", post(graph_send))
            .route("/gmail/v1/users/{user}/messages/send", post(gmail_send))
            .route(
                "/upload/gmail/v1/users/{user}/messages/send",
                post(gmail_upload),
            )
            // The APIs' own limits are checked in the handlers, with their
            // own error documents; this only caps what is read at all.
            .layer(DefaultBodyLimit::max(GMAIL_MAX_MESSAGE + 1024 * 1024))
            .with_state(core.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let listener =
                crate::tls::listener::TlsListener::start(listener, tls, HANDSHAKE_TIMEOUT);
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        tracing::info!(%addr, "sandbox Graph and Gmail APIs listening (HTTPS)");
        Ok(RunningHttpApi {
            core,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What an account's `api_url` is: `https://127.0.0.1:PORT` (the
    /// sandbox certificate names 127.0.0.1 and localhost).
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn faults(&self) -> &ApiFaults {
        &self.core.faults
    }

    pub fn stats(&self) -> ApiStats {
        let c = &self.core.counters;
        ApiStats {
            graph_requests: c.graph_requests.load(Ordering::Relaxed),
            gmail_requests: c.gmail_requests.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            unauthorized: c.unauthorized.load(Ordering::Relaxed),
            forbidden: c.forbidden.load(Ordering::Relaxed),
            max_in_flight: c.max_in_flight.load(Ordering::Relaxed),
        }
    }

    /// When each request to `api` arrived, oldest first.
    pub fn arrivals(&self, api: Api) -> Vec<Instant> {
        self.core
            .counters
            .arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(a, _)| *a == api)
            .map(|(_, at)| *at)
            .collect()
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for RunningHttpApi {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn graph_send(
    State(core): State<Arc<ApiCore>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    core.serve(Api::Graph, &mailbox, &headers, Body::GraphBase64(body))
        .await
}

async fn gmail_send(
    State(core): State<Arc<ApiCore>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    core.serve(Api::Gmail, &user, &headers, Body::GmailJson(body))
        .await
}

async fn gmail_upload(
    State(core): State<Arc<ApiCore>>,
    Path(user): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if query.get("uploadType").map(String::as_str) != Some("media") {
        return api_error(
            Api::Gmail,
            400,
            "badRequest",
            "Media upload needs uploadType=media.",
            None,
        );
    }
    core.serve(Api::Gmail, &user, &headers, Body::GmailMedia(body))
        .await
}

enum Body {
    GraphBase64(Bytes),
    GmailJson(Bytes),
    GmailMedia(Bytes),
}

impl ApiCore {
    async fn serve(&self, api: Api, user: &str, headers: &HeaderMap, body: Body) -> Response {
        let counter = match api {
            Api::Graph => &self.counters.graph_requests,
            Api::Gmail => &self.counters.gmail_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.counters
            .arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((api, Instant::now()));
        let now = self.counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let response = self.answer(api, user, headers, body).await;
        self.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
        match response.status() {
            StatusCode::UNAUTHORIZED => {
                self.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
            }
            StatusCode::FORBIDDEN => {
                self.counters.forbidden.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        response
    }

    async fn answer(&self, api: Api, user: &str, headers: &HeaderMap, body: Body) -> Response {
        if let Some(delay) = self.faults.fire(|f| match f {
            ApiFault::Slow(delay) => Some(*delay),
            ApiFault::Status { .. } => None,
        }) {
            tokio::time::sleep(delay).await;
        }
        if let Some((status, retry_after)) = self.faults.fire(|f| match f {
            ApiFault::Status {
                api: target,
                status,
                retry_after,
            } if target.is_none_or(|t| t == api) => Some((*status, *retry_after)),
            _ => None,
        }) {
            return error_response(api, status, retry_after);
        }
        let Some(token) = bearer(headers) else {
            return error_response(api, 401, None);
        };
        let checked = match self.verifier.check(&token).await {
            Ok(checked) => checked,
            Err(status) if status.status == "temporarily_unavailable" => {
                return error_response(api, 503, Some(1));
            }
            Err(_) => return error_response(api, 401, None),
        };
        if !api.grants(&checked.scopes, &checked.roles) {
            return error_response(api, 403, None);
        }
        let for_subject =
            user.eq_ignore_ascii_case(&checked.subject) || (api == Api::Gmail && user == "me");
        if !for_subject {
            return match api {
                Api::Graph => error_response(api, 403, None),
                Api::Gmail => api_error(
                    api,
                    403,
                    "forbidden",
                    &format!("Delegation denied for {}", checked.subject),
                    None,
                ),
            };
        }
        let mime = match decode(api, headers, body) {
            Ok(mime) => mime,
            Err(response) => return *response,
        };
        let recipients = match header_recipients(&mime) {
            Ok(recipients) if !recipients.is_empty() => recipients,
            Ok(_) => {
                return match api {
                    Api::Graph => api_error(
                        api,
                        400,
                        "ErrorInvalidRecipients",
                        "At least one recipient is not valid.",
                        None,
                    ),
                    Api::Gmail => api_error(
                        api,
                        400,
                        "invalidArgument",
                        "Recipient address required",
                        None,
                    ),
                };
            }
            Err(error) => {
                return api_error(api, 400, invalid_mime_code(api), &error.to_string(), None);
            }
        };
        let delivery = Delivery {
            mail_from: from_address(&mime).unwrap_or_else(|| checked.subject.clone()),
            rcpt_to: recipients,
            user: Some(checked.subject.clone()),
            mechanism: None,
            token_fingerprint: Some(token.fingerprint()),
        };
        let entry = match self
            .inbox
            .store_via(api.transport(), delivery, without_bcc(&mime))
            .await
        {
            Ok(entry) => entry,
            Err(error) => {
                tracing::error!(%error, "the sandbox inbox could not store a message");
                return error_response(api, 503, Some(1));
            }
        };
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        match api {
            Api::Graph => StatusCode::ACCEPTED.into_response(),
            Api::Gmail => axum::Json(serde_json::json!({
                "id": entry.id,
                "threadId": entry.id,
                "labelIds": ["SENT"],
            }))
            .into_response(),
        }
    }
}

fn invalid_mime_code(api: Api) -> &'static str {
    match api {
        Api::Graph => "ErrorMimeContentInvalid",
        Api::Gmail => "invalidArgument",
    }
}

/// The message from a request's body, as each endpoint takes it; an error
/// answer in the API's shape otherwise.
fn decode(api: Api, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Box<Response>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let refuse = |code: &str, message: &str| Box::new(api_error(api, 400, code, message, None));
    match body {
        Body::GraphBase64(body) => {
            if body.len() > GRAPH_MAX_REQUEST {
                return Err(Box::new(error_response(api, 413, None)));
            }
            if content_type != "text/plain" {
                return Err(refuse(
                    "ErrorInvalidRequest",
                    "A MIME message must be sent with Content-Type: text/plain.",
                ));
            }
            let text: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(&text)
                .map_err(|_| {
                    refuse(
                        "ErrorMimeContentInvalidBase64String",
                        "Invalid base64 string for MIME content.",
                    )
                })
        }
        Body::GmailJson(body) => {
            #[derive(serde::Deserialize)]
            struct Raw {
                raw: String,
            }
            let raw: Raw = serde_json::from_slice(&body)
                .map_err(|_| refuse("invalidArgument", "Invalid JSON payload received."))?;
            let raw = raw.raw.trim_end_matches('=');
            let mime = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(raw)
                .map_err(|_| refuse("invalidArgument", "Invalid value for ByteString"))?;
            if mime.len() > GMAIL_MAX_MESSAGE {
                return Err(Box::new(error_response(api, 413, None)));
            }
            Ok(mime)
        }
        Body::GmailMedia(body) => {
            if body.len() > GMAIL_MAX_MESSAGE {
                return Err(Box::new(error_response(api, 413, None)));
            }
            if content_type != "message/rfc822" {
                return Err(refuse(
                    "badContent",
                    "Media type is not supported. Valid media types: [message/*]",
                ));
            }
            Ok(body.to_vec())
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| Secret::new(token.trim().to_string()))
}

fn from_address(mime: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(mime)?;
    parsed
        .from()
        .and_then(|from| from.first())
        .and_then(|address| address.address())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_smtp_scope_sends_through_neither_api() {
        for smtp in [
            "smtp.send",
            "SMTP.Send",
            "https://outlook.office.com/SMTP.Send",
        ] {
            assert!(!Api::Graph.grants(&list(&[smtp]), &[]), "{smtp}");
            assert!(!Api::Gmail.grants(&list(&[smtp]), &[]), "{smtp}");
        }
        assert!(Api::Graph.grants(&list(&["Mail.Send"]), &[]));
        assert!(Api::Graph.grants(&[], &list(&["Mail.Send"])));
        assert!(!Api::Graph.grants(&[], &list(&["SMTP.SendAsApp"])));
        assert!(Api::Gmail.grants(&list(&["https://www.googleapis.com/auth/gmail.send"]), &[]));
        assert!(!Api::Gmail.grants(
            &list(&["https://www.googleapis.com/auth/gmail.readonly"]),
            &[]
        ));
    }

    #[tokio::test]
    async fn error_documents_have_the_real_shapes() {
        let response = error_response(Api::Gmail, 403, None);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(
            response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("insufficient_scope"))
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            json["error"]["errors"][0]["reason"],
            "insufficientPermissions"
        );
        assert_eq!(json["error"]["status"], "PERMISSION_DENIED");
        let response = error_response(Api::Graph, 429, Some(3));
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
    }
}
