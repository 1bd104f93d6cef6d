//! The judge is Prometheus itself: Debian's `prometheus` server scrapes the
//! real `oxirelay serve` over loopback every second, with the bearer token
//! of `[http] metrics_token`. `up == 1` means Prometheus read the whole
//! exposition with its own (OpenMetrics) parser; then a message goes
//! through the relay's submission listener to the sandbox and the
//! delivered counter is read back through Prometheus's query API. Skipped,
//! saying so, where `prometheus` is not installed
//! (`scripts/install-test-tools` installs it).

mod common;
#[path = "line_client/mod.rs"]
mod line_client;

use common::*;
use line_client::Client;
use oxirelay::sandbox::USER;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Prometheus starts its TSDB and web server in a few seconds; scrapes
/// come every second.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);

struct Prometheus {
    child: Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody uses now (Prometheus cannot be told port 0 and
/// report what it got).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts Prometheus and waits until it is ready (`/-/ready`). The port is
/// picked free, then given to Prometheus: should another program take it in
/// between, Prometheus exits and is started again on another (3 tries).
async fn start_prometheus(dir: &Path, target: &str, token_file: &Path) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: oxirelay\n    authorization:\n      credentials_file: {}\n    \
             static_configs:\n      - targets: [\"{target}\"]\n",
            token_file.display()
        ),
    )
    .expect("write prometheus.yml");
    for _ in 0..3 {
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let mut prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        while Instant::now() < deadline {
            if prometheus.child.try_wait().expect("wait").is_some() {
                break;
            }
            let ready = reqwest::Client::new()
                .get(format!("{}/-/ready", prometheus.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return prometheus;
            }
            // Prometheus opens its TSDB before it answers: nothing to
            // wait on but its readiness endpoint.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    panic!("prometheus did not become ready in 3 tries of {PROMETHEUS_WAIT:?}");
}

/// The values of an instant query, or `None` while Prometheus is not up.
async fn query(prometheus: &Prometheus, promql: &str) -> Option<Vec<f64>> {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/query", prometheus.base))
        .form(&[("query", promql)])
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    assert_eq!(body["status"], "success", "{promql}: {body}");
    Some(
        body["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|sample| {
                sample["value"][1]
                    .as_str()
                    .expect("a value")
                    .parse()
                    .expect("a number")
            })
            .collect(),
    )
}

/// Queries until the result is `[expected]`, within `PROMETHEUS_WAIT`.
async fn wait_for(prometheus: &Prometheus, promql: &str, expected: f64) {
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    loop {
        let got = query(prometheus, promql).await;
        if got.as_deref() == Some(&[expected][..]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{promql} == {expected} within {PROMETHEUS_WAIT:?}; last: {got:?}"
        );
        // Prometheus scrapes on its own clock; there is nothing to wait
        // on but its answer.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_serve_and_sees_a_delivery() {
    if !have("prometheus") {
        return;
    }
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    let access = harness.add_relay();
    let token_file = harness.dir.path().join("metrics.token");
    write_private(&token_file, "prometheus-scrapes-9c1e\n");
    let mut text = std::fs::read_to_string(&harness.config_path).expect("config");
    text.push_str(&format!(
        "\n[http]\naddr = \"127.0.0.1:0\"\nmetrics_token = \"file:{}\"\n",
        token_file.display()
    ));
    std::fs::write(&harness.config_path, text).expect("write config");
    let relay = RelayProcess::start(&harness.config_path, &[]);
    let line = relay.wait_for_line("oxirelay: HTTP on http://");
    let target = line["oxirelay: HTTP on http://".len()..].to_string();

    let prometheus = start_prometheus(harness.dir.path(), &target, &token_file).await;
    // Scraped and parsed in full, token accepted.
    wait_for(&prometheus, "up{job=\"oxirelay\"}", 1.0).await;
    wait_for(
        &prometheus,
        &format!("oxirelay_deliveries_total{{account=\"{ACCOUNT}\",outcome=\"delivered\"}}"),
        0.0,
    )
    .await;

    let mut client = Client::connect_addr(relay.addr, WAIT).await;
    assert!(
        client
            .greet_with_starttls_trusting(&access.ca_file)
            .await
            .starts_with("250")
    );
    assert!(
        client
            .auth_plain(&access.user, &access.password)
            .await
            .starts_with("235")
    );
    let message = format!(
        "From: {USER}\r\nTo: seen@example.net\r\nSubject: seen by Prometheus\r\n\r\nhello\r\n"
    );
    let reply = client
        .send(USER, "seen@example.net", message.as_bytes())
        .await;
    assert!(reply.starts_with("250 "), "{reply}");
    assert!(client.command("QUIT").await.starts_with("221"));

    wait_for(
        &prometheus,
        &format!("oxirelay_deliveries_total{{account=\"{ACCOUNT}\",outcome=\"delivered\"}}"),
        1.0,
    )
    .await;
    wait_for(
        &prometheus,
        "oxirelay_submission_duration_seconds_count",
        1.0,
    )
    .await;
    wait_for(
        &prometheus,
        &format!("oxirelay_token_requests_total{{account=\"{ACCOUNT}\"}}"),
        1.0,
    )
    .await;
    // A histogram Prometheus can compute with.
    wait_for(
        &prometheus,
        "count(histogram_quantile(0.5, oxirelay_submission_duration_seconds_bucket) > 0)",
        1.0,
    )
    .await;
    wait_for(&prometheus, "up{job=\"oxirelay\"}", 1.0).await;
    drop(prometheus);
    assert!(relay.terminate().success());
}
