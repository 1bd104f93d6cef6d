//! The sandbox's provider profiles on the token side, over real HTTP and
//! real SMTP on 127.0.0.1: each profile's authorization server issues
//! tokens of its shape (strict: RS256 JWTs of 2,000+ characters; microsoft:
//! Entra-shaped JWTs with `scp` or `roles`; google: opaque `ya29.` tokens),
//! and its SMTP server accepts them (AUTH XOAUTH2 in two steps, so the
//! AUTH line stays short), enforces the profile's permission, and refuses
//! revoked or made-up tokens.

mod line_client;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use line_client::{Client, xoauth2};
use oxirelay::sandbox::{CLIENT_ID, ProfileName, Sandbox, SandboxOptions, USER, oauth_profile};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const REDIRECT: &str = "http://127.0.0.1:49152/callback";

async fn start(profile: ProfileName) -> (Sandbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SandboxOptions::new(dir.path().join("sandbox"));
    options.auto_approve = true;
    options.profile = profile;
    (Sandbox::start(options).await.expect("sandbox starts"), dir)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn token_request(sandbox: &Sandbox, form: &[(&str, &str)]) -> Value {
    let response = http()
        .post(sandbox.auth.token_url())
        .basic_auth(CLIENT_ID, Some(sandbox.client_secret.expose()))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert!(status.is_success(), "{status}: {body}");
    body
}

async fn app_token(sandbox: &Sandbox, scopes: &[&str]) -> String {
    let scope = scopes.join(" ");
    let body = token_request(
        sandbox,
        &[("grant_type", "client_credentials"), ("scope", &scope)],
    )
    .await;
    body["access_token"].as_str().expect("token").to_string()
}

/// Authorization code + PKCE through the auto-approving sandbox.
async fn user_tokens(sandbox: &Sandbox, scopes: &[&str]) -> Value {
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()));
    let mut url = sandbox.auth.authorization_url();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", "s")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let answer = http().get(url).send().await.expect("authorize");
    let location = answer.headers()["location"].to_str().expect("ascii");
    let code = url::Url::parse(location)
        .expect("redirect")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {location}"));
    token_request(
        sandbox,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64url")).expect("json")
}

/// AUTH XOAUTH2 in two steps (the initial response on its own line, so the
/// AUTH command line stays within 512 octets); returns the final reply.
async fn smtp_auth(sandbox: &Sandbox, token: &str) -> String {
    let mut client = Client::connect_addr(sandbox.smtp.addr(), WAIT).await;
    client.greet_with_starttls_trusting(sandbox.ca_file()).await;
    assert_eq!(client.command("AUTH XOAUTH2").await, "334 \r\n");
    let reply = client.command(&xoauth2(USER, token)).await;
    if let Some(challenge) = reply.strip_prefix("334 ") {
        // The RFC 7628 error challenge; the client acknowledges it.
        let status = oxirelay::smtp::sasl::decode_base64(challenge.trim_end().as_bytes())
            .map(|raw| String::from_utf8_lossy(&raw).into_owned())
            .expect("base64 challenge");
        let last = client.command("").await;
        return format!("{status} {last}");
    }
    reply
}

async fn revoke(sandbox: &Sandbox, token: &str) {
    let status = http()
        .post(sandbox.auth.revocation_url())
        .basic_auth(CLIENT_ID, Some(sandbox.client_secret.expose()))
        .form(&[("token", token), ("token_type_hint", "access_token")])
        .send()
        .await
        .expect("revoke")
        .status();
    assert!(status.is_success(), "{status}");
}

#[tokio::test]
async fn strict_profile_issues_long_jwts_the_smtp_server_accepts() {
    let (sandbox, _dir) = start(ProfileName::Strict).await;
    let oauth = oauth_profile(ProfileName::Strict);
    let app = app_token(&sandbox, oauth.app_scopes).await;
    assert!(app.len() >= 2000, "{} characters", app.len());
    assert_eq!(claims(&app)["sub"], USER);
    let user = user_tokens(&sandbox, oauth.delegated_scopes).await;
    let user_access = user["access_token"].as_str().expect("token");
    assert!(
        user_access.len() >= 2000,
        "{} characters",
        user_access.len()
    );
    assert!(user["refresh_token"].is_string());

    assert!(smtp_auth(&sandbox, &app).await.starts_with("235 "));
    assert!(smtp_auth(&sandbox, user_access).await.starts_with("235 "));
    revoke(&sandbox, &app).await;
    let refused = smtp_auth(&sandbox, &app).await;
    assert!(
        refused.contains("invalid_token") && refused.contains("535"),
        "{refused}"
    );
    // The profile's scope is still required.
    let no_scope = user_tokens(&sandbox, &["offline_access"]).await;
    let refused = smtp_auth(&sandbox, no_scope["access_token"].as_str().expect("t")).await;
    assert!(refused.contains("insufficient_scope"), "{refused}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn microsoft_profile_issues_entra_tokens_with_scp_or_roles() {
    let (sandbox, _dir) = start(ProfileName::Microsoft).await;
    let oauth = oauth_profile(ProfileName::Microsoft);
    assert_eq!(
        sandbox.auth.metadata().scopes_supported,
        oauth.offered_scopes
    );

    let app = app_token(&sandbox, &["https://outlook.office365.com/.default"]).await;
    assert!(app.len() >= 1500, "{} characters", app.len());
    let app_claims = claims(&app);
    assert_eq!(app_claims["roles"], serde_json::json!(["SMTP.SendAsApp"]));
    assert_eq!(app_claims["aud"], "https://outlook.office365.com");
    assert_eq!(app_claims["iss"], sandbox.auth.token_issuer());
    assert!(app_claims.get("scp").is_none());

    let user = user_tokens(
        &sandbox,
        &["https://outlook.office.com/SMTP.Send", "offline_access"],
    )
    .await;
    let user_access = user["access_token"].as_str().expect("token");
    assert!(
        user_access.len() >= 1500,
        "{} characters",
        user_access.len()
    );
    let user_claims = claims(user_access);
    assert_eq!(user_claims["scp"], "SMTP.Send");
    assert_eq!(user_claims["upn"], USER);
    assert_eq!(user_claims["aud"], "https://outlook.office.com");
    assert!(user["refresh_token"].is_string());

    // Exchange takes the app role and the delegated scope alike.
    assert!(smtp_auth(&sandbox, &app).await.starts_with("235 "));
    assert!(smtp_auth(&sandbox, user_access).await.starts_with("235 "));
    revoke(&sandbox, user_access).await;
    let refused = smtp_auth(&sandbox, user_access).await;
    // Exchange sends no RFC 7628 error challenge, only its final reply.
    assert!(
        refused.starts_with("535 5.7.3 Authentication unsuccessful"),
        "{refused}"
    );

    // App-only requests must name .default, as Entra insists.
    let response = http()
        .post(sandbox.auth.token_url())
        .basic_auth(CLIENT_ID, Some(sandbox.client_secret.expose()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "https://outlook.office.com/SMTP.Send"),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "invalid_scope");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("AADSTS1002012")),
        "{body}"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn google_profile_issues_opaque_tokens_only_introspection_vouches_for() {
    let (sandbox, _dir) = start(ProfileName::Google).await;
    let oauth = oauth_profile(ProfileName::Google);
    let app = app_token(&sandbox, oauth.app_scopes).await;
    let random = app.strip_prefix("ya29.").expect("ya29. prefix");
    assert!((190..=220).contains(&random.len()), "{}", random.len());
    assert!(
        !app.contains('.') || app.matches('.').count() == 1,
        "not a JWT: {app}"
    );
    let user = user_tokens(&sandbox, oauth.delegated_scopes).await;
    let user_access = user["access_token"].as_str().expect("token");
    assert!(user_access.starts_with("ya29."));
    assert!(user["refresh_token"].is_string());

    let before = sandbox.auth.stats().introspections;
    assert!(smtp_auth(&sandbox, &app).await.starts_with("235 "));
    assert!(smtp_auth(&sandbox, user_access).await.starts_with("235 "));
    assert_eq!(
        sandbox.auth.stats().introspections,
        before + 2,
        "each opaque token was introspected"
    );
    // A token of the right shape the server never issued.
    let made_up = format!("ya29.{}", "x".repeat(200));
    let refused = smtp_auth(&sandbox, &made_up).await;
    // Google's error challenge (an HTTP status and its scope), then 535-5.7.8.
    assert!(
        refused.contains(r#""status":"401""#)
            && refused.contains("535-5.7.8 Username and Password not accepted"),
        "{refused}"
    );
    revoke(&sandbox, &app).await;
    let refused = smtp_auth(&sandbox, &app).await;
    assert!(refused.contains(r#""status":"401""#), "{refused}");
    // Google's mail scope is required: a token without it is refused.
    let no_scope = user_tokens(&sandbox, &["offline_access"]).await;
    let refused = smtp_auth(&sandbox, no_scope["access_token"].as_str().expect("t")).await;
    assert!(
        refused.contains(r#""status":"403""#) && refused.contains("https://mail.google.com/"),
        "{refused}"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn each_profile_account_toml_is_a_valid_account_asking_the_profile_scopes() {
    for profile in [
        ProfileName::Strict,
        ProfileName::Microsoft,
        ProfileName::Google,
    ] {
        let (sandbox, dir) = start(profile).await;
        let oauth = oauth_profile(profile);
        for grant in ["client_credentials", "authorization_code"] {
            let text = format!(
                "[secrets]\nmaster_key = \"env:UNUSED\"\n\n{}",
                sandbox.account_toml("acct", grant, "env:UNUSED_SECRET")
            );
            let config = oxirelay::config::Config::parse(&text, &dir.path().join("x.toml"))
                .unwrap_or_else(|e| panic!("{profile} {grant}: {e}\n{text}"));
            let account = &config.accounts[0];
            let asked: Vec<&str> = account
                .scopes
                .as_ref()
                .expect("scopes")
                .iter()
                .map(String::as_str)
                .collect();
            assert_eq!(asked, oauth.scopes_for(grant), "{profile} {grant}");
        }
        sandbox.shutdown().await;
    }
}
