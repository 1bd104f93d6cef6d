//! The sandbox OAuth2 authorization server: a real one, on loopback HTTP,
//! for `oxirelay sandbox`, `oxirelay demo` and the tests.
//!
//! It issues ES256 JWT access tokens (signed with [`crate::oauth::jwt`],
//! verifiable with [`crate::oauth::validate`]) through the client
//! credentials, authorization code + PKCE, device code and refresh grants;
//! rotates refresh tokens and revokes a whole grant when a rotated one is
//! reused (RFC 9700); serves RFC 8414 metadata, JWKS, RFC 7009 revocation
//! and RFC 7662 introspection; and can inject faults at the token endpoint.
//!
//! Written by hand rather than with an OAuth server crate because its point
//! is to be inspectable and steerable (counters, faults, programmatic
//! approval) in ways general servers are not.
//!
//! Layout: `ledger` holds state and rules (pure), `engine` the endpoint
//! operations (no HTTP), `backchannel` / `frontchannel` / `metadata` the
//! handlers, `server` the lifecycle.

mod backchannel;
mod client_auth;
mod config;
mod consent;
mod engine;
mod faults;
mod frontchannel;
mod html;
mod ledger;
mod metadata;
mod oauth_error;
mod params;
mod server;
mod stats;

pub use config::{
    AuthServerConfig, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_USER, OFFLINE_ACCESS, SandboxClient,
    redirect_matches,
};
pub use faults::{FaultPlan, FaultSchedule, TokenFault, TokenFaults};
pub use ledger::DeviceApprovalError;
pub use metadata::AuthServerMetadata;
pub use oauth_error::{ErrorCode, OAuthError};
pub use server::{AuthServer, AuthServerError, RunningAuthServer};
pub use stats::{AuthStats, GrantCounts, GrantKind, WaitTimeout};
