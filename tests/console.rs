//! The web console over HTTP against a real `oxirelay serve`: logins (the
//! admin password, admin API keys, wrong ones, rate limits' neighbours),
//! CSRF and origin checks that refuse a POST and change nothing, escaping
//! of hostile values, the security headers, and the OAuth callback's
//! `state` bound to the session.

mod console_common;

use console_common::{ACCOUNT, Console, PASSWORD, csrf_of};
use oxirelay::store::MessageState;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};

/// A browser without a browser: one cookie, no redirects followed.
struct Visitor {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Visitor {
    fn new(base: &str) -> Visitor {
        Visitor {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: base.to_string(),
            cookie: None,
        }
    }

    fn remember(&mut self, headers: &HeaderMap) {
        for value in headers.get_all(SET_COOKIE) {
            let text = value.to_str().expect("cookie text");
            let pair = text.split(';').next().expect("a pair");
            if text.contains("Max-Age=0") {
                self.cookie = None;
            } else {
                self.cookie = Some(pair.to_string());
            }
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Reply {
        let request = match &self.cookie {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        };
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        self.remember(&headers);
        let body = response.text().await.expect("body");
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)], extra: &[(&str, &str)]) -> Reply {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .form(fields);
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    /// Logs in with `secret`; the reply of the POST.
    async fn login(&mut self, secret: &str) -> Reply {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = csrf_of(&form.body);
        self.post(
            "/console/login",
            &[("csrf", &csrf), ("password", secret)],
            &[],
        )
        .await
    }

    /// The CSRF token of a page of this session.
    async fn csrf(&mut self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        csrf_of(&page.body)
    }
}

fn assert_security_headers(reply: &Reply, what: &str) {
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no {name} header"))
            .to_string()
    };
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("script-src 'none'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(header("x-frame-options"), "DENY", "{what}");
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(header("cache-control"), "no-store", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_forms_and_pages_are_guarded() {
    let console = Console::start(true).await;
    let mut visitor = Visitor::new(&console.base);

    // Nothing without a login; the login page sets a guarded cookie.
    let away = visitor.get("/console/accounts").await;
    assert_eq!(away.status, 303);
    assert_eq!(away.location(), "/console/login");
    let form = visitor.get("/console/login").await;
    assert_security_headers(&form, "the login page");
    let cookie = form.headers[SET_COOKIE].to_str().expect("cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP on loopback: {cookie}"
    );
    let css = visitor.get("/console/static/console.css").await;
    assert_eq!(css.status, 200);
    assert_eq!(css.headers["content-type"], "text/css; charset=utf-8");
    assert_security_headers(&css, "the stylesheet");
    // A page that does not exist is the console's own 404, guarded alike.
    let missing = visitor.get("/console/no-such-page").await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_security_headers(&missing, "a page that does not exist");
    assert!(missing.body.contains("no such page"), "{}", missing.body);

    // A wrong password is refused; a right one without the form's token too.
    let csrf = csrf_of(&form.body);
    let wrong = visitor
        .post(
            "/console/login",
            &[("csrf", &csrf), ("password", "guess")],
            &[],
        )
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("not valid"), "{}", wrong.body);
    let tokenless = visitor
        .post("/console/login", &[("password", PASSWORD)], &[])
        .await;
    assert_eq!(tokenless.status, 403, "{}", tokenless.body);
    assert_eq!(visitor.get("/console/accounts").await.status, 303);

    // The right password logs in, with a new session id.
    let before = visitor.cookie.clone();
    let ok = visitor
        .post(
            "/console/login",
            &[("csrf", &csrf), ("password", PASSWORD)],
            &[],
        )
        .await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.location(), "/console/accounts");
    assert_ne!(visitor.cookie, before, "a new session id at login");
    let accounts = visitor.get("/console/accounts").await;
    assert_eq!(accounts.status, 200);
    assert_security_headers(&accounts, "the accounts page");
    assert!(
        accounts
            .body
            .contains(&format!("data-account=\"{ACCOUNT}\"")),
        "{}",
        accounts.body
    );
    assert!(accounts.body.contains("Connect"), "{}", accounts.body);
    assert!(
        accounts.body.contains("/console/oauth/callback"),
        "the redirect URI to register is shown"
    );

    // A hostile subject is text on the page.
    let hostile = "<script>alert(\"owned\")</script><img src=x onerror=alert(1)>";
    let id = console.submit(hostile).await;
    console.wait_for_attempt(&id);
    assert_eq!(console.state_of(&id).await, Some(MessageState::Deferred));
    let message = visitor.get(&format!("/console/messages/{id}")).await;
    assert_eq!(message.status, 200, "{}", message.body);
    assert!(!message.body.contains("<script>alert"), "{}", message.body);
    assert!(!message.body.contains("<img src=x"), "{}", message.body);
    assert!(
        message
            .body
            .contains("&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;"),
        "{}",
        message.body
    );
    let queue = visitor.get("/console/queue?state=deferred").await;
    assert!(queue.body.contains(&id), "{}", queue.body);

    // POSTs without the session's token, with another session's, or from
    // another site: 403, and the message is still there.
    let cancel = format!("/console/queue/{id}/cancel");
    let csrf = visitor.csrf("/console/queue").await;
    let mut stranger = Visitor::new(&console.base);
    let strangers_token = stranger.csrf("/console/login").await;
    for (fields, extra, what) in [
        (vec![], vec![], "no token"),
        (vec![("csrf", "forged")], vec![], "a forged token"),
        (
            vec![("csrf", strangers_token.as_str())],
            vec![],
            "another session's token",
        ),
        (
            vec![("csrf", csrf.as_str())],
            vec![("origin", "https://evil.example")],
            "another site's Origin",
        ),
        (
            vec![("csrf", csrf.as_str())],
            vec![("referer", "https://evil.example/page")],
            "another site's Referer",
        ),
    ] {
        let refused = visitor.post(&cancel, &fields, &extra).await;
        assert_eq!(refused.status, 403, "{what}: {}", refused.body);
        assert_eq!(
            console.state_of(&id).await,
            Some(MessageState::Deferred),
            "{what}: nothing changed"
        );
    }
    let forged_login = stranger
        .post("/console/queue/x/retry", &[("csrf", &strangers_token)], &[])
        .await;
    assert_eq!(
        forged_login.status, 403,
        "a login form's session is no operator's"
    );

    // With the token (and Origin: null, as under no-referrer) it is done.
    let done = visitor
        .post(
            &cancel,
            &[("csrf", &csrf), ("back", "/console/queue")],
            &[("origin", "null")],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(console.state_of(&id).await, None, "cancelled");
    let after = visitor.get("/console/queue").await;
    assert!(after.body.contains("was cancelled"), "{}", after.body);

    // The audit log records the logins and the refusals; the console shows it.
    let audit = visitor.get("/console/audit?q=console.login_failed").await;
    assert_eq!(audit.status, 200);
    assert!(
        audit.body.contains("wrong admin password"),
        "{}",
        audit.body
    );
    let text = console.audit_text();
    for action in [
        "\"console.login_failed\"",
        "\"console.login\"",
        "\"console.refused\"",
        "\"console.cancelled\"",
    ] {
        assert!(text.contains(action), "{action} in the audit log");
    }
    assert!(!text.contains(PASSWORD), "the password is never logged");

    for page in ["/console/webhooks", "/console/inbox"] {
        let reply = visitor.get(page).await;
        assert_eq!(reply.status, 200, "{page}: {}", reply.body);
    }

    // Logout ends the session; the old cookie opens nothing.
    let old_cookie = visitor.cookie.clone();
    let csrf = visitor.csrf("/console/accounts").await;
    let out = visitor
        .post("/console/logout", &[("csrf", &csrf)], &[])
        .await;
    assert_eq!(out.status, 303);
    assert_eq!(visitor.cookie, None, "the cookie is removed");
    visitor.cookie = old_cookie;
    assert_eq!(visitor.get("/console/accounts").await.status, 303);

    // An admin API key logs in; a key without the admin scope does not.
    let admin = console
        .create_key(
            "ops",
            &[
                "--scope",
                "admin",
                "--allowed-from",
                "@example.net",
                "--account",
                ACCOUNT,
            ],
        )
        .await;
    let mut operator = Visitor::new(&console.base);
    assert_eq!(operator.login(&admin).await.status, 303);
    assert_eq!(operator.get("/console/accounts").await.status, 200);
    let mut sender = Visitor::new(&console.base);
    let refused = sender.login(&console.sender_key).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(console.audit_text().contains("lacks the admin scope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_binds_the_callback_to_the_session() {
    let console = Console::start(true).await;
    let mut visitor = Visitor::new(&console.base);
    assert_eq!(visitor.login(PASSWORD).await.status, 303);
    let csrf = visitor.csrf("/console/accounts").await;
    let started = visitor
        .post(
            &format!("/console/accounts/{ACCOUNT}/connect"),
            &[("csrf", &csrf)],
            &[],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.body);
    let authorize = reqwest::Url::parse(started.location()).expect("the provider's URL");
    let query: std::collections::HashMap<String, String> =
        authorize.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(
        query["redirect_uri"],
        format!("{}/console/oauth/callback", console.base)
    );

    // A callback with another state is refused, and changes nothing.
    let forged = visitor
        .get("/console/oauth/callback?code=stolen&state=forged")
        .await;
    assert_eq!(forged.status, 400, "{}", forged.body);
    assert!(
        forged.body.contains("does not carry the state"),
        "{}",
        forged.body
    );
    assert!(!console.consent_stored().await, "no consent stored");

    // The sandbox approves (auto-approve) and sends the browser back.
    let approved = visitor
        .client
        .get(authorize.as_str())
        .send()
        .await
        .expect("authorize");
    let back = approved.headers()[LOCATION]
        .to_str()
        .expect("location")
        .to_string();
    assert!(
        back.starts_with(&format!("{}/console/oauth/callback?", console.base)),
        "{back}"
    );
    let path = &back[console.base.len()..];

    // Without the session cookie (a cross-site redirect under SameSite=Strict)
    // the page sends the browser round once more; it does not finish.
    let mut cookieless = Visitor::new(&console.base);
    let bounce = cookieless.get(path).await;
    assert_eq!(bounce.status, 200);
    assert!(
        bounce.body.contains("http-equiv=\"refresh\""),
        "{}",
        bounce.body
    );
    let lost = cookieless.get(&format!("{path}&console_returned=1")).await;
    assert_eq!(lost.status, 401, "{}", lost.body);

    // Another operator's session does not hold this state either.
    let mut other = Visitor::new(&console.base);
    assert_eq!(other.login(PASSWORD).await.status, 303);
    let elsewhere = other.get(path).await;
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.body);

    let finished = visitor.get(path).await;
    assert_eq!(finished.status, 303, "{}", finished.body);
    assert_eq!(finished.location(), "/console/accounts");
    let accounts = visitor.get("/console/accounts").await;
    assert!(accounts.body.contains("is connected"), "{}", accounts.body);
    assert!(accounts.body.contains("state valid"), "{}", accounts.body);
    assert!(console.consent_stored().await, "consent stored");
    assert!(console.audit_text().contains("\"console.connected\""));
    // The state was good once.
    let again = visitor.get(path).await;
    assert_eq!(again.status, 400);
}
