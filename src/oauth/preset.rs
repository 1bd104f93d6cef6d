//! Provider presets: one table of facts about Microsoft 365, Google and
//! generic OAuth2 SMTP providers that the rest of the code reads, instead of
//! branches scattered through it.

use crate::config::{TlsMode, Transport};
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

/// An HTTP sending API as data, beside the SMTP facts of [`Preset`]: where
/// it is, which scopes it sends with, how large a request may be.
#[derive(Debug, Clone, Copy)]
pub struct ApiPreset {
    pub transport: Transport,
    /// What people call it, for messages.
    pub title: &'static str,
    /// The providers whose accounts may use it (`generic`: the sandbox, or
    /// a private deployment, with `api_url`).
    pub providers: &'static [ProviderKind],
    /// The base URL the request paths are appended to.
    pub base_url: &'static str,
    /// Least scopes for a person's (delegated) consent.
    pub delegated_scopes: &'static [&'static str],
    /// Scopes for app-only grants (client credentials, JWT bearer).
    pub app_scopes: &'static [&'static str],
    /// The permission an administrator grants, as the provider names it.
    pub permission: &'static str,
    /// The largest request the API takes, in bytes (the message as the
    /// request carries it: base64 for Graph, raw for Gmail's upload).
    pub max_request_bytes: usize,
    /// Concurrent requests per mailbox the API allows before it throttles.
    pub max_concurrent_per_mailbox: usize,
}

/// Microsoft Graph `sendMail`: the delegated `Mail.Send` permission, or the
/// application one through `.default` (client credentials ask for a
/// resource's `.default`, never for a named permission).
pub const GRAPH: ApiPreset = ApiPreset {
    transport: Transport::Graph,
    title: "Microsoft Graph",
    providers: &[ProviderKind::Microsoft, ProviderKind::Generic],
    base_url: "https://graph.microsoft.com",
    delegated_scopes: &["https://graph.microsoft.com/Mail.Send", "offline_access"],
    app_scopes: &["https://graph.microsoft.com/.default"],
    permission: "Mail.Send",
    // Graph refuses requests over 4 MB (the base64 MIME body included).
    max_request_bytes: 4 * 1024 * 1024,
    // Exchange Online allows 4 concurrent requests per mailbox and app;
    // a fifth is answered 429 ("ApplicationThrottled").
    max_concurrent_per_mailbox: 4,
};

/// The Gmail API `users.messages.send`: `gmail.send` alone, the narrowest
/// scope that sends (SMTP needs the full-mailbox `https://mail.google.com/`).
pub const GMAIL_API: ApiPreset = ApiPreset {
    transport: Transport::GmailApi,
    title: "the Gmail API",
    providers: &[ProviderKind::Google, ProviderKind::Generic],
    base_url: "https://gmail.googleapis.com",
    delegated_scopes: &["https://www.googleapis.com/auth/gmail.send"],
    app_scopes: &["https://www.googleapis.com/auth/gmail.send"],
    permission: "https://www.googleapis.com/auth/gmail.send",
    // Gmail takes messages up to 35 MB through the media upload endpoint.
    max_request_bytes: 35 * 1024 * 1024,
    // Google documents no per-mailbox cap; its per-user rate limit answers
    // 429 first. Four keeps one account from taking every worker.
    max_concurrent_per_mailbox: 4,
};

/// The HTTP API of `transport`, if it is one.
pub fn api_preset(transport: Transport) -> Option<&'static ApiPreset> {
    match transport {
        Transport::Smtp => None,
        Transport::Graph => Some(&GRAPH),
        Transport::GmailApi => Some(&GMAIL_API),
    }
}

impl ApiPreset {
    /// The least scopes a grant needs with this API.
    pub fn scopes_for(&self, grant: GrantKind) -> &'static [&'static str] {
        match grant {
            GrantKind::ClientCredentials | GrantKind::JwtBearer => self.app_scopes,
            GrantKind::AuthorizationCode | GrantKind::DeviceCode => self.delegated_scopes,
        }
    }

    /// Why `scopes` (the account's `scopes`) do not fit this API with
    /// `grant`, and what to ask for instead. `None`: they fit.
    pub fn scope_refusal(
        &self,
        provider: ProviderKind,
        grant: GrantKind,
        scopes: &[String],
        smtp_too: bool,
    ) -> Option<String> {
        let needed = self.scopes_for(grant);
        let sending: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|s| *s != "offline_access")
            .collect();
        let wanted = needed.join(" ");
        let transport = self.transport;
        // With `large_messages = "smtp"` the account's token must open SMTP
        // sessions too: the SMTP scope is then asked for on purpose.
        if let Some(smtp_only) = scopes.iter().find(|s| is_smtp_scope(s) && !smtp_too) {
            return Some(format!(
                "scope {smtp_only} is for SMTP; transport = \"{transport}\" ({}) sends with scopes = [{}] instead{}",
                self.title,
                quoted(needed),
                if self.transport == Transport::GmailApi {
                    " (gmail.send only sends: the least scope)"
                } else {
                    ""
                }
            ));
        }
        let has = |s: &str| scopes.iter().any(|x| x == s);
        // The Microsoft identity platform refuses a named permission in a
        // client-credentials request: only `{resource}/.default`.
        let fits = if provider == ProviderKind::Microsoft {
            sending.iter().all(|s| has(s))
        } else {
            GRAPH
                .delegated_scopes
                .iter()
                .chain(GRAPH.app_scopes)
                .chain(GMAIL_API.delegated_scopes)
                .filter(|s| **s != "offline_access")
                .filter(|s| self.owns_scope(s))
                .any(|s| has(s))
        };
        (!fits).then(|| {
            format!(
                "transport = \"{transport}\" ({}) needs the scope {wanted} for grant = \"{grant}\" (scopes = [{}]); the account asks for {}",
                self.title,
                quoted(needed),
                if scopes.is_empty() { "none".to_string() } else { scopes.join(" ") }
            )
        })
    }

    fn owns_scope(&self, scope: &str) -> bool {
        match self.transport {
            Transport::Graph => scope.starts_with("https://graph.microsoft.com/"),
            Transport::GmailApi => scope.starts_with("https://www.googleapis.com/auth/gmail."),
            Transport::Smtp => false,
        }
    }
}

/// Scopes that grant SMTP and nothing an HTTP API takes in their place
/// (Google's full-mailbox scope also sends through the Gmail API, but it
/// is far wider than `gmail.send`: least scope refuses it there).
fn is_smtp_scope(scope: &str) -> bool {
    matches!(
        scope,
        "https://outlook.office.com/SMTP.Send"
            | "https://outlook.office365.com/.default"
            | "https://mail.google.com/"
            | "smtp.send"
    )
}

fn quoted(scopes: &[&str]) -> String {
    scopes
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

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
        "https://graph.microsoft.com/Mail.Send" => {
            "send mail as this mailbox through Microsoft Graph (nothing else: no reading)"
        }
        "https://graph.microsoft.com/.default" => {
            "the Graph application permissions an administrator granted to this app (Mail.Send)"
        }
        "https://www.googleapis.com/auth/gmail.send" => {
            "send mail through the Gmail API, and nothing else: no reading, no settings"
        }
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
    fn api_transports_refuse_smtp_scopes_with_the_alternative() {
        let smtp = vec!["https://mail.google.com/".to_string()];
        let reason = GMAIL_API
            .scope_refusal(
                ProviderKind::Google,
                GrantKind::AuthorizationCode,
                &smtp,
                false,
            )
            .expect("refused");
        assert!(
            reason.contains("https://www.googleapis.com/auth/gmail.send"),
            "{reason}"
        );
        let send = vec!["https://www.googleapis.com/auth/gmail.send".to_string()];
        assert!(
            GMAIL_API
                .scope_refusal(
                    ProviderKind::Google,
                    GrantKind::AuthorizationCode,
                    &send,
                    false
                )
                .is_none()
        );
        let named = vec!["https://graph.microsoft.com/Mail.Send".to_string()];
        let reason = GRAPH
            .scope_refusal(
                ProviderKind::Microsoft,
                GrantKind::ClientCredentials,
                &named,
                false,
            )
            .expect("app-only needs .default");
        assert!(
            reason.contains("https://graph.microsoft.com/.default"),
            "{reason}"
        );
        let smtp = vec!["smtp.send".to_string()];
        let reason = GRAPH
            .scope_refusal(
                ProviderKind::Generic,
                GrantKind::ClientCredentials,
                &smtp,
                false,
            )
            .expect("SMTP scope");
        assert!(reason.contains("is for SMTP"), "{reason}");
        assert!(
            GRAPH
                .scope_refusal(
                    ProviderKind::Generic,
                    GrantKind::ClientCredentials,
                    &named,
                    false
                )
                .is_none()
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
