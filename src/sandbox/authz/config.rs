//! What the sandbox authorization server is configured with: token
//! lifetimes and shape, rotation, device-flow pacing, how clients
//! authenticate, registered clients and users, and the switches that make
//! it behave like stricter or quirkier providers.

use std::time::Duration;

use super::client_auth::ClientAuthMethod;
use crate::sandbox::profile::{ProfileName, TokenShape};
use crate::secret::Secret;

/// The demo client registered by [`AuthServerConfig::default`].
pub const DEMO_CLIENT_ID: &str = "oxirelay-demo";
/// The demo client's secret. It is a sandbox on loopback: a well-known value
/// lets the docs and `oxirelay demo` work without copying secrets around.
pub const DEMO_CLIENT_SECRET: &str = "sandbox-demo-secret";
/// The demo user (mailbox).
pub const DEMO_USER: &str = "alice@sandbox.test";

/// The scope that grants a refresh token to code and device grants.
pub const OFFLINE_ACCESS: &str = "offline_access";

/// The tenant (`tid`) of Entra-shaped tokens: made up, and recognisably so.
pub const SANDBOX_TENANT_ID: &str = "5a4db0c5-0000-4000-8000-000000000001";

/// What Exchange Online's app-only SMTP permission is called in `roles`.
pub const SMTP_SEND_AS_APP: &str = "SMTP.SendAsApp";

#[derive(Clone, Debug)]
pub struct AuthServerConfig {
    /// Lifetime of access tokens (default one hour, like Microsoft and Google).
    pub access_token_ttl: Duration,
    /// Issue a new refresh token on each use and retire the old one (RFC 9700).
    pub rotate_refresh_tokens: bool,
    /// Approve `/authorize` requests without showing the consent page.
    pub auto_approve: bool,
    /// RFC 8628 minimum polling interval (whole seconds on the wire).
    pub device_interval: Duration,
    /// How much the interval grows after each `slow_down`.
    pub slow_down_increment: Duration,
    /// Lifetime of a device code.
    pub device_code_ttl: Duration,
    /// Lifetime of an authorization code (RFC 6749 §4.1.2 recommends at most 10 minutes).
    pub authorization_code_ttl: Duration,
    /// The `aud` of every access token.
    pub audience: String,
    /// Scopes any client may ask for.
    pub scopes: Vec<String>,
    pub clients: Vec<SandboxClient>,
    /// Known users (mailboxes) that can consent.
    pub users: Vec<String>,
    /// Faults active from the start (see [`super::TokenFaults`]).
    pub initial_faults: Option<super::FaultPlan>,
    /// What issued access tokens look like (the profile's shape).
    pub token_shape: TokenShape,
    /// The JWT header of the `Jwt` shape: RFC 9068's `typ: at+jwt` by
    /// default, or the `typ: JWT` most identity servers write.
    pub jwt_header: crate::oauth::jwt::HeaderStyle,
    /// Entra shape: the tenant id the tokens carry in `tid` and `iss`.
    pub tenant_id: String,
    /// Entra shape: the application permissions an administrator granted,
    /// carried in `roles` of app-only tokens.
    pub app_roles: Vec<String>,
    /// How clients may authenticate at the token, device authorization,
    /// revocation and introspection endpoints; advertised in the metadata.
    /// `None` is listed when public clients are registered.
    pub client_auth_methods: Vec<ClientAuthMethod>,
    /// OpenID Connect Core section 11: `offline_access` is ignored unless
    /// the authorization request also carries `prompt=consent`, so no
    /// refresh token comes of it. Conformant OpenID providers do this.
    pub offline_access_needs_consent_prompt: bool,
    /// Introspection of a JWT access token answers `400
    /// {"error":"unsupported_token_type"}`, as providers whose JWTs are
    /// meant to be validated locally document.
    pub introspection_declines_jwts: bool,
}

impl Default for AuthServerConfig {
    fn default() -> Self {
        AuthServerConfig {
            access_token_ttl: Duration::from_secs(3600),
            rotate_refresh_tokens: true,
            auto_approve: false,
            device_interval: Duration::from_secs(5),
            slow_down_increment: Duration::from_secs(5),
            device_code_ttl: Duration::from_secs(600),
            authorization_code_ttl: Duration::from_secs(60),
            audience: "smtp".into(),
            scopes: vec!["smtp".into(), OFFLINE_ACCESS.into()],
            clients: vec![SandboxClient {
                redirect_uris: vec!["http://127.0.0.1/callback".into()],
                app_subject: Some(DEMO_USER.into()),
                ..SandboxClient::confidential(DEMO_CLIENT_ID, Secret::new(DEMO_CLIENT_SECRET))
            }],
            users: vec![DEMO_USER.into()],
            initial_faults: None,
            token_shape: ProfileName::default().token_shape(),
            jwt_header: crate::oauth::jwt::HeaderStyle::Rfc9068,
            tenant_id: SANDBOX_TENANT_ID.into(),
            app_roles: vec![SMTP_SEND_AS_APP.into()],
            client_auth_methods: vec![ClientAuthMethod::SecretBasic, ClientAuthMethod::SecretPost],
            offline_access_needs_consent_prompt: false,
            introspection_declines_jwts: false,
        }
    }
}

impl AuthServerConfig {
    pub fn client(&self, client_id: &str) -> Option<&SandboxClient> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }

    pub fn is_user(&self, user: &str) -> bool {
        self.users.iter().any(|u| u == user)
    }

    /// The scope granted when a request names none: everything except
    /// `offline_access`, which must be asked for.
    pub fn default_scopes(&self) -> Vec<String> {
        self.scopes
            .iter()
            .filter(|s| *s != OFFLINE_ACCESS)
            .cloned()
            .collect()
    }
}

/// A registered OAuth client.
#[derive(Clone, Debug)]
pub struct SandboxClient {
    pub client_id: String,
    /// `None`: a public client (RFC 6749 §2.1), which sends its client_id
    /// and no secret, and may not use client_credentials.
    pub client_secret: Option<Secret>,
    /// Exact redirect URIs; a loopback one (`http://127.0.0.1/...` or
    /// `http://[::1]/...`) matches any port, as RFC 8252 §7.3 asks.
    pub redirect_uris: Vec<String>,
    /// The mailbox an app-only (`client_credentials`) token is for; `None`
    /// means the client may not use that grant.
    pub app_subject: Option<String>,
    /// Whether the client may call `/introspect`. Confidential clients act
    /// as resource servers and may; public clients only where the provider
    /// allows it (some let a client introspect its own tokens).
    pub may_introspect: bool,
}

impl SandboxClient {
    /// A client with a secret, no redirect URIs, no app subject.
    pub fn confidential(client_id: impl Into<String>, secret: Secret) -> Self {
        SandboxClient {
            client_id: client_id.into(),
            client_secret: Some(secret),
            redirect_uris: Vec::new(),
            app_subject: None,
            may_introspect: true,
        }
    }

    /// A public client (a native app without a secret).
    pub fn public(client_id: impl Into<String>) -> Self {
        SandboxClient {
            client_id: client_id.into(),
            client_secret: None,
            redirect_uris: Vec::new(),
            app_subject: None,
            may_introspect: false,
        }
    }

    /// Whether `candidate` is one of this client's redirect URIs.
    pub fn allows_redirect(&self, candidate: &str) -> bool {
        self.redirect_uris
            .iter()
            .any(|registered| redirect_matches(registered, candidate))
    }
}

/// Exact match, except that a registered loopback IP literal with `http`
/// matches the same URI on any port (RFC 8252 §7.3: native apps bind an
/// ephemeral port). `localhost` is not treated so (RFC 8252 §8.3).
pub fn redirect_matches(registered: &str, candidate: &str) -> bool {
    if registered == candidate {
        return true;
    }
    let (Ok(registered), Ok(candidate)) = (url::Url::parse(registered), url::Url::parse(candidate))
    else {
        return false;
    };
    let loopback = matches!(
        registered.host(),
        Some(url::Host::Ipv4(ip)) if ip.is_loopback()
    ) || matches!(registered.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
    loopback
        && registered.scheme() == "http"
        && candidate.scheme() == "http"
        && registered.host() == candidate.host()
        && registered.port().is_none()
        && registered.path() == candidate.path()
        && registered.query() == candidate.query()
        && candidate.fragment().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirect_matches_any_port_only() {
        let reg = "http://127.0.0.1/callback";
        assert!(redirect_matches(reg, "http://127.0.0.1:53111/callback"));
        assert!(redirect_matches(reg, "http://127.0.0.1/callback"));
        assert!(!redirect_matches(reg, "http://127.0.0.1:53111/other"));
        assert!(!redirect_matches(reg, "http://127.0.0.2:53111/callback"));
        assert!(!redirect_matches(reg, "https://127.0.0.1:53111/callback"));
        assert!(!redirect_matches(reg, "http://localhost:53111/callback"));
        assert!(redirect_matches("http://[::1]/cb", "http://[::1]:8080/cb"));
    }

    #[test]
    fn other_redirects_must_match_exactly() {
        let reg = "https://app.example/cb";
        assert!(redirect_matches(reg, "https://app.example/cb"));
        assert!(!redirect_matches(reg, "https://app.example:444/cb"));
        assert!(!redirect_matches(reg, "https://app.example/cb?x=1"));
    }
}
