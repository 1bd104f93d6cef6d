//! Token revocation at the provider (RFC 7009). Providers without a
//! revocation endpoint (Microsoft's identity platform) are named, with what
//! to do there instead.

use crate::oauth::account::require_secure_url;
use crate::oauth::grant::{TokenEndpoint, describe_reqwest_error};
use crate::secret::Secret;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error(
        "cannot reach the revocation endpoint {url}: {reason}; the tokens were still wiped locally — revoke at the provider by hand"
    )]
    Transport { url: String, reason: String },
    #[error(
        "the revocation endpoint {url} answered HTTP {status}; the tokens were still wiped locally — revoke at the provider by hand"
    )]
    Refused { url: String, status: u16 },
    #[error("refusing to call {0}")]
    Insecure(String),
}

/// RFC 7009 section 2.1: the client authenticates as at the token endpoint
/// (the same method); the server answers 200 even for tokens it does not know.
pub async fn revoke(
    http: &reqwest::Client,
    url: &Url,
    client: &TokenEndpoint,
    token: &Secret,
    hint: &str,
) -> Result<(), RevokeError> {
    require_secure_url(url, client.insecure_loopback).map_err(RevokeError::Insecure)?;
    let mut form: Vec<(&'static str, String)> = vec![
        ("token", token.expose().to_string()),
        ("token_type_hint", hint.to_string()),
    ];
    let request = client.authenticate(http.post(url.clone()), &mut form);
    let response = request
        .form(&form)
        .send()
        .await
        .map_err(|e| RevokeError::Transport {
            url: url.to_string(),
            reason: describe_reqwest_error(&e),
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(RevokeError::Refused {
            url: url.to_string(),
            status: response.status().as_u16(),
        })
    }
}

/// What to do at a provider that has no RFC 7009 endpoint.
pub fn manual_revocation_advice(provider: crate::oauth::preset::ProviderKind) -> &'static str {
    use crate::oauth::preset::ProviderKind;
    match provider {
        ProviderKind::Microsoft => {
            "Microsoft has no token revocation endpoint. To cut access at the provider: for delegated logins, revoke the user's sessions (Entra admin center > Users > Revoke sessions, or Graph revokeSignInSessions) or remove the app's consent (Enterprise applications > Permissions); for app-only accounts, delete the client secret in the app registration."
        }
        ProviderKind::Google => {
            "Remove the app's access at https://myaccount.google.com/permissions (or, for a service account, delete its key)."
        }
        ProviderKind::Generic => {
            "The provider advertises no revocation endpoint; revoke the grant or delete the client secret in its console."
        }
    }
}
