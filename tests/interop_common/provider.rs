//! The sandbox authorization server as the token issuer for a third-party
//! upstream: started alone (`AuthServer::bind`), with the clients these
//! tests need registered — the relay (client credentials, tokens for the
//! sandbox mailbox) and Dovecot (a resource server that introspects).

use super::USER;
use oxirelay::sandbox::authz::{AuthServer, AuthServerConfig, RunningAuthServer, SandboxClient};
use oxirelay::secret::Secret;

/// The scope Dovecot requires (`scope =` in its oauth2 passdb).
pub const SCOPE: &str = oxirelay::sandbox::SMTP_SCOPE;
/// The relay's client at the authorization server.
pub const RELAY_CLIENT: &str = "oxirelay";
/// Dovecot's client, for RFC 7662 introspection.
pub const DOVECOT_CLIENT: &str = "dovecot-submission";

pub struct Provider {
    pub auth: RunningAuthServer,
    pub relay_secret: Secret,
    pub dovecot_secret: Secret,
    /// A second scope the relay asks for besides [`SCOPE`], if any.
    pub extra_scope: Option<String>,
}

impl Provider {
    pub async fn start() -> Provider {
        Self::start_with(None).await
    }

    /// Tokens that carry `extra_scope` as well: a long scope makes long
    /// tokens (a JWT carries its scope claim), as long as real providers'.
    pub async fn start_with(extra_scope: Option<String>) -> Provider {
        oxirelay::tls::install_crypto_provider();
        let relay_secret = Secret::new(format!("relay-{}", random_hex()));
        let dovecot_secret = Secret::new(format!("dovecot-{}", random_hex()));
        let mut scopes = vec![SCOPE.to_string()];
        scopes.extend(extra_scope.clone());
        let config = AuthServerConfig {
            scopes,
            clients: vec![
                SandboxClient {
                    app_subject: Some(USER.into()),
                    ..SandboxClient::confidential(RELAY_CLIENT, relay_secret.clone())
                },
                SandboxClient::confidential(DOVECOT_CLIENT, dovecot_secret.clone()),
            ],
            users: vec![USER.into()],
            // `typ: JWT`, as Keycloak and most identity servers write it:
            // Dovecot 2.3's local validation refuses RFC 9068's `at+jwt`.
            jwt_header: oxirelay::oauth::jwt::HeaderStyle::Jwt,
            ..AuthServerConfig::default()
        };
        let auth = AuthServer::bind(([127, 0, 0, 1], 0).into(), config)
            .await
            .expect("the authorization server starts");
        Provider {
            auth,
            relay_secret,
            dovecot_secret,
            extra_scope,
        }
    }

    /// The issuer exactly as in the `iss` claim.
    pub fn issuer(&self) -> &str {
        self.auth.issuer_id()
    }

    /// The scopes the relay's account asks for.
    pub fn scopes(&self) -> Vec<String> {
        let mut scopes = vec![SCOPE.to_string()];
        scopes.extend(self.extra_scope.clone());
        scopes
    }

    /// The published JWKS document.
    pub async fn jwks(&self) -> serde_json::Value {
        oxirelay::oauth::grant::http_client(true)
            .get(self.auth.jwks_url())
            .send()
            .await
            .expect("JWKS request")
            .json()
            .await
            .expect("JWKS JSON")
    }

    /// Revokes `token` at the RFC 7009 endpoint, as the relay's client
    /// (the client a token was issued to is the one that may revoke it),
    /// out of band: the relay still holds it.
    pub async fn revoke(&self, token: &str) {
        let response = oxirelay::oauth::grant::http_client(true)
            .post(self.auth.revocation_url())
            .basic_auth(RELAY_CLIENT, Some(self.relay_secret.expose()))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .expect("revocation request");
        assert!(
            response.status().is_success(),
            "revocation refused: {}",
            response.status()
        );
        assert!(
            !self.auth.is_token_active(&Secret::new(token)),
            "the revoked token is still active"
        );
    }
}

fn random_hex() -> String {
    (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
