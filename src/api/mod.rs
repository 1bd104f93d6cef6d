//! The `/v1` send API (issue 12, item 1), mounted on the relay's HTTP
//! server ([`crate::http::router`]): send structured, raw and batched
//! messages, follow and cancel them, with API keys, idempotency keys and
//! an OpenAPI document. Every message goes through the one acceptance path
//! ([`crate::submit::Acceptance::accept`]), as SMTP submissions do; the
//! 202 comes only after it returns (contract 1).
//!
//! - [`keys`]: API keys, their scopes and rate limits; [`keys::authenticate`].
//! - [`compose`]: request bodies and the MIME they become.
//! - [`error`]: the JSON errors and their stable codes.
//! - `send`: the `POST` routes; `idempotency`: `Idempotency-Key`.
//! - `messages`: `GET` and `DELETE`; `openapi`: `/v1/openapi.json`.

pub mod compose;
pub mod error;
mod idempotency;
pub mod keys;
mod messages;
mod openapi;
mod send;

use crate::http::HttpState;
use crate::submit::{AcceptRules, Acceptance, DEFAULT_MAX_MESSAGE_SIZE};
use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;

pub use error::ApiError;
pub use keys::{ApiKey, ApiKeyError, Scope, authenticate};

/// Every route of the API, as the OpenAPI document lists them (a test
/// checks the two agree, and that each answers).
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/messages"),
    ("get", "/v1/messages"),
    ("post", "/v1/messages/raw"),
    ("post", "/v1/messages/batch"),
    ("get", "/v1/messages/{id}"),
    ("delete", "/v1/messages/{id}"),
    ("get", "/v1/openapi.json"),
];

/// What the API's handlers share.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub http: HttpState,
    /// Shared, not cloned with the state for each request: it holds
    /// the rules' maps.
    pub acceptance: Arc<Acceptance>,
    pub keys: Arc<keys::KeyCache>,
    pub limits: Arc<keys::RateLimits>,
    pub local: Arc<idempotency::LocalLocks>,
    pub max_message_size: usize,
}

impl ApiState {
    fn new(http: HttpState) -> Self {
        let max_message_size = DEFAULT_MAX_MESSAGE_SIZE;
        let rules = AcceptRules::from_config(&http.config, max_message_size);
        ApiState {
            acceptance: Arc::new(Acceptance::new(
                rules,
                http.store.clone(),
                http.wake.clone(),
            )),
            http,
            keys: Arc::default(),
            limits: Arc::default(),
            local: Arc::default(),
            max_message_size,
        }
    }

    /// The largest request body: a message of the largest size, base64
    /// (4/3) inside JSON, with room for the other fields.
    fn max_body(&self) -> usize {
        self.max_message_size / 3 * 4 + 1024 * 1024
    }

    fn max_batch_body(&self) -> usize {
        self.max_body() * 2
    }
}

/// The API's routes, for [`crate::http::router`].
pub fn routes(state: HttpState) -> Router {
    let state = ApiState::new(state);
    Router::new()
        .route("/v1/messages", post(send::structured).get(messages::list))
        .route("/v1/messages/raw", post(send::raw))
        .route("/v1/messages/batch", post(send::batch))
        .route(
            "/v1/messages/{id}",
            get(messages::show).delete(messages::cancel),
        )
        .route("/v1/openapi.json", get(openapi::document))
        .with_state(state)
}
