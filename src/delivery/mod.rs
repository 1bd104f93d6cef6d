//! Delivery: getting a message from the relay to the upstream provider.
//! The retry schedule and the classification of upstream replies are pure
//! functions here; attempts, workers and the connection pool build on them.

pub mod classify;
pub mod schedule;
pub mod upstream;
