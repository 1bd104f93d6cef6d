//! The endpoints a browser visits: `/authorize` (consent, then a redirect
//! back to the client with a code) and `/device` (enter a user code and
//! approve). Until the redirect URI is known good, errors are shown as a
//! page; after, they go back to the client as RFC 6749 §4.1.2.1 redirects.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

use super::config::OFFLINE_ACCESS;
use super::consent::{AuthorizeRequest, PendingConsent};
use super::engine::AuthCore;
use super::html;
use super::ledger::{CodeRequest, is_valid_pkce_value};
use super::params::Params;

type Core = State<Arc<AuthCore>>;

/// `GET /authorize`.
pub(crate) async fn authorize(State(core): Core, RawQuery(query): RawQuery) -> Response {
    let params = match Params::parse(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(e) => {
            return html::message(StatusCode::BAD_REQUEST, "Bad request", &e.error_description);
        }
    };
    let Some(client) = params
        .get("client_id")
        .and_then(|id| core.config.client(id))
    else {
        return html::message(
            StatusCode::BAD_REQUEST,
            "Unknown application",
            "client_id is missing or not registered with this sandbox.",
        );
    };
    let redirect_uri = match params.get("redirect_uri") {
        Some(uri) if client.allows_redirect(uri) => uri.to_string(),
        Some(_) => {
            return html::message(
                StatusCode::BAD_REQUEST,
                "Redirect URI not registered",
                "redirect_uri is not one of the client's registered redirect URIs (loopback URIs may use any port).",
            );
        }
        None => match client.redirect_uris.as_slice() {
            [only] if !only.contains("127.0.0.1") && !only.contains("[::1]") => only.clone(),
            _ => {
                return html::message(
                    StatusCode::BAD_REQUEST,
                    "Redirect URI missing",
                    "redirect_uri is required for this client.",
                );
            }
        },
    };
    let state = params.get("state").map(str::to_string);
    let back = |error: &str, description: &str| {
        redirect_with(
            &redirect_uri,
            &core.issuer,
            &[("error", error), ("error_description", description)],
            state.as_deref(),
        )
    };
    if params.get("response_type") != Some("code") {
        return back(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    let Some(code_challenge) = params.get("code_challenge") else {
        return back(
            "invalid_request",
            "PKCE is required: send code_challenge and code_challenge_method=S256",
        );
    };
    if params.get("code_challenge_method") != Some("S256") {
        return back(
            "invalid_request",
            "code_challenge_method must be S256; plain is refused",
        );
    }
    if !is_valid_pkce_value(code_challenge) {
        return back(
            "invalid_request",
            "code_challenge must be 43 to 128 characters of [A-Za-z0-9-._~]",
        );
    }
    let mut scopes = match core.parse_scope(params.get("scope")) {
        Ok(scopes) => scopes,
        Err(e) => return back("invalid_scope", &e.error_description),
    };
    if let Err(e) = core.check_shape_scopes(&scopes, false) {
        return back(e.error.as_str(), &e.error_description);
    }
    // OpenID Connect Core section 11: without prompt=consent the server
    // MUST ignore offline_access (no refresh token comes of it).
    let prompt_consent = params
        .get("prompt")
        .is_some_and(|p| p.split_whitespace().any(|v| v == "consent"));
    if core.config.offline_access_needs_consent_prompt && !prompt_consent {
        scopes.retain(|s| s != OFFLINE_ACCESS);
    }
    let login_hint = params.get("login_hint");
    if let Some(hint) = login_hint
        && !core.config.is_user(hint)
    {
        return back(
            "invalid_request",
            "login_hint is not a user of this sandbox",
        );
    }
    let request = AuthorizeRequest {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        code_challenge: code_challenge.to_string(),
        scopes,
    };
    if core.config.auto_approve {
        let Some(user) = login_hint.or(core.config.users.first().map(String::as_str)) else {
            return back("access_denied", "this sandbox has no users to approve as");
        };
        return approve(&core, request, user);
    }
    let Some(form_token) = core
        .forms()
        .open(PendingConsent::Authorize(request.clone()), Instant::now())
    else {
        return back(
            "temporarily_unavailable",
            "too many consent pages are open; try again later",
        );
    };
    html::consent(
        &request.client_id,
        &request.scopes,
        &core.config.users,
        login_hint,
        &form_token,
    )
}

/// `POST /authorize`: the consent form's answer.
pub(crate) async fn authorize_decision(State(core): Core, body: axum::body::Bytes) -> Response {
    let Ok(form) = Params::parse(&body) else {
        return html::message(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The form could not be read.",
        );
    };
    let taken = form
        .get("form_token")
        .and_then(|token| core.forms().take(token, Instant::now()));
    let Some(PendingConsent::Authorize(request)) = taken else {
        return html::message(
            StatusCode::BAD_REQUEST,
            "Form expired",
            "This consent form was already used or has expired. Start the sign-in again from the application.",
        );
    };
    match (form.get("decision"), form.get("user")) {
        (Some("allow"), Some(user)) if core.config.is_user(user) => approve(&core, request, user),
        (Some("allow"), _) => html::message(
            StatusCode::BAD_REQUEST,
            "Unknown mailbox",
            "Choose one of the listed mailboxes.",
        ),
        _ => redirect_with(
            &request.redirect_uri,
            &core.issuer,
            &[
                ("error", "access_denied"),
                ("error_description", "the user denied the request"),
            ],
            request.state.as_deref(),
        ),
    }
}

fn approve(core: &AuthCore, request: AuthorizeRequest, user: &str) -> Response {
    let code = core.issue_code(CodeRequest {
        client_id: request.client_id,
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.code_challenge,
        subject: user.to_string(),
        scopes: request.scopes,
    });
    redirect_with(
        &request.redirect_uri,
        &core.issuer,
        &[("code", code.expose())],
        request.state.as_deref(),
    )
}

/// A 302 to the client's redirect URI with `params`, `state` and `iss`
/// (RFC 9207, so the client can tell which server answered).
fn redirect_with(
    redirect_uri: &str,
    issuer: &str,
    params: &[(&str, &str)],
    state: Option<&str>,
) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return html::message(
            StatusCode::BAD_REQUEST,
            "Bad redirect URI",
            "The redirect URI is not a valid URL.",
        );
    };
    {
        let mut query = url.query_pairs_mut();
        for (key, value) in params {
            query.append_pair(key, value);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", issuer);
    }
    match HeaderValue::from_str(url.as_str()) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => html::message(
            StatusCode::BAD_REQUEST,
            "Bad redirect URI",
            "The redirect URI cannot be sent in a header.",
        ),
    }
}

/// `GET /device`: the code entry page (`?user_code=` pre-fills it).
pub(crate) async fn device_page(State(core): Core, RawQuery(query): RawQuery) -> Response {
    let params = Params::parse(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let user_code = params.get("user_code");
    let request = user_code.and_then(|code| core.ledger().device_request(code));
    let Some(form_token) = core.forms().open(PendingConsent::Device, Instant::now()) else {
        return html::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Too many forms are open; try again later.",
        );
    };
    html::device_entry(user_code, request, &core.config.users, &form_token)
}

/// `POST /device`: approve or deny a user code.
pub(crate) async fn device_decision(State(core): Core, body: axum::body::Bytes) -> Response {
    let Ok(form) = Params::parse(&body) else {
        return html::message(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The form could not be read.",
        );
    };
    let taken = form
        .get("form_token")
        .and_then(|token| core.forms().take(token, Instant::now()));
    if taken != Some(PendingConsent::Device) {
        return html::message(
            StatusCode::BAD_REQUEST,
            "Form expired",
            "This form was already used or has expired. Open the device page again.",
        );
    }
    let Some(user_code) = form.get("user_code") else {
        return html::message(
            StatusCode::BAD_REQUEST,
            "Code missing",
            "Enter the code shown on the device.",
        );
    };
    let approve_as = match (form.get("decision"), form.get("user")) {
        (Some("allow"), Some(user)) if core.config.is_user(user) => Some(user),
        (Some("allow"), _) => {
            return html::message(
                StatusCode::BAD_REQUEST,
                "Unknown mailbox",
                "Choose one of the listed mailboxes.",
            );
        }
        _ => None,
    };
    match core
        .ledger()
        .decide_device(user_code, approve_as, Instant::now())
    {
        Ok(()) if approve_as.is_some() => html::message(
            StatusCode::OK,
            "Device connected",
            "You can return to your device.",
        ),
        Ok(()) => html::message(
            StatusCode::OK,
            "Request denied",
            "The device will not get access.",
        ),
        Err(e) => html::message(StatusCode::BAD_REQUEST, "Code not accepted", &e.to_string()),
    }
}
