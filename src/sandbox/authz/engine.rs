//! The server's operations, free of HTTP: given an authenticated client and
//! parsed parameters, decide and issue. Handlers parse and answer; this
//! module holds every rule of the token, revocation and introspection
//! endpoints, so they are unit-testable without sockets.

use serde::Serialize;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::access_token::{TokenMint, looks_like_jwt};
use super::config::{AuthServerConfig, OFFLINE_ACCESS, SandboxClient};
use super::consent::ConsentForms;
use super::entra;
use super::faults::TokenFaults;
use super::ledger::{CodeRequest, DeviceStart, Grant, Ledger, RefreshIssue};
use super::oauth_error::{ErrorCode, OAuthError};
use super::params::Params;
use super::stats::{GrantKind, StatsRecorder};
use crate::oauth::jwt::{SigningKey, unix_now};
use crate::sandbox::profile::TokenShape;
use crate::secret::Secret;

/// Everything the server knows; shared by all handlers.
#[derive(Debug)]
pub(crate) struct AuthCore {
    pub config: AuthServerConfig,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub issuer: String,
    pub key: SigningKey,
    pub stats: StatsRecorder,
    pub faults: TokenFaults,
    ledger: Mutex<Ledger>,
    forms: Mutex<ConsentForms>,
}

/// RFC 6749 §5.1 success response.
#[derive(Debug, Serialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// RFC 7662 §2.2 response.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) struct IntrospectionResponse {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

impl AuthCore {
    pub(crate) fn new(
        config: AuthServerConfig,
        issuer: String,
        key: SigningKey,
        faults: TokenFaults,
    ) -> Self {
        AuthCore {
            config,
            issuer,
            key,
            stats: StatsRecorder::new(),
            faults,
            ledger: Mutex::new(Ledger::default()),
            forms: Mutex::new(ConsentForms::default()),
        }
    }

    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // Ledger operations do not panic midway on valid data; if one did,
        // its state is still the last consistent write, so keep serving.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn forms(&self) -> MutexGuard<'_, ConsentForms> {
        // A map of pending forms; a poisoned lock leaves it consistent.
        self.forms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies the ledger's revocation counters into the published stats.
    fn publish_ledger_counters(&self, ledger: &Ledger) {
        let (families, reuses) = (ledger.families_revoked, ledger.refresh_reuses);
        self.stats.update(|s| {
            s.families_revoked = families;
            s.refresh_token_reuses = reuses;
        });
    }

    /// The `/token` endpoint after client authentication.
    #[cfg(test)]
    pub(crate) fn token(
        &self,
        client: &SandboxClient,
        params: &Params,
    ) -> Result<TokenResponse, OAuthError> {
        self.token_lasting(client, params, None)
    }

    /// The `/token` endpoint, the access token living `lifetime` instead of
    /// the configured lifetime when given.
    pub(crate) fn token_lasting(
        &self,
        client: &SandboxClient,
        params: &Params,
        lifetime: Option<std::time::Duration>,
    ) -> Result<TokenResponse, OAuthError> {
        let now = Instant::now();
        let kind = GrantKind::from_grant_type(params.get("grant_type"));
        let mut ledger = self.ledger();
        let granted = match kind {
            GrantKind::ClientCredentials => self.client_credentials(client, params),
            GrantKind::AuthorizationCode => ledger.redeem_code(
                &client.client_id,
                params.require("code")?,
                params.get("redirect_uri"),
                params.get("code_verifier"),
                now,
            ),
            GrantKind::RefreshToken => {
                let asked = match params.get("scope") {
                    Some(scope) => Some(self.parse_scope(Some(scope))?),
                    None => None,
                };
                ledger.use_refresh(
                    &client.client_id,
                    params.require("refresh_token")?,
                    asked,
                    self.config.rotate_refresh_tokens,
                )
            }
            GrantKind::DeviceCode => ledger.poll_device(
                &client.client_id,
                params.require("device_code")?,
                now,
                self.config.slow_down_increment,
            ),
            GrantKind::Other => Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                match params.get("grant_type") {
                    Some(other) => format!(
                        "grant_type {other} is not supported; use client_credentials, authorization_code, refresh_token or {}",
                        GrantKind::DEVICE_CODE_URN
                    ),
                    None => "missing parameter grant_type".to_string(),
                },
            )),
        };
        self.publish_ledger_counters(&ledger);
        let response = self.issue(&mut ledger, granted?, lifetime)?;
        self.stats.update(|s| s.tokens_issued += 1);
        Ok(response)
    }

    fn client_credentials(
        &self,
        client: &SandboxClient,
        params: &Params,
    ) -> Result<Grant, OAuthError> {
        if client.client_secret.is_none() {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                format!(
                    "client {} is a public client (no secret); client_credentials needs a confidential client",
                    client.client_id
                ),
            ));
        }
        let Some(subject) = client.app_subject.clone() else {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                format!(
                    "client {} has no app_subject (mailbox), so it may not use client_credentials; register one or use a user grant",
                    client.client_id
                ),
            ));
        };
        // App-only tokens never come with a refresh token (RFC 6749 §4.4.3),
        // so offline_access is meaningless here and dropped.
        let scopes: Vec<String> = self
            .parse_scope(params.get("scope"))?
            .into_iter()
            .filter(|s| s != OFFLINE_ACCESS)
            .collect();
        self.check_shape_scopes(&scopes, true)?;
        Ok(Grant {
            client_id: client.client_id.clone(),
            subject,
            scopes,
            family: None,
            refresh: RefreshIssue::None,
        })
    }

    /// The profile's own rules for the scopes of one request (Entra's
    /// resource naming); `app_only` for client credentials.
    pub(crate) fn check_shape_scopes(
        &self,
        scopes: &[String],
        app_only: bool,
    ) -> Result<(), OAuthError> {
        match self.config.token_shape {
            TokenShape::Entra => entra::resource_access(&self.config, scopes, app_only).map(|_| ()),
            TokenShape::Jwt { .. } | TokenShape::Opaque => Ok(()),
        }
    }

    /// Issues and recognises this server's access tokens.
    pub(crate) fn mint(&self) -> TokenMint<'_> {
        TokenMint {
            config: &self.config,
            issuer: &self.issuer,
            key: &self.key,
        }
    }

    /// The requested scopes, each one known; the default when none asked.
    pub(crate) fn parse_scope(&self, scope: Option<&str>) -> Result<Vec<String>, OAuthError> {
        let Some(scope) = scope.filter(|s| !s.trim().is_empty()) else {
            return Ok(self.config.default_scopes());
        };
        let mut scopes: Vec<String> = Vec::new();
        for item in scope.split_whitespace() {
            if !self.config.scopes.iter().any(|s| s == item) {
                return Err(OAuthError::new(
                    ErrorCode::InvalidScope,
                    format!(
                        "scope {item} is not offered; this server offers: {}",
                        self.config.scopes.join(" ")
                    ),
                ));
            }
            if !scopes.iter().any(|s| s == item) {
                scopes.push(item.to_string());
            }
        }
        Ok(scopes)
    }

    fn issue(
        &self,
        ledger: &mut Ledger,
        grant: Grant,
        lifetime: Option<std::time::Duration>,
    ) -> Result<TokenResponse, OAuthError> {
        let now = unix_now();
        let ttl = lifetime
            .unwrap_or(self.config.access_token_ttl)
            .as_secs()
            .max(1);
        let exp = now + ttl;
        let minted = self.mint().mint(&grant, now, exp)?;
        ledger.record_access(&minted.id, &grant, exp, now);
        let refresh = match grant.refresh {
            RefreshIssue::New => ledger.issue_refresh(&grant),
            RefreshIssue::None => None,
        };
        tracing::info!(
            client_id = %grant.client_id,
            subject = %grant.subject,
            access_token = %minted.token.fingerprint(),
            refresh_token = ?refresh.as_ref().map(Secret::fingerprint),
            "sandbox issued tokens"
        );
        Ok(TokenResponse {
            access_token: minted.token.expose().to_string(),
            token_type: "Bearer",
            expires_in: ttl,
            scope: grant.scopes.join(" "),
            refresh_token: refresh.map(|r| r.expose().to_string()),
        })
    }

    /// Stores a consented authorization request and returns its code.
    pub(crate) fn issue_code(&self, request: CodeRequest) -> Secret {
        let code =
            self.ledger()
                .issue_code(request, Instant::now(), self.config.authorization_code_ttl);
        self.stats.update(|s| s.authorization_codes += 1);
        code
    }

    pub(crate) fn start_device(
        &self,
        client: &SandboxClient,
        params: &Params,
    ) -> Result<DeviceStart, OAuthError> {
        let scopes = self.parse_scope(params.get("scope"))?;
        self.check_shape_scopes(&scopes, false)?;
        let start = self.ledger().start_device(
            &client.client_id,
            scopes,
            Instant::now(),
            self.config.device_code_ttl,
            self.config.device_interval,
        );
        self.stats.update(|s| s.device_authorizations += 1);
        Ok(start)
    }

    /// RFC 7009: revoke what `token` is, if it is ours and the client's.
    /// Unknown tokens are not an error (§2.2).
    pub(crate) fn revoke(&self, client: &SandboxClient, params: &Params) -> Result<(), OAuthError> {
        let token = params.require("token")?;
        let mut ledger = self.ledger();
        // The hint only orders the lookups (§2.1); both kinds are tried.
        let refresh_first = params.get("token_type_hint") != Some("access_token");
        let mut revoked = refresh_first && ledger.revoke_refresh(&client.client_id, token);
        if !revoked && let Some(id) = self.mint().token_id(token, false) {
            revoked = ledger.revoke_access(&client.client_id, &id);
        }
        if !revoked && !refresh_first {
            revoked = ledger.revoke_refresh(&client.client_id, token);
        }
        tracing::info!(
            client_id = %client.client_id,
            token = %Secret::new(token).fingerprint(),
            revoked,
            "sandbox revocation request"
        );
        self.publish_ledger_counters(&ledger);
        Ok(())
    }

    /// RFC 7662 for the clients of this server that may introspect (they
    /// act as resource servers).
    pub(crate) fn introspect(
        &self,
        client: &SandboxClient,
        params: &Params,
    ) -> Result<IntrospectionResponse, OAuthError> {
        if !client.may_introspect {
            return Err(OAuthError::invalid_client(format!(
                "client {} may not use the introspection endpoint; introspect with a resource server's credentials",
                client.client_id
            )));
        }
        let token = params.require("token")?;
        if self.config.introspection_declines_jwts && looks_like_jwt(token) {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedTokenType,
                "JWT access tokens are not introspected here: they are self-contained, validate them locally with the JWKS",
            ));
        }
        Ok(self.introspect_token(token))
    }

    pub(crate) fn introspect_token(&self, token: &str) -> IntrospectionResponse {
        let ledger = self.ledger();
        if let Some(info) = ledger.refresh_info(token) {
            if !info.active {
                return IntrospectionResponse::default();
            }
            return IntrospectionResponse {
                active: true,
                sub: Some(info.subject),
                scope: Some(info.scopes.join(" ")),
                client_id: Some(info.client_id),
                token_type: Some("refresh_token"),
                iss: Some(self.issuer.clone()),
                exp: None,
            };
        }
        let mint = self.mint();
        let info = mint
            .token_id(token, true)
            .and_then(|id| ledger.access_info(&id));
        match info {
            // Opaque tokens carry no `exp`: the ledger's is the one that counts.
            Some(info) if !info.revoked && info.exp_unix >= unix_now() => IntrospectionResponse {
                active: true,
                sub: Some(info.subject),
                scope: Some(info.scopes.join(" ")),
                exp: Some(info.exp_unix),
                client_id: Some(info.client_id),
                token_type: Some("Bearer"),
                iss: Some(mint.token_issuer()),
            },
            _ => IntrospectionResponse::default(),
        }
    }

    /// Withdraws every consent of `subject`; returns the families revoked.
    pub(crate) fn revoke_subject(&self, subject: &str) -> usize {
        let mut ledger = self.ledger();
        let count = ledger.revoke_subject(subject);
        self.publish_ledger_counters(&ledger);
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::ProfileName;
    use crate::sandbox::authz::config::{DEMO_CLIENT_ID, DEMO_USER};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::sync::OnceLock;

    /// One key for the module's tests (RSA generation is slow in debug builds).
    fn key() -> SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate().expect("key"))
            .clone()
    }

    fn core() -> AuthCore {
        core_with(AuthServerConfig::default())
    }

    fn core_with(config: AuthServerConfig) -> AuthCore {
        AuthCore::new(
            config,
            "http://127.0.0.1:1".into(),
            key(),
            TokenFaults::default(),
        )
    }

    /// A server with `profile`'s token shape and scopes.
    fn profile_core(profile: ProfileName) -> AuthCore {
        let oauth = crate::sandbox::oauth_profile(profile);
        core_with(AuthServerConfig {
            token_shape: profile.token_shape(),
            scopes: oauth.offered_scopes.iter().map(|s| s.to_string()).collect(),
            ..AuthServerConfig::default()
        })
    }

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const REDIRECT: &str = "http://127.0.0.1/callback";

    /// A user's consent for `scopes`, redeemed: the token response.
    fn user_tokens(core: &AuthCore, scopes: &[&str]) -> TokenResponse {
        let code = core.issue_code(CodeRequest {
            client_id: DEMO_CLIENT_ID.into(),
            redirect_uri: REDIRECT.into(),
            code_challenge: CHALLENGE.into(),
            subject: DEMO_USER.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        });
        let client = core.config.client(DEMO_CLIENT_ID).expect("demo").clone();
        core.token(
            &client,
            &params(&[
                ("grant_type", "authorization_code"),
                ("code", code.expose()),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ]),
        )
        .expect("code redeemed")
    }

    fn app_tokens(core: &AuthCore, scope: &str) -> Result<TokenResponse, OAuthError> {
        let client = core.config.client(DEMO_CLIENT_ID).expect("demo").clone();
        core.token(
            &client,
            &params(&[("grant_type", "client_credentials"), ("scope", scope)]),
        )
    }

    /// The JSON of a JWT's header and claims, unverified.
    fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value) {
        let mut parts = token.split('.');
        let mut decode = || {
            let part = parts.next().expect("part");
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64url")).expect("json")
        };
        (decode(), decode())
    }

    #[test]
    fn strict_tokens_are_rs256_jwts_of_2000_characters_padded_with_groups() {
        let core = profile_core(ProfileName::Strict);
        for token in [
            user_tokens(&core, &["smtp.send", "offline_access"]).access_token,
            app_tokens(&core, "smtp.send").expect("app").access_token,
        ] {
            assert!(token.len() >= 2000, "{} characters", token.len());
            let (header, claims) = jwt_parts(&token);
            assert_eq!(header["alg"], "RS256");
            assert_eq!(header["typ"], "at+jwt");
            // The standard claims say what they always said; the length is
            // in the groups, stable for the user.
            assert_eq!(claims["sub"], DEMO_USER);
            assert_eq!(claims["aud"], "smtp");
            assert!(
                claims["scope"]
                    .as_str()
                    .expect("scope")
                    .starts_with("smtp.send")
            );
            let groups = claims["groups"].as_array().expect("groups");
            assert!(groups.len() > 10, "{groups:?}");
            assert_eq!(groups[0].as_str().expect("uuid").len(), 36);
            assert!(core.introspect_token(&token).active);
        }
    }

    #[test]
    fn entra_user_tokens_have_scp_upn_and_the_exchange_audience() {
        let core = profile_core(ProfileName::Microsoft);
        let response = user_tokens(
            &core,
            &["https://outlook.office.com/SMTP.Send", "offline_access"],
        );
        assert!(response.refresh_token.is_some());
        let token = &response.access_token;
        assert!(token.len() >= 1500, "{} characters", token.len());
        let (header, claims) = jwt_parts(token);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t"], core.key.x5t());
        assert_eq!(header["kid"], core.key.kid());
        assert_eq!(claims["aud"], "https://outlook.office.com");
        assert_eq!(
            claims["iss"],
            format!("https://sts.windows.net/{}/", core.config.tenant_id)
        );
        assert_eq!(claims["scp"], "SMTP.Send");
        assert!(claims.get("roles").is_none());
        for field in ["upn", "email", "unique_name"] {
            assert_eq!(claims[field], DEMO_USER, "{field}");
        }
        assert_eq!(claims["tid"], core.config.tenant_id);
        assert_eq!(claims["appid"], DEMO_CLIENT_ID);
        assert_eq!(claims["ver"], "1.0");
        assert_eq!(claims["idtyp"], "user");
        for field in ["iat", "nbf", "exp"] {
            assert!(claims[field].is_u64(), "{field}");
        }
        for field in ["oid", "uti", "sub", "aio", "rh"] {
            assert!(claims[field].is_string(), "{field}");
        }
        assert_ne!(claims["sub"], DEMO_USER, "Entra's sub is pairwise");
        let seen = core.introspect_token(token);
        assert!(seen.active);
        assert_eq!(seen.sub.as_deref(), Some(DEMO_USER));
    }

    #[test]
    fn entra_app_only_tokens_carry_roles_and_need_dot_default() {
        let core = profile_core(ProfileName::Microsoft);
        let token = app_tokens(&core, "https://outlook.office365.com/.default")
            .expect("app-only")
            .access_token;
        assert!(token.len() >= 1500, "{} characters", token.len());
        let (_, claims) = jwt_parts(&token);
        assert_eq!(claims["aud"], "https://outlook.office365.com");
        assert_eq!(claims["roles"], serde_json::json!(["SMTP.SendAsApp"]));
        assert!(claims.get("scp").is_none());
        assert!(claims.get("upn").is_none());
        assert_eq!(claims["idtyp"], "app");
        assert_eq!(claims["appidacr"], "1");
        assert_eq!(claims["sub"], claims["oid"]);
        let err = app_tokens(&core, "https://outlook.office.com/SMTP.Send").expect_err("named");
        assert_eq!(err.error, ErrorCode::InvalidScope);
        assert!(err.error_description.contains("AADSTS1002012"), "{err}");
        // Revocation finds the token by its uti.
        let client = core.config.client(DEMO_CLIENT_ID).expect("demo").clone();
        core.revoke(&client, &params(&[("token", &token)]))
            .expect("revoke");
        assert!(!core.introspect_token(&token).active);
    }

    #[test]
    fn google_tokens_are_opaque_and_known_only_to_the_ledger() {
        let core = profile_core(ProfileName::Google);
        let response = user_tokens(&core, &["https://mail.google.com/", "offline_access"]);
        let token = &response.access_token;
        let random = token.strip_prefix("ya29.").expect("ya29. prefix");
        assert!(
            (190..=220).contains(&random.len()),
            "{} characters",
            random.len()
        );
        assert!(
            random
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{random}"
        );
        assert!(jsonwebtoken::decode_header(token).is_err(), "not a JWT");
        let seen = core.introspect_token(token);
        assert!(seen.active);
        assert_eq!(seen.sub.as_deref(), Some(DEMO_USER));
        assert_eq!(
            seen.scope.as_deref(),
            Some("https://mail.google.com/ offline_access")
        );
        assert!(seen.exp.is_some_and(|exp| exp > unix_now()));
        // Made-up tokens of the same shape are unknown.
        assert!(
            !core
                .introspect_token(&format!("ya29.{}", "A".repeat(200)))
                .active
        );
        // Withdrawing consent ends the opaque token too.
        core.revoke_subject(DEMO_USER);
        assert!(!core.introspect_token(token).active);
    }

    #[test]
    fn introspection_can_decline_jwts_and_public_clients() {
        let core = core_with(AuthServerConfig {
            introspection_declines_jwts: true,
            ..AuthServerConfig::default()
        });
        let client = core.config.client(DEMO_CLIENT_ID).expect("demo").clone();
        let token = app_tokens(&core, "smtp").expect("token").access_token;
        let err = core
            .introspect(&client, &params(&[("token", &token)]))
            .expect_err("declined");
        assert_eq!(err.error, ErrorCode::UnsupportedTokenType);
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        let public = SandboxClient::public("native");
        let err = core
            .introspect(&public, &params(&[("token", "x")]))
            .expect_err("public");
        assert_eq!(err.error, ErrorCode::InvalidClient);
        let allowed = SandboxClient {
            may_introspect: true,
            ..SandboxClient::public("native")
        };
        // Refresh tokens are not JWTs: still introspected.
        assert!(
            core.introspect(&allowed, &params(&[("token", "x")]))
                .is_ok()
        );
    }

    #[test]
    fn public_clients_may_not_use_client_credentials() {
        let core = core();
        let public = SandboxClient {
            app_subject: Some(DEMO_USER.into()),
            ..SandboxClient::public("native")
        };
        let err = core
            .token(&public, &params(&[("grant_type", "client_credentials")]))
            .expect_err("public");
        assert_eq!(err.error, ErrorCode::UnauthorizedClient);
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).expect("p")
    }

    #[test]
    fn client_credentials_gives_app_token_without_refresh() {
        let core = core();
        let client = core.config.client(DEMO_CLIENT_ID).expect("demo").clone();
        let response = core
            .token(
                &client,
                &params(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "smtp offline_access"),
                ]),
            )
            .expect("token");
        assert!(response.refresh_token.is_none());
        assert_eq!(response.scope, "smtp");
        let seen = core.introspect_token(&response.access_token);
        assert!(seen.active);
        assert_eq!(seen.sub.as_deref(), Some(DEMO_USER));
    }

    #[test]
    fn unknown_scope_and_grant_are_refused() {
        let core = core();
        let client = core.config.client(DEMO_CLIENT_ID).expect("demo").clone();
        let err = core
            .token(
                &client,
                &params(&[("grant_type", "client_credentials"), ("scope", "admin")]),
            )
            .expect_err("scope");
        assert_eq!(err.error, ErrorCode::InvalidScope);
        let err = core
            .token(&client, &params(&[("grant_type", "password")]))
            .expect_err("grant");
        assert_eq!(err.error, ErrorCode::UnsupportedGrantType);
    }

    #[test]
    fn revoked_access_token_is_inactive() {
        let core = core();
        let client = core.config.client(DEMO_CLIENT_ID).expect("demo").clone();
        let response = core
            .token(&client, &params(&[("grant_type", "client_credentials")]))
            .expect("token");
        core.revoke(&client, &params(&[("token", &response.access_token)]))
            .expect("revoke");
        assert!(!core.introspect_token(&response.access_token).active);
        // Unknown tokens are fine.
        core.revoke(&client, &params(&[("token", "garbage")]))
            .expect("noop");
    }
}
