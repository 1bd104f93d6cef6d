//! Requests to a token endpoint (RFC 6749 section 4 and 6, RFC 8628, RFC 7523).
//!
//! Written on reqwest rather than the `oauth2` crate: we need the raw error
//! body (Microsoft puts its AADSTS codes in `error_description`), the HTTP
//! status to tell transient from permanent failures, the JWT bearer grant
//! (which `oauth2` lacks), and one reqwest version in the tree (`oauth2` 5
//! pins an older one). Each grant is one form POST; the code is short.

use crate::oauth::account::require_secure_url;
use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};
use url::Url;

/// How long any single OAuth HTTP request may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client for OAuth endpoints: no redirects (a token request that
/// is redirected could carry the client secret to another host), bounded
/// time, HTTPS only unless the account is a marked loopback sandbox.
pub fn http_client(insecure_loopback: bool) -> reqwest::Client {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .https_only(!insecure_loopback)
        .user_agent(concat!("oxirelay/", env!("CARGO_PKG_VERSION")))
        .build()
        // Building fails only if the TLS backend cannot initialise, which
        // the installed aws-lc-rs provider rules out.
        .expect("the HTTP client builds with the rustls backend")
}

/// How a confidential client presents its secret, by the RFC 8414 / RFC
/// 7591 names that config files and discovery documents use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ClientAuth {
    /// `Authorization: Basic` (RFC 6749 section 2.3.1, the default when a
    /// server's metadata names no method).
    #[serde(rename = "client_secret_basic")]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    #[serde(rename = "client_secret_post")]
    Post,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
        }
    }

    /// The method to use with a server that advertises `advertised`
    /// (`token_endpoint_auth_methods_supported`): Basic where it is
    /// offered or nothing is said (RFC 8414 section 2: the default is
    /// client_secret_basic), else post where offered.
    pub fn for_server(advertised: Option<&[String]>) -> ClientAuth {
        match advertised {
            Some(methods)
                if !methods.iter().any(|m| m == "client_secret_basic")
                    && methods.iter().any(|m| m == "client_secret_post") =>
            {
                ClientAuth::Post
            }
            _ => ClientAuth::Basic,
        }
    }
}

/// Adds a client's authentication to a form POST, the same way at every
/// endpoint that authenticates clients (token, device authorization,
/// revocation, introspection: RFC 8628 section 3.1, RFC 7009 section 2.1,
/// RFC 7662 section 2.1 all defer to the token endpoint's rules). A public
/// client (no secret) sends its client_id alone (RFC 6749 section 3.2.1).
pub fn authenticate_client(
    request: reqwest::RequestBuilder,
    form: &mut Vec<(&'static str, String)>,
    client_id: &str,
    client_secret: Option<&Secret>,
    auth: ClientAuth,
) -> reqwest::RequestBuilder {
    match (client_secret, auth) {
        (Some(secret), ClientAuth::Basic) => request.header(
            reqwest::header::AUTHORIZATION,
            basic_authorization(client_id, secret).expose(),
        ),
        (Some(secret), ClientAuth::Post) => {
            form.push(("client_id", client_id.to_string()));
            form.push(("client_secret", secret.expose().to_string()));
            request
        }
        (None, _) => {
            form.push(("client_id", client_id.to_string()));
            request
        }
    }
}

/// One grant to exchange for tokens.
#[derive(Debug)]
pub enum GrantRequest<'a> {
    ClientCredentials {
        scopes: &'a [String],
    },
    RefreshToken {
        refresh_token: &'a Secret,
    },
    AuthorizationCode {
        code: &'a Secret,
        redirect_uri: &'a str,
        code_verifier: &'a Secret,
    },
    DeviceCode {
        device_code: &'a Secret,
    },
    JwtBearer {
        assertion: &'a Secret,
    },
}

impl GrantRequest<'_> {
    pub fn grant_type(&self) -> &'static str {
        match self {
            GrantRequest::ClientCredentials { .. } => "client_credentials",
            GrantRequest::RefreshToken { .. } => "refresh_token",
            GrantRequest::AuthorizationCode { .. } => "authorization_code",
            GrantRequest::DeviceCode { .. } => "urn:ietf:params:oauth:grant-type:device_code",
            GrantRequest::JwtBearer { .. } => "urn:ietf:params:oauth:grant-type:jwt-bearer",
        }
    }
}

/// A successful token response.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<Duration>,
    pub scope: Option<String>,
    pub received_at: SystemTime,
}

pub use crate::oauth::error_code::ErrorCode as OAuthErrorCode;

/// The server's refusal, as it sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: OAuthErrorCode,
    /// The code as the server wrote it (kept for codes outside the registry).
    pub code_text: String,
    pub description: Option<String>,
    pub http_status: u16,
    /// The grant that was refused (`authorization_code`, `refresh_token`,
    /// ...); `None` for a refusal at the authorization endpoint.
    pub grant_type: Option<&'static str>,
}

impl OAuthError {
    /// Consent must be given again: the grant the account holds is dead.
    pub fn needs_consent(&self) -> bool {
        matches!(
            self.code,
            OAuthErrorCode::InvalidGrant | OAuthErrorCode::ConsentRequired
        )
    }

    /// The code and the server's first line of description.
    pub fn summary(&self) -> String {
        match &self.description {
            Some(d) => format!("{} ({})", self.code_text, first_line(d)),
            None => self.code_text.clone(),
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text).trim()
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot reach the token endpoint {url}: {reason}; check the network and the endpoint URL, oxirelay will retry"
    )]
    Transport { url: String, reason: String },
    #[error(
        "the token endpoint {url} answered HTTP {status}{detail}; this is usually temporary, oxirelay will retry"
    )]
    Unavailable {
        url: String,
        status: u16,
        detail: String,
        /// The endpoint's `Retry-After` in seconds, when it sent one
        /// (seconds, not a `Duration`: every `Result` of a token request
        /// carries this error, so it stays small).
        retry_after: Option<u32>,
    },
    #[error("the token endpoint refused the request: {}", .0.summary())]
    Rejected(OAuthError),
    #[error("the token endpoint {url} sent a response oxirelay cannot read: {reason}")]
    Malformed { url: String, reason: String },
    #[error("refusing to call {0}")]
    Insecure(String),
}

impl TokenError {
    /// Worth retrying later with backoff (RFC 6749 gives no error code for
    /// these; STYLE.md: timeouts, 408, 429, 5xx and network failures).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TokenError::Transport { .. } | TokenError::Unavailable { .. }
        )
    }

    /// How long the endpoint asked to be left alone (RFC 9110 section
    /// 10.2.3), for an error that is worth retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TokenError::Unavailable { retry_after, .. } => {
                retry_after.map(|secs| Duration::from_secs(secs.into()))
            }
            _ => None,
        }
    }

    fn with_retry_after(self, after: Option<Duration>) -> Self {
        match self {
            TokenError::Unavailable {
                url,
                status,
                detail,
                retry_after: None,
            } => TokenError::Unavailable {
                url,
                status,
                detail,
                retry_after: after.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
            },
            other => other,
        }
    }

    pub fn oauth_error(&self) -> Option<&OAuthError> {
        match self {
            TokenError::Rejected(error) => Some(error),
            _ => None,
        }
    }
}

/// A token endpoint and the client credentials to call it with.
#[derive(Debug, Clone)]
pub struct TokenEndpoint {
    pub url: Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub client_auth: ClientAuth,
    pub insecure_loopback: bool,
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct RawErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl TokenEndpoint {
    /// Adds this client's authentication to a POST to any of the
    /// provider's endpoints (see [`authenticate_client`]).
    pub fn authenticate(
        &self,
        request: reqwest::RequestBuilder,
        form: &mut Vec<(&'static str, String)>,
    ) -> reqwest::RequestBuilder {
        authenticate_client(
            request,
            form,
            &self.client_id,
            self.client_secret.as_ref(),
            self.client_auth,
        )
    }

    pub async fn request(
        &self,
        http: &reqwest::Client,
        grant: &GrantRequest<'_>,
    ) -> Result<TokenResponse, TokenError> {
        require_secure_url(&self.url, self.insecure_loopback).map_err(TokenError::Insecure)?;
        let mut form: Vec<(&'static str, String)> =
            vec![("grant_type", grant.grant_type().to_string())];
        match grant {
            GrantRequest::ClientCredentials { scopes } => {
                if !scopes.is_empty() {
                    form.push(("scope", scopes.join(" ")));
                }
            }
            GrantRequest::RefreshToken { refresh_token } => {
                form.push(("refresh_token", refresh_token.expose().to_string()));
            }
            GrantRequest::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
            } => {
                form.push(("code", code.expose().to_string()));
                form.push(("redirect_uri", redirect_uri.to_string()));
                form.push(("code_verifier", code_verifier.expose().to_string()));
            }
            GrantRequest::DeviceCode { device_code } => {
                form.push(("device_code", device_code.expose().to_string()));
            }
            GrantRequest::JwtBearer { assertion } => {
                form.push(("assertion", assertion.expose().to_string()));
            }
        }
        let request = self.authenticate(http.post(self.url.clone()), &mut form);
        let response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Transport {
                url: self.url.to_string(),
                reason: describe_reqwest_error(&e),
            })?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body =
            crate::oauth::body::read_bounded(response, crate::oauth::body::MAX_OAUTH_RESPONSE)
                .await
                .map_err(|e| TokenError::Transport {
                    url: self.url.to_string(),
                    reason: e.to_string(),
                })?;
        parse_token_response(self.url.as_str(), status, &body).map_err(|error| match error {
            TokenError::Rejected(mut refusal) => {
                refusal.grant_type = Some(grant.grant_type());
                TokenError::Rejected(refusal)
            }
            other => other.with_retry_after(retry_after),
        })
    }
}

/// Interprets a token endpoint's reply; a pure function, tested without HTTP.
pub fn parse_token_response(
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<TokenResponse, TokenError> {
    if (200..300).contains(&status) {
        let raw: RawTokenResponse =
            serde_json::from_slice(body).map_err(|e| TokenError::Malformed {
                url: url.to_string(),
                reason: format!("not a token response: {e}"),
            })?;
        if let Some(kind) = &raw.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(TokenError::Malformed {
                url: url.to_string(),
                reason: format!("token_type {kind:?} is not Bearer"),
            });
        }
        // Some servers send expires_in as a string ("3599").
        let expires_in = match raw.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .map(Duration::from_secs);
        return Ok(TokenResponse {
            access_token: Secret::new(raw.access_token),
            refresh_token: raw.refresh_token.filter(|t| !t.is_empty()).map(Secret::new),
            expires_in,
            scope: raw.scope,
            received_at: SystemTime::now(),
        });
    }
    let transient_status = status == 408 || status == 429 || status >= 500;
    match serde_json::from_slice::<RawErrorResponse>(body) {
        // `temporarily_unavailable` (RFC 6749 section 4.1.2.1) says the
        // server is overloaded, whatever the status it comes with.
        Ok(raw) if !transient_status && raw.error != "temporarily_unavailable" => {
            Err(TokenError::Rejected(OAuthError {
                code: OAuthErrorCode::parse(&raw.error),
                code_text: raw.error.clone(),
                description: raw.error_description,
                http_status: status,
                grant_type: None,
            }))
        }
        Ok(raw) => Err(TokenError::Unavailable {
            url: url.to_string(),
            status,
            detail: format!(" ({})", raw.error),
            retry_after: None,
        }),
        Err(_) if transient_status => Err(TokenError::Unavailable {
            url: url.to_string(),
            status,
            detail: String::new(),
            retry_after: None,
        }),
        Err(_) => Err(TokenError::Malformed {
            url: url.to_string(),
            reason: format!("HTTP {status} without an OAuth error body"),
        }),
    }
}

/// The longest `Retry-After` honoured: beyond it the relay's own backoff
/// decides, so a misconfigured header cannot park an account for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 section 10.2.3).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let after = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(after.min(MAX_RETRY_AFTER))
}

/// RFC 6749 section 2.3.1: id and secret are form-urlencoded before base64.
pub fn basic_authorization(client_id: &str, secret: &Secret) -> Secret {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    Secret::new(format!(
        "Basic {}",
        BASE64.encode(format!("{}:{}", encode(client_id), encode(secret.expose())))
    ))
}

/// reqwest's Display hides the cause chain; the cause is what a person needs
/// ("connection refused", "certificate not trusted").
pub fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "could not connect".to_string()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_with_string_expiry() {
        let body = br#"{"access_token":"at","token_type":"Bearer","expires_in":"3599","refresh_token":"rt"}"#;
        let response = parse_token_response("u", 200, body).expect("ok");
        assert_eq!(response.access_token.expose(), "at");
        assert_eq!(response.expires_in, Some(Duration::from_secs(3599)));
        assert_eq!(response.refresh_token.expect("rt").expose(), "rt");
    }

    #[test]
    fn invalid_grant_is_permanent_and_needs_consent() {
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS70008: The refresh token has expired"}"#;
        let error = parse_token_response("u", 400, body).expect_err("refused");
        assert!(!error.is_transient());
        let oauth = error.oauth_error().expect("oauth error");
        assert!(oauth.needs_consent());
        assert!(
            crate::oauth::explain::explain(oauth, "office")
                .contains("oxirelay account login office")
        );
    }

    #[test]
    fn retry_after_is_read_in_both_forms_and_capped() {
        let headers = |value: &str| {
            let mut map = reqwest::header::HeaderMap::new();
            map.insert(
                reqwest::header::RETRY_AFTER,
                value.parse().expect("header value"),
            );
            map
        };
        assert_eq!(retry_after(&headers("120")), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&headers("86400")), Some(MAX_RETRY_AFTER));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(90))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let parsed = retry_after(&headers(&soon)).expect("an HTTP date");
        assert!(
            parsed > Duration::from_secs(80) && parsed <= Duration::from_secs(90),
            "{parsed:?}"
        );
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
    }

    #[test]
    fn server_errors_and_throttling_are_transient() {
        for (status, body) in [
            (500, &b"oops"[..]),
            (503, b"{\"error\":\"server_error\"}"),
            (429, b""),
            (429, b"{\"error\":\"temporarily_unavailable\"}"),
            (503, b"{\"error\":\"temporarily_unavailable\"}"),
            (400, b"{\"error\":\"temporarily_unavailable\"}"),
        ] {
            assert!(
                parse_token_response("u", status, body)
                    .expect_err("error")
                    .is_transient(),
                "{status}"
            );
        }
    }

    #[test]
    fn auth_method_follows_the_metadata() {
        let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(ClientAuth::for_server(None), ClientAuth::Basic);
        assert_eq!(
            ClientAuth::for_server(Some(&list(&["client_secret_post"]))),
            ClientAuth::Post
        );
        assert_eq!(
            ClientAuth::for_server(Some(&list(&["client_secret_post", "client_secret_basic"]))),
            ClientAuth::Basic
        );
        assert_eq!(
            ClientAuth::for_server(Some(&list(&["private_key_jwt"]))),
            ClientAuth::Basic
        );
    }

    #[test]
    fn basic_auth_encodes_reserved_characters() {
        let header = basic_authorization("my client", &Secret::new("a:b"));
        let encoded = header.expose().strip_prefix("Basic ").expect("basic");
        let decoded = String::from_utf8(BASE64.decode(encoded).expect("b64")).expect("utf8");
        assert_eq!(decoded, "my+client:a%3Ab");
    }
}
