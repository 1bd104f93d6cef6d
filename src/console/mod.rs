//! The web console (issue 12, item 5) at `/console` on the `[http]`
//! listener, for operators: accounts with their token state and a Connect
//! button (the authorization code flow with PKCE through the web redirect,
//! its `state` bound to the console session), the queue with retry and
//! cancel, a message's history, the audit log with search, webhook
//! endpoints, and the sandbox inbox. Server-rendered HTML, no script, one
//! embedded stylesheet: it needs no network but the relay's.
//!
//! On only with a `[console]` section. Everything a page shows comes from
//! the functions the CLI uses (`oauth::status`, `Store::list_messages`,
//! `Store::queue_batch`, `audit::search`, `Store::webhook_statuses`,
//! `sandbox::inbox`), so the console and the CLI cannot disagree.
//!
//! - [`session`]: sessions, CSRF tokens and origin checks, without sockets.
//! - [`login`]: the admin password and the login rate limits.
//! - `pages`: the HTML; `handlers`: the routes.

mod handlers;
pub mod login;
mod pages;
pub mod session;

use crate::http::HttpState;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

pub use login::ConsoleError;

/// The console's stylesheet, in the binary: no file to deploy, no CDN.
const STYLESHEET: &str = include_str!("console.css");

/// Scripts: none. Styles and images: this origin's only. No framing, no
/// `<base>`, no plugins. (No `form-action`: Connect's form is answered
/// with a redirect to the provider, which `form-action 'self'` would block.)
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

#[derive(Clone)]
pub(crate) struct ConsoleState {
    pub http: HttpState,
    pub sessions: Arc<session::Sessions>,
    pub limits: Arc<login::LoginLimits>,
    /// The admin password, or why it cannot be read (then only API keys
    /// log in; `serve` refuses to start in that case, see [`check_config`]).
    pub password: Arc<Result<Option<login::AdminPassword>, String>>,
    pub https: bool,
}

impl ConsoleState {
    fn new(http: HttpState) -> Option<Self> {
        let console = http.config.console.clone()?;
        let mut policy = session::SessionPolicy::default();
        if let Some(idle) = console.session_idle {
            policy.idle = idle;
        }
        if let Some(max) = console.session_max {
            policy.max = max;
        }
        let https = http.config.http.as_ref().is_some_and(|h| h.cert.is_some());
        let password = login::AdminPassword::from_config(&console).map_err(|e| e.to_string());
        Some(ConsoleState {
            http,
            sessions: Arc::new(session::Sessions::new(policy)),
            limits: Arc::default(),
            password: Arc::new(password),
            https,
        })
    }
}

/// Checks what the console needs from the config before `serve` listens:
/// a configured admin password must be readable.
pub fn check_config(config: &crate::config::Config) -> Result<(), ConsoleError> {
    if let Some(console) = &config.console {
        login::AdminPassword::from_config(console)?;
    }
    Ok(())
}

/// The console's routes, for [`crate::http::router`]; none without `[console]`.
pub fn routes(state: HttpState) -> Router {
    let Some(state) = ConsoleState::new(state) else {
        return Router::new();
    };
    Router::new()
        .route("/console", get(handlers::home))
        .route("/console/", get(handlers::home))
        .route("/console/static/console.css", get(stylesheet))
        .route(
            "/console/login",
            get(handlers::login_page).post(handlers::login),
        )
        .route("/console/logout", post(handlers::logout))
        .route("/console/accounts", get(handlers::accounts))
        .route("/console/accounts/{name}/connect", post(handlers::connect))
        .route("/console/oauth/callback", get(handlers::callback))
        .route("/console/queue", get(handlers::queue))
        .route("/console/queue/{id}/{action}", post(handlers::queue_post))
        .route("/console/messages/{id}", get(handlers::message))
        .route("/console/audit", get(handlers::audit))
        .route("/console/webhooks", get(handlers::webhooks))
        .route("/console/inbox", get(handlers::inbox))
        // Anything else under /console is the console's own 404, with the
        // same security headers as its pages (not the bare 404 of a route
        // that does not exist).
        .route("/console/{*rest}", axum::routing::any(not_found))
        .layer(axum::middleware::map_response_with_state(
            state.https,
            security_headers,
        ))
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::response::Html(
            pages::notice("Not found", "There is no such page in the console.", None).into_string(),
        ),
    )
        .into_response()
}

async fn stylesheet() -> Response {
    let mut response = Response::new(axum::body::Body::from(STYLESHEET));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    response
}

/// On every console response, whatever the handler answered.
async fn security_headers(
    axum::extract::State(https): axum::extract::State<bool>,
    mut response: Response,
) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if https {
        // A year, the usual; only this host (no includeSubDomains: the
        // relay does not speak for its neighbours).
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}
