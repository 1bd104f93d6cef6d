//! What a person should do about an OAuth error: one place that turns
//! provider refusals into the next step.
//!
//! Microsoft's AADSTS codes are read from `error_description` (the Entra
//! error reference, login.microsoftonline.com/error, says what each means;
//! the explanations below follow it). Only this module reads them; the
//! rest of the code branches on the RFC 6749 code.

use crate::oauth::grant::{OAuthError, OAuthErrorCode};

/// What happened at the token endpoint and what to do, for a person.
/// `account` names the command to run.
pub fn explain(error: &OAuthError, account: &str) -> String {
    let said = error.summary();
    let next = next_step(error, account);
    format!("the token endpoint refused the request: {said}. {next}")
}

/// The next step for `error`, for the account named `account`.
pub fn next_step(error: &OAuthError, account: &str) -> String {
    let description = error.description.as_deref().unwrap_or_default();
    if let Some(step) = microsoft_step(description, error.grant_type, account) {
        return step;
    }
    match &error.code {
        OAuthErrorCode::InvalidGrant | OAuthErrorCode::ConsentRequired => format!(
            "The account's grant is no longer valid (consent withdrawn, password changed, refresh token expired or revoked). \
             Its mail stays queued. Consent again with `oxirelay account login {account}` \
             (or `oxirelay account login {account} --device` on a machine without a browser)."
        ),
        OAuthErrorCode::InvalidClient => format!(
            "The client id or client secret of account {account} is wrong or expired. \
             Check client_id, and create a new client secret in the provider's app registration, then update the file or variable that client_secret refers to."
        ),
        OAuthErrorCode::InvalidScope => format!(
            "The provider does not allow the requested scopes for account {account}. \
             Remove `scopes` from its config to use the preset's least scopes, or grant them in the app registration."
        ),
        OAuthErrorCode::UnauthorizedClient => format!(
            "The app registration of account {account} is not allowed to use this grant. \
             Enable the grant (for example \"Allow public client flows\" for the device flow) in the provider's app registration."
        ),
        OAuthErrorCode::AccessDenied => {
            "The person declined consent. Run the login again and choose Allow.".to_string()
        }
        OAuthErrorCode::ExpiredToken => {
            "The device code expired before it was approved. Start the login again.".to_string()
        }
        _ => format!(
            "Check the account {account} in the config and the app registration at the provider."
        ),
    }
}

/// Microsoft's AADSTS codes that users meet most, with their fixes.
/// `grant_type` is the grant that was refused, where a code means
/// different things for different grants.
fn microsoft_step(description: &str, grant_type: Option<&str>, account: &str) -> Option<String> {
    let code = description
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|word| word.starts_with("AADSTS"))?;
    let login = format!("`oxirelay account login {account}`");
    Some(match code {
        "AADSTS7000222" => format!(
            "The client secret of account {account} has expired. Create a new one under Certificates & secrets in the Entra app registration and update the value client_secret refers to."
        ),
        "AADSTS7000215" => format!(
            "The client secret of account {account} is wrong: use the secret's Value, not its Secret ID."
        ),
        // The app registration is a confidential client, so Entra wants a
        // secret from a login that has none (the device flow, a desktop
        // login): a new secret is not the fix, the client type is.
        "AADSTS7000218" => format!(
            "Entra treats the app of account {account} as a confidential client and wants a client secret, which this login does not send. \
             For the device flow or a login without a secret, open the app registration (Entra admin center > App registrations > the app > Authentication > Advanced settings) and set \"Allow public client flows\" to Yes, then run {login} again. \
             (Or give the account a client_secret, if the app is meant to be confidential.)"
        ),
        "AADSTS700016" => format!(
            "The application (client_id) of account {account} was not found in the tenant: check client_id and tenant, and that the app is registered in that tenant."
        ),
        "AADSTS65001" => format!(
            "Consent has not been granted. An administrator must grant consent for the app's permissions (API permissions > Grant admin consent), then run {login}."
        ),
        // "The provided authorization code or refresh token has expired due
        // to inactivity": which one depends on the request.
        "AADSTS70008" => match grant_type {
            Some("authorization_code") => format!(
                "The authorization code expired before it was redeemed (codes last a few minutes). Run {login} again and finish the sign-in without a pause."
            ),
            Some("refresh_token") => format!(
                "The refresh token expired from inactivity (Microsoft refresh tokens end after 90 days unused). Its mail stays queued. Run {login}."
            ),
            _ => format!(
                "The authorization code or the refresh token expired due to inactivity: during a login, the code was not redeemed in time; otherwise the refresh token went unused for 90 days. Run {login} again."
            ),
        },
        "AADSTS700082" => format!(
            "The refresh token expired from inactivity (Microsoft refresh tokens end after 90 days unused). Its mail stays queued. Run {login}."
        ),
        "AADSTS50173" => format!(
            "The grant was revoked: an administrator revoked the user's sessions or refresh tokens, or the user's password was changed or reset. Its mail stays queued. Run {login}."
        ),
        "AADSTS50076" | "AADSTS50079" => format!(
            "New sign-in requirements apply to the user (multi-factor authentication, or registering for it). Run {login} and complete them."
        ),
        "AADSTS53003" => format!(
            "A Conditional Access policy blocks token issuance for account {account}; a new login will not help. \
             An administrator must change the policy (Entra admin center > Protection > Conditional Access; the user's sign-in log names the policy) to allow this app, location or device. Its mail stays queued meanwhile."
        ),
        "AADSTS70043" => format!(
            "A Conditional Access sign-in frequency policy requires the user to sign in again; the refresh token is no longer accepted. Run {login}. \
             (It will recur at the policy's interval unless an administrator exempts this app.)"
        ),
        "AADSTS54005" => format!(
            "The authorization code was already redeemed (a code is good for one exchange). Run {login} again; if this repeats, something else used the code first (a second browser tab, a link scanner)."
        ),
        "AADSTS900144" => {
            let parameter = missing_parameter(description).unwrap_or("(unnamed)");
            if parameter == "scope" {
                format!(
                    "Microsoft refused a request without the parameter 'scope'. Check `scopes` of account {account} (remove it to use the preset's scopes); Microsoft wants a scope on every token request."
                )
            } else {
                format!(
                    "Microsoft refused a request without the parameter '{parameter}'. Check tenant, client_id and the endpoint URLs of account {account}; if they are right, report this message as an oxirelay bug."
                )
            }
        }
        "AADSTS90002" => format!(
            "The tenant of account {account} was not found: check tenant (e.g. contoso.onmicrosoft.com or the tenant id)."
        ),
        _ => return None,
    })
}

/// "The request body must contain the following parameter: 'scope'." → scope
fn missing_parameter(description: &str) -> Option<&str> {
    let after = description.split("following parameter:").nth(1)?;
    let start = after.find('\'')? + 1;
    let end = start + after[start..].find('\'')?;
    Some(&after[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::grant::OAuthErrorCode;

    fn error(code: &str, description: Option<&str>) -> OAuthError {
        OAuthError {
            code: OAuthErrorCode::parse(code),
            code_text: code.to_string(),
            description: description.map(str::to_string),
            http_status: 400,
            grant_type: None,
        }
    }

    /// The next step for a refusal of `grant_type` with `description`.
    fn step(code: &str, description: &str, grant_type: Option<&'static str>) -> String {
        let mut refusal = error(code, Some(description));
        refusal.grant_type = grant_type;
        next_step(&refusal, "office")
    }

    fn assert_says(step: &str, expected: &[&str]) {
        for phrase in expected {
            assert!(step.contains(phrase), "{phrase:?} missing from: {step}");
        }
    }

    #[test]
    fn every_common_error_names_the_next_step() {
        let cases = [
            (
                error("invalid_grant", None),
                "oxirelay account login office",
            ),
            (error("invalid_client", None), "client secret"),
            (error("invalid_scope", None), "least scopes"),
            (error("unauthorized_client", None), "app registration"),
            (
                error("consent_required", None),
                "oxirelay account login office",
            ),
            (
                error("interaction_required", None),
                "oxirelay account login office",
            ),
            (error("access_denied", None), "Allow"),
            (error("expired_token", None), "again"),
        ];
        for (error, expected) in cases {
            let step = next_step(&error, "office");
            assert!(step.contains(expected), "{}: {step}", error.code_text);
        }
    }

    #[test]
    fn aadsts7000222_expired_secret() {
        let step = step(
            "invalid_client",
            "AADSTS7000222: The provided client secret keys for app '…' are expired.",
            Some("client_credentials"),
        );
        assert_says(&step, &["has expired", "Certificates & secrets"]);
    }

    #[test]
    fn aadsts7000215_wrong_secret() {
        let step = step(
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
            Some("client_credentials"),
        );
        assert_says(&step, &["Value, not its Secret ID"]);
    }

    #[test]
    fn aadsts7000218_public_client_flows_not_a_new_secret() {
        let step = step(
            "invalid_client",
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            Some("urn:ietf:params:oauth:grant-type:device_code"),
        );
        assert_says(
            &step,
            &[
                "Allow public client flows",
                "Yes",
                "Authentication",
                "oxirelay account login office",
            ],
        );
        assert!(!step.contains("create a new client secret"), "{step}");
    }

    #[test]
    fn aadsts700016_unknown_application() {
        let step = step(
            "unauthorized_client",
            "AADSTS700016: Application with identifier '…' was not found in the directory",
            None,
        );
        assert_says(&step, &["not found in the tenant"]);
    }

    #[test]
    fn aadsts65001_admin_consent() {
        let step = step(
            "invalid_grant",
            "AADSTS65001: The user or administrator has not consented",
            Some("refresh_token"),
        );
        assert_says(&step, &["Grant admin consent"]);
    }

    #[test]
    fn aadsts70008_code_or_refresh_token_by_the_request() {
        let description = "AADSTS70008: The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.";
        let code = step("invalid_grant", description, Some("authorization_code"));
        assert_says(&code, &["authorization code expired", "login office"]);
        assert!(!code.contains("90 days"), "{code}");
        let refresh = step("invalid_grant", description, Some("refresh_token"));
        assert_says(
            &refresh,
            &["refresh token expired", "90 days", "login office"],
        );
        let unknown = step("invalid_grant", description, None);
        assert_says(&unknown, &["authorization code", "refresh token"]);
    }

    #[test]
    fn aadsts700082_refresh_token_inactivity() {
        let step = step(
            "invalid_grant",
            "AADSTS700082: The refresh token has expired due to inactivity.",
            Some("refresh_token"),
        );
        assert_says(&step, &["90 days", "login office"]);
    }

    #[test]
    fn aadsts50173_grant_revoked_by_admin_or_password_reset() {
        let step = step(
            "invalid_grant",
            "AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth token is needed.",
            Some("refresh_token"),
        );
        assert_says(
            &step,
            &[
                "revoked",
                "administrator",
                "password was changed or reset",
                "login office",
            ],
        );
    }

    #[test]
    fn aadsts50076_mfa() {
        let step = step(
            "invalid_grant",
            "AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication",
            Some("refresh_token"),
        );
        assert_says(&step, &["multi-factor", "login office"]);
    }

    #[test]
    fn aadsts53003_conditional_access_needs_the_admin() {
        let step = step(
            "interaction_required",
            "AADSTS53003: Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.",
            Some("refresh_token"),
        );
        assert_says(
            &step,
            &[
                "Conditional Access",
                "a new login will not help",
                "administrator must change the policy",
            ],
        );
        assert!(!step.contains("`oxirelay account login"), "{step}");
    }

    #[test]
    fn aadsts70043_sign_in_frequency() {
        let step = step(
            "invalid_grant",
            "AADSTS70043: The refresh token has expired or is invalid due to sign-in frequency checks by conditional access.",
            Some("refresh_token"),
        );
        assert_says(&step, &["sign-in frequency", "login office"]);
    }

    #[test]
    fn aadsts54005_code_already_redeemed() {
        let step = step(
            "invalid_grant",
            "AADSTS54005: OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            Some("authorization_code"),
        );
        assert_says(&step, &["already redeemed", "login office"]);
    }

    #[test]
    fn aadsts900144_names_the_missing_parameter() {
        let scope = step(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'scope'.",
            Some("refresh_token"),
        );
        assert_says(&scope, &["'scope'", "`scopes` of account office"]);
        let other = step(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
            Some("refresh_token"),
        );
        assert_says(&other, &["'grant_type'", "oxirelay bug"]);
    }

    #[test]
    fn aadsts90002_unknown_tenant() {
        let step = step(
            "invalid_request",
            "AADSTS90002: Tenant 'contoso' not found.",
            None,
        );
        assert_says(&step, &["tenant"]);
    }

    #[test]
    fn explain_says_what_the_server_said_then_what_to_do() {
        let text = explain(
            &error("invalid_grant", Some("AADSTS50173: revoked\r\nTrace ID: x")),
            "office",
        );
        assert!(
            text.starts_with(
                "the token endpoint refused the request: invalid_grant (AADSTS50173: revoked)"
            ),
            "{text}"
        );
        assert!(!text.contains("Trace ID"), "{text}");
    }
}
