//! What the sandbox authorization server is configured with: token
//! lifetimes, rotation, device-flow pacing, registered clients and users.

use std::time::Duration;

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
                client_id: DEMO_CLIENT_ID.into(),
                client_secret: Secret::new(DEMO_CLIENT_SECRET),
                redirect_uris: vec!["http://127.0.0.1/callback".into()],
                app_subject: Some(DEMO_USER.into()),
            }],
            users: vec![DEMO_USER.into()],
            initial_faults: None,
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
    pub client_secret: Secret,
    /// Exact redirect URIs; a loopback one (`http://127.0.0.1/...` or
    /// `http://[::1]/...`) matches any port, as RFC 8252 §7.3 asks.
    pub redirect_uris: Vec<String>,
    /// The mailbox an app-only (`client_credentials`) token is for; `None`
    /// means the client may not use that grant.
    pub app_subject: Option<String>,
}

impl SandboxClient {
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
