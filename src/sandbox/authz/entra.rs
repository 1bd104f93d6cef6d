//! Access tokens shaped like Entra ID's v1 tokens for Exchange Online, for
//! the `microsoft` profile, and the scope rules Entra applies to them.
//!
//! Entra names a permission as `{resource}/{permission}` (the resource is
//! the API's application ID URI), grants one resource per token, and
//! writes the permissions without the resource: delegated ones in `scp`
//! (space separated), application ones in `roles` (an array). App-only
//! requests must ask for `{resource}/.default`, which means "whatever the
//! administrator granted" (AADSTS1002012 otherwise). Exchange's tokens are
//! v1 tokens whatever endpoint issued them: `iss` is
//! `https://sts.windows.net/{tid}/`, not the v2 discovery issuer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::config::{AuthServerConfig, SandboxClient};
use super::ledger::Grant;
use super::oauth_error::{ErrorCode, OAuthError};
use crate::oauth::jwt::{HeaderStyle, SigningKey};
use crate::secret::Secret;

/// Real Entra tokens for Exchange run 1,500 to 2,500 characters; the
/// sandbox's are at least this long so that every SASL initial response
/// with one is far beyond RFC 4954's 512-octet AUTH line.
pub(crate) const MIN_TOKEN_LEN: usize = 1500;

/// The `wids` role template of an ordinary member user ("User").
const WID_DEFAULT_USER: &str = "b79fbf4d-3ef9-4689-8143-76b194e85509";
/// The `wids` role template Entra puts in app-only tokens.
const WID_APP: &str = "0997a1d0-0d1d-4acb-b408-d5ca73121e90";
/// Scopes that are about the sign-in, not a resource; never in `scp`.
const OIDC_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];

/// What a token request may access: one resource and its permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResourceAccess {
    /// The token's `aud`.
    pub audience: String,
    /// Delegated permissions (user grants).
    pub scp: Option<String>,
    /// Application permissions (app-only grants).
    pub roles: Option<Vec<String>>,
}

/// The issuer Entra puts in v1 tokens.
pub(crate) fn token_issuer(config: &AuthServerConfig) -> String {
    format!("https://sts.windows.net/{}/", config.tenant_id)
}

/// Microsoft Graph's resource (application id URI).
const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";

/// Every resource the server offers scopes for: the audiences its tokens carry.
pub(crate) fn audiences(config: &AuthServerConfig) -> Vec<String> {
    let mut audiences: Vec<String> = Vec::new();
    for (resource, _) in config.scopes.iter().filter_map(|s| split_scope(s)) {
        if !audiences.iter().any(|a| a == resource) {
            audiences.push(resource.to_string());
        }
    }
    audiences
}

/// `https://outlook.office.com/SMTP.Send` → (`https://outlook.office.com`, `SMTP.Send`).
fn split_scope(scope: &str) -> Option<(&str, &str)> {
    if !scope.contains("://") {
        return None;
    }
    scope.rsplit_once('/').filter(|(resource, permission)| {
        !permission.is_empty() && resource.len() > "https://".len()
    })
}

/// Entra's rules for the scopes of one request, and what they grant.
pub(crate) fn resource_access(
    config: &AuthServerConfig,
    scopes: &[String],
    app_only: bool,
) -> Result<ResourceAccess, OAuthError> {
    let mut resource: Option<&str> = None;
    let mut permissions: Vec<&str> = Vec::new();
    for scope in scopes {
        if OIDC_SCOPES.contains(&scope.as_str()) {
            continue;
        }
        let Some((this, permission)) = split_scope(scope) else {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                format!(
                    "AADSTS70011: The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid; name it with its resource, e.g. https://outlook.office.com/SMTP.Send"
                ),
            ));
        };
        if resource.is_some_and(|r| r != this) {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                "AADSTS28000: Provided value for the input parameter scope is not valid because it contains more than one resource; ask for one resource per token",
            ));
        }
        resource = Some(this);
        permissions.push(permission);
    }
    let Some(resource) = resource else {
        return Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            "AADSTS900144: The request body must contain the following parameter: 'scope' with a resource, e.g. https://outlook.office.com/SMTP.Send",
        ));
    };
    if app_only {
        if permissions != [".default"] {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                format!(
                    "AADSTS1002012: The provided value for scope {} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
                    scopes.join(" ")
                ),
            ));
        }
        // The application permissions granted on that resource: the
        // configured ones for Exchange, Mail.Send for Microsoft Graph (the
        // sandbox app has it, as a relay registered for Graph would).
        let roles = if resource == GRAPH_RESOURCE {
            vec!["Mail.Send".to_string()]
        } else {
            config.app_roles.clone()
        };
        return Ok(ResourceAccess {
            audience: resource.to_string(),
            scp: None,
            roles: Some(roles),
        });
    }
    let scp: Vec<String> = if permissions.contains(&".default") {
        // A user's `.default`: every delegated permission of the app.
        config
            .scopes
            .iter()
            .filter_map(|s| split_scope(s))
            .map(|(_, p)| p)
            .filter(|p| *p != ".default")
            .map(str::to_string)
            .collect()
    } else {
        permissions.iter().map(|p| p.to_string()).collect()
    };
    Ok(ResourceAccess {
        audience: resource.to_string(),
        scp: Some(scp.join(" ")),
        roles: None,
    })
}

/// The claims of a v1 access token, in the order Entra writes them.
#[derive(Serialize)]
struct EntraClaims {
    aud: String,
    iss: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    acr: Option<&'static str>,
    /// Entra's opaque internal claim ("should be ignored"); its length
    /// varies in real tokens, and here it makes up the minimum length.
    aio: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    amr: Option<Vec<&'static str>>,
    app_displayname: String,
    appid: String,
    /// "1": the client authenticated with a secret; "0": a public client.
    appidacr: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    family_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    given_name: Option<String>,
    idtyp: &'static str,
    ipaddr: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    oid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    puid: Option<String>,
    rh: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    sub: String,
    tid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    unique_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    /// Entra's unique token id (its `jti`): what revocation lists hold.
    uti: String,
    ver: &'static str,
    wids: Vec<&'static str>,
    xms_tcdt: u64,
}

/// Signs an Entra-shaped token for `grant`; returns it and its `uti`.
pub(crate) fn mint(
    config: &AuthServerConfig,
    key: &SigningKey,
    grant: &Grant,
    client: Option<&SandboxClient>,
    now: u64,
    exp: u64,
) -> Result<(Secret, String), OAuthError> {
    // App-only grants have no family (no person, no refresh token).
    let app_only = grant.family.is_none();
    let access = resource_access(config, &grant.scopes, app_only)?;
    let user = (!app_only).then_some(grant.subject.as_str());
    let (given, family) = user.map(person_names).unzip();
    let oid = match user {
        Some(user) => uuid_from(&["user", user]),
        // The service principal's object id.
        None => uuid_from(&["service principal", &grant.client_id]),
    };
    let uti = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
    let mut claims = EntraClaims {
        aud: access.audience,
        iss: token_issuer(config),
        iat: now,
        nbf: now,
        exp,
        acr: user.map(|_| "1"),
        aio: String::new(),
        amr: user.map(|_| vec!["pwd", "mfa"]),
        app_displayname: format!("{} (sandbox app)", grant.client_id),
        appid: grant.client_id.clone(),
        appidacr: if client.is_some_and(|c| c.client_secret.is_some()) {
            "1"
        } else {
            "0"
        },
        name: user.map(|_| {
            format!(
                "{} {}",
                given.as_deref().unwrap_or_default(),
                family.as_deref().unwrap_or_default()
            )
        }),
        family_name: family,
        given_name: given,
        idtyp: if app_only { "app" } else { "user" },
        ipaddr: "127.0.0.1",
        puid: user.map(|u| hex_id(&["puid", u], 8).to_uppercase()),
        rh: format!("1.{}.", URL_SAFE_NO_PAD.encode(rand::random::<[u8; 36]>())),
        roles: access.roles,
        scp: access.scp,
        sid: user.map(|_| uuid_from(&["session", &uti])),
        // Entra's `sub` is pairwise: per user and application, not the mailbox.
        sub: match user {
            Some(user) => URL_SAFE_NO_PAD.encode(Sha256::digest(
                format!("sub\0{user}\0{}", grant.client_id).as_bytes(),
            )),
            None => oid.clone(),
        },
        oid,
        tid: config.tenant_id.clone(),
        unique_name: user.map(str::to_string),
        upn: user.map(str::to_string),
        email: user.map(str::to_string),
        uti: uti.clone(),
        ver: "1.0",
        wids: vec![if app_only { WID_APP } else { WID_DEFAULT_USER }],
        xms_tcdt: now.saturating_sub(86_400 * 400),
    };
    // `aio` grows until the token is long enough: two rounds at most, as the
    // first measures how much is missing.
    let mut aio_len = 96;
    for _ in 0..4 {
        claims.aio = random_text(aio_len);
        let token = key.sign_as(&claims, HeaderStyle::Entra).map_err(|e| {
            OAuthError::new(
                ErrorCode::ServerError,
                format!("cannot sign the token: {e}"),
            )
        })?;
        let length = token.expose().len();
        if length >= MIN_TOKEN_LEN {
            return Ok((token, uti));
        }
        // Three bytes of claim become four characters of token.
        aio_len += (MIN_TOKEN_LEN - length) * 3 / 4 + 4;
    }
    Err(OAuthError::new(
        ErrorCode::ServerError,
        "the Entra-shaped token stayed shorter than its minimum length",
    ))
}

/// "alice@sandbox.test" → ("Alice", "Sandbox").
fn person_names(mailbox: &str) -> (String, String) {
    let (local, domain) = mailbox.split_once('@').unwrap_or((mailbox, "sandbox"));
    let domain = domain.split('.').next().unwrap_or(domain);
    (capitalised(local), capitalised(domain))
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A stable UUID-shaped id from `parts` (object ids do not change between tokens).
pub(crate) fn uuid_from(parts: &[&str]) -> String {
    let hex = hex_id(parts, 16);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn hex_id(parts: &[&str], bytes: usize) -> String {
    hex::encode(&Sha256::digest(parts.join("\0").as_bytes())[..bytes])
}

fn random_text(len: usize) -> String {
    let bytes: Vec<u8> = (0..len.div_ceil(4) * 3).map(|_| rand::random()).collect();
    let mut text = URL_SAFE_NO_PAD.encode(bytes);
    text.truncate(len);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn microsoft() -> AuthServerConfig {
        AuthServerConfig {
            scopes: vec![
                "https://outlook.office.com/SMTP.Send".into(),
                "https://outlook.office365.com/.default".into(),
                "offline_access".into(),
            ],
            ..AuthServerConfig::default()
        }
    }

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn delegated_scope_goes_to_scp_without_resource_or_offline_access() {
        let access = resource_access(
            &microsoft(),
            &scopes(&["https://outlook.office.com/SMTP.Send", "offline_access"]),
            false,
        )
        .expect("valid");
        assert_eq!(access.audience, "https://outlook.office.com");
        assert_eq!(access.scp.as_deref(), Some("SMTP.Send"));
        assert_eq!(access.roles, None);
    }

    #[test]
    fn app_only_needs_dot_default_and_gets_the_granted_roles() {
        let config = microsoft();
        let access = resource_access(
            &config,
            &scopes(&["https://outlook.office365.com/.default"]),
            true,
        )
        .expect("valid");
        assert_eq!(access.audience, "https://outlook.office365.com");
        assert_eq!(access.roles, Some(vec!["SMTP.SendAsApp".to_string()]));
        let err = resource_access(
            &config,
            &scopes(&["https://outlook.office.com/SMTP.Send"]),
            true,
        )
        .expect_err("app-only with a named permission");
        assert!(err.error_description.contains("AADSTS1002012"), "{err}");
    }

    #[test]
    fn one_resource_per_token_and_scopes_name_their_resource() {
        let config = microsoft();
        let err = resource_access(
            &config,
            &scopes(&[
                "https://outlook.office.com/SMTP.Send",
                "https://graph.microsoft.com/Mail.Send",
            ]),
            false,
        )
        .expect_err("two resources");
        assert!(err.error_description.contains("AADSTS28000"), "{err}");
        let err = resource_access(&config, &scopes(&["SMTP.Send"]), false).expect_err("bare");
        assert!(err.error_description.contains("AADSTS70011"), "{err}");
        let err =
            resource_access(&config, &scopes(&["offline_access"]), false).expect_err("no resource");
        assert!(err.error_description.contains("AADSTS900144"), "{err}");
    }

    #[test]
    fn audiences_are_the_offered_resources() {
        assert_eq!(
            audiences(&microsoft()),
            [
                "https://outlook.office.com",
                "https://outlook.office365.com"
            ]
        );
    }

    #[test]
    fn names_come_from_the_mailbox() {
        assert_eq!(
            person_names("alice@sandbox.test"),
            ("Alice".to_string(), "Sandbox".to_string())
        );
        assert_eq!(uuid_from(&["a"]).len(), 36);
        assert_eq!(uuid_from(&["a"]), uuid_from(&["a"]));
    }
}
