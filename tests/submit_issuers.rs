//! Bearer identities are bound to their issuer: a token names a `[[user]]`
//! only through the (issuer, subject) pair the config gives it. A valid
//! token of another trusted issuer with the same subject is someone else.

mod submit_common;

use oxirelay::sandbox::USER;
use oxirelay::sandbox::authz::{AuthServer, AuthServerConfig, SandboxClient};
use oxirelay::secret::Secret;
use submit_common::*;

const OTHER_CLIENT: &str = "other-app";

/// A second authorization server, B, whose app-only tokens carry the same
/// subject as the sandbox's (issuer A's) user.
async fn issuer_b() -> (oxirelay::sandbox::authz::RunningAuthServer, Secret) {
    issuer_with_scopes(&[oxirelay::sandbox::SMTP_SCOPE]).await
}

/// An authorization server like B that issues tokens for these scopes.
async fn issuer_with_scopes(
    scopes: &[&str],
) -> (oxirelay::sandbox::authz::RunningAuthServer, Secret) {
    let secret = Secret::new("issuer-b-secret");
    let config = AuthServerConfig {
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        clients: vec![SandboxClient {
            app_subject: Some(USER.into()),
            ..SandboxClient::confidential(OTHER_CLIENT, secret.clone())
        }],
        ..AuthServerConfig::default()
    };
    let server = AuthServer::bind(([127, 0, 0, 1], 0).into(), config)
        .await
        .expect("issuer B starts");
    (server, secret)
}

async fn token_of(server: &oxirelay::sandbox::authz::RunningAuthServer, secret: &Secret) -> String {
    token_with_scope(server, secret, oxirelay::sandbox::SMTP_SCOPE).await
}

async fn token_with_scope(
    server: &oxirelay::sandbox::authz::RunningAuthServer,
    secret: &Secret,
    scope: &str,
) -> String {
    let response: serde_json::Value = oxirelay::oauth::grant::http_client(true)
        .post(server.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", OTHER_CLIENT),
            ("client_secret", secret.expose()),
            ("scope", scope),
        ])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token JSON");
    response["access_token"]
        .as_str()
        .expect("a token")
        .to_string()
}

async fn auth_oauthbearer(relay: &Relay, user: &str, token: &str) -> String {
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    client.greet_with_starttls(&relay.ca_file).await;
    let reply = client
        .command(&format!("AUTH OAUTHBEARER {}", oauthbearer(user, token)))
        .await;
    if reply.starts_with("334 ") {
        // The RFC 7628 error challenge: acknowledge to get the final reply.
        return client.command("AQ==").await;
    }
    reply
}

#[tokio::test]
async fn a_token_of_another_issuer_with_the_same_subject_is_refused() {
    let (b, b_secret) = issuer_b().await;
    // Issuer B is trusted too, but only for its own user "b-app".
    let extra = format!(
        "\n[[issuer]]\nurl = \"{url}\"\naudience = \"smtp\"\ninsecure_loopback = true\n\n\
         [[user]]\nname = \"b-app\"\nissuer = \"{url}\"\nsubject = \"{USER}\"\nallowed_from = [\"b-app@contoso.test\"]\naccount = \"{ACCOUNT}\"\n",
        url = b.issuer_id()
    );
    let relay = Relay::start_with_config(&extra).await;
    let from_b = token_of(&b, &b_secret).await;

    // B's token with A's user named in SASL: refused.
    let reply = auth_oauthbearer(&relay, USER, &from_b).await;
    assert!(reply.starts_with("535 "), "{reply}");

    // The same token logs in as B's own user, who may not send as A's.
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    client.greet_with_starttls(&relay.ca_file).await;
    let reply = client
        .command(&format!("AUTH OAUTHBEARER {}", oauthbearer("", &from_b)))
        .await;
    assert!(reply.starts_with("235 "), "{reply}");
    let reply = client.command(&format!("MAIL FROM:<{USER}>")).await;
    assert!(
        reply.starts_with("550 5.7.1 Sender not allowed for b-app"),
        "{reply}"
    );

    // A's own token still names A's user.
    let from_a = relay.sandbox_token().await;
    let reply = auth_oauthbearer(&relay, USER, &from_a).await;
    assert!(reply.starts_with("235 "), "{reply}");
    assert!(relay.queued().await.is_empty());
    relay.shutdown().await;
    b.shutdown().await.expect("B stops");
}

#[tokio::test]
async fn a_trusted_issuer_without_a_user_for_the_subject_gets_nothing() {
    let (b, b_secret) = issuer_b().await;
    let extra = format!(
        "\n[[issuer]]\nurl = \"{url}\"\naudience = \"smtp\"\ninsecure_loopback = true\n",
        url = b.issuer_id()
    );
    let relay = Relay::start_with_config(&extra).await;
    let from_b = token_of(&b, &b_secret).await;
    for sasl_user in ["", USER] {
        let reply = auth_oauthbearer(&relay, sasl_user, &from_b).await;
        assert!(reply.starts_with("535 "), "{sasl_user:?}: {reply}");
    }
    relay.shutdown().await;
    b.shutdown().await.expect("B stops");
}

/// `[[issuer]] required_scope`: a valid token of a trusted issuer, naming
/// a configured user, is refused at the listener when it lacks the scope
/// (RFC 7628 error challenge `insufficient_scope` naming it, then 535), and
/// nothing can be queued; the same user with the scope gets in.
#[tokio::test]
async fn a_token_without_the_issuers_required_scope_is_refused_at_the_listener() {
    use oxirelay::sandbox::SMTP_SCOPE;
    let (issuer, secret) = issuer_with_scopes(&[SMTP_SCOPE, "profile"]).await;
    let extra = format!(
        "\n[[issuer]]\nurl = \"{url}\"\naudience = \"smtp\"\nrequired_scope = \"{SMTP_SCOPE}\"\ninsecure_loopback = true\n\n\
         [[user]]\nname = \"c-app\"\nissuer = \"{url}\"\nsubject = \"{USER}\"\nallowed_from = [\"c-app@contoso.test\"]\naccount = \"{ACCOUNT}\"\n",
        url = issuer.issuer_id()
    );
    let relay = Relay::start_with_config(&extra).await;
    let unscoped = token_with_scope(&issuer, &secret, "profile").await;
    let scoped = token_with_scope(&issuer, &secret, SMTP_SCOPE).await;

    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    client.greet_with_starttls(&relay.ca_file).await;
    let challenge = client
        .command(&format!(
            "AUTH OAUTHBEARER {}",
            oauthbearer("c-app", &unscoped)
        ))
        .await;
    let status = challenge
        .strip_prefix("334 ")
        .and_then(|b64| oxirelay::smtp::sasl::OAuthErrorStatus::from_base64(b64.trim().as_bytes()))
        .unwrap_or_else(|| panic!("an RFC 7628 error challenge: {challenge}"));
    assert_eq!(status.status, "insufficient_scope", "{status:?}");
    assert_eq!(status.scope.as_deref(), Some(SMTP_SCOPE), "{status:?}");
    let reply = client.command("AQ==").await;
    assert!(reply.starts_with("535 "), "{reply}");
    let reply = client.command("MAIL FROM:<c-app@contoso.test>").await;
    assert!(reply.starts_with("530 "), "not authenticated: {reply}");
    assert!(relay.queued().await.is_empty());

    // The control: the same user, a token with the scope.
    let reply = client
        .command(&format!(
            "AUTH OAUTHBEARER {}",
            oauthbearer("c-app", &scoped)
        ))
        .await;
    assert!(reply.starts_with("235 "), "{reply}");
    relay.shutdown().await;
    issuer.shutdown().await.expect("the issuer stops");
}
