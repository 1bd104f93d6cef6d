//! What a person should do about an OAuth error: one place that turns
//! provider refusals into the next step.

use crate::oauth::grant::{OAuthError, OAuthErrorCode};

/// The next step for `error`, for the account named `account`.
pub fn next_step(error: &OAuthError, account: &str) -> String {
    let description = error.description.as_deref().unwrap_or_default();
    if let Some(step) = microsoft_step(description, account) {
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
fn microsoft_step(description: &str, account: &str) -> Option<String> {
    let code = description
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|word| word.starts_with("AADSTS"))?;
    Some(match code {
        "AADSTS7000222" => format!(
            "The client secret of account {account} has expired. Create a new one under Certificates & secrets in the Entra app registration and update the value client_secret refers to."
        ),
        "AADSTS7000215" => format!(
            "The client secret of account {account} is wrong: use the secret's Value, not its Secret ID."
        ),
        "AADSTS700016" => format!(
            "The application (client_id) of account {account} was not found in the tenant: check client_id and tenant, and that the app is registered in that tenant."
        ),
        "AADSTS65001" => format!(
            "Consent has not been granted. An administrator must grant consent for the app's permissions (API permissions > Grant admin consent), then run `oxirelay account login {account}`."
        ),
        "AADSTS70008" | "AADSTS700082" => format!(
            "The refresh token expired (Microsoft refresh tokens die after 90 days without use). Run `oxirelay account login {account}`."
        ),
        "AADSTS50173" | "AADSTS50076" | "AADSTS50079" => format!(
            "The user's password changed or new sign-in requirements apply. Run `oxirelay account login {account}`."
        ),
        "AADSTS90002" => format!(
            "The tenant of account {account} was not found: check tenant (e.g. contoso.onmicrosoft.com or the tenant id)."
        ),
        _ => return None,
    })
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
    fn microsoft_aadsts_codes_are_recognised() {
        let cases = [
            (
                "invalid_client",
                "AADSTS7000222: The provided client secret keys for app '…' are expired.",
                "has expired",
            ),
            (
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
                "Value, not its Secret ID",
            ),
            (
                "unauthorized_client",
                "AADSTS700016: Application with identifier '…' was not found in the directory",
                "not found in the tenant",
            ),
            (
                "invalid_grant",
                "AADSTS65001: The user or administrator has not consented",
                "Grant admin consent",
            ),
            (
                "invalid_grant",
                "AADSTS700082: The refresh token has expired due to inactivity.",
                "90 days",
            ),
            (
                "invalid_grant",
                "AADSTS50173: The provided grant has expired due to it being revoked",
                "password changed",
            ),
            (
                "invalid_request",
                "AADSTS90002: Tenant 'contoso' not found.",
                "tenant",
            ),
        ];
        for (code, description, expected) in cases {
            let step = next_step(&error(code, Some(description)), "office");
            assert!(step.contains(expected), "{description}: {step}");
        }
    }
}
