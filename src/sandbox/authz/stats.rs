//! Counters of what the authorization server was asked, published through a
//! `tokio::sync::watch` channel so tests and the CLI can wait for a
//! condition ("one token request arrived") without polling.

use serde::Serialize;
use std::time::Duration;
use tokio::sync::watch;

/// The grant named by a `/token` request's `grant_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    ClientCredentials,
    AuthorizationCode,
    RefreshToken,
    DeviceCode,
    /// Missing or unsupported `grant_type`.
    Other,
}

impl GrantKind {
    pub const DEVICE_CODE_URN: &'static str = "urn:ietf:params:oauth:grant-type:device_code";

    pub fn from_grant_type(grant_type: Option<&str>) -> Self {
        match grant_type {
            Some("client_credentials") => GrantKind::ClientCredentials,
            Some("authorization_code") => GrantKind::AuthorizationCode,
            Some("refresh_token") => GrantKind::RefreshToken,
            Some(Self::DEVICE_CODE_URN) => GrantKind::DeviceCode,
            _ => GrantKind::Other,
        }
    }
}

/// Requests to `/token` per grant type (every request, failed ones too).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GrantCounts {
    pub client_credentials: u64,
    pub authorization_code: u64,
    pub refresh_token: u64,
    pub device_code: u64,
    pub other: u64,
}

impl GrantCounts {
    pub fn get(&self, kind: GrantKind) -> u64 {
        match kind {
            GrantKind::ClientCredentials => self.client_credentials,
            GrantKind::AuthorizationCode => self.authorization_code,
            GrantKind::RefreshToken => self.refresh_token,
            GrantKind::DeviceCode => self.device_code,
            GrantKind::Other => self.other,
        }
    }

    fn slot(&mut self, kind: GrantKind) -> &mut u64 {
        match kind {
            GrantKind::ClientCredentials => &mut self.client_credentials,
            GrantKind::AuthorizationCode => &mut self.authorization_code,
            GrantKind::RefreshToken => &mut self.refresh_token,
            GrantKind::DeviceCode => &mut self.device_code,
            GrantKind::Other => &mut self.other,
        }
    }
}

/// A snapshot of the server's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuthStats {
    /// All `/token` requests, including failed and fault-injected ones.
    pub token_requests: u64,
    pub token_requests_by_grant: GrantCounts,
    /// `/token` requests answered with an error (injected faults included).
    pub token_failures: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// `/revoke` requests.
    pub revocations: u64,
    /// Refresh-token families revoked, for any reason (revoke, reuse, withdrawn consent).
    pub families_revoked: u64,
    /// Detected reuses of a rotated refresh token.
    pub refresh_token_reuses: u64,
    /// `/introspect` requests.
    pub introspections: u64,
    /// `/jwks` requests: how often validators fetched keys.
    pub jwks_fetches: u64,
    /// `/device_authorization` requests.
    pub device_authorizations: u64,
    /// Authorization codes issued.
    pub authorization_codes: u64,
}

/// The writing end, held by the server.
#[derive(Debug)]
pub(crate) struct StatsRecorder {
    sender: watch::Sender<AuthStats>,
}

impl StatsRecorder {
    pub(crate) fn new() -> Self {
        StatsRecorder {
            sender: watch::Sender::new(AuthStats::default()),
        }
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut AuthStats)) {
        self.sender.send_modify(change);
    }

    pub(crate) fn token_request(&self, kind: GrantKind) {
        self.update(|s| {
            s.token_requests += 1;
            *s.token_requests_by_grant.slot(kind) += 1;
        });
    }

    pub(crate) fn snapshot(&self) -> AuthStats {
        self.sender.borrow().clone()
    }

    /// Waits until `condition` holds for the stats, or `timeout` passes.
    pub(crate) async fn wait_until(
        &self,
        condition: impl FnMut(&AuthStats) -> bool,
        timeout: Duration,
    ) -> Result<AuthStats, WaitTimeout> {
        let mut receiver = self.sender.subscribe();
        match tokio::time::timeout(timeout, receiver.wait_for(condition)).await {
            Ok(Ok(stats)) => Ok(stats.clone()),
            // The sender lives as long as the server; Err means it is gone,
            // which the caller sees as the condition never coming true.
            Ok(Err(_)) | Err(_) => Err(WaitTimeout {
                timeout,
                last: self.snapshot(),
            }),
        }
    }
}

/// The awaited condition did not come true in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "the sandbox authorization server did not reach the awaited state within {timeout:?}; its counters are {last:?}"
)]
pub struct WaitTimeout {
    pub timeout: Duration,
    pub last: AuthStats,
}
