//! Console sessions, without sockets: ids, CSRF tokens, expiry, the
//! Connect in progress, and the checks a request must pass. The HTTP
//! handlers only move cookies and form fields in and out of this.
//!
//! - A session id is 256 random bits (base64url), kept in memory only: a
//!   restart logs everyone out, which is what an operator console should do.
//! - The login form is itself a session, anonymous, with its own CSRF
//!   token; logging in replaces it with a new id (no session fixation).
//! - Each session has one CSRF token, checked in constant time on every
//!   POST; an anonymous one lives only [`ANONYMOUS_IDLE`].
//! - An authenticated session ends when unused for `idle`, or `max` after
//!   its login, whichever comes first.
//! - The store is bounded ([`SessionPolicy::capacity`]): when full, expired
//!   sessions go first, then the oldest anonymous one; a login never evicts
//!   an operator.

use crate::oauth::consent::AuthorizationRequest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use rand::Rng as _;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the login form's session lasts: long enough to type a password.
pub const ANONYMOUS_IDLE: Duration = Duration::from_secs(15 * 60);
/// How long a Connect may take at the provider before its `state` is
/// forgotten: a person signing in, with multi-factor authentication.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub idle: Duration,
    pub max: Duration,
    pub capacity: usize,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            // OWASP's session guidance: 15-30 minutes idle for a console
            // of this weight, and an absolute bound of a working day.
            idle: Duration::from_secs(30 * 60),
            max: Duration::from_secs(12 * 3600),
            // Far more than the operators of one relay; small enough that
            // a flood of login pages costs little memory.
            capacity: 4096,
        }
    }
}

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The login form, before a login.
    Anonymous,
    /// An operator; `via` says how they logged in ("the admin password",
    /// "admin API key NAME"), for the audit log.
    Admin { via: String },
}

/// A Connect in progress: what was sent to the provider, to check what
/// comes back to the callback.
pub struct PendingConnect {
    pub account: String,
    pub request: AuthorizationRequest,
    pub started: Instant,
}

/// A one-time message for the next page (after a POST and its redirect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub error: bool,
    pub text: String,
}

struct Session {
    csrf: String,
    who: Who,
    created: Instant,
    last_seen: Instant,
    pending: Option<PendingConnect>,
    flash: Option<Flash>,
}

impl Session {
    fn new(who: Who, now: Instant) -> Self {
        Session {
            csrf: random_token(),
            who,
            created: now,
            last_seen: now,
            pending: None,
            flash: None,
        }
    }

    fn expired(&self, policy: &SessionPolicy, now: Instant) -> bool {
        let idle = now.saturating_duration_since(self.last_seen);
        match self.who {
            Who::Anonymous => idle > ANONYMOUS_IDLE,
            Who::Admin { .. } => {
                idle > policy.idle || now.saturating_duration_since(self.created) > policy.max
            }
        }
    }
}

/// What a request learns of its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub csrf: String,
    pub who: Who,
}

impl SessionView {
    pub fn is_admin(&self) -> bool {
        matches!(self.who, Who::Admin { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("no console session (it expired, or the console restarted); log in again")]
    NoSession,
    #[error(
        "the form's CSRF token is missing or is not this session's; reload the page and submit it again"
    )]
    BadCsrf,
    #[error("the console has too many open login pages; try again in a few minutes")]
    Full,
    #[error(
        "the answer from the sign-in does not carry the state this session sent (forged, or from an older Connect); press Connect again"
    )]
    StateMismatch,
    #[error("no Connect is in progress in this session (or it took too long); press Connect again")]
    NoConnect,
}

/// Every open session.
pub struct Sessions {
    policy: SessionPolicy,
    sessions: Mutex<HashMap<String, Session>>,
}

/// 256 random bits, base64url: unguessable, and safe in a cookie and a form.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    BASE64URL.encode(bytes)
}

/// Compares two secrets in constant time (for their common length; the
/// length of a token is not a secret).
pub fn same_secret(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

impl Sessions {
    pub fn new(policy: SessionPolicy) -> Self {
        Sessions {
            policy,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves whole entries behind: the
        // map is still usable.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes room for one more session, or says there is none.
    fn make_room(&self, sessions: &mut HashMap<String, Session>, now: Instant) -> bool {
        if sessions.len() < self.policy.capacity {
            return true;
        }
        sessions.retain(|_, s| !s.expired(&self.policy, now));
        if sessions.len() < self.policy.capacity {
            return true;
        }
        let oldest_anonymous = sessions
            .iter()
            .filter(|(_, s)| s.who == Who::Anonymous)
            .min_by_key(|(_, s)| s.last_seen)
            .map(|(id, _)| id.clone());
        match oldest_anonymous {
            Some(id) => {
                sessions.remove(&id);
                true
            }
            None => false,
        }
    }

    /// A new login form's session: its id (for the cookie) and its view.
    pub fn begin_anonymous(&self, now: Instant) -> Result<(String, SessionView), SessionError> {
        let mut sessions = self.lock();
        if !self.make_room(&mut sessions, now) {
            return Err(SessionError::Full);
        }
        let id = random_token();
        let session = Session::new(Who::Anonymous, now);
        let view = SessionView {
            csrf: session.csrf.clone(),
            who: session.who.clone(),
        };
        sessions.insert(id.clone(), session);
        Ok((id, view))
    }

    /// The live session `id` names (and marks it used now).
    pub fn view(&self, id: &str, now: Instant) -> Result<SessionView, SessionError> {
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(id) else {
            return Err(SessionError::NoSession);
        };
        if session.expired(&self.policy, now) {
            sessions.remove(id);
            return Err(SessionError::NoSession);
        }
        session.last_seen = now;
        Ok(SessionView {
            csrf: session.csrf.clone(),
            who: session.who.clone(),
        })
    }

    /// The session of a POST, if `presented` is its CSRF token.
    pub fn check_csrf(
        &self,
        id: Option<&str>,
        presented: Option<&str>,
        now: Instant,
    ) -> Result<SessionView, SessionError> {
        let view = self.view(id.ok_or(SessionError::NoSession)?, now)?;
        match presented {
            Some(token) if same_secret(token, &view.csrf) => Ok(view),
            _ => Err(SessionError::BadCsrf),
        }
    }

    /// Logs in: the session `old` (the login form's) ends and a new one,
    /// with a new id and CSRF token, begins for `who`.
    pub fn login(&self, old: Option<&str>, via: String, now: Instant) -> (String, SessionView) {
        let mut sessions = self.lock();
        if let Some(old) = old {
            sessions.remove(old);
        }
        // An operator is never refused for room: anonymous sessions make
        // way, and past that the map grows by one.
        self.make_room(&mut sessions, now);
        let id = random_token();
        let session = Session::new(Who::Admin { via }, now);
        let view = SessionView {
            csrf: session.csrf.clone(),
            who: session.who.clone(),
        };
        sessions.insert(id.clone(), session);
        (id, view)
    }

    pub fn logout(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Keeps `pending` as the session's Connect in progress (replacing an
    /// older one: only the newest Connect's callback is accepted).
    pub fn set_pending(&self, id: &str, pending: PendingConnect) -> Result<(), SessionError> {
        let mut sessions = self.lock();
        let session = sessions.get_mut(id).ok_or(SessionError::NoSession)?;
        session.pending = Some(pending);
        Ok(())
    }

    /// Takes the session's Connect in progress if `state` is the one it
    /// sent. A wrong state leaves it in place: a forged callback must not
    /// cancel the operator's real sign-in.
    pub fn take_pending(
        &self,
        id: &str,
        state: Option<&str>,
        now: Instant,
    ) -> Result<PendingConnect, SessionError> {
        let mut sessions = self.lock();
        let session = sessions.get_mut(id).ok_or(SessionError::NoSession)?;
        let Some(pending) = &session.pending else {
            return Err(SessionError::NoConnect);
        };
        if now.saturating_duration_since(pending.started) > CONNECT_TIMEOUT {
            session.pending = None;
            return Err(SessionError::NoConnect);
        }
        match state {
            Some(state) if same_secret(state, &pending.request.state) => {
                session.pending.take().ok_or(SessionError::NoConnect)
            }
            _ => Err(SessionError::StateMismatch),
        }
    }

    pub fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(session) = self.lock().get_mut(id) {
            session.flash = Some(flash);
        }
    }

    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        self.lock().get_mut(id).and_then(|s| s.flash.take())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Whether a POST comes from a page of the console itself, as far as the
/// browser says: `Origin`, else `Referer`, must be one of `allowed` when
/// present. `Origin: null` (what browsers send under `Referrer-Policy:
/// no-referrer`, and from sandboxed frames) says nothing either way: the
/// CSRF token decides.
pub fn origin_allowed(origin: Option<&str>, referer: Option<&str>, allowed: &[String]) -> bool {
    let matches = |candidate: &str| allowed.iter().any(|a| a.eq_ignore_ascii_case(candidate));
    match origin.map(str::trim) {
        Some("null") | None => {}
        Some(origin) => return matches(origin.trim_end_matches('/')),
    }
    match referer {
        Some(referer) => match url::Url::parse(referer) {
            Ok(url) => matches(&url.origin().ascii_serialization()),
            Err(_) => false,
        },
        None => true,
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The session cookie's name: with the `__Host-` prefix over HTTPS, which
/// binds it to this host and path `/` with `Secure` (RFC 6265bis 4.1.3.2).
pub fn cookie_name(https: bool) -> &'static str {
    if https {
        "__Host-oxirelay-console"
    } else {
        "oxirelay-console"
    }
}

/// The `Set-Cookie` value for session `id` (`None`: remove the cookie).
pub fn set_cookie(id: Option<&str>, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict{secure}",
            cookie_name(https)
        ),
        None => format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
            cookie_name(https)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::consent::Pkce;

    fn policy() -> SessionPolicy {
        SessionPolicy {
            idle: Duration::from_secs(60),
            max: Duration::from_secs(300),
            capacity: 3,
        }
    }

    fn pending(state: &str, now: Instant) -> PendingConnect {
        PendingConnect {
            account: "office".into(),
            request: AuthorizationRequest {
                url: url::Url::parse("https://id.example/authorize").expect("url"),
                state: state.into(),
                pkce: Pkce::generate(),
                redirect_uri: "https://relay.example/console/oauth/callback".into(),
                scopes: vec![],
            },
            started: now,
        }
    }

    #[test]
    fn a_post_needs_its_own_sessions_csrf_token() {
        let sessions = Sessions::new(policy());
        let now = Instant::now();
        let (id, view) = sessions.begin_anonymous(now).expect("room");
        let (other, other_view) = sessions.begin_anonymous(now).expect("room");
        assert!(
            sessions
                .check_csrf(Some(&id), Some(&view.csrf), now)
                .is_ok()
        );
        assert_eq!(
            sessions.check_csrf(Some(&id), None, now),
            Err(SessionError::BadCsrf)
        );
        assert_eq!(
            sessions.check_csrf(Some(&id), Some(""), now),
            Err(SessionError::BadCsrf)
        );
        assert_eq!(
            sessions.check_csrf(Some(&id), Some(&other_view.csrf), now),
            Err(SessionError::BadCsrf),
            "another session's token"
        );
        assert_eq!(
            sessions.check_csrf(None, Some(&view.csrf), now),
            Err(SessionError::NoSession)
        );
        assert!(
            sessions
                .check_csrf(Some(&other), Some(&other_view.csrf), now)
                .is_ok()
        );
    }

    #[test]
    fn login_replaces_the_session_and_its_token() {
        let sessions = Sessions::new(policy());
        let now = Instant::now();
        let (anonymous, form) = sessions.begin_anonymous(now).expect("room");
        assert!(!form.is_admin());
        let (id, view) = sessions.login(Some(&anonymous), "the admin password".into(), now);
        assert_ne!(id, anonymous);
        assert_ne!(view.csrf, form.csrf);
        assert!(view.is_admin());
        assert_eq!(sessions.view(&anonymous, now), Err(SessionError::NoSession));
        assert_eq!(
            sessions.check_csrf(Some(&id), Some(&form.csrf), now),
            Err(SessionError::BadCsrf),
            "the login form's token does not carry over"
        );
        sessions.logout(&id);
        assert_eq!(sessions.view(&id, now), Err(SessionError::NoSession));
    }

    #[test]
    fn sessions_end_when_idle_and_at_their_absolute_limit() {
        let sessions = Sessions::new(policy());
        let start = Instant::now();
        let (id, _) = sessions.login(None, "x".into(), start);
        // Used every 50 s: never idle for a minute, ends at five minutes.
        let mut now = start;
        for _ in 0..5 {
            now += Duration::from_secs(50);
            assert!(sessions.view(&id, now).is_ok(), "{:?}", now - start);
        }
        now += Duration::from_secs(51);
        assert_eq!(sessions.view(&id, now), Err(SessionError::NoSession));
        let (idle, _) = sessions.login(None, "x".into(), start);
        assert_eq!(
            sessions.view(&idle, start + Duration::from_secs(61)),
            Err(SessionError::NoSession)
        );
        let (form, _) = sessions.begin_anonymous(start).expect("room");
        assert_eq!(
            sessions.view(&form, start + ANONYMOUS_IDLE + Duration::from_secs(1)),
            Err(SessionError::NoSession)
        );
    }

    #[test]
    fn login_pages_cannot_crowd_out_operators() {
        let sessions = Sessions::new(policy());
        let now = Instant::now();
        let (admin, _) = sessions.login(None, "x".into(), now);
        let (admin2, _) = sessions.login(None, "x".into(), now);
        let (first_form, _) = sessions.begin_anonymous(now).expect("room");
        let (_second_form, _) = sessions
            .begin_anonymous(now + Duration::from_secs(1))
            .expect("the oldest form goes");
        assert_eq!(sessions.len(), 3);
        assert!(sessions.view(&first_form, now).is_err());
        let (admin3, _) = sessions.login(None, "x".into(), now);
        assert!(sessions.view(&admin, now).is_ok());
        assert!(sessions.view(&admin2, now).is_ok());
        assert!(sessions.view(&admin3, now).is_ok());
        assert_eq!(
            sessions.begin_anonymous(now).err(),
            Some(SessionError::Full)
        );
    }

    #[test]
    fn a_callback_must_carry_the_sessions_state() {
        let sessions = Sessions::new(policy());
        let now = Instant::now();
        let (id, _) = sessions.login(None, "x".into(), now);
        let (other, _) = sessions.login(None, "x".into(), now);
        assert_eq!(
            sessions.take_pending(&id, Some("s1"), now).err(),
            Some(SessionError::NoConnect)
        );
        sessions
            .set_pending(&id, pending("s1", now))
            .expect("session");
        assert_eq!(
            sessions.take_pending(&id, Some("forged"), now).err(),
            Some(SessionError::StateMismatch)
        );
        assert_eq!(
            sessions.take_pending(&id, None, now).err(),
            Some(SessionError::StateMismatch)
        );
        assert_eq!(
            sessions.take_pending(&other, Some("s1"), now).err(),
            Some(SessionError::NoConnect),
            "another session's state is not this one's"
        );
        let taken = sessions
            .take_pending(&id, Some("s1"), now)
            .expect("the real callback");
        assert_eq!(taken.account, "office");
        assert_eq!(
            sessions.take_pending(&id, Some("s1"), now).err(),
            Some(SessionError::NoConnect),
            "a state is good once"
        );
        sessions
            .set_pending(&id, pending("s2", now))
            .expect("session");
        assert_eq!(
            sessions
                .take_pending(
                    &id,
                    Some("s2"),
                    now + CONNECT_TIMEOUT + Duration::from_secs(1)
                )
                .err(),
            Some(SessionError::NoConnect)
        );
    }

    #[test]
    fn origins_are_checked_when_the_browser_sends_them() {
        let allowed = vec!["https://relay.example".to_string()];
        assert!(origin_allowed(
            Some("https://relay.example"),
            None,
            &allowed
        ));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            None,
            &allowed
        ));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("https://relay.example/console/queue"),
            &allowed
        ));
        assert!(origin_allowed(Some("null"), None, &allowed));
        assert!(origin_allowed(
            None,
            Some("https://relay.example/console/queue"),
            &allowed
        ));
        assert!(!origin_allowed(
            None,
            Some("https://relay.example.evil.example/console"),
            &allowed
        ));
        assert!(!origin_allowed(None, Some("not a url"), &allowed));
        assert!(origin_allowed(None, None, &allowed));
    }

    #[test]
    fn cookies() {
        assert_eq!(
            cookie_value("a=1; oxirelay-console=abc; b=2", "oxirelay-console"),
            Some("abc")
        );
        assert_eq!(
            cookie_value("xoxirelay-console=abc", "oxirelay-console"),
            None
        );
        let secure = set_cookie(Some("id"), true);
        assert!(
            secure.starts_with("__Host-oxirelay-console=id; Path=/;"),
            "{secure}"
        );
        for attribute in ["HttpOnly", "SameSite=Strict", "Secure"] {
            assert!(secure.contains(attribute), "{secure}");
        }
        let plain = set_cookie(Some("id"), false);
        assert!(
            !plain.contains("Secure") && !plain.contains("__Host-"),
            "{plain}"
        );
        assert!(set_cookie(None, true).contains("Max-Age=0"));
    }
}
