//! The console's routes. Each GET page needs an operator's session; each
//! POST needs, before it does anything, a session, its CSRF token in the
//! form and (when the browser sends them) an `Origin`/`Referer` of the
//! console's own: anything else is 403 and changes nothing. Every login,
//! logout, refused login and action goes to the audit log.

use super::ConsoleState;
use super::pages::{self, Frame};
use super::session::{self, Flash, PendingConnect, SessionView, Who};
use crate::api::Scope;
use crate::http::PeerAddr;
use crate::oauth::consent;
use crate::oauth::preset::GrantKind;
use crate::store::{
    Event, ListCursor, MessageId, MessageState, QueueAction, QueueFilter, QueueSelection,
};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::Markup;
use std::collections::HashMap;
use std::time::Instant;

type S = State<ConsoleState>;

/// Messages per queue page.
const QUEUE_PAGE: u32 = 50;
/// Audit lines shown per search, and read at most per search: a search
/// of a large log costs a bounded read.
const AUDIT_SHOWN: usize = 200;
const AUDIT_SCANNED: usize = 100_000;
/// Events read to find each account's last validation (as `doctor` does).
const VALIDATION_EVENTS: u32 = 10_000;
/// Inbox entries shown, newest first.
const INBOX_SHOWN: usize = 100;

fn page(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl ConsoleState {
    fn session_id(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| session::cookie_value(h, session::cookie_name(self.https)))
            .map(str::to_string)
    }

    fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// `scheme://host[:port]` of `[http] public_url`, else of the address
    /// the browser used (its `Host`).
    fn base_url(&self, headers: &HeaderMap) -> String {
        let public = self
            .http
            .config
            .http
            .as_ref()
            .and_then(|h| h.public_url.as_deref());
        match public {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!(
                "{}://{}",
                self.scheme(),
                header_text(headers, header::HOST).unwrap_or("127.0.0.1")
            ),
        }
    }

    fn redirect_uri(&self, headers: &HeaderMap) -> String {
        format!("{}/console/oauth/callback", self.base_url(headers))
    }

    /// The origins a POST may come from.
    fn origins(&self, headers: &HeaderMap) -> Vec<String> {
        let mut origins = Vec::new();
        if let Some(host) = header_text(headers, header::HOST) {
            origins.push(format!("{}://{host}", self.scheme()));
        }
        if let Some(public) = self
            .http
            .config
            .http
            .as_ref()
            .and_then(|h| h.public_url.as_deref())
            .and_then(|u| url::Url::parse(u).ok())
        {
            origins.push(public.origin().ascii_serialization());
        }
        origins
    }

    fn inbox_configured(&self) -> bool {
        self.http
            .config
            .console
            .as_ref()
            .is_some_and(|c| c.sandbox_inbox.is_some())
    }

    fn password_configured(&self) -> bool {
        matches!(&*self.password, Ok(Some(_)) | Err(_))
    }

    async fn audit(&self, action: &str, account: Option<&str>, detail: &str) {
        self.http.broker.audit(action, account, detail).await;
    }
}

/// An operator's session, for a page or an action.
struct Operator {
    id: String,
    view: SessionView,
}

impl Operator {
    fn via(&self) -> &str {
        match &self.view.who {
            Who::Admin { via } => via,
            Who::Anonymous => "nobody",
        }
    }

    fn frame(&self, state: &ConsoleState) -> FrameOwned {
        FrameOwned {
            csrf: self.view.csrf.clone(),
            who: format!("logged in with {}", self.via()),
            inbox: state.inbox_configured(),
            flash: state.sessions.take_flash(&self.id),
        }
    }

    fn flash(&self, state: &ConsoleState, error: bool, text: impl Into<String>) {
        state.sessions.set_flash(
            &self.id,
            Flash {
                error,
                text: text.into(),
            },
        );
    }
}

struct FrameOwned {
    csrf: String,
    who: String,
    inbox: bool,
    flash: Option<Flash>,
}

impl FrameOwned {
    fn frame(&self) -> Frame<'_> {
        Frame {
            csrf: &self.csrf,
            who: &self.who,
            inbox: self.inbox,
            flash: self.flash.clone(),
        }
    }
}

/// A page under the frame of `operator`.
fn framed(state: &ConsoleState, operator: &Operator, title: &str, body: Markup) -> Response {
    let frame = operator.frame(state);
    page(
        StatusCode::OK,
        pages::layout(title, Some(&frame.frame()), body),
    )
}

fn failure(
    state: &ConsoleState,
    operator: &Operator,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    let frame = operator.frame(state);
    page(status, pages::notice(title, text, Some(&frame.frame())))
}

fn store_failure(
    state: &ConsoleState,
    operator: &Operator,
    error: impl std::fmt::Display,
) -> Response {
    failure(
        state,
        operator,
        StatusCode::INTERNAL_SERVER_ERROR,
        "The store did not answer",
        &format!("The store could not be read ({error}); try again in a moment."),
    )
}

/// The operator of a GET page (`None`: send the browser to [`to_login`]).
fn operator(state: &ConsoleState, headers: &HeaderMap) -> Option<Operator> {
    let id = state.session_id(headers)?;
    let view = state.sessions.view(&id, Instant::now()).ok()?;
    view.is_admin().then_some(Operator { id, view })
}

fn to_login() -> Response {
    see_other("/console/login")
}

/// The fields of a form (`application/x-www-form-urlencoded`).
struct FormFields(Vec<(String, String)>);

impl FormFields {
    fn parse(body: &[u8]) -> Self {
        FormFields(url::form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Where to go back to after an action: a console page, never elsewhere.
    fn back(&self, default: &str) -> String {
        match self.get("back") {
            Some(back)
                if back.starts_with("/console/")
                    && !back.contains("//")
                    && !back.contains('\\') =>
            {
                back.to_string()
            }
            _ => default.to_string(),
        }
    }
}

fn forbidden(text: &str) -> Response {
    page(StatusCode::FORBIDDEN, pages::notice("Refused", text, None))
}

/// The checks every POST passes before it does anything: the browser's
/// origin (when it says one), the session and its CSRF token.
async fn guard(
    state: &ConsoleState,
    headers: &HeaderMap,
    body: &[u8],
    peer: PeerAddr,
) -> Result<(Option<String>, SessionView, FormFields), Response> {
    let origin = header_text(headers, header::ORIGIN);
    let referer = header_text(headers, header::REFERER);
    if !session::origin_allowed(origin, referer, &state.origins(headers)) {
        state
            .audit(
                "console.refused",
                None,
                &format!(
                    "a POST from {} came from another site (Origin {:?}, Referer {:?}); nothing was done",
                    peer.0.ip(),
                    origin.unwrap_or(""),
                    referer.unwrap_or("")
                ),
            )
            .await;
        return Err(forbidden(
            "This form was sent from another site. Nothing was done; use the console's own pages.",
        ));
    }
    let form = FormFields::parse(body);
    let id = state.session_id(headers);
    match state
        .sessions
        .check_csrf(id.as_deref(), form.get("csrf"), Instant::now())
    {
        Ok(view) => Ok((id, view, form)),
        Err(error) => {
            state
                .audit(
                    "console.refused",
                    None,
                    &format!(
                        "a POST from {} was refused: {error}; nothing was done",
                        peer.0.ip()
                    ),
                )
                .await;
            Err(forbidden(&format!("{error}. Nothing was done.")))
        }
    }
}

/// [`guard`], and the session must be an operator's.
async fn guard_operator(
    state: &ConsoleState,
    headers: &HeaderMap,
    body: &[u8],
    peer: PeerAddr,
) -> Result<(Operator, FormFields), Response> {
    let (id, view, form) = guard(state, headers, body, peer).await?;
    match (id, view.is_admin()) {
        (Some(id), true) => Ok((Operator { id, view }, form)),
        _ => Err(forbidden("Log in first. Nothing was done.")),
    }
}

pub(super) async fn home(State(state): S, headers: HeaderMap) -> Response {
    match operator(&state, &headers) {
        Some(_) => see_other("/console/accounts"),
        None => to_login(),
    }
}

pub(super) async fn login_page(State(state): S, headers: HeaderMap) -> Response {
    let now = Instant::now();
    let existing = state
        .session_id(&headers)
        .and_then(|id| state.sessions.view(&id, now).ok());
    match existing {
        Some(view) if view.is_admin() => see_other("/console/accounts"),
        Some(view) => page(
            StatusCode::OK,
            pages::login(&view.csrf, None, state.password_configured()),
        ),
        None => match state.sessions.begin_anonymous(now) {
            Ok((id, view)) => with_cookie(
                page(
                    StatusCode::OK,
                    pages::login(&view.csrf, None, state.password_configured()),
                ),
                &session::set_cookie(Some(&id), state.https),
            ),
            Err(error) => page(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::notice("Busy", &error.to_string(), None),
            ),
        },
    }
}

/// How a login was made, or why it was refused (for the audit log; the
/// person is told only that it was refused).
async fn check_login(state: &ConsoleState, presented: &str) -> Result<String, String> {
    if presented.starts_with("oxr_") {
        let key = crate::api::authenticate(state.http.store.as_ref(), presented.trim())
            .await
            .map_err(|e| format!("API key {}: {e}", crate::api::keys::fingerprint(presented)))?;
        if !key.has(Scope::Admin) {
            return Err(format!("API key {} lacks the admin scope", key.name));
        }
        return Ok(format!("admin API key {}", key.name));
    }
    let password = state.password.clone();
    let presented = presented.to_string();
    // Argon2 takes tens of milliseconds on purpose: off the async threads.
    let verdict = tokio::task::spawn_blocking(move || match &*password {
        Ok(Some(password)) => Ok(password.verify(&presented)),
        Ok(None) => Err("no admin password is configured ([console] admin_password); only admin API keys log in".to_string()),
        Err(error) => Err(error.clone()),
    })
    .await
    .map_err(|e| format!("the password check failed: {e}"))??;
    if verdict {
        Ok("the admin password".to_string())
    } else {
        Err("wrong admin password".to_string())
    }
}

pub(super) async fn login(
    State(state): S,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = peer.0.ip();
    if !state.limits.allow(ip) {
        state
            .audit(
                "console.login_limited",
                None,
                &format!("a login from {ip} was refused: too many attempts"),
            )
            .await;
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            pages::notice(
                "Too many attempts",
                "Too many logins were tried; wait a minute and try again.",
                None,
            ),
        );
    }
    let (old, view, form) = match guard(&state, &headers, &body, peer).await {
        Ok(checked) => checked,
        Err(refused) => return refused,
    };
    let presented = form.get("password").unwrap_or("");
    match check_login(&state, presented).await {
        Ok(via) => {
            let (id, _) = state
                .sessions
                .login(old.as_deref(), via.clone(), Instant::now());
            state
                .audit(
                    "console.login",
                    None,
                    &format!("an operator logged in from {ip} with {via}"),
                )
                .await;
            with_cookie(
                see_other("/console/accounts"),
                &session::set_cookie(Some(&id), state.https),
            )
        }
        Err(reason) => {
            state
                .audit(
                    "console.login_failed",
                    None,
                    &format!("a login from {ip} was refused: {reason}"),
                )
                .await;
            page(
                StatusCode::UNAUTHORIZED,
                pages::login(
                    &view.csrf,
                    Some("That password or key is not valid for the console."),
                    state.password_configured(),
                ),
            )
        }
    }
}

pub(super) async fn logout(
    State(state): S,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (operator, _) = match guard_operator(&state, &headers, &body, peer).await {
        Ok(checked) => checked,
        Err(refused) => return refused,
    };
    state.sessions.logout(&operator.id);
    state
        .audit(
            "console.logout",
            None,
            &format!(
                "the operator logged in with {} logged out from {}",
                operator.via(),
                peer.0.ip()
            ),
        )
        .await;
    with_cookie(
        see_other("/console/login"),
        &session::set_cookie(None, state.https),
    )
}

pub(super) async fn accounts(State(state): S, headers: HeaderMap) -> Response {
    let Some(operator) = operator(&state, &headers) else {
        return to_login();
    };
    let store = &state.http.store;
    let records = match store.token_records().await {
        Ok(records) => records,
        Err(error) => return store_failure(&state, &operator, error),
    };
    let events = store.events(VALIDATION_EVENTS).await.unwrap_or_default();
    let statuses = crate::oauth::status::account_statuses(&state.http.config, &records);
    let rows: Vec<pages::AccountRow<'_>> = statuses
        .iter()
        .map(|status| pages::AccountRow {
            status,
            validation: crate::oauth::status::last_validation(&events, &status.name),
            connectable: state
                .http
                .broker
                .account(&status.name)
                .is_some_and(|a| a.grant == GrantKind::AuthorizationCode),
        })
        .collect();
    let body = pages::accounts(&rows, &operator.view.csrf, &state.redirect_uri(&headers));
    framed(&state, &operator, "Accounts", body)
}

pub(super) async fn connect(
    State(state): S,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (operator, _) = match guard_operator(&state, &headers, &body, peer).await {
        Ok(checked) => checked,
        Err(refused) => return refused,
    };
    let broker = &state.http.broker;
    let Some(account) = broker.account(&name).cloned() else {
        return failure(
            &state,
            &operator,
            StatusCode::NOT_FOUND,
            "No such account",
            &format!("There is no account {name:?} in the config."),
        );
    };
    if account.grant != GrantKind::AuthorizationCode {
        operator.flash(
            &state,
            true,
            format!(
                "Account {} uses the {} grant: there is no sign-in in the browser to make (the device flow is `oxirelay account login {} --device`).",
                account.name, account.grant, account.name
            ),
        );
        return see_other("/console/accounts");
    }
    let redirect_uri = state.redirect_uri(&headers);
    let begun = match broker.endpoints(&account.name).await {
        Ok(endpoints) => consent::begin(&account, &endpoints, &redirect_uri, Some(&account.user))
            .map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    let request = match begun {
        Ok(request) => request,
        Err(error) => {
            operator.flash(&state, true, format!("Connect {}: {error}", account.name));
            return see_other("/console/accounts");
        }
    };
    let location = request.url.to_string();
    let provider = request.url.origin().ascii_serialization();
    let pending = PendingConnect {
        account: account.name.clone(),
        request,
        started: Instant::now(),
    };
    if state.sessions.set_pending(&operator.id, pending).is_err() {
        return see_other("/console/login");
    }
    state
        .audit(
            "console.connect_started",
            Some(&account.name),
            &format!(
                "the operator logged in with {} started a sign-in at {provider}, coming back to {redirect_uri}",
                operator.via()
            ),
        )
        .await;
    see_other(&location)
}

/// The marker the callback adds to its own address when it sends the
/// browser round once more to pick up the session cookie.
const RETURNED: &str = "console_returned=1";

pub(super) async fn callback(
    State(state): S,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let operator = match operator(&state, &headers) {
        Some(operator) => operator,
        // SameSite=Strict keeps the cookie off the provider's redirect (a
        // navigation another site began): go round once on this site.
        None if !query.split('&').any(|pair| pair == RETURNED) => {
            let target = format!("/console/oauth/callback?{query}&{RETURNED}");
            return page(StatusCode::OK, pages::bounce(&target));
        }
        None => {
            return page(
                StatusCode::UNAUTHORIZED,
                pages::notice(
                    "Not logged in",
                    "The sign-in came back, but not to a console session (it expired, or this is another browser). Log in and press Connect again.",
                    None,
                ),
            );
        }
    };
    let state_param: Option<String> = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned());
    let pending = match state.sessions.take_pending(
        &operator.id,
        state_param.as_deref(),
        Instant::now(),
    ) {
        Ok(pending) => pending,
        Err(error) => {
            state
                .audit(
                    "console.connect_refused",
                    None,
                    &format!(
                        "a sign-in came back to the session of the operator logged in with {} and was refused: {error}",
                        operator.via()
                    ),
                )
                .await;
            return failure(
                &state,
                &operator,
                StatusCode::BAD_REQUEST,
                "Sign-in refused",
                &error.to_string(),
            );
        }
    };
    let account = pending.account.clone();
    let finished = match consent::code_from_callback(&pending.request, &query, &account) {
        Ok(code) => consent::finish(&state.http.broker, &account, &pending.request, &code)
            .await
            .map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match finished {
        Ok(done) => {
            let expires = crate::clock::format_unix(crate::clock::to_unix(done.token.expires_at));
            let text = if done.refresh_token_issued {
                format!(
                    "Account {account} is connected: refresh token sealed in the store, access token {} valid until {expires}.",
                    done.token.fingerprint()
                )
            } else {
                format!(
                    "Account {account} is connected, but the provider issued no refresh token: it works until {expires} only."
                )
            };
            operator.flash(&state, !done.refresh_token_issued, text);
            state
                .audit(
                    "console.connected",
                    Some(&account),
                    &format!(
                        "consent stored by the operator logged in with {}; access token {}; refresh token {}",
                        operator.via(),
                        done.token.fingerprint(),
                        if done.refresh_token_issued { "issued" } else { "NOT issued" }
                    ),
                )
                .await;
        }
        Err(error) => {
            operator.flash(&state, true, format!("Connect {account}: {error}"));
            state
                .audit(
                    "console.connect_failed",
                    Some(&account),
                    &format!(
                        "the sign-in of the operator logged in with {} failed: {error}",
                        operator.via()
                    ),
                )
                .await;
        }
    }
    see_other("/console/accounts")
}

pub(super) async fn queue(
    State(state): S,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(operator) = operator(&state, &headers) else {
        return to_login();
    };
    let param = |key: &str| params.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let filter = QueueFilter {
        state: param("state").and_then(MessageState::parse),
        account: param("account").map(str::to_string),
        created_before: None,
    };
    let store = &state.http.store;
    let cursor: Option<ListCursor> = match param("after") {
        Some(after) => match store.list_cursor(&MessageId(after.to_string())).await {
            Ok(cursor) => cursor,
            Err(error) => return store_failure(&state, &operator, error),
        },
        None => None,
    };
    let mut messages = match store
        .list_messages(&filter, cursor.as_ref(), QUEUE_PAGE + 1)
        .await
    {
        Ok(messages) => messages,
        Err(error) => return store_failure(&state, &operator, error),
    };
    let more = messages.len() > QUEUE_PAGE as usize;
    messages.truncate(QUEUE_PAGE as usize);
    let next = more
        .then(|| messages.last().map(|m| m.id.0.clone()))
        .flatten();
    let accounts: Vec<String> = state
        .http
        .config
        .accounts
        .iter()
        .map(|a| a.name.clone())
        .collect();
    let mut back = "/console/queue?".to_string();
    for (key, value) in [
        ("state", filter.state.map(|s| s.as_str().to_string())),
        ("account", filter.account.clone()),
        ("after", param("after").map(str::to_string)),
    ] {
        if let Some(value) = value {
            back.push_str(&format!("{key}={}&", pages::urlencode(&value)));
        }
    }
    let body = pages::queue(&pages::QueueView {
        messages: &messages,
        state: filter.state,
        account: filter.account.as_deref(),
        accounts: &accounts,
        next: next.as_deref(),
        csrf: &operator.view.csrf,
        back: back.trim_end_matches(['&', '?']),
    });
    framed(&state, &operator, "Queue", body)
}

/// Retry or cancel (delete) one message, with the store call `oxirelay
/// queue retry|delete ID` makes.
async fn queue_action(
    state: &ConsoleState,
    operator: &Operator,
    action: QueueAction,
    id: MessageId,
) -> Result<String, String> {
    let store = &state.http.store;
    let now = crate::clock::now_unix();
    let outcome = store
        .queue_batch(
            action,
            &QueueSelection::Ids(vec![id.clone()]),
            None,
            1,
            now,
            false,
        )
        .await
        .map_err(|e| format!("the store could not change message {id} ({e}); try again"))?;
    if let Some(skipped) = outcome.skipped.first() {
        return Err(match skipped.state {
            MessageState::InFlight => format!(
                "message {id} is being delivered right now; try again once the attempt has ended"
            ),
            other => format!("message {id} is {other}, which {action} does not apply to"),
        });
    }
    let Some(affected) = outcome.affected.first() else {
        return Err(format!("there is no message {id} in the queue"));
    };
    let verb = match action {
        QueueAction::Retry => "retried",
        _ => "cancelled",
    };
    if action == QueueAction::Retry {
        state.http.wake.notify_one();
    } else {
        if let Err(error) = store.untag_message(&id).await {
            tracing::warn!(%error, %id, "cannot remove the tags of a cancelled message");
        }
        let event = Event {
            at: now,
            kind: "message.cancelled".into(),
            account: Some(affected.account.clone()),
            message_id: Some(id.clone()),
            detail: format!(
                "cancelled in the console by the operator logged in with {}",
                operator.via()
            ),
        };
        if let Err(error) = store.record_event(&event).await {
            tracing::warn!(%error, %id, "cannot record the cancellation event");
        }
    }
    state
        .audit(
            &format!("console.{verb}"),
            Some(&affected.account),
            &format!(
                "message {id} ({}) {verb} by the operator logged in with {}",
                affected.state,
                operator.via()
            ),
        )
        .await;
    Ok(match action {
        QueueAction::Retry => format!("Message {id} is due now."),
        _ => format!("Message {id} was cancelled and removed from the queue."),
    })
}

/// `POST /console/queue/{id}/retry` and `.../cancel`.
pub(super) async fn queue_post(
    State(state): S,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    Path((id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = match verb.as_str() {
        "retry" => QueueAction::Retry,
        "cancel" => QueueAction::Delete,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let (operator, form) = match guard_operator(&state, &headers, &body, peer).await {
        Ok(checked) => checked,
        Err(refused) => return refused,
    };
    match queue_action(&state, &operator, action, MessageId(id)).await {
        Ok(text) => operator.flash(&state, false, text),
        Err(text) => operator.flash(&state, true, text),
    }
    see_other(&form.back("/console/queue"))
}

pub(super) async fn message(
    State(state): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(operator) = operator(&state, &headers) else {
        return to_login();
    };
    let store = &state.http.store;
    let id = MessageId(id);
    let (message, content) = match store.message(&id).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return failure(
                &state,
                &operator,
                StatusCode::NOT_FOUND,
                "No such message",
                &format!(
                    "There is no message {id} in the queue (delivered mail may have been removed by retention)."
                ),
            );
        }
        Err(error) => return store_failure(&state, &operator, error),
    };
    let events = match store.message_events(&id).await {
        Ok(events) => events,
        Err(error) => return store_failure(&state, &operator, error),
    };
    let tags = store.message_tags(&id).await.unwrap_or_default();
    let subject = mail_parser::MessageParser::default()
        .parse_headers(&content)
        .and_then(|parsed| parsed.subject().map(str::to_string));
    let body = pages::message(&pages::MessageView {
        message: &message,
        subject: subject.as_deref(),
        events: &events,
        tags: &tags,
        csrf: &operator.view.csrf,
    });
    framed(&state, &operator, &format!("Message {id}"), body)
}

pub(super) async fn audit(
    State(state): S,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(operator) = operator(&state, &headers) else {
        return to_login();
    };
    let query = params.get("q").cloned().unwrap_or_default();
    let path = state.http.config.audit.path.clone();
    let needle = query.clone();
    let searched = tokio::task::spawn_blocking(move || {
        crate::audit::search(&path, &needle, AUDIT_SHOWN, AUDIT_SCANNED)
    })
    .await;
    match searched {
        Ok(Ok(found)) => framed(
            &state,
            &operator,
            "Audit log",
            pages::audit(&found.records, &query, found.truncated),
        ),
        Ok(Err(error)) => failure(
            &state,
            &operator,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Audit log",
            &error.to_string(),
        ),
        Err(error) => failure(
            &state,
            &operator,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Audit log",
            &format!("the search failed: {error}"),
        ),
    }
}

pub(super) async fn webhooks(State(state): S, headers: HeaderMap) -> Response {
    let Some(operator) = operator(&state, &headers) else {
        return to_login();
    };
    let statuses = match state.http.store.webhook_statuses().await {
        Ok(statuses) => statuses,
        Err(error) => return store_failure(&state, &operator, error),
    };
    let rows: Vec<pages::WebhookRow<'_>> = state
        .http
        .config
        .webhooks
        .iter()
        .map(|webhook| pages::WebhookRow {
            name: &webhook.name,
            // The origin only: a receiver's path or query may carry a token.
            origin: url::Url::parse(&webhook.url)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_default(),
            status: statuses.iter().find(|s| s.cursor.endpoint == webhook.name),
        })
        .collect();
    framed(&state, &operator, "Webhooks", pages::webhooks(&rows))
}

pub(super) async fn inbox(State(state): S, headers: HeaderMap) -> Response {
    let Some(operator) = operator(&state, &headers) else {
        return to_login();
    };
    let Some(configured) = state
        .http
        .config
        .console
        .as_ref()
        .and_then(|c| c.sandbox_inbox.clone())
    else {
        return failure(
            &state,
            &operator,
            StatusCode::NOT_FOUND,
            "Sandbox inbox",
            "No sandbox inbox is configured: set [console] sandbox_inbox to the --dir of `oxirelay sandbox`.",
        );
    };
    // The sandbox's --dir, or its inbox directory itself.
    let dir = if configured.join("inbox").join("meta").is_dir() {
        configured.join("inbox")
    } else {
        configured
    };
    if !dir.join("meta").is_dir() {
        return failure(
            &state,
            &operator,
            StatusCode::NOT_FOUND,
            "Sandbox inbox",
            &format!(
                "There is no sandbox inbox at {} yet; start the sandbox with `oxirelay sandbox --dir ...`.",
                dir.display()
            ),
        );
    }
    let listing_dir = dir.clone();
    let listed = tokio::task::spawn_blocking(move || {
        crate::sandbox::inbox::Inbox::open(&listing_dir).and_then(|inbox| inbox.list())
    })
    .await;
    match listed {
        Ok(Ok(entries)) => {
            let total = entries.len();
            let newest: Vec<_> = entries.into_iter().rev().take(INBOX_SHOWN).collect();
            framed(
                &state,
                &operator,
                "Sandbox inbox",
                pages::inbox(&newest, &dir.display().to_string(), total),
            )
        }
        Ok(Err(error)) => failure(
            &state,
            &operator,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sandbox inbox",
            &error.to_string(),
        ),
        Err(error) => failure(
            &state,
            &operator,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sandbox inbox",
            &format!("reading the inbox failed: {error}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_go_back_only_to_console_pages() {
        let form =
            |back: &str| FormFields::parse(format!("back={}", pages::urlencode(back)).as_bytes());
        assert_eq!(
            form("/console/queue?state=deferred").back("/d"),
            "/console/queue?state=deferred"
        );
        for hostile in [
            "https://evil.example/",
            "//evil.example/console/",
            "/console/\\evil",
            "/other",
        ] {
            assert_eq!(form(hostile).back("/d"), "/d", "{hostile}");
        }
        assert_eq!(FormFields::parse(b"").back("/d"), "/d");
    }
}
