//! The sandbox authorization server over real HTTP on 127.0.0.1, driven with
//! reqwest the way the relay's OAuth client and a browser would drive it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oxirelay::oauth::grant::ClientAuth;
use oxirelay::oauth::jwt::{AccessTokenClaims, SigningKey, unix_now};
use oxirelay::oauth::validate::{IntrospectionClient, JwtValidator, ValidationError, introspect};
use oxirelay::sandbox::authz::{
    AuthServer, AuthServerConfig, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_USER, RunningAuthServer,
    SandboxClient, TokenFault,
};
use oxirelay::secret::Secret;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const REDIRECT: &str = "http://127.0.0.1:49152/callback";

async fn start(config: AuthServerConfig) -> RunningAuthServer {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    AuthServer::bind(addr, config).await.expect("server starts")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The demo client at the introspection endpoint, with `secret`.
fn demo_client(secret: &Secret) -> IntrospectionClient<'_> {
    IntrospectionClient {
        client_id: DEMO_CLIENT_ID,
        client_secret: Some(secret),
        auth: ClientAuth::Basic,
    }
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// POST form to the token endpoint with client_secret_basic.
async fn token(server: &RunningAuthServer, form: &[(&str, &str)]) -> (u16, Value) {
    let response = http()
        .post(server.token_url())
        .basic_auth(DEMO_CLIENT_ID, Some(DEMO_CLIENT_SECRET))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = response.status().as_u16();
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .map(|v| v.to_str().ok()),
        Some(Some("no-store")),
        "token responses must not be cached"
    );
    (status, response.json().await.expect("json body"))
}

fn auto_approve() -> AuthServerConfig {
    AuthServerConfig {
        auto_approve: true,
        ..AuthServerConfig::default()
    }
}

/// Runs /authorize in auto-approve mode and returns the code.
async fn authorize_code(server: &RunningAuthServer, scope: &str) -> String {
    let mut url = server.authorization_url();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", DEMO_CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", scope)
        .append_pair("state", "xyz")
        .append_pair("code_challenge", &challenge(VERIFIER))
        .append_pair("code_challenge_method", "S256");
    let response = http().get(url).send().await.expect("authorize");
    assert_eq!(response.status().as_u16(), 302);
    let location = redirect_params(&response);
    assert_eq!(location.get("state").map(String::as_str), Some("xyz"));
    assert_eq!(
        location.get("iss").map(String::as_str),
        Some(server.issuer_id())
    );
    location.get("code").expect("code in redirect").clone()
}

fn redirect_params(response: &reqwest::Response) -> std::collections::HashMap<String, String> {
    let location = response
        .headers()
        .get("location")
        .expect("location")
        .to_str()
        .expect("ascii");
    let url = url::Url::parse(location).expect("url");
    assert!(
        location.starts_with("http://127.0.0.1:49152/callback?"),
        "{location}"
    );
    url.query_pairs().into_owned().collect()
}

async fn code_grant(server: &RunningAuthServer) -> Value {
    let code = authorize_code(server, "smtp offline_access").await;
    let (status, body) = token(
        server,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn text<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {body}"))
}

#[tokio::test]
async fn metadata_describes_every_endpoint() {
    let server = start(AuthServerConfig::default()).await;
    for path in [
        ".well-known/oauth-authorization-server",
        ".well-known/openid-configuration",
    ] {
        let doc: Value = http()
            .get(server.issuer().join(path).expect("url"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(doc["issuer"], server.issuer_id());
        assert_eq!(doc["token_endpoint"], server.token_url().as_str());
        assert_eq!(doc["jwks_uri"], server.jwks_url().as_str());
        assert_eq!(
            doc["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
        assert_eq!(
            doc["token_endpoint_auth_methods_supported"],
            serde_json::json!(["client_secret_basic", "client_secret_post"])
        );
        for field in [
            "authorization_endpoint",
            "device_authorization_endpoint",
            "revocation_endpoint",
            "introspection_endpoint",
            "grant_types_supported",
            "scopes_supported",
        ] {
            assert!(!doc[field].is_null(), "{field} missing");
        }
        assert_eq!(serde_json::to_value(server.metadata()).expect("json"), doc);
    }
    let jwks: Value = http()
        .get(server.jwks_url())
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn client_credentials_with_basic_and_post_auth() {
    let server = start(AuthServerConfig::default()).await;
    let (status, body) = token(
        &server,
        &[("grant_type", "client_credentials"), ("scope", "smtp")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token for app-only"
    );

    let posted: Value = http()
        .post(server.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
        ])
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let claims = server
        .validator(http())
        .validate(&Secret::new(text(&posted, "access_token")))
        .await
        .expect("valid");
    assert_eq!(claims.subject, DEMO_USER);
    assert!(claims.has_scope("smtp"));
    assert_eq!(claims.client_id.as_deref(), Some(DEMO_CLIENT_ID));
}

#[tokio::test]
async fn wrong_secret_is_invalid_client_401() {
    let server = start(AuthServerConfig::default()).await;
    let response = http()
        .post(server.token_url())
        .basic_auth(DEMO_CLIENT_ID, Some("guessed-secret-42"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().get("www-authenticate").is_some());
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.contains("guessed-secret-42"))
    );
    let stats = server.stats();
    assert_eq!((stats.token_requests, stats.token_failures), (1, 1));
}

#[tokio::test]
async fn code_flow_with_pkce() {
    let server = start(auto_approve()).await;
    let body = code_grant(&server).await;
    assert!(
        body["refresh_token"].is_string(),
        "offline_access gives a refresh token"
    );
    assert_eq!(body["scope"], "smtp offline_access");

    // Mismatched verifier.
    let code = authorize_code(&server, "smtp").await;
    let other_verifier = "x".repeat(43);
    let (status, body) = token(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &other_verifier),
        ],
    )
    .await;
    assert_eq!((status, text(&body, "error")), (400, "invalid_grant"));

    // Wrong redirect_uri at the token endpoint.
    let code = authorize_code(&server, "smtp").await;
    let (status, body) = token(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:49153/callback"),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!((status, text(&body, "error")), (400, "invalid_grant"));
    assert_eq!(server.stats().authorization_codes, 3);
}

#[tokio::test]
async fn authorize_refuses_unregistered_redirect_and_plain_pkce() {
    let server = start(auto_approve()).await;
    let mut url = server.authorization_url();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", DEMO_CLIENT_ID)
        .append_pair("redirect_uri", "http://evil.example/cb")
        .append_pair("code_challenge", &challenge(VERIFIER))
        .append_pair("code_challenge_method", "S256");
    let response = http().get(url).send().await.expect("get");
    assert_eq!(
        response.status().as_u16(),
        400,
        "never redirect to an unregistered URI"
    );

    let mut url = server.authorization_url();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", DEMO_CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("code_challenge", VERIFIER)
        .append_pair("code_challenge_method", "plain");
    let response = http().get(url).send().await.expect("get");
    assert_eq!(response.status().as_u16(), 302);
    assert_eq!(redirect_params(&response)["error"], "invalid_request");
}

#[tokio::test]
async fn consent_page_allow_and_deny() {
    let server = start(AuthServerConfig::default()).await;
    let authorize = || {
        let mut url = server.authorization_url();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", DEMO_CLIENT_ID)
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("state", "s1")
            .append_pair("code_challenge", &challenge(VERIFIER))
            .append_pair("code_challenge_method", "S256");
        url
    };
    for (decision, expect) in [("allow", "code"), ("deny", "error")] {
        let page = http()
            .get(authorize())
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("html");
        let form_token = page
            .split("name=\"form_token\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("form token in page");
        let response = http()
            .post(server.authorization_url())
            .form(&[
                ("form_token", form_token),
                ("user", DEMO_USER),
                ("decision", decision),
            ])
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 302);
        let params = redirect_params(&response);
        assert!(params.contains_key(expect), "{decision}: {params:?}");
        assert_eq!(params["state"], "s1");
        if decision == "deny" {
            assert_eq!(params["error"], "access_denied");
        }
        // The form token is single use.
        let again = http()
            .post(server.authorization_url())
            .form(&[
                ("form_token", form_token),
                ("user", DEMO_USER),
                ("decision", "allow"),
            ])
            .send()
            .await
            .expect("post");
        assert_eq!(again.status().as_u16(), 400);
    }
}

#[tokio::test]
async fn refresh_rotation_and_reuse_revokes_the_family() {
    let server = start(auto_approve()).await;
    let first = code_grant(&server).await;
    let rt1 = text(&first, "refresh_token").to_string();

    let (status, second) = token(
        &server,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt1)],
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let rt2 = text(&second, "refresh_token").to_string();
    assert_ne!(rt1, rt2, "rotation gives a new refresh token");
    let access2 = Secret::new(text(&second, "access_token"));
    assert!(server.is_token_active(&access2));

    // Reusing the rotated token is refused and kills the whole family.
    let (status, body) = token(
        &server,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt1)],
    )
    .await;
    assert_eq!((status, text(&body, "error")), (400, "invalid_grant"));
    let (status, body) = token(
        &server,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt2)],
    )
    .await;
    assert_eq!(
        (status, text(&body, "error")),
        (400, "invalid_grant"),
        "descendant revoked too"
    );
    assert!(
        !server.is_token_active(&access2),
        "access tokens of the family are revoked"
    );
    let stats = server.stats();
    assert_eq!((stats.refresh_token_reuses, stats.families_revoked), (1, 1));
    assert_eq!(stats.token_requests_by_grant.refresh_token, 3);
}

#[tokio::test]
async fn device_flow_pending_slow_down_approved() {
    let server = start(AuthServerConfig {
        device_interval: Duration::from_secs(1),
        slow_down_increment: Duration::from_secs(1),
        ..AuthServerConfig::default()
    })
    .await;
    let start: Value = http()
        .post(server.device_authorization_url())
        .basic_auth(DEMO_CLIENT_ID, Some(DEMO_CLIENT_SECRET))
        .form(&[("scope", "smtp offline_access")])
        .send()
        .await
        .expect("device authorization")
        .json()
        .await
        .expect("json");
    assert_eq!(start["interval"], 1);
    assert!(text(&start, "verification_uri_complete").contains("user_code="));
    let device_code = text(&start, "device_code").to_string();
    let user_code = text(&start, "user_code").to_string();
    let poll = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", device_code.as_str()),
    ];

    let (status, body) = token(&server, &poll).await;
    assert_eq!(
        (status, text(&body, "error")),
        (400, "authorization_pending")
    );
    let (_, body) = token(&server, &poll).await;
    assert_eq!(
        text(&body, "error"),
        "slow_down",
        "polled at once, faster than the interval"
    );

    server
        .approve_device(&user_code, DEMO_USER)
        .expect("approve");
    // The interval grew to 2 s; a well-behaved client waits that long. This
    // waits on protocol time, not on another task.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = token(&server, &poll).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].is_string());
    let claims = server
        .validator(http())
        .validate(&Secret::new(text(&body, "access_token")))
        .await
        .expect("valid");
    assert_eq!(claims.subject, DEMO_USER);
    assert_eq!(server.stats().token_requests_by_grant.device_code, 3);
}

#[tokio::test]
async fn device_flow_denied() {
    let server = start(AuthServerConfig {
        device_interval: Duration::ZERO,
        ..AuthServerConfig::default()
    })
    .await;
    let start: Value = http()
        .post(server.device_authorization_url())
        .form(&[
            ("client_id", DEMO_CLIENT_ID),
            ("client_secret", DEMO_CLIENT_SECRET),
        ])
        .send()
        .await
        .expect("device authorization")
        .json()
        .await
        .expect("json");
    server.deny_device(text(&start, "user_code")).expect("deny");
    let (_, body) = token(
        &server,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", text(&start, "device_code")),
        ],
    )
    .await;
    assert_eq!(text(&body, "error"), "access_denied");
}

#[tokio::test]
async fn revoke_then_introspect_inactive() {
    let server = start(auto_approve()).await;
    let grant = code_grant(&server).await;
    let access = Secret::new(text(&grant, "access_token"));
    let refresh = Secret::new(text(&grant, "refresh_token"));
    let client_secret = Secret::new(DEMO_CLIENT_SECRET);
    let url = server.introspection_url();

    let seen = introspect(&http(), &url, demo_client(&client_secret), &access)
        .await
        .expect("introspect");
    assert!(seen.active);
    assert_eq!(seen.sub.as_deref(), Some(DEMO_USER));
    assert_eq!(seen.client_id.as_deref(), Some(DEMO_CLIENT_ID));
    assert!(seen.exp.is_some());

    let revoke = |token: &Secret, hint: &'static str| {
        http()
            .post(server.revocation_url())
            .basic_auth(DEMO_CLIENT_ID, Some(DEMO_CLIENT_SECRET))
            .form(&[
                ("token", token.expose().to_string()),
                ("token_type_hint", hint.to_string()),
            ])
            .send()
    };
    assert_eq!(
        revoke(&access, "access_token")
            .await
            .expect("revoke")
            .status()
            .as_u16(),
        200
    );
    let seen = introspect(&http(), &url, demo_client(&client_secret), &access)
        .await
        .expect("introspect");
    assert!(!seen.active, "revoked access token is inactive");

    // Revoking the refresh token revokes its family.
    assert!(
        introspect(&http(), &url, demo_client(&client_secret), &refresh)
            .await
            .expect("i")
            .active
    );
    assert_eq!(
        revoke(&refresh, "refresh_token")
            .await
            .expect("revoke")
            .status()
            .as_u16(),
        200
    );
    assert!(
        !introspect(&http(), &url, demo_client(&client_secret), &refresh)
            .await
            .expect("i")
            .active
    );
    let (_, body) = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose()),
        ],
    )
    .await;
    assert_eq!(text(&body, "error"), "invalid_grant");

    // Unknown tokens are still a 200 (RFC 7009 §2.2).
    assert_eq!(
        revoke(&Secret::new("nonsense"), "access_token")
            .await
            .expect("revoke")
            .status()
            .as_u16(),
        200
    );
    let stats = server.stats();
    assert_eq!((stats.revocations, stats.introspections), (3, 4));

    // Introspection with a bad secret is an authentication error.
    let err = introspect(&http(), &url, demo_client(&Secret::new("bad")), &access)
        .await
        .expect_err("401");
    assert!(!err.is_transient(), "{err}");
}

#[tokio::test]
async fn consent_withdrawn_for_subject() {
    let server = start(auto_approve()).await;
    let grant = code_grant(&server).await;
    assert_eq!(server.revoke_all_for_subject(DEMO_USER), 1);
    assert!(!server.is_token_active(&Secret::new(text(&grant, "access_token"))));
    let (_, body) = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", text(&grant, "refresh_token")),
        ],
    )
    .await;
    assert_eq!(text(&body, "error"), "invalid_grant");
}

#[tokio::test]
async fn validator_good_wrong_audience_forged_and_unknown_key() {
    let server = start(AuthServerConfig::default()).await;
    let (_, body) = token(&server, &[("grant_type", "client_credentials")]).await;
    let access = Secret::new(text(&body, "access_token"));

    let validator = server.validator(http());
    let good = validator.validate(&access).await.expect("valid");
    assert_eq!(good.issuer, server.issuer_id());
    assert!(good.expires_at > std::time::SystemTime::now());

    let other_audience = JwtValidator::new(
        server.jwks_url(),
        server.issuer_id().into(),
        "imap".into(),
        http(),
    );
    assert!(matches!(
        other_audience.validate(&access).await,
        Err(ValidationError::WrongAudience { .. })
    ));
    let other_issuer = JwtValidator::new(
        server.jwks_url(),
        "https://elsewhere.example".into(),
        "smtp".into(),
        http(),
    );
    assert!(matches!(
        other_issuer.validate(&access).await,
        Err(ValidationError::WrongIssuer { .. })
    ));

    // Tokens signed by a key the issuer never published: unknown kid. A
    // burst of them must not make the validator hammer the JWKS endpoint.
    let stranger = SigningKey::generate().expect("key");
    let now = unix_now();
    let forged = stranger
        .sign(&AccessTokenClaims {
            iss: server.issuer_id().into(),
            sub: DEMO_USER.into(),
            aud: "smtp".into(),
            exp: now + 60,
            iat: now,
            jti: "forged".into(),
            scope: "smtp".into(),
            client_id: DEMO_CLIENT_ID.into(),
        })
        .expect("sign");
    let fresh = server.validator(http());
    let fetches_before = server.stats().jwks_fetches;
    for _ in 0..20 {
        assert!(matches!(
            fresh.validate(&forged).await,
            Err(ValidationError::UnknownKey { .. })
        ));
    }
    assert_eq!(
        server.stats().jwks_fetches - fetches_before,
        1,
        "one fetch, then rate-limited"
    );

    // A token with our kid but a foreign signature.
    let mut parts: Vec<&str> = access.expose().split('.').collect();
    let foreign: Vec<&str> = forged.expose().split('.').collect();
    parts[2] = foreign[2];
    let tampered = Secret::new(parts.join("."));
    assert!(matches!(
        validator.validate(&tampered).await,
        Err(ValidationError::BadSignature { .. })
    ));
}

#[tokio::test]
async fn validator_rejects_expired_tokens() {
    let server = start(AuthServerConfig {
        access_token_ttl: Duration::from_secs(1),
        ..AuthServerConfig::default()
    })
    .await;
    let (_, body) = token(&server, &[("grant_type", "client_credentials")]).await;
    let access = Secret::new(text(&body, "access_token"));
    let validator = server.validator(http()).with_leeway(Duration::ZERO);
    let valid = validator
        .validate(&access)
        .await
        .expect("fresh token is valid");

    // Wait for the token's own expiry instant (plus the one-second
    // resolution of exp), bounded: this is waiting on the clock itself.
    let until_expiry = valid
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        + Duration::from_secs(1);
    assert!(until_expiry <= Duration::from_secs(3));
    tokio::time::sleep(until_expiry).await;
    let err = validator.validate(&access).await.expect_err("expired");
    assert_eq!(err, ValidationError::Expired);
    assert_eq!(err.rfc7628_status().status, "invalid_token");
}

#[tokio::test]
async fn validator_reports_jwks_down_as_transient() {
    // Bind then drop a listener: its port is closed.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let server = start(AuthServerConfig::default()).await;
    let (_, body) = token(&server, &[("grant_type", "client_credentials")]).await;
    let validator = JwtValidator::new(
        format!("http://{addr}/jwks").parse().expect("url"),
        server.issuer_id().into(),
        "smtp".into(),
        http(),
    );
    let err = validator
        .validate(&Secret::new(text(&body, "access_token")))
        .await
        .expect_err("down");
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.rfc7628_status().status, "temporarily_unavailable");
}

#[tokio::test]
async fn fault_injection_next_n_fraction_and_delay() {
    let server = start(AuthServerConfig::default()).await;
    server.faults().fail_next(2, TokenFault::ServerError);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            token(&server, &[("grant_type", "client_credentials")])
                .await
                .0,
        );
    }
    assert_eq!(statuses, [500, 500, 200]);

    server.faults().fail_fraction(0.5, TokenFault::InvalidGrant);
    let mut refused = 0;
    for _ in 0..10 {
        let (status, body) = token(&server, &[("grant_type", "client_credentials")]).await;
        if status == 400 {
            assert_eq!(text(&body, "error"), "invalid_grant");
            refused += 1;
        }
    }
    assert_eq!(refused, 5);
    server.faults().clear();

    server
        .faults()
        .fail_next(1, TokenFault::Delay(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    assert_eq!(
        token(&server, &[("grant_type", "client_credentials")])
            .await
            .0,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    let stats = server.stats();
    assert_eq!(stats.token_requests, 14);
    assert_eq!(stats.token_requests_by_grant.client_credentials, 14);
    assert_eq!(stats.token_failures, 7);
}

#[tokio::test]
async fn concurrent_requests_are_each_counted_and_awaitable() {
    let server = start(AuthServerConfig::default()).await;
    let url = server.token_url();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let url = url.clone();
        tasks.spawn(async move {
            http()
                .post(url)
                .basic_auth(DEMO_CLIENT_ID, Some(DEMO_CLIENT_SECRET))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    let stats = server
        .wait_for_token_requests(50, WAIT)
        .await
        .expect("50 requests seen");
    assert_eq!(stats.token_requests, 50);
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.expect("task").expect("request"), 200);
    }
    assert_eq!(server.stats().tokens_issued, 50);
    assert!(
        server
            .wait_for_token_requests(51, Duration::from_millis(50))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn app_only_needs_an_app_subject_and_shutdown_closes_the_port() {
    let mut config = AuthServerConfig::default();
    config.clients.push(SandboxClient::confidential(
        "no-mailbox",
        Secret::new("s3cret"),
    ));
    let server = start(config).await;
    let body: Value = http()
        .post(server.token_url())
        .basic_auth("no-mailbox", Some("s3cret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(body["error"], "unauthorized_client");

    let url = server.token_url();
    server.shutdown().await.expect("shutdown");
    assert!(
        http().post(url).send().await.is_err(),
        "port closed after shutdown"
    );
}
