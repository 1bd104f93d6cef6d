//! Authorization server metadata discovery: RFC 8414, then OpenID Connect
//! Discovery as the fallback (Google and Microsoft publish only the latter).
//! Besides the endpoints, what shapes our requests is kept: the client
//! authentication methods the token endpoint takes, the scopes it lists,
//! and whether it is an OpenID provider.

use crate::oauth::account::{Endpoints, ProviderMetadata, require_secure_url};
use crate::oauth::grant::describe_reqwest_error;
use serde::Deserialize;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "cannot discover the endpoints of {issuer}: {reason}; set token_url (and the other endpoint URLs) in the account instead"
    )]
    Failed { issuer: String, reason: String },
    #[error("{0}")]
    Insecure(String),
}

#[derive(Debug, Deserialize)]
struct Metadata {
    issuer: Option<String>,
    token_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    introspection_endpoint: Option<String>,
    jwks_uri: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    scopes_supported: Option<Vec<String>>,
    /// Required by OpenID Connect Discovery, absent from plain RFC 8414.
    id_token_signing_alg_values_supported: Option<Vec<String>>,
}

impl Metadata {
    fn provider_metadata(&self, found_at: &Url) -> ProviderMetadata {
        let openid = found_at.path().contains("openid-configuration")
            || self.id_token_signing_alg_values_supported.is_some()
            || self
                .scopes_supported
                .as_ref()
                .is_some_and(|scopes| scopes.iter().any(|s| s == "openid"));
        ProviderMetadata {
            token_auth_methods: self.token_endpoint_auth_methods_supported.clone(),
            scopes_supported: self.scopes_supported.clone(),
            openid,
        }
    }
}

/// The metadata URLs to try for an issuer, in order (RFC 8414 section 3:
/// the well-known segment goes before the issuer's path).
pub fn metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut urls = Vec::new();
    for suffix in ["oauth-authorization-server", "openid-configuration"] {
        let mut rfc8414 = issuer.clone();
        rfc8414.set_path(&format!("/.well-known/{suffix}{path}"));
        urls.push(rfc8414);
    }
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    if !urls.contains(&oidc) {
        urls.push(oidc);
    }
    urls
}

pub async fn discover(
    http: &reqwest::Client,
    issuer: &Url,
    insecure_loopback: bool,
) -> Result<Endpoints, DiscoveryError> {
    require_secure_url(issuer, insecure_loopback).map_err(DiscoveryError::Insecure)?;
    let mut last_reason = String::from("no metadata document found");
    for url in metadata_urls(issuer) {
        let response = match http.get(url.clone()).send().await {
            Ok(r) => r,
            Err(e) => {
                last_reason = format!("{url}: {}", describe_reqwest_error(&e));
                continue;
            }
        };
        if !response.status().is_success() {
            last_reason = format!("{url} answered HTTP {}", response.status().as_u16());
            continue;
        }
        let body = match crate::oauth::body::read_bounded(
            response,
            crate::oauth::body::MAX_METADATA_RESPONSE,
        )
        .await
        {
            Ok(body) => body,
            Err(e) => {
                last_reason = format!("{url}: {e}");
                continue;
            }
        };
        let metadata: Metadata = match serde_json::from_slice(&body) {
            Ok(m) => m,
            Err(e) => {
                last_reason = format!("{url} is not a metadata document: {e}");
                continue;
            }
        };
        // RFC 8414 section 3.3: the issuer in the document must be the one asked for.
        if let Some(found) = &metadata.issuer
            && found.trim_end_matches('/') != issuer.as_str().trim_end_matches('/')
        {
            return Err(DiscoveryError::Failed {
                issuer: issuer.to_string(),
                reason: format!("{url} names a different issuer ({found})"),
            });
        }
        let endpoint = |value: &Option<String>| -> Result<Option<Url>, DiscoveryError> {
            let Some(text) = value else { return Ok(None) };
            let url = Url::parse(text).map_err(|e| DiscoveryError::Failed {
                issuer: issuer.to_string(),
                reason: format!("endpoint {text:?} is not a URL: {e}"),
            })?;
            require_secure_url(&url, insecure_loopback).map_err(DiscoveryError::Insecure)?;
            Ok(Some(url))
        };
        return Ok(Endpoints {
            metadata: metadata.provider_metadata(&url),
            token: endpoint(&metadata.token_endpoint)?,
            authorize: endpoint(&metadata.authorization_endpoint)?,
            device: endpoint(&metadata.device_authorization_endpoint)?,
            revoke: endpoint(&metadata.revocation_endpoint)?,
            introspect: endpoint(&metadata.introspection_endpoint)?,
            jwks: endpoint(&metadata.jwks_uri)?,
        });
    }
    Err(DiscoveryError::Failed {
        issuer: issuer.to_string(),
        reason: last_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_follow_rfc8414_then_oidc() {
        let urls = metadata_urls(&Url::parse("https://id.example.net/tenant1").expect("url"));
        let urls: Vec<_> = urls.iter().map(Url::as_str).collect();
        assert_eq!(
            urls,
            [
                "https://id.example.net/.well-known/oauth-authorization-server/tenant1",
                "https://id.example.net/.well-known/openid-configuration/tenant1",
                "https://id.example.net/tenant1/.well-known/openid-configuration",
            ]
        );
    }
}
