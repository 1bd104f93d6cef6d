//! The send API's test setup: the sandbox as upstream, `serve` (the real
//! binary) with `[http]` on loopback, API keys made with the real
//! `oxirelay apikey create`, and a keep-alive HTTP client.

#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

#[allow(unused_imports)]
pub use common::{ACCOUNT, Harness, RelayProcess, WAIT};
pub use oxirelay::sandbox::USER;
use serde_json::Value;
use std::time::Duration;

pub struct Api {
    pub harness: Harness,
    pub relay: RelayProcess,
    pub base: String,
    pub client: reqwest::Client,
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Api {
    /// `serve` logged at info, so tests can wait for its delivery records.
    pub async fn start() -> Api {
        let harness =
            Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
        // `RelayProcess` waits for a listener's line; the API needs none.
        harness.add_relay();
        Api::serve(harness, "").await
    }

    /// `serve` on `harness`'s config with `[http]` on loopback and the
    /// sections in `extra` added.
    pub async fn serve(harness: Harness, extra: &str) -> Api {
        let mut text = std::fs::read_to_string(&harness.config_path).expect("config");
        text.push_str("\n[http]\naddr = \"127.0.0.1:0\"\n");
        text.push_str(extra);
        std::fs::write(&harness.config_path, text).expect("write config");
        let relay = RelayProcess::start_logged(&harness.config_path, &[], "oxirelay=info");
        let line = relay.wait_for_line("oxirelay: HTTP on ");
        let base = line["oxirelay: HTTP on ".len()..].to_string();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        Api {
            harness,
            relay,
            base,
            client,
        }
    }

    /// Runs the real CLI against this relay's config.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        let config = self.harness.config_path.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
                .arg("-c")
                .arg(config)
                .args(args)
                .output()
                .expect("oxirelay runs")
        })
        .await
        .expect("join")
    }

    /// `apikey create NAME ARGS... --json`; returns the key.
    pub async fn create_key(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec!["apikey", "create", name, "--json"];
        all.extend_from_slice(args);
        let output = self.cli(&all).await;
        assert!(
            output.status.success(),
            "apikey create: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        value["key"].as_str().expect("a key").to_string()
    }

    /// A key that sends (and reads) as the sandbox mailbox.
    pub async fn sender_key(&self, name: &str) -> String {
        self.create_key(
            name,
            &[
                "--scope",
                "send,read",
                "--allowed-from",
                USER,
                "--account",
                ACCOUNT,
            ],
        )
        .await
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{path} answered {status} with a body that is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Answer {
        self.request(
            reqwest::Method::POST,
            path,
            Some(key),
            &[],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn get(&self, path: &str, key: &str) -> Answer {
        self.request(reqwest::Method::GET, path, Some(key), &[], None)
            .await
    }

    /// Every message in the queue, whatever its state.
    pub async fn queue_count(&self) -> u64 {
        self.harness
            .context
            .store
            .count_messages(&oxirelay::store::QueueFilter::default())
            .await
            .expect("count")
    }

    /// Waits until the relay recorded a delivery attempt of each id.
    pub fn wait_for_attempts(&self, ids: &[&str]) {
        let patterns: Vec<String> = ids
            .iter()
            .map(|id| format!("delivery attempt recorded id={id}"))
            .collect();
        let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
        self.relay.wait_for_all(&patterns);
    }
}

/// A structured message from the sandbox mailbox.
pub fn simple_message(to: &str, subject: &str) -> Value {
    serde_json::json!({
        "from": USER,
        "to": [to],
        "subject": subject,
        "text": "hello",
    })
}
