//! The device authorization grant (RFC 8628) for machines without a
//! browser: show a code, let a person approve it on another device, poll.

use crate::oauth::grant::{
    GrantRequest, OAuthErrorCode, TokenEndpoint, TokenError, TokenResponse, describe_reqwest_error,
    parse_token_response,
};
use crate::secret::Secret;
use serde::Deserialize;
use std::time::{Duration, Instant};
use url::Url;

/// RFC 8628 section 3.5: on `slow_down` the interval grows by 5 seconds.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Used when the server names no interval (RFC 8628 section 3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("the device authorization request failed: {0}")]
    Start(TokenError),
    #[error("the person declined on the verification page; run the login again and choose Allow")]
    Denied,
    #[error(
        "the code expired before anyone approved it; run the login again and approve within {0}s"
    )]
    Expired(u64),
    #[error("polling for the token failed: {0}")]
    Poll(TokenError),
}

#[derive(Debug)]
pub struct DeviceAuthorization {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
}

#[derive(Deserialize)]
struct RawDeviceAuthorization {
    device_code: String,
    user_code: String,
    // Google's older endpoint says verification_url.
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

/// Asks for a device code and user code. The client authenticates as at
/// the token endpoint (RFC 8628 section 3.1).
pub async fn start(
    http: &reqwest::Client,
    device_url: &Url,
    endpoint: &TokenEndpoint,
    scopes: &[String],
) -> Result<DeviceAuthorization, DeviceError> {
    crate::oauth::account::require_secure_url(device_url, endpoint.insecure_loopback)
        .map_err(|e| DeviceError::Start(TokenError::Insecure(e)))?;
    let mut form: Vec<(&'static str, String)> = vec![("scope", scopes.join(" "))];
    let request = endpoint.authenticate(http.post(device_url.clone()), &mut form);
    let transport = |e: reqwest::Error| {
        DeviceError::Start(TokenError::Transport {
            url: device_url.to_string(),
            reason: describe_reqwest_error(&e),
        })
    };
    let response = request
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status().as_u16();
    let body = crate::oauth::body::read_bounded(response, crate::oauth::body::MAX_OAUTH_RESPONSE)
        .await
        .map_err(|e| {
            DeviceError::Start(TokenError::Transport {
                url: device_url.to_string(),
                reason: e.to_string(),
            })
        })?;
    if !(200..300).contains(&status) {
        // Same error format as the token endpoint.
        return Err(DeviceError::Start(
            parse_token_response(device_url.as_str(), status, &body)
                .err()
                .unwrap_or_else(|| TokenError::Malformed {
                    url: device_url.to_string(),
                    reason: format!("HTTP {status}"),
                }),
        ));
    }
    let raw: RawDeviceAuthorization = serde_json::from_slice(&body).map_err(|e| {
        DeviceError::Start(TokenError::Malformed {
            url: device_url.to_string(),
            reason: e.to_string(),
        })
    })?;
    Ok(DeviceAuthorization {
        device_code: Secret::new(raw.device_code),
        user_code: raw.user_code,
        verification_uri: raw.verification_uri,
        verification_uri_complete: raw.verification_uri_complete,
        expires_in: Duration::from_secs(raw.expires_in),
        interval: raw
            .interval
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_INTERVAL),
    })
}

/// What happened at each poll, for progress output and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    Pending,
    SlowDown { new_interval: Duration },
}

/// Polls the token endpoint until the person approves, declines, or the code
/// expires. `on_poll` sees every answer that is not final.
pub async fn poll(
    http: &reqwest::Client,
    endpoint: &TokenEndpoint,
    authorization: &DeviceAuthorization,
    mut on_poll: impl FnMut(PollOutcome),
) -> Result<TokenResponse, DeviceError> {
    let deadline = Instant::now() + authorization.expires_in;
    let mut interval = authorization.interval;
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() >= deadline {
            return Err(DeviceError::Expired(authorization.expires_in.as_secs()));
        }
        let grant = GrantRequest::DeviceCode {
            device_code: &authorization.device_code,
        };
        match endpoint.request(http, &grant).await {
            Ok(response) => return Ok(response),
            Err(error) => match error.oauth_error().map(|e| &e.code) {
                Some(OAuthErrorCode::AuthorizationPending) => on_poll(PollOutcome::Pending),
                Some(OAuthErrorCode::SlowDown) => {
                    interval += SLOW_DOWN_STEP;
                    on_poll(PollOutcome::SlowDown {
                        new_interval: interval,
                    });
                }
                Some(OAuthErrorCode::AccessDenied) => return Err(DeviceError::Denied),
                Some(OAuthErrorCode::ExpiredToken) => {
                    return Err(DeviceError::Expired(authorization.expires_in.as_secs()));
                }
                // A network blip while waiting for a person is not fatal.
                _ if error.is_transient() => on_poll(PollOutcome::Pending),
                _ => return Err(DeviceError::Poll(error)),
            },
        }
    }
}
