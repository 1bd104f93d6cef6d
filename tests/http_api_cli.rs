//! CLI parity with the send API: `oxirelay send --via URL` queues through
//! a running relay's API (the key from a file or the environment, never a
//! flag), and `oxirelay queue show ID` shows the history `GET
//! /v1/messages/{id}` shows.

mod http_api_common;

use http_api_common::{Api, USER, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_via_queues_through_the_api_and_queue_show_has_the_history() {
    let api = Api::start().await;
    let key = api.sender_key("cli").await;
    let key_file = api.harness.dir.path().join("cli.key");
    std::fs::write(&key_file, format!("{key}\n")).expect("key file");
    let key_path = key_file.to_str().expect("utf-8").to_string();

    let sent = api
        .cli(&[
            "send",
            "--via",
            &api.base,
            "--api-key-file",
            &key_path,
            "--from",
            USER,
            "--to",
            "viafile@example.net",
            "--subject",
            "via the API",
            "--body",
            "hello",
            "--tag",
            "cli",
        ])
        .await;
    let stdout = String::from_utf8_lossy(&sent.stdout).to_string();
    assert!(
        sent.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let id = stdout
        .trim()
        .strip_prefix("queued as ")
        .expect("queued as ID")
        .to_string();

    // The key from the environment, and a raw file.
    let message = api.harness.dir.path().join("note.eml");
    std::fs::write(
        &message,
        format!("From: {USER}\nSubject: via env\n\nfrom a file\n"),
    )
    .expect("eml");
    let config = api.harness.config_path.clone();
    let (base, message_path) = (
        api.base.clone(),
        message.to_str().expect("utf-8").to_string(),
    );
    let env_key = key.clone();
    let by_env = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .arg("-c")
            .arg(config)
            .args([
                "send",
                "--via",
                &base,
                "--from",
                USER,
                "--to",
                "viaenv@example.net",
                "--file",
                &message_path,
                "--json",
            ])
            .env("OXIRELAY_API_KEY", env_key)
            .output()
            .expect("runs")
    })
    .await
    .expect("join");
    assert!(
        by_env.status.success(),
        "{}",
        String::from_utf8_lossy(&by_env.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&by_env.stdout).expect("JSON");
    assert_eq!(answer["status"], "queued");

    // A refusal is the API's reason, and a failure exit.
    let refused = api
        .cli(&[
            "send",
            "--via",
            &api.base,
            "--api-key-file",
            &key_path,
            "--from",
            "ceo@example.com",
            "--to",
            "x@example.net",
        ])
        .await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("forbidden"),
        "{stderr}"
    );
    // A key over plain HTTP to another host is refused before it leaves.
    let remote = api
        .cli(&[
            "send",
            "--via",
            "http://192.0.2.1:8025",
            "--api-key-file",
            &key_path,
            "--from",
            USER,
            "--to",
            "x@example.net",
        ])
        .await;
    assert!(!remote.status.success());
    assert!(String::from_utf8_lossy(&remote.stderr).contains("unencrypted"));

    let inbox = api.harness.sandbox.smtp.inbox();
    let arrived = inbox.wait_for_count(2, WAIT).await.expect("both delivered");
    assert!(
        arrived
            .iter()
            .any(|e| e.subject.as_deref() == Some("via the API"))
    );
    assert!(
        arrived
            .iter()
            .any(|e| e.subject.as_deref() == Some("via env"))
    );
    api.wait_for_attempts(&[&id]);

    let shown = api.cli(&["queue", "show", &id]).await;
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{text}");
    assert!(
        text.contains("history:") && text.contains("queued"),
        "{text}"
    );
    assert!(text.contains("message.delivered"), "{text}");
    assert!(text.contains("api:cli"), "{text}");
    let shown = api.cli(&["queue", "show", &id, "--json"]).await;
    let value: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    assert!(
        value["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "message.delivered"),
        "{value}"
    );
    let tagged = api.get("/v1/messages?tag=cli", &key).await;
    assert_eq!(tagged.body["messages"][0]["id"], id.as_str());
    assert!(api.relay.terminate().success());
}
