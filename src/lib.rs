//! oxirelay: send email through OAuth2-protected SMTP.
//!
//! The map of modules and the contracts they keep is `DESIGN.md` (shared with
//! the project); each module's header says what it owns.

pub mod api;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod delivery;
pub mod doctor;
#[cfg(test)]
mod fuzzing;
pub mod http;
pub mod instance;
pub mod listen;
pub mod maildrop;
pub mod message;
pub mod metrics;
pub mod notify;
pub mod oauth;
pub mod sandbox;
pub mod secret;
pub mod sendmail;
pub mod smtp;
pub mod store;
pub mod submit;
pub mod tls;
pub mod users;
pub mod webhooks;
