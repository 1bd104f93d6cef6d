//! `/metrics` through the real `oxirelay serve`: scraped over real TCP,
//! read back with a Prometheus text parser nobody here wrote
//! (`prometheus-parse`) after a line-by-line check of the exposition, while
//! real mail goes through the relay's submission listener (STARTTLS, AUTH)
//! to the sandbox. Every wait polls the scrape until the counter moves,
//! bounded by `WAIT`. Readiness and `store_up` are checked against a store
//! that fails for real (a table of its SQLite file renamed by another
//! connection) and a lockdown set by another process.

mod common;
#[path = "line_client/mod.rs"]
mod line_client;

use common::*;
use line_client::Client;
use oxirelay::sandbox::USER;
use oxirelay::sandbox::authz::TokenFault;
use oxirelay::sandbox::smtp::{Fault, FaultStage, FaultTimes};
use prometheus_parse::{LineInfo, Value};
use std::time::{Duration, Instant};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A relay with a submission listener and `[http]` on loopback, plus
/// `extra_http` lines in `[http]`.
struct Running {
    harness: Harness,
    access: RelayAccess,
    relay: RelayProcess,
    base: String,
}

async fn start(extra_http: &str) -> Running {
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    let access = harness.add_relay();
    let mut text = std::fs::read_to_string(&harness.config_path).expect("config");
    text.push_str(&format!("\n[http]\naddr = \"127.0.0.1:0\"\n{extra_http}"));
    std::fs::write(&harness.config_path, text).expect("write config");
    let relay = RelayProcess::start(&harness.config_path, &[]);
    let line = relay.wait_for_line("oxirelay: HTTP on ");
    let base = line["oxirelay: HTTP on ".len()..].to_string();
    Running {
        harness,
        access,
        relay,
        base,
    }
}

/// One scrape, checked line by line and parsed.
struct Scrape {
    samples: Vec<prometheus_parse::Sample>,
    text: String,
}

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} is not a single value: {other:?}"),
            })
    }

    /// As [`Scrape::value`], absent read as 0 (a series not yet created).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    fn account(&self, name: &str) -> f64 {
        self.count(name, &[("account", ACCOUNT)])
    }

    fn deliveries(&self, outcome: &str) -> f64 {
        self.count(
            "oxirelay_deliveries_total",
            &[("account", ACCOUNT), ("outcome", outcome)],
        )
    }

    fn queue(&self, state: &str) -> Option<f64> {
        self.value("oxirelay_queue_messages", &[("state", state)])
    }
}

/// Checks the exposition as Prometheus would before trusting the parser
/// (which skips what it cannot read): every line is a HELP, TYPE or UNIT
/// line or a sample with a number, every sample belongs to a family its
/// TYPE line announced, and the text ends with `# EOF` (OpenMetrics).
fn check_exposition(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF:\n{text}");
    let mut families: Vec<String> = Vec::new();
    for line in &lines[..lines.len() - 1] {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } => {}
            LineInfo::Type {
                metric_name,
                metric_alias,
                ..
            } => families.push(metric_alias.unwrap_or(metric_name)),
            LineInfo::Sample {
                metric_name, value, ..
            } => {
                assert!(
                    value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                    "a sample's value is a number: {line}"
                );
                let known = families.iter().any(|family| {
                    metric_name == family
                        || ["_total", "_bucket", "_count", "_sum", "_created", "_info"]
                            .iter()
                            .any(|suffix| metric_name == format!("{family}{suffix}"))
                });
                assert!(known, "{metric_name} has no TYPE line before it:\n{text}");
            }
            _ => assert!(
                line.starts_with("# UNIT oxirelay_"),
                "not exposition text: {line:?}"
            ),
        }
    }
    assert!(
        families.iter().all(|f| f.starts_with("oxirelay_")),
        "{families:?}"
    );
}

async fn scrape(base: &str) -> Scrape {
    let response = http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    check_exposition(&text);
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("parses as Prometheus text");
    Scrape {
        samples: parsed.samples,
        text,
    }
}

/// Scrapes until `done` holds, within `WAIT`; returns that scrape.
async fn scrape_until(base: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let scrape = scrape(base).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {WAIT:?}; last scrape:\n{}",
            scrape.text
        );
        // Polling the very thing under test: the counters have no event
        // to wait on from outside the process.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A logged-in submission session to the relay.
async fn session(running: &Running) -> Client {
    let mut client = Client::connect_addr(running.relay.addr, WAIT).await;
    let ehlo = client
        .greet_with_starttls_trusting(&running.access.ca_file)
        .await;
    assert!(ehlo.starts_with("250"), "{ehlo}");
    let auth = client
        .auth_plain(&running.access.user, &running.access.password)
        .await;
    assert!(auth.starts_with("235"), "{auth}");
    client
}

/// One message to `recipients`, in a session already logged in.
async fn submit(client: &mut Client, subject: &str, recipients: &[&str]) {
    let reply = client.command(&format!("MAIL FROM:<{USER}>")).await;
    assert!(reply.starts_with("250"), "MAIL: {reply}");
    for rcpt in recipients {
        let reply = client.command(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(reply.starts_with("250"), "RCPT: {reply}");
    }
    let reply = client.command("DATA").await;
    assert!(reply.starts_with("354"), "DATA: {reply}");
    let message = format!(
        "From: {USER}\r\nTo: {}\r\nSubject: {subject}\r\n\r\nmetrics test\r\n.\r\n",
        recipients.join(", ")
    );
    client.write(message.as_bytes()).await;
    let reply = client.reply().await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_real_mail_through_serve() {
    let running = start("").await;
    let base = &running.base;

    // Before any mail: the account's series exist, at zero.
    let before = scrape(base).await;
    for outcome in ["delivered", "deferred", "bounced", "expired"] {
        assert_eq!(
            before.value(
                "oxirelay_deliveries_total",
                &[("account", ACCOUNT), ("outcome", outcome)]
            ),
            Some(0.0),
            "{outcome}"
        );
    }
    assert_eq!(
        before.value("oxirelay_token_requests_total", &[("account", ACCOUNT)]),
        Some(0.0)
    );
    assert_eq!(
        before.value(
            "oxirelay_upstream_auth_failures_total",
            &[("account", ACCOUNT)]
        ),
        Some(0.0)
    );
    assert_eq!(
        before.value("oxirelay_submissions_total", &[("result", "accepted")]),
        Some(0.0)
    );
    assert_eq!(
        before.value("oxirelay_submission_duration_seconds_count", &[]),
        Some(0.0)
    );
    assert_eq!(
        before.value("oxirelay_submission_sessions_open", &[]),
        Some(0.0)
    );
    for event in ["opened", "open_failed", "reused", "found_gone"] {
        assert_eq!(
            before.value(
                "oxirelay_upstream_sessions_total",
                &[("account", ACCOUNT), ("event", event)]
            ),
            Some(0.0),
            "{event}"
        );
    }
    assert_eq!(before.value("oxirelay_store_up", &[]), Some(1.0));
    assert_eq!(before.value("oxirelay_lockdown", &[]), Some(0.0));
    assert_eq!(before.queue("queued"), Some(0.0));
    assert_eq!(before.queue("delivered"), Some(0.0));
    assert_eq!(
        before.value(
            "oxirelay_account_state",
            &[("account", ACCOUNT), ("state", "new")]
        ),
        Some(1.0),
        "{}",
        before.text
    );
    assert!(
        before
            .value("oxirelay_process_resident_memory_bytes", &[])
            .expect("RSS")
            > 1e6
    );
    let started = before
        .value("oxirelay_start_time_seconds", &[])
        .expect("start time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(started <= now && started > now - 60.0, "{started} vs {now}");
    assert_eq!(
        before.value(
            "oxirelay_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    // Two messages in one session: one recipient, then two.
    let mut client = session(&running).await;
    let open = scrape(base).await;
    assert_eq!(
        open.value("oxirelay_submission_sessions_open", &[]),
        Some(1.0)
    );
    submit(&mut client, "first", &["one@example.net"]).await;
    submit(
        &mut client,
        "second",
        &["two@example.net", "three@example.net"],
    )
    .await;
    assert!(client.command("QUIT").await.starts_with("221"));

    // The attempt is timed once its outcome is recorded (and counted):
    // wait for both.
    let after = scrape_until(
        base,
        "three recipients delivered, two attempts timed",
        |s| {
            s.deliveries("delivered") >= 3.0
                && s.account("oxirelay_delivery_attempt_duration_seconds_count") >= 2.0
        },
    )
    .await;
    running
        .harness
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(2, WAIT)
        .await
        .expect("both messages in the sandbox inbox");
    // Per recipient: three, of two messages; nothing else happened to them.
    assert_eq!(after.deliveries("delivered"), 3.0, "{}", after.text);
    assert_eq!(after.deliveries("deferred"), 0.0);
    assert_eq!(after.deliveries("bounced"), 0.0);
    assert_eq!(
        after.count("oxirelay_submissions_total", &[("result", "accepted")]),
        2.0
    );
    assert_eq!(
        after.count("oxirelay_submissions_total", &[("result", "refused")]),
        0.0
    );
    assert_eq!(
        after.count("oxirelay_submission_duration_seconds_count", &[]),
        2.0
    );
    let commit = after.count("oxirelay_submission_duration_seconds_sum", &[]);
    assert!(commit > 0.0 && commit < 20.0, "{commit}");
    // Each message went on one session checkout: a new session (one AUTH)
    // or an idle one reused; none failed to open or was found gone.
    let sessions = |event: &str| {
        after.count(
            "oxirelay_upstream_sessions_total",
            &[("account", ACCOUNT), ("event", event)],
        )
    };
    assert!(sessions("opened") >= 1.0, "{}", after.text);
    assert_eq!(
        sessions("opened") + sessions("reused"),
        2.0,
        "{}",
        after.text
    );
    assert_eq!(sessions("open_failed"), 0.0);
    assert_eq!(sessions("found_gone"), 0.0);
    // One token for both messages (single flight), none failed.
    assert_eq!(
        after.account("oxirelay_token_requests_total"),
        1.0,
        "{}",
        after.text
    );
    assert!(
        !after
            .text
            .contains("oxirelay_token_request_failures_total{"),
        "{}",
        after.text
    );
    assert_eq!(after.account("oxirelay_upstream_token_refusals_total"), 0.0);
    // Each message took one attempt and was delivered once.
    assert_eq!(
        after.account("oxirelay_delivery_attempt_duration_seconds_count"),
        2.0
    );
    assert_eq!(
        after.account("oxirelay_delivery_latency_seconds_count"),
        2.0
    );
    assert_eq!(after.queue("queued"), Some(0.0));
    assert_eq!(after.queue("in_flight"), Some(0.0));
    assert_eq!(after.queue("deferred"), Some(0.0));
    // The account's state and its token's expiry, from the store.
    assert_eq!(
        after.value(
            "oxirelay_account_state",
            &[("account", ACCOUNT), ("state", "valid")]
        ),
        Some(1.0),
        "{}",
        after.text
    );
    assert_eq!(
        after.value(
            "oxirelay_account_state",
            &[("account", ACCOUNT), ("state", "failing")]
        ),
        Some(0.0)
    );
    let expiry = after.account("oxirelay_access_token_expiry_timestamp_seconds");
    assert!(expiry > now && expiry < now + 7200.0, "{expiry} vs {now}");
    let ended = scrape_until(base, "the session counted out", |s| {
        s.value("oxirelay_submission_sessions_open", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(
        ended.value("oxirelay_submission_sessions_total", &[]),
        Some(1.0)
    );

    // A sender refused at MAIL FROM never reaches the acceptance path:
    // no submission is counted.
    let mut client = session(&running).await;
    let reply = client.command("MAIL FROM:<ceo@elsewhere.example>").await;
    assert!(reply.starts_with("550"), "{reply}");
    assert!(client.command("QUIT").await.starts_with("221"));
    let last = scrape(base).await;
    assert_eq!(
        last.count("oxirelay_submissions_total", &[("result", "accepted")]),
        2.0
    );
    assert_eq!(
        last.count("oxirelay_submissions_total", &[("result", "refused")]),
        0.0
    );
    assert_eq!(
        last.count("oxirelay_submission_duration_seconds_count", &[]),
        2.0
    );

    assert!(running.relay.terminate().success());
}

/// Contract 4 in the counters: the provider refuses a token at AUTH (535
/// 5.7.3) and then the fresh one too: two refusals, one auth failure, two
/// token requests, one deferred recipient waiting in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_moves_the_auth_failure_counters() {
    let running = start("").await;
    let base = &running.base;
    running.harness.sandbox.smtp.faults().inject(
        Fault::Reply {
            stage: FaultStage::Auth,
            reply: oxirelay::smtp::server::Reply::new(535, "5.7.3 Authentication unsuccessful"),
        },
        FaultTimes::Next(2),
    );
    let mut client = session(&running).await;
    submit(&mut client, "refused token", &["rcpt@example.net"]).await;
    assert!(client.command("QUIT").await.starts_with("221"));

    let after = scrape_until(base, "the recipient deferred, the attempt timed", |s| {
        s.deliveries("deferred") >= 1.0
            && s.account("oxirelay_delivery_attempt_duration_seconds_count") >= 1.0
    })
    .await;
    assert_eq!(
        after.account("oxirelay_upstream_token_refusals_total"),
        2.0,
        "{}",
        after.text
    );
    assert_eq!(after.account("oxirelay_upstream_auth_failures_total"), 1.0);
    assert_eq!(
        after.account("oxirelay_token_requests_total"),
        2.0,
        "one refresh"
    );
    assert_eq!(after.deliveries("deferred"), 1.0);
    assert_eq!(after.deliveries("delivered"), 0.0);
    assert_eq!(
        after.account("oxirelay_delivery_attempt_duration_seconds_count"),
        1.0
    );
    assert_eq!(
        after.account("oxirelay_delivery_latency_seconds_count"),
        0.0
    );
    // The queue gauge reads the store: the message waits, deferred.
    assert_eq!(after.queue("deferred"), Some(1.0), "{}", after.text);
    assert_eq!(after.queue("queued"), Some(0.0));
    assert_eq!(
        after.value(
            "oxirelay_account_state",
            &[("account", ACCOUNT), ("state", "failing")]
        ),
        Some(1.0),
        "{}",
        after.text
    );
    assert!(running.relay.terminate().success());
}

/// The token endpoint fails (HTTP 500): one request, one failure with the
/// reason `unavailable`, the recipient deferred; nothing reached AUTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_moves_the_token_failure_counter() {
    let running = start("").await;
    let base = &running.base;
    running
        .harness
        .sandbox
        .auth
        .faults()
        .fail_next(1, TokenFault::ServerError);
    let mut client = session(&running).await;
    submit(&mut client, "no token", &["rcpt@example.net"]).await;
    assert!(client.command("QUIT").await.starts_with("221"));

    let after = scrape_until(base, "the recipient deferred", |s| {
        s.deliveries("deferred") >= 1.0
    })
    .await;
    assert_eq!(
        after.account("oxirelay_token_requests_total"),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(
        after.count(
            "oxirelay_token_request_failures_total",
            &[("account", ACCOUNT), ("reason", "unavailable")]
        ),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(after.account("oxirelay_upstream_token_refusals_total"), 0.0);
    assert_eq!(after.account("oxirelay_upstream_auth_failures_total"), 0.0);
    assert_eq!(
        running.harness.sandbox.smtp.stats().auth_attempts_total(),
        0
    );
    assert_eq!(after.queue("deferred"), Some(1.0));
    assert!(running.relay.terminate().success());
}

/// `[http] metrics_token`: a scrape without the token, or with another,
/// gets 401 and no metrics; with it, the metrics. The health checks stay
/// open to probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_token_is_required_when_configured() {
    let harness_dir = tempfile::tempdir().expect("tempdir");
    let token_file = harness_dir.path().join("metrics.token");
    write_private(&token_file, "scrape-me-7f3a\n");
    let running = start(&format!(
        "metrics_token = \"file:{}\"\n",
        token_file.display()
    ))
    .await;
    let url = format!("{}/metrics", running.base);
    for authorization in [None, Some("Bearer wrong"), Some("Bearer scrape-me-7f3")] {
        let mut request = http().get(&url);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert!(response.headers().contains_key("www-authenticate"));
        let body = response.text().await.expect("body");
        assert!(!body.contains("oxirelay_"), "{body}");
    }
    let response = http()
        .get(&url)
        .header("authorization", "Bearer scrape-me-7f3a")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    check_exposition(&text);
    assert!(text.contains("oxirelay_deliveries_total{"), "{text}");
    let health = http()
        .get(format!("{}/readyz", running.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(health.status(), 200);
    assert!(running.relay.terminate().success());
}

async fn readyz(base: &str) -> (u16, serde_json::Value) {
    let response = http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// A store that fails its queries for real (another connection renames a
/// table the relay reads, as a botched manual migration would): `/readyz`
/// says not ready, `/metrics` says `store_up 0` and leaves the queue depth
/// out instead of showing old numbers; both recover when the table is back.
/// And a lockdown set by another process shows in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_store_up_follow_a_failing_store_and_lockdown() {
    let running = start("").await;
    let base = &running.base;
    assert_eq!(readyz(base).await.0, 200);

    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(running.harness.db_path())
        .busy_timeout(Duration::from_secs(10));
    let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .expect("a second connection to the relay's database");
    sqlx::raw_sql("ALTER TABLE control RENAME TO control_moved_away")
        .execute(&mut other)
        .await
        .expect("rename");
    let (status, body) = readyz(base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "store_unreachable");
    let down = scrape(base).await;
    assert_eq!(
        down.value("oxirelay_store_up", &[]),
        Some(0.0),
        "{}",
        down.text
    );
    assert_eq!(down.queue("queued"), None, "no stale queue depth");
    assert_eq!(down.value("oxirelay_lockdown", &[]), None);
    assert!(
        !down.text.contains("oxirelay_account_state{"),
        "{}",
        down.text
    );
    // The counters are still there: the process is alive.
    assert!(
        down.value("oxirelay_submissions_total", &[("result", "accepted")])
            .is_some()
    );
    assert_eq!(
        http()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );

    sqlx::raw_sql("ALTER TABLE control_moved_away RENAME TO control")
        .execute(&mut other)
        .await
        .expect("rename back");
    drop(other);
    assert_eq!(readyz(base).await.0, 200);
    let up = scrape(base).await;
    assert_eq!(up.value("oxirelay_store_up", &[]), Some(1.0));
    assert_eq!(up.queue("queued"), Some(0.0));

    let config = running.harness.config_path.clone();
    let locked = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .arg("-c")
            .arg(&config)
            .args(["lockdown", "--reason", "metrics drill"])
            .output()
            .expect("runs")
    })
    .await
    .expect("join");
    assert!(locked.status.success(), "{locked:?}");
    let (status, body) = readyz(base).await;
    assert_eq!((status, body["status"].as_str()), (503, Some("lockdown")));
    assert_eq!(
        scrape(base).await.value("oxirelay_lockdown", &[]),
        Some(1.0)
    );
    assert!(running.relay.terminate().success());
}

/// A `metrics_token` that cannot be read stops `serve` before it listens,
/// with the reason and what to do; nothing is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_metrics_token_stops_the_start() {
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    harness.add_relay();
    let token_file = harness.dir.path().join("metrics.token");
    std::fs::write(&token_file, "readable-by-all\n").expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    let mut text = std::fs::read_to_string(&harness.config_path).expect("config");
    text.push_str("\n[http]\naddr = \"127.0.0.1:0\"\nmetrics_token = \"file:metrics.token\"\n");
    std::fs::write(&harness.config_path, text).expect("write config");
    let config = harness.config_path.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .arg("-c")
            .arg(&config)
            .arg("serve")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("runs")
    })
    .await
    .expect("join");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("[http] metrics_token: secret file:")
            && stderr.contains("metrics.token")
            && stderr.contains("remove metrics_token"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("listening on"), "{stdout}");
}
