//! RFC 8414 authorization server metadata (also served as OpenID discovery)
//! and the JWKS.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::engine::AuthCore;
use super::stats::GrantKind;
use crate::oauth::jwt::Jwks;

/// The metadata document; also what the CLI prints as the endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthServerMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub device_authorization_endpoint: String,
    pub revocation_endpoint: String,
    pub introspection_endpoint: String,
    pub jwks_uri: String,
    pub grant_types_supported: Vec<String>,
    pub response_types_supported: Vec<String>,
    pub code_challenge_methods_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    pub revocation_endpoint_auth_methods_supported: Vec<String>,
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    pub scopes_supported: Vec<String>,
    /// RFC 9207: the `iss` parameter is sent in authorization responses.
    pub authorization_response_iss_parameter_supported: bool,
    /// OpenID Connect Discovery fields, published when `openid` is offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_types_supported: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token_signing_alg_values_supported: Option<Vec<String>>,
}

impl AuthServerMetadata {
    pub(crate) fn of(core: &AuthCore) -> Self {
        let issuer = core.issuer.clone();
        let at = |path: &str| format!("{issuer}{path}");
        let auth_methods = || {
            core.config
                .client_auth_methods
                .iter()
                .map(|m| m.as_str().to_string())
                .collect::<Vec<_>>()
        };
        let openid = core.config.scopes.iter().any(|s| s == "openid");
        AuthServerMetadata {
            authorization_endpoint: at("/authorize"),
            token_endpoint: at("/token"),
            device_authorization_endpoint: at("/device_authorization"),
            revocation_endpoint: at("/revoke"),
            introspection_endpoint: at("/introspect"),
            jwks_uri: at("/jwks"),
            grant_types_supported: vec![
                "authorization_code".into(),
                "refresh_token".into(),
                "client_credentials".into(),
                GrantKind::DEVICE_CODE_URN.into(),
            ],
            response_types_supported: vec!["code".into()],
            code_challenge_methods_supported: vec!["S256".into()],
            token_endpoint_auth_methods_supported: auth_methods(),
            revocation_endpoint_auth_methods_supported: auth_methods(),
            introspection_endpoint_auth_methods_supported: auth_methods(),
            scopes_supported: core.config.scopes.clone(),
            authorization_response_iss_parameter_supported: true,
            subject_types_supported: openid.then(|| vec!["public".to_string()]),
            id_token_signing_alg_values_supported: openid.then(|| vec!["RS256".to_string()]),
            issuer,
        }
    }
}

pub(crate) async fn metadata(State(core): State<Arc<AuthCore>>) -> Json<AuthServerMetadata> {
    Json(AuthServerMetadata::of(&core))
}

pub(crate) async fn jwks(State(core): State<Arc<AuthCore>>) -> Json<Jwks> {
    core.stats.update(|s| s.jwks_fetches += 1);
    Json(core.key.jwks())
}
