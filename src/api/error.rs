//! The API's errors: one enum, each with its HTTP status and a stable code
//! that clients branch on, answered as
//! `{"error": {"code": "...", "message": "..."}}`. The message says what
//! happened and what to do; README's API section lists the codes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("this API key lacks the {0} scope; make a key with `--scope {0}`")]
    MissingScope(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("the request body is not valid JSON for this endpoint: {0}")]
    MalformedJson(String),
    #[error("the request body is {size} bytes or more; at most {max} are accepted")]
    BodyTooLarge { size: usize, max: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    HeaderInjection(String),
    #[error("{0}")]
    BadAddress(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Refused(String),
    #[error("no message {0} is visible to this key; check the id")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "the Idempotency-Key was used before with a different request; use a new key for a new request"
    )]
    IdempotencyMismatch,
    #[error(
        "a request with this Idempotency-Key is still being answered; retry in a moment for its answer"
    )]
    IdempotencyInProgress,
    #[error("this key is over its rate of {rate}; retry after {} s", retry_after.as_secs().max(1))]
    RateLimited { rate: String, retry_after: Duration },
    #[error("the message could not be queued ({0}); nothing was accepted, try again")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::MissingScope(_) | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } | ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Invalid(_)
            | ApiError::HeaderInjection(_)
            | ApiError::BadAddress(_)
            | ApiError::Refused(_)
            | ApiError::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::IdempotencyInProgress => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code (README lists them).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::MissingScope(_) => "missing_scope",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::Invalid(_) => "invalid_request",
            ApiError::HeaderInjection(_) => "header_injection",
            ApiError::BadAddress(_) => "invalid_address",
            ApiError::TooLarge(_) => "message_too_large",
            ApiError::Refused(_) => "message_refused",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::IdempotencyMismatch => "idempotency_key_reused",
            ApiError::IdempotencyInProgress => "idempotency_key_in_progress",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    /// Whether a retry of the same request may succeed (the store failed):
    /// such an answer is not remembered under an Idempotency-Key.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiError::Unavailable(_)
                | ApiError::RateLimited { .. }
                | ApiError::IdempotencyInProgress
        )
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let ApiError::RateLimited { retry_after, .. } = &self {
            // Whole seconds, rounded up (RFC 9110 section 10.2.3).
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if matches!(self, ApiError::Unauthenticated(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"oxirelay\""),
            );
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        ApiError::Unavailable(error.to_string())
    }
}
