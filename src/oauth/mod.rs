//! OAuth2: provider presets, accounts, grants, the token broker, and
//! bearer-token validation (shared by the sandbox and the broker's checks).

pub mod account;
pub mod body;
pub mod broker;
pub mod consent;
pub mod device;
pub mod discovery;
pub mod error_code;
pub mod explain;
pub mod grant;
pub mod health;
pub mod jwt;
pub mod jwt_bearer;
pub mod loopback;
pub mod preset;
pub mod revoke;
pub mod status;
pub mod validate;
