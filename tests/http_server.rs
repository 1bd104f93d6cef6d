//! The relay's HTTP server (`[http]`) through the binary: it starts with
//! `serve`, answers the health checks over real TCP, reads the lockdown
//! another process sets, and stops with `serve`.

mod common;

use common::{Harness, RelayProcess};
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn status_of(url: &str) -> (u16, serde_json::Value) {
    let response = client().get(url).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_store_and_lockdown() {
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    harness.add_relay();
    let mut text = std::fs::read_to_string(&harness.config_path).expect("config");
    text.push_str("\n[http]\naddr = \"127.0.0.1:0\"\n");
    std::fs::write(&harness.config_path, text).expect("write config");

    let relay = RelayProcess::start(&harness.config_path, &[]);
    let line = relay.wait_for_line("oxirelay: HTTP on ");
    let base = line["oxirelay: HTTP on ".len()..].to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let (status, body) = status_of(&format!("{base}/healthz")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = status_of(&format!("{base}/readyz")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));

    let config = harness.config_path.to_str().expect("utf-8").to_string();
    let locked = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .args(["-c", &config, "lockdown", "--reason", "drill"])
            .output()
            .expect("runs")
    })
    .await
    .expect("join");
    assert!(locked.status.success(), "{locked:?}");
    let (status, body) = status_of(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "lockdown");
    assert_eq!(body["reason"], "drill");
    // Alive all the same: a locked-down relay is not to be restarted.
    assert_eq!(status_of(&format!("{base}/healthz")).await.0, 200);

    assert!(relay.terminate().success());
    assert!(
        client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "nothing listens after serve stopped"
    );
}
