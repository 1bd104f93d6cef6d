//! The relay's metrics: every series `/metrics` offers, the process-wide
//! registry that holds them, and the few calls the instrumented code makes
//! (`metrics::global().…`). The HTTP route and what is computed at scrape
//! time (queue depth, process basics) are in [`scrape`].
//!
//! Why one process-wide registry instead of a handle passed down: the
//! places that count (the acceptance path, the delivery workers, the token
//! broker, the submission listener's sessions) are built by `serve`,
//! `send`, `demo`, `sandbox` and many tests; a handle in every constructor
//! would change all of them for a number that is a fact about the process
//! anyway (one process is one scrape target). Counting costs an atomic add
//! (a labelled series also takes `prometheus-client`'s read lock on its
//! family to find the series): nothing that waits on I/O or on another
//! caller.
//!
//! Labels come only from bounded sets: account names (from the config), an
//! outcome or a state (fixed words). Never a message id, an address or an
//! error's text.
//!
//! Names follow the Prometheus conventions: the `oxirelay_` prefix, the unit
//! in the name (`_seconds`, `_bytes`), counters ending in `_total`. The
//! exposition is OpenMetrics text (what `prometheus-client` writes and
//! Prometheus asks for first).

pub mod process;
pub mod queue_depth;
pub mod scrape;

pub use scrape::{check_token, routes};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::LazyLock;
use std::time::Duration;

/// The prefix of every series.
pub const PREFIX: &str = "oxirelay";

/// The label of a series about one upstream account.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    pub account: String,
}

/// What became of one recipient in one delivery attempt (or at expiry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryOutcome {
    Delivered,
    Deferred,
    Bounced,
    Expired,
}

impl DeliveryOutcome {
    pub const ALL: [DeliveryOutcome; 4] = [
        DeliveryOutcome::Delivered,
        DeliveryOutcome::Deferred,
        DeliveryOutcome::Bounced,
        DeliveryOutcome::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Deferred => "deferred",
            DeliveryOutcome::Bounced => "bounced",
            DeliveryOutcome::Expired => "expired",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub account: String,
    pub outcome: &'static str,
}

/// What one upstream SMTP session did, as the delivery pool saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamSessionEvent {
    /// Connected, secured and authenticated.
    Opened,
    /// Could not be opened (connection, TLS or AUTH failed).
    OpenFailed,
    /// An idle session carried another message.
    Reused,
    /// An idle session reused without RSET turned out closed by the
    /// server; the message went on another.
    FoundGone,
}

impl UpstreamSessionEvent {
    pub const ALL: [UpstreamSessionEvent; 4] = [
        UpstreamSessionEvent::Opened,
        UpstreamSessionEvent::OpenFailed,
        UpstreamSessionEvent::Reused,
        UpstreamSessionEvent::FoundGone,
    ];

    fn as_str(self) -> &'static str {
        match self {
            UpstreamSessionEvent::Opened => "opened",
            UpstreamSessionEvent::OpenFailed => "open_failed",
            UpstreamSessionEvent::Reused => "reused",
            UpstreamSessionEvent::FoundGone => "found_gone",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamSessionLabels {
    pub account: String,
    pub event: &'static str,
}

/// How one submission ended at the acceptance path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmissionResult {
    /// Committed to the store: the client was told "queued".
    Accepted,
    /// Refused by the rules (sender, size, content): a 5xx.
    Refused,
    /// The store could not take it: a 4xx, the client tries again.
    Failed,
}

impl SubmissionResult {
    fn as_str(self) -> &'static str {
        match self {
            SubmissionResult::Accepted => "accepted",
            SubmissionResult::Refused => "refused",
            SubmissionResult::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Why a token request failed, from the kind of
/// [`TokenError`](crate::oauth::grant::TokenError): a fixed word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenFailureLabels {
    pub account: String,
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every series the relay counts as it works. The scrape adds what it
/// computes then (see [`scrape`]).
pub struct Metrics {
    registry: Registry,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_attempt_duration: HistogramFamily<AccountLabel>,
    delivery_latency: HistogramFamily<AccountLabel>,
    submissions: Family<ResultLabel, Counter>,
    submission_duration: Histogram,
    submission_sessions_open: Gauge,
    submission_sessions: Counter,
    token_requests: Family<AccountLabel, Counter>,
    token_request_failures: Family<TokenFailureLabels, Counter>,
    upstream_token_refusals: Family<AccountLabel, Counter>,
    upstream_auth_failures: Family<AccountLabel, Counter>,
    upstream_sessions: Family<UpstreamSessionLabels, Counter>,
}

/// Submission to durable commit: a group commit with `synchronous=FULL`
/// takes a few milliseconds on a disk, more under load; 0.5 ms to 8 s
/// doubling covers a RAM disk to a stalled one.
fn submission_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// One delivery attempt: a pooled session's transaction takes tens of
/// milliseconds, a new session with TLS and a token request a second or
/// two, a slow provider up to the client's timeouts (minutes): 5 ms to
/// about 160 s, doubling.
fn attempt_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Submission to delivered: the queue's times are whole seconds, and mail
/// may wait for hours (retries, a provider's quota): 1 s to 2 days.
fn latency_buckets() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 172800.0,
    ])
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Recipients by what became of them, per upstream account: delivered, deferred (per attempt: a recipient deferred twice counts twice), bounced, expired",
            deliveries.clone(),
        );
        let delivery_attempt_duration: HistogramFamily<AccountLabel> =
            Family::new_with_constructor(attempt_buckets);
        registry.register_with_unit(
            "delivery_attempt_duration",
            "How long one delivery attempt of one message took, from the claim to the recorded outcome",
            Unit::Seconds,
            delivery_attempt_duration.clone(),
        );
        let delivery_latency: HistogramFamily<AccountLabel> =
            Family::new_with_constructor(latency_buckets);
        registry.register_with_unit(
            "delivery_latency",
            "From submission to delivery of the message's last recipient (whole seconds, as the queue keeps time)",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let submissions = Family::<ResultLabel, Counter>::default();
        registry.register(
            "submissions",
            "Messages handed to the acceptance path (SMTP, sendmail, the HTTP API) by result: accepted (durable), refused, failed (store error)",
            submissions.clone(),
        );
        let submission_duration = submission_buckets();
        registry.register_with_unit(
            "submission_duration",
            "From the end of a submission (end of DATA, the API's request) to its durable commit, for accepted messages",
            Unit::Seconds,
            submission_duration.clone(),
        );
        let submission_sessions_open = Gauge::default();
        registry.register(
            "submission_sessions_open",
            "SMTP sessions open on the submission listeners now",
            submission_sessions_open.clone(),
        );
        let submission_sessions = Counter::default();
        registry.register(
            "submission_sessions",
            "SMTP sessions the submission listeners have taken since start",
            submission_sessions.clone(),
        );
        let token_requests = Family::<AccountLabel, Counter>::default();
        registry.register(
            "token_requests",
            "Requests to an account's token endpoint (refresh, client credentials, JWT bearer)",
            token_requests.clone(),
        );
        let token_request_failures = Family::<TokenFailureLabels, Counter>::default();
        registry.register(
            "token_request_failures",
            "Token requests that failed, by reason: rejected (an OAuth error such as invalid_grant), unavailable (HTTP 5xx or 429), transport, malformed, insecure",
            token_request_failures.clone(),
        );
        let upstream_token_refusals = Family::<AccountLabel, Counter>::default();
        registry.register(
            "upstream_token_refusals",
            "Access tokens the upstream (SMTP AUTH, Graph, Gmail API, validation) refused; the relay then refreshes once",
            upstream_token_refusals.clone(),
        );
        let upstream_auth_failures = Family::<AccountLabel, Counter>::default();
        registry.register(
            "upstream_auth_failures",
            "Upstream authentication failures: a freshly refreshed token refused too, so the account was marked failing (contract 4)",
            upstream_auth_failures.clone(),
        );
        let upstream_sessions = Family::<UpstreamSessionLabels, Counter>::default();
        registry.register(
            "upstream_sessions",
            "Upstream SMTP sessions of the delivery pool, by event: opened (one AUTH each), open_failed, reused (an idle session carried another message), found_gone (reused without RSET and found closed by the server; the message went on another)",
            upstream_sessions.clone(),
        );
        Metrics {
            registry,
            deliveries,
            delivery_attempt_duration,
            delivery_latency,
            submissions,
            submission_duration,
            submission_sessions_open,
            submission_sessions,
            token_requests,
            token_request_failures,
            upstream_token_refusals,
            upstream_auth_failures,
            upstream_sessions,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates each account's series at zero, so that a scrape shows every
    /// account from the start and `rate()` sees the first increase.
    pub fn register_accounts<'a>(&self, accounts: impl IntoIterator<Item = &'a str>) {
        // `get_or_create` creates the series; its guard (a read lock on the
        // family) is dropped at once.
        for account in accounts {
            let label = AccountLabel {
                account: account.to_string(),
            };
            for outcome in DeliveryOutcome::ALL {
                drop(self.deliveries.get_or_create(&DeliveryLabels {
                    account: account.to_string(),
                    outcome: outcome.as_str(),
                }));
            }
            drop(self.token_requests.get_or_create(&label));
            drop(self.upstream_token_refusals.get_or_create(&label));
            drop(self.upstream_auth_failures.get_or_create(&label));
            drop(self.delivery_attempt_duration.get_or_create(&label));
            drop(self.delivery_latency.get_or_create(&label));
            for event in UpstreamSessionEvent::ALL {
                drop(
                    self.upstream_sessions
                        .get_or_create(&UpstreamSessionLabels {
                            account: account.to_string(),
                            event: event.as_str(),
                        }),
                );
            }
        }
        for result in [
            SubmissionResult::Accepted,
            SubmissionResult::Refused,
            SubmissionResult::Failed,
        ] {
            drop(self.submissions.get_or_create(&ResultLabel {
                result: result.as_str(),
            }));
        }
    }

    /// `count` recipients of `account` reached `outcome`.
    pub fn deliveries(&self, account: &str, outcome: DeliveryOutcome, count: u64) {
        if count == 0 {
            return;
        }
        self.deliveries
            .get_or_create(&DeliveryLabels {
                account: account.to_string(),
                outcome: outcome.as_str(),
            })
            .inc_by(count);
    }

    /// One delivery attempt of one message took `took`.
    pub fn delivery_attempt(&self, account: &str, took: Duration) {
        self.delivery_attempt_duration
            .get_or_create(&account_label(account))
            .observe(took.as_secs_f64());
    }

    /// A message submitted `waited_secs` ago is now delivered.
    pub fn delivered_after(&self, account: &str, waited_secs: i64) {
        // A clock stepped back makes the difference negative: count it as
        // no wait rather than drop it.
        self.delivery_latency
            .get_or_create(&account_label(account))
            .observe(waited_secs.max(0) as f64);
    }

    /// A submission ended; `took` is from its start to the commit.
    pub fn submission(&self, result: SubmissionResult, took: Duration) {
        self.submissions
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
        if result == SubmissionResult::Accepted {
            self.submission_duration.observe(took.as_secs_f64());
        }
    }

    /// A submission session opened (the listener's `Connected`).
    pub fn submission_session_opened(&self) {
        self.submission_sessions.inc();
        self.submission_sessions_open.inc();
    }

    /// A submission session ended (the listener's `Closed`, which every
    /// session that opened reports once; only a session cut off at the
    /// shutdown deadline does not, and then the process is stopping).
    pub fn submission_session_closed(&self) {
        self.submission_sessions_open.dec();
    }

    pub fn token_request(&self, account: &str) {
        self.token_requests
            .get_or_create(&account_label(account))
            .inc();
    }

    pub fn token_request_failed(&self, account: &str, reason: &'static str) {
        self.token_request_failures
            .get_or_create(&TokenFailureLabels {
                account: account.to_string(),
                reason,
            })
            .inc();
    }

    pub fn upstream_token_refused(&self, account: &str) {
        self.upstream_token_refusals
            .get_or_create(&account_label(account))
            .inc();
    }

    pub fn upstream_session(&self, account: &str, event: UpstreamSessionEvent) {
        self.upstream_sessions
            .get_or_create(&UpstreamSessionLabels {
                account: account.to_string(),
                event: event.as_str(),
            })
            .inc();
    }

    pub fn upstream_auth_failed(&self, account: &str) {
        self.upstream_auth_failures
            .get_or_create(&account_label(account))
            .inc();
    }
}

fn account_label(account: &str) -> AccountLabel {
    AccountLabel {
        account: account.to_string(),
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &Metrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, metrics.registry()).expect("encodes");
        text
    }

    #[test]
    fn names_carry_the_prefix_units_and_total() {
        let metrics = Metrics::new();
        metrics.register_accounts(["office"]);
        metrics.deliveries("office", DeliveryOutcome::Delivered, 2);
        metrics.deliveries("office", DeliveryOutcome::Bounced, 0);
        metrics.submission(SubmissionResult::Accepted, Duration::from_millis(3));
        metrics.submission(SubmissionResult::Refused, Duration::from_millis(1));
        metrics.token_request_failed("office", "unavailable");
        let text = encoded(&metrics);
        for line in [
            "oxirelay_deliveries_total{account=\"office\",outcome=\"delivered\"} 2",
            "oxirelay_deliveries_total{account=\"office\",outcome=\"bounced\"} 0",
            "oxirelay_submissions_total{result=\"accepted\"} 1",
            "oxirelay_submissions_total{result=\"refused\"} 1",
            "oxirelay_submission_duration_seconds_count 1",
            "oxirelay_token_request_failures_total{account=\"office\",reason=\"unavailable\"} 1",
            "oxirelay_upstream_auth_failures_total{account=\"office\"} 0",
            "# TYPE oxirelay_delivery_attempt_duration_seconds histogram",
            "# UNIT oxirelay_delivery_attempt_duration_seconds seconds",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        // A refused submission is counted, not timed.
        assert!(text.contains("oxirelay_submission_duration_seconds_sum 0.003"));
    }

    #[test]
    fn the_session_gauge_counts_open_sessions() {
        let metrics = Metrics::new();
        metrics.submission_session_opened();
        metrics.submission_session_opened();
        metrics.submission_session_closed();
        let text = encoded(&metrics);
        assert!(
            text.lines()
                .any(|l| l == "oxirelay_submission_sessions_open 1"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "oxirelay_submission_sessions_total 2"),
            "{text}"
        );
    }

    #[test]
    fn a_negative_wait_counts_as_none() {
        let metrics = Metrics::new();
        metrics.delivered_after("office", -5);
        let text = encoded(&metrics);
        assert!(
            text.contains(
                "oxirelay_delivery_latency_seconds_bucket{le=\"1.0\",account=\"office\"} 1"
            ) || text.contains(
                "oxirelay_delivery_latency_seconds_bucket{account=\"office\",le=\"1.0\"} 1"
            ),
            "{text}"
        );
    }
}
