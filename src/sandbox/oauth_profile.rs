//! The OAuth side of each provider profile, as data: which scopes the
//! authorization server offers, which ones an account asks for, and which
//! permission the SMTP server wants to see in a token. The token's shape
//! is [`super::ProfileName::token_shape`].
//!
//! The scope names are the providers' own, so a config written against the
//! sandbox reads like one for the real provider:
//!
//! - `microsoft`: delegated access asks for
//!   `https://outlook.office.com/SMTP.Send offline_access` and the token's
//!   `scp` says `SMTP.Send`; app-only asks for
//!   `https://outlook.office365.com/.default` and the token's `roles` say
//!   `SMTP.SendAsApp`. Exchange takes either.
//! - `google`: `https://mail.google.com/`, checked by introspection. Refresh
//!   tokens come from `offline_access` as in the other profiles (Google's
//!   own `access_type=offline` is a matter of the relay's google preset).
//! - `strict`: the sandbox's `smtp.send`.

use super::ProfileName;

/// One profile's scopes and the permission its SMTP server checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OAuthProfile {
    /// What the authorization server offers (`scopes_supported`).
    pub offered_scopes: &'static [&'static str],
    /// What an account asks for when a person consents.
    pub delegated_scopes: &'static [&'static str],
    /// What an app-only (client credentials) account asks for.
    pub app_scopes: &'static [&'static str],
    /// The permission the SMTP server requires among a token's scopes...
    pub smtp_scope: &'static str,
    /// ...or among an app-only token's roles, for providers that have them.
    pub smtp_app_role: Option<&'static str>,
    /// The SASL mechanism accounts use with this provider.
    pub sasl: &'static str,
}

impl OAuthProfile {
    /// Whether a token with these scopes and roles may send over SMTP.
    pub fn grants_smtp(&self, scopes: &[String], roles: &[String]) -> bool {
        scopes.iter().any(|s| s == self.smtp_scope)
            || self
                .smtp_app_role
                .is_some_and(|role| roles.iter().any(|r| r == role))
    }

    /// The scopes an account with `grant` asks for.
    pub fn scopes_for(&self, grant: &str) -> &'static [&'static str] {
        if grant == "client_credentials" {
            self.app_scopes
        } else {
            self.delegated_scopes
        }
    }
}

/// The sending APIs' scopes, offered by every profile beside its SMTP one
/// (the sandbox's APIs check them; see `http_api`).
const GRAPH_MAIL_SEND: &str = "https://graph.microsoft.com/Mail.Send";
const GRAPH_DEFAULT: &str = "https://graph.microsoft.com/.default";
const GMAIL_SEND: &str = "https://www.googleapis.com/auth/gmail.send";

const STRICT: OAuthProfile = OAuthProfile {
    offered_scopes: &[
        super::SMTP_SCOPE,
        super::authz::OFFLINE_ACCESS,
        GRAPH_MAIL_SEND,
        GRAPH_DEFAULT,
        GMAIL_SEND,
    ],
    delegated_scopes: &[super::SMTP_SCOPE, super::authz::OFFLINE_ACCESS],
    app_scopes: &[super::SMTP_SCOPE],
    smtp_scope: super::SMTP_SCOPE,
    smtp_app_role: None,
    sasl: "oauthbearer",
};

const MICROSOFT: OAuthProfile = OAuthProfile {
    offered_scopes: &[
        "https://outlook.office.com/SMTP.Send",
        "https://outlook.office365.com/.default",
        super::authz::OFFLINE_ACCESS,
        GRAPH_MAIL_SEND,
        GRAPH_DEFAULT,
    ],
    delegated_scopes: &[
        "https://outlook.office.com/SMTP.Send",
        super::authz::OFFLINE_ACCESS,
    ],
    app_scopes: &["https://outlook.office365.com/.default"],
    smtp_scope: "SMTP.Send",
    smtp_app_role: Some(super::authz::SMTP_SEND_AS_APP),
    sasl: "xoauth2",
};

const GOOGLE: OAuthProfile = OAuthProfile {
    offered_scopes: &[
        "https://mail.google.com/",
        super::authz::OFFLINE_ACCESS,
        GMAIL_SEND,
    ],
    delegated_scopes: &["https://mail.google.com/", super::authz::OFFLINE_ACCESS],
    app_scopes: &["https://mail.google.com/"],
    smtp_scope: "https://mail.google.com/",
    smtp_app_role: None,
    sasl: "xoauth2",
};

pub fn oauth_profile(profile: ProfileName) -> &'static OAuthProfile {
    match profile {
        ProfileName::Strict => &STRICT,
        ProfileName::Microsoft => &MICROSOFT,
        ProfileName::Google => &GOOGLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exchange_takes_the_delegated_scope_or_the_app_role() {
        let ms = oauth_profile(ProfileName::Microsoft);
        assert!(ms.grants_smtp(&list(&["SMTP.Send"]), &[]));
        assert!(ms.grants_smtp(&[], &list(&["SMTP.SendAsApp"])));
        assert!(
            !ms.grants_smtp(&list(&["SMTP.SendAsApp"]), &[]),
            "a role is not a scope"
        );
        assert!(!ms.grants_smtp(&list(&["Mail.Read"]), &list(&["Mail.Send"])));
    }

    #[test]
    fn only_microsoft_has_app_roles() {
        let strict = oauth_profile(ProfileName::Strict);
        assert!(strict.grants_smtp(&list(&["smtp.send"]), &[]));
        assert!(!strict.grants_smtp(&[], &list(&["smtp.send"])));
        assert_eq!(
            oauth_profile(ProfileName::Google).scopes_for("client_credentials"),
            ["https://mail.google.com/"]
        );
    }
}
