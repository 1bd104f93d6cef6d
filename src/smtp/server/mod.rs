//! The SMTP server: one session implementation with pluggable policy, used
//! by the sandbox's OAuth2-enforcing server and by the relay's submission
//! listener (DESIGN.md, "One implementation, several uses").
//!
//! - [`session`]: the pure state machine (bytes in, steps out).
//! - [`command`]: line endings, and MAIL/RCPT with their paths exact.
//! - [`data`]: the DATA phase (end of message, dot-unstuffing, smuggling).
//! - [`limits`]: what one client may cost: deadlines, paces, lifetime,
//!   sessions per address, the stop.
//! - [`sasl_exchange`]: the server side of AUTH's SASL exchange.
//! - [`policy`]: what a listener decides ([`SessionPolicy`]).
//! - [`reply`]: SMTP replies and the standard ones.
//! - [`shell`]: the tokio I/O around the session ([`serve`]).

pub mod command;
pub mod data;
pub mod limits;
pub mod policy;
pub mod reply;
pub mod sasl_exchange;
pub mod session;
pub mod shell;

#[cfg(test)]
mod session_tests;

pub use limits::{SessionLimits, ShutdownLimits};
pub use policy::{
    AuthRefusal, Authenticated, BoxFuture, Channel, Credentials, DataPlan, Envelope, Identity,
    LineLimit, Refusal, SessionContext, SessionEvent, SessionPolicy, SessionRules,
};
pub use reply::Reply;
pub use session::{Answer, Question, Session, SessionConfig, Step};
pub use shell::{
    DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSIONS_PER_ADDRESS, ServeError, ServerOptions,
    ShutdownSignal, ShutdownTrigger, TlsMode, serve, shutdown_channel,
};
