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
    let secret = Secret::new("issuer-b-secret");
    let config = AuthServerConfig {
        scopes: vec![oxirelay::sandbox::SMTP_SCOPE.into()],
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
    let response: serde_json::Value = oxirelay::oauth::grant::http_client(true)
        .post(server.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", OTHER_CLIENT),
            ("client_secret", secret.expose()),
            ("scope", oxirelay::sandbox::SMTP_SCOPE),
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
