//! OAuth2: provider presets, grants, the token broker, and bearer-token
//! validation (shared by the sandbox and the broker's health checks).

pub mod jwt;
pub mod validate;
