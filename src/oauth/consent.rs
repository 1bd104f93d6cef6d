//! The authorization code grant with PKCE (RFC 7636, S256) and `state`
//! against CSRF (RFC 6749 section 10.12), as native apps do it (RFC 8252):
//! build the authorization URL, check what comes back to the redirect URI,
//! exchange the code. Opening a browser and listening on the loopback
//! redirect are the CLI's business.
//!
//! A refresh token is asked for the way the provider wants it asked
//! ([`OfflineRequest`], preset data), and what came back is reported as it
//! is: a consent without a refresh token is a login that ends with the
//! access token, and [`missing_refresh_token`] says why it likely happened.

use crate::oauth::account::{Account, Endpoints};
use crate::oauth::broker::{AccessToken, Broker, BrokerError};
use crate::oauth::grant::GrantRequest;
use crate::oauth::preset::{GrantKind, OfflineRequest, ProviderKind};
use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use rand::Rng;
use sha2::{Digest, Sha256};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("account {account} has no authorization endpoint; set authorize_url or issuer")]
    NoAuthorizeEndpoint { account: String },
    #[error(
        "the answer to the login does not carry the state oxirelay sent; it may be forged (CSRF) or from an older login. Start the login again"
    )]
    StateMismatch,
    #[error("the provider refused consent: {error}{description}. {next}")]
    Refused {
        error: String,
        description: String,
        next: String,
    },
    #[error("the answer to the login carries no authorization code")]
    NoCode,
}

/// A PKCE verifier (kept secret until the token request) and its S256 challenge.
pub struct Pkce {
    pub verifier: Secret,
    pub challenge: String,
}

impl Pkce {
    pub fn generate() -> Self {
        // 32 random bytes give a 43-character verifier, the RFC 7636 minimum
        // length, with 256 bits of entropy.
        let verifier = BASE64URL.encode(random_bytes::<32>());
        let challenge = BASE64URL.encode(Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier: Secret::new(verifier),
            challenge,
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// One login in progress: what was sent, to check what comes back.
pub struct AuthorizationRequest {
    pub url: Url,
    pub state: String,
    pub pkce: Pkce,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
}

pub fn begin(
    account: &Account,
    endpoints: &Endpoints,
    redirect_uri: &str,
    login_hint: Option<&str>,
) -> Result<AuthorizationRequest, ConsentError> {
    let mut url = endpoints
        .authorize
        .clone()
        .ok_or_else(|| ConsentError::NoAuthorizeEndpoint {
            account: account.name.clone(),
        })?;
    let pkce = Pkce::generate();
    let state = BASE64URL.encode(random_bytes::<16>());
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &account.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &account.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(hint) = login_hint {
            query.append_pair("login_hint", hint);
        }
        for (key, value) in offline_parameters(account) {
            query.append_pair(key, value);
        }
    }
    Ok(AuthorizationRequest {
        url,
        state,
        pkce,
        redirect_uri: redirect_uri.to_string(),
        scopes: account.scopes.clone(),
    })
}

/// The authorization request parameters that ask for a refresh token, as
/// the account's provider wants them.
pub fn offline_parameters(account: &Account) -> Vec<(&'static str, &'static str)> {
    let asks_offline = account.scopes.iter().any(|s| s == OFFLINE_ACCESS);
    match account.preset.offline_request {
        OfflineRequest::GoogleAccessType => vec![("access_type", "offline"), ("prompt", "consent")],
        OfflineRequest::ScopeWithConsentPrompt if asks_offline => vec![("prompt", "consent")],
        OfflineRequest::ScopeWithConsentPrompt | OfflineRequest::Scope => Vec::new(),
    }
}

const OFFLINE_ACCESS: &str = "offline_access";

/// Why a consent ended without a refresh token, most likely first, and
/// what to change; for the person who just logged in.
pub fn missing_refresh_token(account: &Account, endpoints: &Endpoints) -> String {
    let asks_offline = account.scopes.iter().any(|s| s == OFFLINE_ACCESS);
    let device = account.grant == GrantKind::DeviceCode;
    match account.preset.kind {
        ProviderKind::Google => "Google issues a refresh token only with access_type=offline on a consent screen that was shown; remove the app's access at https://myaccount.google.com/permissions and log in again".to_string(),
        ProviderKind::Microsoft if !asks_offline => format!(
            "the account's scopes lack offline_access; remove `scopes` from account {} (the preset asks for it) or add \"offline_access\"",
            account.name
        ),
        ProviderKind::Microsoft => "Microsoft did not grant offline_access: check that the app registration lists the delegated permission offline_access and that consent was given for it".to_string(),
        ProviderKind::Generic if !asks_offline => format!(
            "the account's scopes lack offline_access, the scope OpenID providers issue refresh tokens for; add \"offline_access\" to `scopes` of account {}",
            account.name
        ),
        ProviderKind::Generic if !endpoints.metadata.may_support_scope(OFFLINE_ACCESS) => "the provider does not list offline_access among its scopes_supported; enable refresh tokens (offline access) for this client at the provider".to_string(),
        ProviderKind::Generic if device => "the provider did not grant offline access to the device flow (OpenID Connect Core section 11 ties offline_access to the authorization code flow); log in with the browser instead, or allow refresh tokens for this client at the provider".to_string(),
        ProviderKind::Generic => "the provider ignored offline_access although oxirelay sent prompt=consent (OpenID Connect Core section 11); allow refresh tokens (offline access) for this client at the provider".to_string(),
    }
}

/// Checks the query the provider sent to the redirect URI and returns the code.
pub fn code_from_callback(
    request: &AuthorizationRequest,
    query: &str,
    account: &str,
) -> Result<Secret, ConsentError> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    // The state is checked before anything else, an error included: an
    // answer without our state is not an answer to our request.
    if get("state") != Some(request.state.as_str()) {
        return Err(ConsentError::StateMismatch);
    }
    if let Some(error) = get("error") {
        let oauth = crate::oauth::grant::OAuthError {
            code: crate::oauth::grant::OAuthErrorCode::parse(error),
            code_text: error.to_string(),
            description: get("error_description").map(str::to_string),
            http_status: 0,
            grant_type: None,
        };
        return Err(ConsentError::Refused {
            error: error.to_string(),
            description: get("error_description")
                .map(|d| format!(" ({d})"))
                .unwrap_or_default(),
            next: crate::oauth::explain::next_step(&oauth, account),
        });
    }
    get("code")
        .filter(|c| !c.is_empty())
        .map(Secret::new)
        .ok_or(ConsentError::NoCode)
}

/// What a finished consent stored.
#[derive(Debug, Clone)]
pub struct Consent {
    pub token: AccessToken,
    /// The provider sent a refresh token with this consent.
    pub refresh_token_issued: bool,
}

/// Exchanges the code (with the PKCE verifier) and stores the tokens.
pub async fn finish(
    broker: &Broker,
    account: &str,
    request: &AuthorizationRequest,
    code: &Secret,
) -> Result<Consent, BrokerError> {
    let endpoint = broker.token_endpoint(account).await?;
    let http = broker.http(account)?;
    let response = endpoint
        .request(
            &http,
            &GrantRequest::AuthorizationCode {
                code,
                redirect_uri: &request.redirect_uri,
                code_verifier: &request.pkce.verifier,
            },
        )
        .await
        .map_err(|source| BrokerError::Token {
            account: account.to_string(),
            explanation: match source.oauth_error() {
                Some(oauth) => crate::oauth::explain::explain(oauth, account),
                None => source.to_string(),
            },
            source,
        })?;
    let refresh_token_issued = response.refresh_token.is_some();
    let token = broker.store_consent(account, response).await?;
    Ok(Consent {
        token,
        refresh_token_issued,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_shape() {
        let pkce = Pkce::generate();
        assert_eq!(pkce.verifier.expose().len(), 43);
        assert_eq!(
            pkce.challenge,
            BASE64URL.encode(Sha256::digest(pkce.verifier.expose().as_bytes()))
        );
    }

    #[test]
    fn rfc7636_appendix_b_example() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            BASE64URL.encode(Sha256::digest(verifier.as_bytes())),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    fn request() -> AuthorizationRequest {
        AuthorizationRequest {
            url: Url::parse("https://id.example/authorize").expect("url"),
            state: "abc".into(),
            pkce: Pkce::generate(),
            redirect_uri: "http://127.0.0.1:1234/".into(),
            scopes: vec![],
        }
    }

    #[test]
    fn callback_with_wrong_state_is_refused() {
        assert!(matches!(
            code_from_callback(&request(), "code=x&state=evil", "a"),
            Err(ConsentError::StateMismatch)
        ));
        assert!(matches!(
            code_from_callback(&request(), "code=x", "a"),
            Err(ConsentError::StateMismatch)
        ));
        let code = code_from_callback(&request(), "code=the-code&state=abc", "a").expect("ok");
        assert_eq!(code.expose(), "the-code");
    }

    fn account(provider: &str, extra: &str) -> Account {
        let text = format!(
            "name = \"a\"\nprovider = \"{provider}\"\ngrant = \"authorization_code\"\nclient_id = \"c\"\nuser = \"u@example.net\"\n{extra}"
        );
        let config: crate::config::AccountConfig = toml::from_str(&text).expect("account");
        Account::from_config(&config).expect("valid")
    }

    #[test]
    fn offline_access_is_asked_the_providers_way() {
        let generic = |scopes: &str| {
            account(
                "generic",
                &format!(
                    "issuer = \"https://id.example.net\"\nsmtp = \"mail.example.net:587\"\nscopes = {scopes}"
                ),
            )
        };
        // OpenID Connect Core section 11: offline_access needs prompt=consent.
        assert_eq!(
            offline_parameters(&generic(r#"["openid", "smtp", "offline_access"]"#)),
            [("prompt", "consent")]
        );
        assert!(offline_parameters(&generic(r#"["smtp"]"#)).is_empty());
        // Microsoft: the scope alone (prompt=consent would force a consent
        // screen users may not be allowed to answer).
        let microsoft = account("microsoft", "tenant = \"contoso.onmicrosoft.com\"");
        assert!(microsoft.scopes.iter().any(|s| s == "offline_access"));
        assert!(offline_parameters(&microsoft).is_empty());
        // Google: access_type=offline, on a consent screen that is shown.
        assert_eq!(
            offline_parameters(&account("google", "")),
            [("access_type", "offline"), ("prompt", "consent")]
        );
    }

    #[test]
    fn a_missing_refresh_token_is_explained_by_its_likely_cause() {
        let endpoints = Endpoints::default();
        let no_offline = account(
            "generic",
            "issuer = \"https://id.example.net\"\nsmtp = \"m:587\"\nscopes = [\"smtp\"]",
        );
        assert!(missing_refresh_token(&no_offline, &endpoints).contains("lack offline_access"));
        let asked = account(
            "generic",
            "issuer = \"https://id.example.net\"\nsmtp = \"m:587\"\nscopes = [\"smtp\", \"offline_access\"]",
        );
        let mut unlisted = Endpoints::default();
        unlisted.metadata.scopes_supported = Some(vec!["smtp".into()]);
        assert!(missing_refresh_token(&asked, &unlisted).contains("scopes_supported"));
        assert!(missing_refresh_token(&asked, &endpoints).contains("prompt=consent"));
        assert!(
            missing_refresh_token(&account("google", ""), &endpoints)
                .contains("myaccount.google.com/permissions")
        );
    }

    #[test]
    fn callback_error_is_explained() {
        let err = code_from_callback(&request(), "error=access_denied&state=abc", "a")
            .expect_err("refused");
        assert!(err.to_string().contains("Allow"), "{err}");
    }
}
