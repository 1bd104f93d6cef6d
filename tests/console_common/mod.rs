//! The web console's test setup: the sandbox as provider, an account with
//! the authorization code grant and no consent yet, `serve` (the real
//! binary) with `[http]` on loopback and `[console]` with an admin
//! password in a 0600 file, API keys made with the real `oxirelay apikey
//! create`, and messages submitted through the real send API.

#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;

#[allow(unused_imports)]
pub use common::{ACCOUNT, Harness, RelayProcess, WAIT};
pub use oxirelay::sandbox::USER;
use std::time::Duration;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Console {
    pub harness: Harness,
    pub relay: RelayProcess,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A key that sends as the sandbox mailbox.
    pub sender_key: String,
    pub client: reqwest::Client,
}

impl Console {
    /// `auto_approve`: whether the sandbox approves consent without
    /// showing its page (a browser test clicks Allow itself).
    pub async fn start(auto_approve: bool) -> Console {
        let harness = Harness::start_with(
            "authorization_code",
            "xoauth2",
            Duration::from_secs(3600),
            |options| options.auto_approve = auto_approve,
        )
        .await;
        // `RelayProcess` waits for a listener's line.
        harness.add_relay();
        common::write_private(&harness.dir.path().join("console.password"), PASSWORD);
        let mut text = std::fs::read_to_string(&harness.config_path).expect("config");
        text.push_str(
            "\n[http]\naddr = \"127.0.0.1:0\"\n\n[console]\nadmin_password = \"file:console.password\"\nsandbox_inbox = \"sandbox\"\n",
        );
        std::fs::write(&harness.config_path, text).expect("write config");
        let relay = RelayProcess::start_logged(&harness.config_path, &[], "oxirelay=info");
        let line = relay.wait_for_line("oxirelay: HTTP on ");
        let base = line["oxirelay: HTTP on ".len()..].to_string();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let mut console = Console {
            harness,
            relay,
            base,
            sender_key: String::new(),
            client,
        };
        console.sender_key = console
            .create_key(
                "app",
                &[
                    "--scope",
                    "send,read",
                    "--allowed-from",
                    USER,
                    "--account",
                    ACCOUNT,
                ],
            )
            .await;
        console
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
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        value["key"].as_str().expect("a key").to_string()
    }

    /// Submits a message through the send API; returns its id.
    pub async fn submit(&self, subject: &str) -> String {
        let body = serde_json::json!({
            "from": USER,
            "to": ["rcpt@example.net"],
            "subject": subject,
            "text": "hello",
        });
        let response = self
            .client
            .post(format!("{}/v1/messages", self.base))
            .bearer_auth(&self.sender_key)
            .json(&body)
            .send()
            .await
            .expect("POST /v1/messages");
        assert_eq!(response.status().as_u16(), 202, "submission accepted");
        let value: serde_json::Value = response.json().await.expect("JSON");
        value["id"].as_str().expect("an id").to_string()
    }

    /// Waits until the relay recorded a delivery attempt of `id`.
    pub fn wait_for_attempt(&self, id: &str) {
        self.relay
            .wait_for_all(&[&format!("delivery attempt recorded id={id}")]);
    }

    /// The message's state in the store, if it is there.
    pub async fn state_of(&self, id: &str) -> Option<oxirelay::store::MessageState> {
        self.harness
            .context
            .store
            .message(&oxirelay::store::MessageId(id.to_string()))
            .await
            .expect("store")
            .map(|(message, _)| message.state)
    }

    /// The audit log's text.
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.harness.context.audit.path()).unwrap_or_default()
    }
}

/// The value of the form's `csrf` field in a console page.
pub fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a CSRF field on the page") + marker.len();
    let end = page[start..].find('"').expect("end of the value") + start;
    page[start..end].to_string()
}
