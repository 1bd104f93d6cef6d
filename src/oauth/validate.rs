//! Bearer-token validation: signed JWT access tokens checked against the
//! issuer's JWKS ([`JwtValidator`]), and RFC 7662 introspection for opaque
//! tokens or revocation checks ([`introspect`]).
//!
//! Used by the sandbox SMTP server, by the submission listener for OAuth
//! clients, and by the broker's health checks. Errors say whether they are
//! the token's fault (answer `invalid_token`) or the issuer's (try later).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk as AnyJwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::oauth::grant::{ClientAuth, TokenEndpoint, authenticate_client};
use crate::secret::Secret;
use crate::smtp::sasl::OAuthErrorStatus;

/// Clock skew tolerated on `exp`. Issuer and relay clocks are NTP-synced in
/// practice but not perfectly; 30 s absorbs that without letting an expired
/// token live on noticeably (tokens last an hour, and the broker refreshes
/// minutes before expiry anyway).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// At most one JWKS fetch per this interval, whatever arrives: a flood of
/// tokens with made-up `kid`s must not turn into a flood of requests to the
/// issuer. Five seconds still picks up a real key rotation at once.
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// The longest a fetched JWKS is trusted without asking again, whatever
/// its `Cache-Control` says: a signing key the issuer withdrew (after a
/// leak) stops being accepted within this.
pub const MAX_JWKS_LIFETIME: Duration = Duration::from_secs(3600);

/// A JWKS fetch that takes longer than this counts as the issuer being down.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Signature algorithms accepted. HMAC is never accepted: with a public JWKS
/// it would let anyone forge tokens (the "alg confusion" attack).
const ACCEPTED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("the access token has expired; the client must refresh it and retry")]
    Expired,
    #[error(
        "the access token's signature does not verify; it was not issued by {issuer} or was altered"
    )]
    BadSignature { issuer: String },
    #[error(
        "the access token is for another audience; expected aud {expected} (check the scope or resource the client asks for)"
    )]
    WrongAudience { expected: String },
    #[error("the access token was issued by someone else; expected iss \"{expected}\"")]
    WrongIssuer { expected: String },
    #[error("the access token is not a well-formed JWT: {reason}")]
    Malformed { reason: String },
    #[error(
        "the access token is not valid yet (its {claim} is in the future); the issuer's clock or this machine's is wrong: check NTP on both"
    )]
    NotYetValid { claim: &'static str },
    #[error(
        "the access token is signed with key \"{kid}\", which the issuer's JWKS does not list; the token is forged or from another issuer"
    )]
    UnknownKey { kid: String },
    #[error("cannot fetch the issuer's signing keys from {url}: {reason}; retry later")]
    JwksUnavailable { url: String, reason: String },
}

impl ValidationError {
    /// True when the token may well be good and the failure is on the
    /// issuer's side: the caller should answer "try again later", not "bad
    /// credentials".
    pub fn is_transient(&self) -> bool {
        matches!(self, ValidationError::JwksUnavailable { .. })
    }

    /// The RFC 7628 error challenge an SMTP server sends for this failure.
    /// RFC 7628 only registers `invalid_token`, `invalid_request` and
    /// `insufficient_scope`; for an unreachable JWKS we send
    /// `temporarily_unavailable` (the RFC 6749 code) so that clients that
    /// look at it know not to throw the token away.
    pub fn rfc7628_status(&self) -> OAuthErrorStatus {
        let status = if self.is_transient() {
            "temporarily_unavailable"
        } else {
            "invalid_token"
        };
        OAuthErrorStatus {
            status: status.into(),
            schemes: Some("bearer".into()),
            scope: None,
            openid_configuration: None,
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedToken {
    pub subject: String,
    /// Delegated permissions: `scope` or `scp`.
    pub scopes: Vec<String>,
    /// Application permissions of an app-only token (Entra's `roles`).
    pub roles: Vec<String>,
    pub expires_at: SystemTime,
    pub client_id: Option<String>,
    pub issuer: String,
    /// Token id, for checking against a revocation list.
    pub jti: Option<String>,
}

impl ValidatedToken {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The claims we read. `scp` (Microsoft) and `azp` (OIDC) are accepted as
/// spellings of `scope` and `client_id`; `roles` carries the application
/// permissions of Entra's app-only tokens, which have no `scp`.
/// How long a JWKS response may be used: its `Cache-Control` max-age (none
/// for `no-store`/`no-cache`), at most [`MAX_JWKS_LIFETIME`], which is also
/// the lifetime of one that says nothing.
fn jwks_lifetime(headers: &reqwest::header::HeaderMap) -> Duration {
    let Some(value) = headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    else {
        return MAX_JWKS_LIFETIME;
    };
    let mut lifetime = MAX_JWKS_LIFETIME;
    for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-store" || directive == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(seconds) = directive
            .strip_prefix("max-age=")
            .and_then(|n| n.trim_matches('"').parse::<u64>().ok())
        {
            lifetime = lifetime.min(Duration::from_secs(seconds));
        }
    }
    lifetime
}

#[derive(Deserialize)]
struct ReadClaims {
    sub: String,
    iss: String,
    exp: u64,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    jti: Option<String>,
    /// Entra's token id.
    #[serde(default)]
    uti: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
}

/// Checks JWT access tokens of one issuer for one or more audiences.
pub struct JwtValidator {
    jwks_url: url::Url,
    issuer: String,
    /// Accepted `aud` values; the first is the one named in messages.
    audiences: Vec<String>,
    http: reqwest::Client,
    leeway: Duration,
    min_refetch_interval: Duration,
    keys: RwLock<KeyCache>,
    /// Serialises fetches: concurrent validations of a token with a new
    /// `kid` wait for one fetch instead of each making their own.
    fetch_gate: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    /// Keys without a `kid`: usable only when the token has none either.
    anonymous: Vec<(DecodingKey, Option<Algorithm>)>,
    last_attempt: Option<Instant>,
    last_failure: Option<String>,
    /// When the keys must be fetched again before they are trusted.
    fresh_until: Option<Instant>,
}

enum Lookup {
    Found(DecodingKey, Option<Algorithm>),
    Missing,
}

impl JwtValidator {
    pub fn new(
        jwks_url: url::Url,
        issuer: String,
        audience: String,
        http: reqwest::Client,
    ) -> Self {
        JwtValidator {
            jwks_url,
            issuer,
            audiences: vec![audience],
            http,
            leeway: DEFAULT_LEEWAY,
            min_refetch_interval: DEFAULT_MIN_REFETCH_INTERVAL,
            keys: RwLock::new(KeyCache::default()),
            fetch_gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Overrides [`DEFAULT_LEEWAY`] (tests of expiry use zero).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Accepts these audiences too (a resource known under several names,
    /// as Exchange Online is under outlook.office.com and outlook.office365.com).
    pub fn also_accepting(mut self, audiences: impl IntoIterator<Item = String>) -> Self {
        for audience in audiences {
            if !self.audiences.contains(&audience) {
                self.audiences.push(audience);
            }
        }
        self
    }

    /// Overrides [`DEFAULT_MIN_REFETCH_INTERVAL`].
    pub fn with_min_refetch_interval(mut self, interval: Duration) -> Self {
        self.min_refetch_interval = interval;
        self
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The main accepted audience.
    pub fn audience(&self) -> &str {
        &self.audiences[0]
    }

    /// Verifies signature, `exp`, `iss` and `aud` and returns what the token says.
    pub async fn validate(&self, token: &Secret) -> Result<ValidatedToken, ValidationError> {
        let header = jsonwebtoken::decode_header(token.expose()).map_err(|e| {
            ValidationError::Malformed {
                reason: e.to_string(),
            }
        })?;
        if !ACCEPTED_ALGORITHMS.contains(&header.alg) {
            return Err(ValidationError::Malformed {
                reason: format!("signature algorithm {:?} is not accepted", header.alg),
            });
        }
        let (key, key_alg) = self.key_for(header.kid.as_deref()).await?;
        if key_alg.is_some_and(|alg| alg != header.alg) {
            return Err(self.bad_signature());
        }

        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        // "https://id.example" and "https://id.example/" name the same
        // issuer; configs and discovery documents disagree on the slash.
        let bare = self.issuer.trim_end_matches('/');
        validation.set_issuer(&[bare.to_string(), format!("{bare}/")]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // A token from the future (a wrong clock, or one minted to be used
        // later) is not valid now.
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<ReadClaims>(token.expose(), &key, &validation)
            .map_err(|e| self.classify(e.into_kind()))?;
        let claims = data.claims;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if claims
            .iat
            .is_some_and(|iat| iat > now.saturating_add(self.leeway.as_secs()))
        {
            return Err(ValidationError::NotYetValid { claim: "iat" });
        }
        let scope = claims.scope.or(claims.scp).unwrap_or_default();
        Ok(ValidatedToken {
            subject: claims.sub,
            scopes: scope.split_whitespace().map(str::to_string).collect(),
            roles: claims.roles.unwrap_or_default(),
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
            client_id: claims.client_id.or(claims.azp),
            issuer: claims.iss,
            jti: claims.jti.or(claims.uti),
        })
    }

    fn classify(&self, kind: ErrorKind) -> ValidationError {
        match kind {
            ErrorKind::ExpiredSignature => ValidationError::Expired,
            ErrorKind::ImmatureSignature => ValidationError::NotYetValid { claim: "nbf" },
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => self.bad_signature(),
            ErrorKind::InvalidAudience => ValidationError::WrongAudience {
                expected: self
                    .audiences
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(" or "),
            },
            ErrorKind::InvalidIssuer => ValidationError::WrongIssuer {
                expected: self.issuer.clone(),
            },
            other => ValidationError::Malformed {
                reason: format!("{other:?}"),
            },
        }
    }

    fn bad_signature(&self) -> ValidationError {
        ValidationError::BadSignature {
            issuer: self.issuer.clone(),
        }
    }

    async fn key_for(
        &self,
        kid: Option<&str>,
    ) -> Result<(DecodingKey, Option<Algorithm>), ValidationError> {
        if let Lookup::Found(key, alg) = self.cached_fresh(kid) {
            return Ok((key, alg));
        }
        let _gate = self.fetch_gate.lock().await;
        // Another task may have fetched while we waited for the gate.
        if let Lookup::Found(key, alg) = self.cached_fresh(kid) {
            return Ok((key, alg));
        }
        let recent = self.read_cache(|cache| {
            cache
                .last_attempt
                .filter(|at| at.elapsed() < self.min_refetch_interval)
                .map(|_| cache.last_failure.clone())
        });
        match recent {
            // Fetched a moment ago: the keys are as fresh as the issuer
            // allows, and the key was not among them.
            Some(None) => {
                return match self.cached(kid) {
                    Lookup::Found(key, alg) => Ok((key, alg)),
                    Lookup::Missing => Err(unknown_key(kid)),
                };
            }
            // The last fetch failed a moment ago: report that, without retrying.
            Some(Some(reason)) => {
                return Err(ValidationError::JwksUnavailable {
                    url: self.jwks_url.to_string(),
                    reason,
                });
            }
            None => {}
        }
        let fetched = self.fetch().await;
        let mut cache = self
            .keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.last_attempt = Some(Instant::now());
        match fetched {
            Ok(fresh) => {
                cache.keys = fresh.keys;
                cache.anonymous = fresh.anonymous;
                cache.fresh_until = fresh.fresh_until;
                cache.last_failure = None;
            }
            Err(reason) => {
                cache.last_failure = Some(reason.clone());
                // The issuer is down: keep trusting the keys it last
                // published (they sign most tokens) rather than refuse
                // every client; a key it withdrew is dropped at the next
                // fetch that succeeds.
                if let Lookup::Found(key, alg) = lookup(&cache, kid) {
                    return Ok((key, alg));
                }
                return Err(ValidationError::JwksUnavailable {
                    url: self.jwks_url.to_string(),
                    reason,
                });
            }
        }
        match lookup(&cache, kid) {
            Lookup::Found(key, alg) => Ok((key, alg)),
            Lookup::Missing => Err(unknown_key(kid)),
        }
    }

    fn cached(&self, kid: Option<&str>) -> Lookup {
        self.read_cache(|cache| lookup(cache, kid))
    }

    /// A cached key, if the cache has not outlived its lifetime.
    fn cached_fresh(&self, kid: Option<&str>) -> Lookup {
        self.read_cache(|cache| {
            if cache
                .fresh_until
                .is_some_and(|until| Instant::now() < until)
            {
                lookup(cache, kid)
            } else {
                Lookup::Missing
            }
        })
    }

    fn read_cache<T>(&self, read: impl FnOnce(&KeyCache) -> T) -> T {
        // A panic while holding the lock cannot leave the cache half-written
        // (every write replaces whole fields), so a poisoned lock is usable.
        let cache = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(&cache)
    }

    async fn fetch(&self) -> Result<KeyCache, String> {
        let response = self
            .http
            .get(self.jwks_url.clone())
            .timeout(JWKS_FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let lifetime = jwks_lifetime(response.headers());
        let body =
            crate::oauth::body::read_bounded(response, crate::oauth::body::MAX_METADATA_RESPONSE)
                .await
                .map_err(|e| e.to_string())?;
        let body: JwksDocument =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut cache = KeyCache {
            fresh_until: Some(Instant::now() + lifetime),
            ..KeyCache::default()
        };
        // A key we cannot use (unknown kty, encryption key) is skipped rather
        // than failing the set: issuers publish more than we need.
        for value in body.keys {
            let Ok(jwk) = serde_json::from_value::<AnyJwk>(value) else {
                continue;
            };
            if jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
            {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            match jwk.common.key_id {
                Some(kid) => {
                    cache.keys.insert(kid, (key, alg));
                }
                None => cache.anonymous.push((key, alg)),
            }
        }
        Ok(cache)
    }
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

fn lookup(cache: &KeyCache, kid: Option<&str>) -> Lookup {
    let found = match kid {
        Some(kid) => cache.keys.get(kid),
        // No kid in the token: only unambiguous when the issuer has one key.
        None if cache.keys.len() + cache.anonymous.len() == 1 => {
            cache.keys.values().next().or(cache.anonymous.first())
        }
        None => None,
    };
    match found {
        Some((key, alg)) => Lookup::Found(key.clone(), *alg),
        None => Lookup::Missing,
    }
}

fn unknown_key(kid: Option<&str>) -> ValidationError {
    ValidationError::UnknownKey {
        kid: kid.unwrap_or("(none)").to_string(),
    }
}

/// An RFC 7662 introspection answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Introspection {
    pub active: bool,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub exp: Option<u64>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub token_type: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    #[error("cannot reach the introspection endpoint {url}: {reason}; retry later")]
    Unreachable { url: String, reason: String },
    #[error(
        "the introspection endpoint {url} refused our client credentials (HTTP {status}){detail}; check client_id and client_secret, and whether the provider lets this client introspect"
    )]
    Unauthorized {
        url: String,
        status: u16,
        detail: String,
    },
    #[error(
        "the introspection endpoint {url} does not introspect this kind of token (unsupported_token_type){detail}; JWT access tokens are checked locally instead"
    )]
    UnsupportedTokenType { url: String, detail: String },
    #[error("the introspection endpoint {url} answered HTTP {status}; retry later")]
    ServerError { url: String, status: u16 },
    #[error(
        "the introspection endpoint {url} answered something that is not RFC 7662 JSON: {reason}"
    )]
    BadResponse { url: String, reason: String },
}

impl IntrospectionError {
    /// The endpoint answered about the request, not about the token: no
    /// verdict on whether the token is alive.
    pub fn declined(&self) -> bool {
        matches!(
            self,
            IntrospectionError::UnsupportedTokenType { .. }
                | IntrospectionError::Unauthorized { .. }
        )
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            IntrospectionError::Unreachable { .. } | IntrospectionError::ServerError { .. }
        )
    }
}

/// Who asks the introspection endpoint, and how it authenticates.
#[derive(Debug, Clone, Copy)]
pub struct IntrospectionClient<'a> {
    pub client_id: &'a str,
    /// `None` for a public client, where the provider lets those introspect.
    pub client_secret: Option<&'a Secret>,
    pub auth: ClientAuth,
}

impl<'a> From<&'a TokenEndpoint> for IntrospectionClient<'a> {
    /// The account's own client, authenticating as at the token endpoint.
    fn from(endpoint: &'a TokenEndpoint) -> Self {
        IntrospectionClient {
            client_id: &endpoint.client_id,
            client_secret: endpoint.client_secret.as_ref(),
            auth: endpoint.client_auth,
        }
    }
}

#[derive(Deserialize)]
struct IntrospectionRefusal {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Asks `introspection_url` about `token` (RFC 7662 section 2.1), the
/// client authenticating as `client` says. The error body is read: a
/// server that declines the token type says so (`unsupported_token_type`),
/// which is no verdict on the token.
pub async fn introspect(
    http: &reqwest::Client,
    introspection_url: &url::Url,
    client: IntrospectionClient<'_>,
    token: &Secret,
) -> Result<Introspection, IntrospectionError> {
    let url = introspection_url.to_string();
    let mut form: Vec<(&'static str, String)> = vec![("token", token.expose().to_string())];
    let request = authenticate_client(
        http.post(introspection_url.clone()),
        &mut form,
        client.client_id,
        client.client_secret,
        client.auth,
    );
    let response = request
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .timeout(JWKS_FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| IntrospectionError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let status = response.status();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(IntrospectionError::ServerError {
            url,
            status: status.as_u16(),
        });
    }
    if !status.is_success() {
        let body =
            crate::oauth::body::read_bounded(response, crate::oauth::body::MAX_OAUTH_RESPONSE)
                .await
                .unwrap_or_default();
        let refusal = serde_json::from_slice::<IntrospectionRefusal>(&body).ok();
        let detail = refusal
            .as_ref()
            .and_then(|r| r.error_description.as_deref())
            .map(|d| format!(": {}", d.lines().next().unwrap_or(d)))
            .unwrap_or_default();
        let code = refusal.as_ref().map(|r| r.error.as_str());
        return Err(match (status.as_u16(), code) {
            (_, Some("unsupported_token_type")) => {
                IntrospectionError::UnsupportedTokenType { url, detail }
            }
            (401 | 403, _) | (_, Some("invalid_client" | "unauthorized_client")) => {
                IntrospectionError::Unauthorized {
                    url,
                    status: status.as_u16(),
                    detail,
                }
            }
            _ => IntrospectionError::BadResponse {
                url,
                reason: format!("HTTP {status}{detail}"),
            },
        });
    }
    let body = crate::oauth::body::read_bounded(response, crate::oauth::body::MAX_OAUTH_RESPONSE)
        .await
        .map_err(|e| IntrospectionError::BadResponse {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    serde_json::from_slice::<Introspection>(&body).map_err(|e| IntrospectionError::BadResponse {
        url,
        reason: e.to_string(),
    })
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_lifetime_follows_cache_control_within_an_hour() {
        let headers = |value: &str| {
            let mut map = reqwest::header::HeaderMap::new();
            map.insert(
                reqwest::header::CACHE_CONTROL,
                value.parse().expect("value"),
            );
            map
        };
        assert_eq!(
            jwks_lifetime(&headers("public, max-age=600")),
            Duration::from_secs(600)
        );
        assert_eq!(jwks_lifetime(&headers("max-age=86400")), MAX_JWKS_LIFETIME);
        assert_eq!(jwks_lifetime(&headers("no-cache")), Duration::ZERO);
        assert_eq!(
            jwks_lifetime(&headers("no-store, max-age=60")),
            Duration::ZERO
        );
        assert_eq!(
            jwks_lifetime(&reqwest::header::HeaderMap::new()),
            MAX_JWKS_LIFETIME
        );
    }

    #[test]
    fn transient_only_for_jwks_trouble() {
        let down = ValidationError::JwksUnavailable {
            url: "http://x/jwks".into(),
            reason: "refused".into(),
        };
        assert!(down.is_transient());
        assert_eq!(down.rfc7628_status().status, "temporarily_unavailable");
        for bad in [
            ValidationError::Expired,
            ValidationError::BadSignature { issuer: "i".into() },
            ValidationError::WrongAudience {
                expected: "smtp".into(),
            },
            ValidationError::WrongIssuer {
                expected: "i".into(),
            },
            ValidationError::Malformed { reason: "x".into() },
            ValidationError::UnknownKey { kid: "k".into() },
        ] {
            assert!(!bad.is_transient(), "{bad}");
            assert_eq!(bad.rfc7628_status().status, "invalid_token", "{bad}");
        }
    }

    #[test]
    fn has_scope_matches_whole_words() {
        let token = ValidatedToken {
            subject: "a".into(),
            scopes: vec!["smtp".into(), "offline_access".into()],
            roles: vec!["SMTP.SendAsApp".into()],
            expires_at: UNIX_EPOCH,
            client_id: None,
            issuer: "i".into(),
            jti: None,
        };
        assert!(token.has_scope("smtp"));
        assert!(!token.has_scope("smt"));
        assert!(token.has_role("SMTP.SendAsApp"));
        assert!(!token.has_scope("SMTP.SendAsApp"), "roles are not scopes");
    }

    #[tokio::test]
    async fn garbage_is_malformed_without_fetching() {
        // An unroutable URL: any fetch would fail as JwksUnavailable.
        let validator = JwtValidator::new(
            "http://127.0.0.1:9/jwks".parse().expect("url"),
            "i".into(),
            "smtp".into(),
            reqwest::Client::new(),
        );
        let err = validator
            .validate(&Secret::new("not-a-jwt"))
            .await
            .expect_err("garbage");
        assert!(matches!(err, ValidationError::Malformed { .. }), "{err}");
    }
}
