//! `GET /metrics`: the process-wide counters ([`super::global`]) and what is
//! read at scrape time (queue depth by state, lockdown, each account's
//! state and token expiry, whether the store answers, resident memory,
//! start time, version), in the OpenMetrics text format that Prometheus
//! asks for.
//!
//! The answer names the accounts and how much mail waits: `[http]` belongs
//! on an internal address (loopback, or a network only the monitoring can
//! reach), and `[http] metrics_token` makes the route ask for a bearer
//! token as well.

use super::process;
use super::queue_depth::QueueDepth;
use super::{AccountLabel, global};
use crate::http::HttpState;
use crate::secret::Secret;
use crate::store::{AccountState, MessageState, StoreError, TokenRecord};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

/// What Prometheus asks for first and `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for the store. Prometheus gives up after 10 s
/// by default; a store that takes longer is reported down rather than
/// making the whole scrape fail.
const STORE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountStateLabels {
    account: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

struct Scrape {
    state: HttpState,
    depth: QueueDepth,
    started: SystemTime,
    /// `[http] metrics_token`, resolved when `serve` starts.
    token: Option<Secret>,
}

/// The `/metrics` route. Creates each configured account's series at zero
/// first, so that they are there before anything happens to them, and
/// reads `[http] metrics_token` if one is configured.
pub fn routes(state: HttpState) -> Router {
    let token = metrics_token(&state);
    global().register_accounts(state.config.accounts.iter().map(|a| a.name.as_str()));
    let scrape = Arc::new(Scrape {
        state,
        depth: QueueDepth::default(),
        started: SystemTime::now(),
        token,
    });
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(scrape)
}

/// Reads `[http] metrics_token`, if set, so that `serve` can refuse to
/// start with the reason (a variable not set, a file readable by others)
/// instead of serving a `/metrics` that refuses every scrape.
pub fn check_token(config: &crate::config::Config) -> Result<(), crate::config::ConfigError> {
    match config.http.as_ref().and_then(|h| h.metrics_token.as_ref()) {
        Some(reference) => reference
            .resolve()
            .map(|_| ())
            .map_err(|error| crate::config::ConfigError::Invalid {
                path: config.path.clone(),
                message: format!(
                    "[http] metrics_token: {error} (or remove metrics_token, which leaves /metrics open to whoever reaches [http] addr)"
                ),
            }),
        None => Ok(()),
    }
}

fn metrics_token(state: &HttpState) -> Option<Secret> {
    let reference = state.config.http.as_ref()?.metrics_token.as_ref()?;
    match reference.resolve() {
        Ok(secret) => Some(secret),
        Err(error) => {
            // Read once, when `serve` builds its routes. A token that cannot
            // be read closes the route rather than leaving it open.
            tracing::error!(%error, "[http] metrics_token cannot be read; /metrics refuses every scrape until serve is restarted with a readable token");
            Some(Secret::new(String::new()))
        }
    }
}

async fn metrics(State(scrape): State<Arc<Scrape>>, headers: HeaderMap) -> Response {
    if let Some(token) = &scrape.token
        && !authorized(token, &headers)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"oxirelay metrics\"")],
            "/metrics needs the bearer token of [http] metrics_token: send Authorization: Bearer TOKEN\n",
        )
            .into_response();
    }
    // The counters are encoded before the store is read: the engine counts
    // an outcome only after its commit, so every outcome a scrape counts is
    // in the queue depth the same scrape shows (the other order let a
    // scrape count a deferral while showing the message still in flight).
    let mut text = String::with_capacity(8 * 1024);
    let counted = encode_registry(&mut text, global().registry());
    let now = scrape.read_now().await;
    let encoded = counted
        .and_then(|()| encode_registry(&mut text, &now))
        .and_then(|()| encode_eof(&mut text));
    if let Err(error) = encoded {
        // Writing to a String fails only if an encoder reports an error.
        tracing::error!(%error, "cannot encode the metrics");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded; see the relay's log\n",
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        text,
    )
        .into_response()
}

/// Compares the presented token with the configured one in constant time:
/// their SHA-256 digests, so that not even the length is told by timing.
fn authorized(token: &Secret, headers: &HeaderMap) -> bool {
    use sha2::{Digest, Sha256};
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = token.expose();
    !expected.is_empty()
        && aws_lc_rs::constant_time::verify_slices_are_equal(
            &Sha256::digest(presented.as_bytes()),
            &Sha256::digest(expected.as_bytes()),
        )
        .is_ok()
}

/// What a scrape reads from the store.
struct StoreReadings {
    queue: Vec<(MessageState, u64)>,
    locked: bool,
    records: Vec<TokenRecord>,
}

/// Every account state, for the state-set gauge (one series per state, 1
/// for the account's current one), so that an alert can match
/// `{state="needs_consent"} == 1` without knowing the other states.
const ACCOUNT_STATES: [AccountState; 6] = [
    AccountState::New,
    AccountState::Valid,
    AccountState::Failing,
    AccountState::NeedsConsent,
    AccountState::Revoked,
    AccountState::NeedsAdmin,
];

/// `(account, state, 0 or 1)` for each configured account and each state;
/// an account without a stored record is `new`, as the broker treats it. A
/// record of an account no longer configured is left out (labels stay the
/// configured names).
fn account_states<'a>(
    configured: &[&'a str],
    records: &[TokenRecord],
) -> Vec<(&'a str, &'static str, i64)> {
    let mut series = Vec::with_capacity(configured.len() * ACCOUNT_STATES.len());
    for &account in configured {
        let current = records
            .iter()
            .find(|r| r.account == account)
            .map_or(AccountState::New, |r| r.state);
        for state in ACCOUNT_STATES {
            series.push((account, state.as_str(), i64::from(state == current)));
        }
    }
    series
}

impl Scrape {
    async fn read_store(&self) -> Result<StoreReadings, StoreError> {
        let store = self.state.store.as_ref();
        Ok(StoreReadings {
            queue: self.depth.read(store, Instant::now()).await?,
            locked: store.lockdown().await?.is_some(),
            records: store.token_records().await?,
        })
    }

    /// The series read now, in a registry of their own (built per scrape,
    /// so that a store that does not answer leaves its series out instead
    /// of showing old values).
    async fn read_now(&self) -> Registry {
        let mut registry = Registry::with_prefix(super::PREFIX);
        let store_up = Gauge::<i64>::default();
        match tokio::time::timeout(STORE_WAIT, self.read_store()).await {
            Ok(Ok(readings)) => {
                store_up.set(1);
                self.register_store_readings(&mut registry, readings);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "metrics: the store does not answer; queue depth and account states left out");
            }
            Err(_) => {
                tracing::warn!(wait = ?STORE_WAIT, "metrics: the store did not answer in time; queue depth and account states left out");
            }
        }
        registry.register(
            "store_up",
            "1 when the store answered this scrape's queries, 0 when it did not",
            store_up,
        );
        if let Some(rss) = process::resident_memory_bytes() {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(rss).unwrap_or(i64::MAX));
            registry.register_with_unit(
                "process_resident_memory",
                "Resident memory of the relay's process",
                Unit::Bytes,
                gauge,
            );
        }
        let started = Gauge::<f64, AtomicU64>::default();
        started.set(process::unix_seconds(self.started));
        registry.register_with_unit(
            "start_time",
            "When this relay's HTTP server (serve) started, Unix time",
            Unit::Seconds,
            started,
        );
        let info = Family::<VersionLabel, Gauge>::default();
        info.get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        registry.register("build_info", "The relay's version, as a label", info);
        registry
    }

    fn register_store_readings(&self, registry: &mut Registry, readings: StoreReadings) {
        let queue = Family::<StateLabel, Gauge>::default();
        for (state, count) in readings.queue {
            queue
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        registry.register(
            "queue_messages",
            "Messages in the store by state (final states counted at most every 30 s)",
            queue,
        );
        let locked = Gauge::<i64>::default();
        locked.set(i64::from(readings.locked));
        registry.register(
            "lockdown",
            "1 while the relay is in lockdown (`oxirelay lockdown`): nothing is delivered",
            locked,
        );
        let configured: Vec<&str> = self
            .state
            .config
            .accounts
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        let states = Family::<AccountStateLabels, Gauge>::default();
        for (account, state, value) in account_states(&configured, &readings.records) {
            states
                .get_or_create(&AccountStateLabels {
                    account: account.to_string(),
                    state,
                })
                .set(value);
        }
        registry.register(
            "account_state",
            "1 for each account's token lifecycle state (new, valid, failing, needs_consent, revoked, needs_admin), 0 for the others",
            states,
        );
        let expiry = Family::<AccountLabel, Gauge>::default();
        for record in &readings.records {
            if let Some(at) = record.access_expires_at
                && configured.contains(&record.account.as_str())
            {
                expiry
                    .get_or_create(&AccountLabel {
                        account: record.account.clone(),
                    })
                    .set(at);
            }
        }
        registry.register_with_unit(
            "access_token_expiry_timestamp",
            "When each account's current access token expires, Unix time (absent while it has none)",
            Unit::Seconds,
            expiry,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn every_configured_account_has_one_current_state() {
        let mut failing = TokenRecord::new("office");
        failing.state = AccountState::Failing;
        let gone = TokenRecord::new("removed-from-config");
        let series = account_states(&["office", "lab"], &[failing, gone]);
        assert_eq!(series.len(), 2 * ACCOUNT_STATES.len());
        let current: Vec<(&str, &str)> = series
            .iter()
            .filter(|(_, _, v)| *v == 1)
            .map(|(a, s, _)| (*a, *s))
            .collect();
        assert_eq!(current, [("office", "failing"), ("lab", "new")]);
        assert!(series.iter().all(|(a, _, _)| *a != "removed-from-config"));
    }

    #[test]
    fn the_bearer_token_must_match_exactly() {
        let token = Secret::new("s3cret-token".to_string());
        assert!(authorized(
            &token,
            &with_authorization("Bearer s3cret-token")
        ));
        assert!(!authorized(
            &token,
            &with_authorization("Bearer s3cret-toke")
        ));
        assert!(!authorized(
            &token,
            &with_authorization("Bearer s3cret-token2")
        ));
        assert!(!authorized(
            &token,
            &with_authorization("Basic s3cret-token")
        ));
        assert!(!authorized(&token, &HeaderMap::new()));
        // A token that could not be read closes the route.
        let unreadable = Secret::new(String::new());
        assert!(!authorized(&unreadable, &with_authorization("Bearer ")));
    }
}
