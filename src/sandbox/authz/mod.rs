//! The sandbox OAuth2 authorization server: a real one, on loopback HTTP,
//! for `oxirelay sandbox`, `oxirelay demo` and the tests.
//!
//! It issues access tokens in the shape of the sandbox's provider profile
//! (RS256 JWTs signed with [`crate::oauth::jwt`] and verifiable with
//! [`crate::oauth::validate`], Entra-shaped JWTs, or opaque tokens only
//! introspection can check) through the client credentials, authorization
//! code + PKCE, device code and refresh grants;
//! rotates refresh tokens and revokes a whole grant when a rotated one is
//! reused (RFC 9700); serves RFC 8414 metadata, JWKS, RFC 7009 revocation
//! and RFC 7662 introspection; authenticates clients by the methods it is
//! configured with (Basic, post, or none for public clients); can behave as
//! strictly as a conformant OpenID provider (offline access only with
//! `prompt=consent`) or decline to introspect JWTs; and can inject faults at
//! the token endpoint.
//!
//! Written by hand rather than with an OAuth server crate because its point
//! is to be inspectable and steerable (counters, faults, programmatic
//! approval) in ways general servers are not.
//!
//! Layout: `ledger` holds state and rules (pure), `engine` the endpoint
//! operations (no HTTP), `access_token` and `entra` the token shapes,
//! `backchannel` / `frontchannel` / `metadata` the handlers, `server` the
//! lifecycle.

mod access_token;
mod backchannel;
mod client_auth;
mod config;
mod consent;
mod engine;
mod entra;
mod faults;
mod frontchannel;
mod html;
mod ledger;
mod metadata;
mod oauth_error;
mod params;
mod server;
mod stats;

pub use access_token::OPAQUE_PREFIX;
pub use client_auth::ClientAuthMethod;
pub use config::{
    AuthServerConfig, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_USER, OFFLINE_ACCESS,
    SANDBOX_TENANT_ID, SMTP_SEND_AS_APP, SandboxClient, redirect_matches,
};
pub use faults::{FaultPlan, FaultSchedule, TokenFault, TokenFaults};
pub use ledger::DeviceApprovalError;
pub use metadata::AuthServerMetadata;
pub use oauth_error::{ErrorCode, OAuthError};
pub use server::{AuthServer, AuthServerError, RunningAuthServer};
pub use stats::{AuthStats, GrantCounts, GrantKind, WaitTimeout};
