//! The sandbox provider: a real OAuth2 authorization server and a real
//! OAuth2-enforcing SMTP server on loopback, for `oxirelay sandbox`,
//! `oxirelay demo` and the tests.

pub mod authz;
pub mod certs;
pub mod inbox;
pub mod smtp;
