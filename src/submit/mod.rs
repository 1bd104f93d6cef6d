//! The relay's submission side (issue 3, item 1): the policy the shared SMTP
//! session ([`crate::smtp::server`]) runs with on the relay's listeners, and
//! the listeners themselves. Clients authenticate (local app passwords or
//! tokens of trusted issuers), may send only as their allowed senders, and
//! get 250 only once the message is in the durable queue.
//!
//! - [`accept`]: [`Acceptance`], the checks and the queue every way in
//!   ends in (the listeners, `oxirelay sendmail` and its pickup).
//! - [`policy`]: [`SubmissionPolicy`], the `SessionPolicy` implementation.
//! - [`listeners`]: [`Listeners::start`] for the `[[listener]]`s.
//! - [`directory`]: submission users from the config and the store.
//! - [`issuers`]: bearer-token checks against `[[issuer]]`s.
//! - [`throttle`]: failed-auth lockouts per address and per user.
//! - [`networks`]: devices that submit without AUTH from mapped networks.
//! - [`allow_list`]: CIDR allow-lists of listeners.
//! - [`received`]: the `Received:` trace header.

pub mod accept;
pub mod allow_list;
pub mod auth_cache;
pub mod directory;
pub mod issuers;
pub mod listeners;
pub mod networks;
pub mod policy;
pub mod received;
pub mod throttle;

pub use accept::{AcceptError, AcceptRules, Acceptance, Refused, Submission};
pub use listeners::{ListenerError, Listeners, RunningListeners};
pub use policy::{
    DEFAULT_MAX_MESSAGE_SIZE, ListenerAccess, MIN_RECIPIENTS, SubmissionOptions, SubmissionPolicy,
};
pub use throttle::{AuthThrottle, ThrottleRules};
