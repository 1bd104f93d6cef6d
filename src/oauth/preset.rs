//! Provider presets: one table of facts about Microsoft 365, Google and
//! generic OAuth2 SMTP providers that the rest of the code reads, instead of
//! branches scattered through it.

use crate::config::TlsMode;
use crate::oauth::grant::ClientAuth;
use crate::smtp::sasl::Mechanism;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Microsoft,
    Google,
    Generic,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            ProviderKind::Microsoft => "microsoft",
            ProviderKind::Google => "google",
            ProviderKind::Generic => "generic",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    ClientCredentials,
    AuthorizationCode,
    DeviceCode,
    JwtBearer,
}

impl GrantKind {
    /// Grants where a person consents once and a refresh token carries on.
    pub fn uses_refresh_token(self) -> bool {
        matches!(self, GrantKind::AuthorizationCode | GrantKind::DeviceCode)
    }
}

impl fmt::Display for GrantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::AuthorizationCode => "authorization_code",
            GrantKind::DeviceCode => "device_code",
            GrantKind::JwtBearer => "jwt_bearer",
        })
    }
}

/// How the authorization request asks for a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineRequest {
    /// The `offline_access` scope is enough (Microsoft identity platform,
    /// where `prompt=consent` would force a consent screen users may not be
    /// allowed to answer).
    Scope,
    /// Google: `access_type=offline`, and `prompt=consent`, without which a
    /// refresh token is issued only at the first consent ever.
    GoogleAccessType,
    /// OpenID Connect Core section 11: `offline_access` counts only with
    /// `prompt=consent` (servers that are not OpenID providers ignore the
    /// parameter, RFC 6749 section 3.1).
    ScopeWithConsentPrompt,
}

/// Default sending limits of a provider, applied unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProviderLimits {
    pub messages_per_minute: Option<u32>,
    pub messages_per_day: Option<u32>,
    pub recipients_per_day: Option<u32>,
    pub recipients_per_message: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub kind: ProviderKind,
    /// Upstream SMTP server, if the provider has one fixed address.
    pub smtp_host: Option<&'static str>,
    pub smtp_port: u16,
    pub tls: TlsMode,
    pub sasl: Mechanism,
    /// Least scopes for a person's (delegated) consent.
    pub delegated_scopes: &'static [&'static str],
    /// Scopes for app-only grants (client credentials, JWT bearer).
    pub app_scopes: &'static [&'static str],
    pub grants: &'static [GrantKind],
    /// How long before expiry a token is replaced.
    pub refresh_skew: Duration,
    /// Endpoint templates; `{tenant}` is replaced by the account's tenant.
    pub authorize_url: Option<&'static str>,
    pub token_url: Option<&'static str>,
    pub device_url: Option<&'static str>,
    pub revoke_url: Option<&'static str>,
    /// How the client authenticates; `None`: from the provider's metadata.
    pub client_auth: Option<ClientAuth>,
    pub offline_request: OfflineRequest,
    pub limits: ProviderLimits,
}

pub const MICROSOFT: Preset = Preset {
    kind: ProviderKind::Microsoft,
    smtp_host: Some("smtp.office365.com"),
    smtp_port: 587,
    tls: TlsMode::Starttls,
    sasl: Mechanism::XOAuth2,
    delegated_scopes: &["https://outlook.office.com/SMTP.Send", "offline_access"],
    app_scopes: &["https://outlook.office365.com/.default"],
    grants: &[
        GrantKind::AuthorizationCode,
        GrantKind::DeviceCode,
        GrantKind::ClientCredentials,
    ],
    // Exchange Online refuses tokens close to expiry ("5.5.127 Token will
    // expire soon"), so Microsoft tokens are replaced 15 minutes early.
    refresh_skew: Duration::from_secs(15 * 60),
    authorize_url: Some("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize"),
    token_url: Some("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
    device_url: Some("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode"),
    // Microsoft identity platform has no RFC 7009 endpoint; sessions are
    // revoked through Graph (revokeSignInSessions) or the Entra portal.
    revoke_url: None,
    // Microsoft documents client_secret in the body.
    client_auth: Some(ClientAuth::Post),
    offline_request: OfflineRequest::Scope,
    limits: ProviderLimits {
        messages_per_minute: Some(30),
        messages_per_day: None,
        recipients_per_day: Some(10_000),
        recipients_per_message: Some(500),
    },
};

pub const GOOGLE: Preset = Preset {
    kind: ProviderKind::Google,
    smtp_host: Some("smtp.gmail.com"),
    smtp_port: 587,
    tls: TlsMode::Starttls,
    sasl: Mechanism::XOAuth2,
    // Google has no narrower scope that allows SMTP.
    delegated_scopes: &["https://mail.google.com/"],
    app_scopes: &["https://mail.google.com/"],
    // Google's device flow does not allow the mail scope.
    grants: &[GrantKind::AuthorizationCode, GrantKind::JwtBearer],
    refresh_skew: Duration::from_secs(5 * 60),
    authorize_url: Some("https://accounts.google.com/o/oauth2/v2/auth"),
    token_url: Some("https://oauth2.googleapis.com/token"),
    device_url: None,
    revoke_url: Some("https://oauth2.googleapis.com/revoke"),
    // Google documents client_secret in the body.
    client_auth: Some(ClientAuth::Post),
    offline_request: OfflineRequest::GoogleAccessType,
    // Gmail's limits for paid Google Workspace accounts. Workspace trial
    // accounts (500 messages a day until the first payment) and consumer
    // gmail.com accounts (about 500 a day) have lower ones, which Google
    // enforces first (550 5.4.5); the preset cannot tell the kinds apart.
    limits: ProviderLimits {
        messages_per_minute: None,
        messages_per_day: Some(2_000),
        recipients_per_day: Some(10_000),
        recipients_per_message: Some(100),
    },
};

pub const GENERIC: Preset = Preset {
    kind: ProviderKind::Generic,
    smtp_host: None,
    smtp_port: 587,
    tls: TlsMode::Starttls,
    sasl: Mechanism::OAuthBearer,
    delegated_scopes: &[],
    app_scopes: &[],
    grants: &[
        GrantKind::AuthorizationCode,
        GrantKind::DeviceCode,
        GrantKind::ClientCredentials,
        GrantKind::JwtBearer,
    ],
    refresh_skew: Duration::from_secs(5 * 60),
    authorize_url: None,
    token_url: None,
    device_url: None,
    revoke_url: None,
    client_auth: None,
    offline_request: OfflineRequest::ScopeWithConsentPrompt,
    limits: ProviderLimits {
        messages_per_minute: None,
        messages_per_day: None,
        recipients_per_day: None,
        recipients_per_message: None,
    },
};

pub fn preset(kind: ProviderKind) -> &'static Preset {
    match kind {
        ProviderKind::Microsoft => &MICROSOFT,
        ProviderKind::Google => &GOOGLE,
        ProviderKind::Generic => &GENERIC,
    }
}

impl Preset {
    /// The least scopes a grant needs with this provider.
    pub fn scopes_for(&self, grant: GrantKind) -> &'static [&'static str] {
        match grant {
            GrantKind::ClientCredentials | GrantKind::JwtBearer => self.app_scopes,
            GrantKind::AuthorizationCode | GrantKind::DeviceCode => self.delegated_scopes,
        }
    }

    /// Why a grant does not fit this provider, and what to use instead.
    pub fn grant_refusal(&self, grant: GrantKind) -> Option<String> {
        if self.grants.contains(&grant) {
            return None;
        }
        Some(match (self.kind, grant) {
            (ProviderKind::Google, GrantKind::DeviceCode) => {
                "Google does not allow the mail scope (https://mail.google.com/) in the device flow; use grant = \"authorization_code\" (run `oxirelay account login` once on a machine with a browser, or over an SSH tunnel to the loopback port), or grant = \"jwt_bearer\" with a Workspace service account".to_string()
            }
            (ProviderKind::Google, GrantKind::ClientCredentials) => {
                "Google has no client-credentials grant for Gmail; use grant = \"jwt_bearer\" with a Workspace service account and domain-wide delegation, or \"authorization_code\"".to_string()
            }
            (ProviderKind::Microsoft, GrantKind::JwtBearer) => {
                "Microsoft 365 app-only SMTP uses grant = \"client_credentials\" (with the SMTP.SendAsApp permission)".to_string()
            }
            _ => format!("the {} preset does not support the {grant} grant", self.kind),
        })
    }
}

/// Why a scope is asked for, in plain words, for the consent explanation.
pub fn explain_scope(scope: &str) -> &'static str {
    match scope {
        "https://outlook.office.com/SMTP.Send" => {
            "send mail as this mailbox over SMTP (nothing else: no reading, no contacts)"
        }
        "https://outlook.office365.com/.default" => {
            "the application permissions an administrator granted to this app (SMTP.SendAsApp)"
        }
        "offline_access" => {
            "a refresh token, so oxirelay can renew access without asking you again"
        }
        "https://mail.google.com/" => {
            "send mail over SMTP; Google has no narrower scope that allows SMTP, so this one also covers reading mail, which oxirelay never does"
        }
        "smtp.send" => "send mail over SMTP (the sandbox's scope)",
        "openid" | "email" | "profile" => "your identity; not needed to send mail",
        _ => "requested by the account's `scopes` setting",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_scopes_per_grant() {
        assert_eq!(
            MICROSOFT.scopes_for(GrantKind::ClientCredentials),
            ["https://outlook.office365.com/.default"]
        );
        assert_eq!(
            MICROSOFT.scopes_for(GrantKind::AuthorizationCode),
            ["https://outlook.office.com/SMTP.Send", "offline_access"]
        );
        assert_eq!(
            GOOGLE.scopes_for(GrantKind::AuthorizationCode),
            ["https://mail.google.com/"]
        );
    }

    #[test]
    fn google_device_flow_is_refused_with_the_alternative() {
        let reason = GOOGLE
            .grant_refusal(GrantKind::DeviceCode)
            .expect("refused");
        assert!(reason.contains("authorization_code"), "{reason}");
        assert!(MICROSOFT.grant_refusal(GrantKind::DeviceCode).is_none());
    }
}
