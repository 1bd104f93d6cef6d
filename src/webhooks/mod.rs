//! Webhooks (`[[webhook]]`): the store's event log, POSTed as signed JSON
//! to each configured endpoint, in order, durably.
//!
//! - [`signature`]: the `Oxirelay-Signature` header (HMAC-SHA256 over
//!   `"{timestamp}.{body}"`) and its check, for receivers written in Rust
//!   and for the tests.
//! - [`payload`]: what one event looks like on the wire, and which events
//!   an endpoint takes.
//! - [`endpoint`]: one endpoint resolved from its config (its secret read,
//!   its HTTP client built) and one bounded POST.
//! - [`dispatch`]: the task in `serve` that follows the log for each
//!   endpoint and moves its cursor in the store only after a 2xx.
//!
//! Delivery is at least once: the cursor moves after the receiver's 2xx,
//! so a crash between the two sends that event again after the restart.
//! The event id (`Oxirelay-Event-Id`, the payload's `id`) lets a receiver
//! drop the repeat.

pub mod dispatch;
pub mod endpoint;
pub mod payload;
pub mod signature;

pub use dispatch::Dispatcher;
pub use endpoint::{Endpoint, PostError, WebhookError};
pub use payload::{EventFilter, WebhookPayload};
