//! The upstream SMTP client: how oxirelay talks to smtp.office365.com,
//! smtp.gmail.com or the sandbox. Connect, secure (STARTTLS or implicit TLS),
//! authenticate with a bearer token, send one or many messages on the same
//! connection, quit.
//!
//! Contract 5 (TLS before tokens) is kept by types: a [`PlaintextSession`]
//! has no AUTH; only a [`Session`] does, and one is made only by STARTTLS,
//! implicit TLS, or [`PlaintextSession::allow_plaintext_on_loopback`].
//!
//! Our own session on a hand-written reply reader rather than mail-send:
//! mail-send's OAUTHBEARER lacks the RFC 7628 gs2 header, and its `send`
//! stops at the first refused recipient where we need an outcome for each.
//!
//! - [`reply`]: replies and the pure reply reader.
//! - [`capabilities`]: the EHLO keywords.
//! - [`data`]: dot-stuffing the content.
//! - [`envelope`]: one transaction's commands and its per-recipient report.
//! - `establish`: connecting and securing; `session`: AUTH and sending;
//!   `wire`: the I/O shell with deadlines.
//! - [`probe`]: reading a server's certificate for `oxirelay tls pin`.

mod auth_reply;
pub mod capabilities;
pub mod data;
pub mod envelope;
mod error;
mod establish;
pub mod probe;
pub mod reply;
mod session;
mod target;
mod wire;

#[cfg(test)]
mod tests;

pub use capabilities::Capabilities;
pub use envelope::{DataOutcome, Envelope, RecipientOutcome, RecipientReport, SendReport};
pub use error::{ClientError, Stage};
pub use establish::PlaintextSession;
pub use reply::Reply;
pub use session::{MAX_COMMAND_LINE, Session};
pub use target::{Timeouts, TlsMode, UpstreamTarget, is_loopback_host};
