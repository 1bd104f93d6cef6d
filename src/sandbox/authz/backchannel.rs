//! The endpoints clients call directly: `/token`, `/device_authorization`,
//! `/revoke`, `/introspect`. Each authenticates the client, hands the
//! parsed request to the engine, and answers JSON with `no-store`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;

use super::client_auth::authenticate;
use super::engine::AuthCore;
use super::faults::TokenFault;
use super::ledger::wire_seconds;
use super::oauth_error::{ErrorCode, OAuthError, no_store};
use super::params::Params;
use super::stats::GrantKind;

type Core = State<Arc<AuthCore>>;

/// `POST /token`. Every request is counted by grant type before anything
/// can fail, so "exactly one token request" assertions see every attempt.
pub(crate) async fn token(State(core): Core, headers: HeaderMap, body: Bytes) -> Response {
    let params = Params::parse(&body);
    let kind = GrantKind::from_grant_type(params.as_ref().ok().and_then(|p| p.get("grant_type")));
    core.stats.token_request(kind);
    let fault = core.faults.next_request();
    if let Some(TokenFault::Throttled { retry_after }) = fault {
        core.stats.update(|s| s.token_failures += 1);
        let error = OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "injected fault: the token endpoint is throttling this client",
        );
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(
                axum::http::header::RETRY_AFTER,
                retry_after.as_secs().to_string(),
            )],
            axum::Json(error),
        )
            .into_response();
    }
    let result = match params {
        Ok(params) => token_inner(&core, &headers, &params, fault).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(response) => (StatusCode::OK, no_store(), axum::Json(response)).into_response(),
        Err(error) => {
            core.stats.update(|s| s.token_failures += 1);
            tracing::debug!(error = ?error.error, "sandbox token request refused");
            error.into_response()
        }
    }
}

async fn token_inner(
    core: &AuthCore,
    headers: &HeaderMap,
    params: &Params,
    fault: Option<TokenFault>,
) -> Result<super::engine::TokenResponse, OAuthError> {
    let mut lifetime = None;
    match fault {
        Some(TokenFault::ServerError) => {
            return Err(OAuthError::new(
                ErrorCode::ServerError,
                "injected fault: the sandbox pretends to be down",
            ));
        }
        Some(TokenFault::InvalidGrant) => {
            return Err(OAuthError::invalid_grant(
                "injected fault: the grant is no longer valid (as when the user withdraws consent)",
            ));
        }
        Some(TokenFault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(TokenFault::ShortLived(short)) => lifetime = Some(short),
        // Answered by `token` before the request is read.
        Some(TokenFault::Throttled { .. }) | None => {}
    }
    let client = authenticate(&core.config, headers, params)?;
    core.token_lasting(client, params, lifetime)
}

#[derive(Serialize)]
struct DeviceAuthorizationResponse {
    device_code: String,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: String,
    expires_in: u64,
    interval: u64,
}

/// `POST /device_authorization` (RFC 8628 §3.1).
pub(crate) async fn device_authorization(
    State(core): Core,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = Params::parse(&body).and_then(|params| {
        let client = authenticate(&core.config, &headers, &params)?;
        core.start_device(client, &params)
    });
    match result {
        Ok(start) => {
            let verification_uri = format!("{}/device", core.issuer);
            let complete = format!(
                "{verification_uri}?user_code={}",
                crate::oauth::validate::form_encode(&start.user_code)
            );
            let response = DeviceAuthorizationResponse {
                device_code: start.device_code.expose().to_string(),
                user_code: start.user_code,
                verification_uri,
                verification_uri_complete: complete,
                expires_in: wire_seconds(core.config.device_code_ttl),
                interval: wire_seconds(core.config.device_interval),
            };
            (StatusCode::OK, no_store(), axum::Json(response)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// `POST /revoke` (RFC 7009): 200 with an empty body, also for unknown tokens.
pub(crate) async fn revoke(State(core): Core, headers: HeaderMap, body: Bytes) -> Response {
    core.stats.update(|s| s.revocations += 1);
    let result = Params::parse(&body).and_then(|params| {
        let client = authenticate(&core.config, &headers, &params)?;
        core.revoke(client, &params)
    });
    match result {
        Ok(()) => (StatusCode::OK, no_store()).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `POST /introspect` (RFC 7662).
pub(crate) async fn introspect(State(core): Core, headers: HeaderMap, body: Bytes) -> Response {
    core.stats.update(|s| s.introspections += 1);
    let result = Params::parse(&body).and_then(|params| {
        let client = authenticate(&core.config, &headers, &params)?;
        core.introspect(client, &params)
    });
    match result {
        Ok(answer) => (StatusCode::OK, no_store(), axum::Json(answer)).into_response(),
        Err(error) => error.into_response(),
    }
}
