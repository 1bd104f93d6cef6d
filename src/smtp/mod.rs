//! SMTP: the SASL codecs shared by both directions, the upstream client and
//! the server session used by the submission listener and the sandbox.

pub mod client;
pub mod sasl;
pub mod server;
