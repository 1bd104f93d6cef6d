//! The authorization servers whose access tokens the submission listener
//! accepts (`[[issuer]]`). Each token is matched to its issuer by its
//! (not yet trusted) `iss` claim, then fully checked by that issuer's
//! [`JwtValidator`] (signature against the JWKS, which it caches and
//! re-fetches on key rotation; `exp`, `iss`, `aud`), then for the
//! configured scope. A JWKS URL not given in the config is discovered on
//! first use, so an issuer that is down does not stop the relay starting.

use crate::config::IssuerConfig;
use crate::oauth::validate::{JwtValidator, ValidatedToken, ValidationError};
use crate::secret::Secret;
use base64::Engine;
use tokio::sync::OnceCell;
use url::Url;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the token's issuer {issuer:?} is not a configured [[issuer]]; add it to the config or get a token from a trusted one"
    )]
    UnknownIssuer { issuer: Option<String> },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("the token lacks the scope {scope:?} that [[issuer]] {issuer} requires")]
    MissingScope { issuer: String, scope: String },
    #[error("cannot find the signing keys of {issuer}: {reason}; set jwks_url in its [[issuer]]")]
    Discovery { issuer: String, reason: String },
}

impl TokenError {
    /// The issuer, not the token, is at fault: the client should retry later.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Invalid(error) => error.is_transient(),
            TokenError::Discovery { .. } => true,
            TokenError::UnknownIssuer { .. } | TokenError::MissingScope { .. } => false,
        }
    }
}

struct TrustedIssuer {
    config: IssuerConfig,
    http: reqwest::Client,
    validator: OnceCell<JwtValidator>,
}

impl TrustedIssuer {
    async fn validator(&self) -> Result<&JwtValidator, TokenError> {
        self.validator
            .get_or_try_init(|| async {
                let discovery_error = |reason: String| TokenError::Discovery {
                    issuer: self.config.url.clone(),
                    reason,
                };
                let jwks_url = match &self.config.jwks_url {
                    // Config validation checked that it parses.
                    Some(url) => Url::parse(url).map_err(|e| discovery_error(e.to_string()))?,
                    None => {
                        let issuer = Url::parse(&self.config.url)
                            .map_err(|e| discovery_error(e.to_string()))?;
                        crate::oauth::discovery::discover(
                            &self.http,
                            &issuer,
                            self.config.insecure_loopback,
                        )
                        .await
                        .map_err(|e| discovery_error(e.to_string()))?
                        .jwks
                        .ok_or_else(|| discovery_error("its metadata names no jwks_uri".into()))?
                    }
                };
                Ok(JwtValidator::new(
                    jwks_url,
                    self.config.url.clone(),
                    self.config.audience.clone(),
                    self.http.clone(),
                ))
            })
            .await
    }

    fn matches(&self, iss: &str) -> bool {
        self.config.url.trim_end_matches('/') == iss.trim_end_matches('/')
    }
}

pub struct TrustedIssuers(Vec<TrustedIssuer>);

impl TrustedIssuers {
    pub fn new(configs: &[IssuerConfig]) -> Self {
        TrustedIssuers(
            configs
                .iter()
                .map(|config| TrustedIssuer {
                    http: crate::oauth::grant::http_client(config.insecure_loopback),
                    config: config.clone(),
                    validator: OnceCell::new(),
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks `token` with the keys of the configured issuer it claims; on
    /// success, that issuer's configured identifier and the token's claims.
    /// The claimed `iss` only chooses which keys to try: the signature,
    /// `iss` and `aud` are then checked against that configuration.
    pub async fn validate(&self, token: &Secret) -> Result<(String, ValidatedToken), TokenError> {
        let claimed = unverified_issuer(token);
        let issuer = self
            .0
            .iter()
            .find(|issuer| claimed.as_deref().is_some_and(|iss| issuer.matches(iss)))
            .ok_or(TokenError::UnknownIssuer {
                issuer: claimed.clone(),
            })?;
        let validated = issuer.validator().await?.validate(token).await?;
        if let Some(scope) = &issuer.config.required_scope
            && !validated.has_scope(scope)
        {
            return Err(TokenError::MissingScope {
                issuer: issuer.config.url.clone(),
                scope: scope.clone(),
            });
        }
        Ok((issuer.config.url.clone(), validated))
    }
}

/// The `iss` a JWT claims, read without checking anything: only to choose
/// which issuer's keys will check it.
fn unverified_issuer(token: &Secret) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
    }
    let payload = token.expose().split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Claims>(&json).ok().map(|c| c.iss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_claimed_issuer() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iss":"https://id.example","sub":"x"}"#);
        let token = Secret::new(format!("e30.{payload}.sig"));
        assert_eq!(
            unverified_issuer(&token).as_deref(),
            Some("https://id.example")
        );
        assert_eq!(unverified_issuer(&Secret::new("opaque")), None);
    }
}
