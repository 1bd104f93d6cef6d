//! OAuth 2.0 error codes as data.

use serde::Serialize;

/// The registered error codes (RFC 6749 section 5.2, RFC 8628 section 3.5,
/// RFC 7009, OpenID Connect), shared by the client that reads them and the sandbox
/// server that sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    AuthorizationPending,
    SlowDown,
    AccessDenied,
    ExpiredToken,
    ServerError,
    TemporarilyUnavailable,
    /// RFC 7009 section 2.2.1: the server does not handle this kind of
    /// token at this endpoint (some say so for JWTs at introspection).
    UnsupportedTokenType,
    /// `consent_required` or `interaction_required` (OpenID Connect).
    ConsentRequired,
    /// A code outside the registry; the raw text travels beside it.
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::AuthorizationPending => "authorization_pending",
            ErrorCode::SlowDown => "slow_down",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::ExpiredToken => "expired_token",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            ErrorCode::UnsupportedTokenType => "unsupported_token_type",
            ErrorCode::ConsentRequired => "consent_required",
            ErrorCode::Unknown => "unknown",
        }
    }

    pub fn parse(code: &str) -> Self {
        match code {
            "invalid_request" => ErrorCode::InvalidRequest,
            "invalid_client" => ErrorCode::InvalidClient,
            "invalid_grant" => ErrorCode::InvalidGrant,
            "unauthorized_client" => ErrorCode::UnauthorizedClient,
            "unsupported_grant_type" => ErrorCode::UnsupportedGrantType,
            "invalid_scope" => ErrorCode::InvalidScope,
            "authorization_pending" => ErrorCode::AuthorizationPending,
            "slow_down" => ErrorCode::SlowDown,
            "access_denied" => ErrorCode::AccessDenied,
            "expired_token" => ErrorCode::ExpiredToken,
            "server_error" => ErrorCode::ServerError,
            "temporarily_unavailable" => ErrorCode::TemporarilyUnavailable,
            "unsupported_token_type" => ErrorCode::UnsupportedTokenType,
            "consent_required" | "interaction_required" => ErrorCode::ConsentRequired,
            _ => ErrorCode::Unknown,
        }
    }
}
