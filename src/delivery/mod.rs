//! Delivery: getting a message from the relay to the upstream provider.
//! The retry schedule and the classification of upstream replies are pure
//! functions here; attempts, workers and the connection pool build on them:
//! `engine` (workers), `pool` (upstream SMTP sessions), `http` with
//! `graph` and `gmail_api` (the HTTP transports), `limits` (quotas and
//! throttling), `route` (which account), `dsn` (bounce reports).

pub mod classify;
pub mod dsn;
pub mod engine;
pub mod gmail_api;
pub mod graph;
pub mod http;
pub mod limits;
pub mod pool;
pub mod route;
pub mod schedule;
pub mod upstream;
