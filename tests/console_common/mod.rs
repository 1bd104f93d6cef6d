//! The web console's test setup: the sandbox as provider, an account with
//! the authorization code grant and no consent yet, `serve` (the real
//! binary) with `[http]` on loopback and `[console]` with an admin
//! password in a 0600 file, as the send API's tests run it (their `Api`,
//! for API keys made with the real `oxirelay apikey create` and messages
//! submitted through the real send API).

#![allow(dead_code)]

#[path = "../http_api_common/mod.rs"]
mod http_api_common;

#[allow(unused_imports)]
pub use http_api_common::{ACCOUNT, Api, Harness, RelayProcess, USER, WAIT};
use std::time::Duration;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Console {
    pub api: Api,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A key that sends as the sandbox mailbox.
    pub sender_key: String,
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
        let password = harness.dir.path().join("console.password");
        std::fs::write(&password, PASSWORD).expect("write the password");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        let api = Api::serve(
            harness,
            "\n[console]\nadmin_password = \"file:console.password\"\nsandbox_inbox = \"sandbox\"\n",
        )
        .await;
        let base = api.base.clone();
        let sender_key = api.sender_key("app").await;
        Console {
            api,
            base,
            sender_key,
        }
    }

    pub async fn create_key(&self, name: &str, args: &[&str]) -> String {
        self.api.create_key(name, args).await
    }

    /// Submits a message through the send API; returns its id.
    pub async fn submit(&self, subject: &str) -> String {
        let message = http_api_common::simple_message("rcpt@example.net", subject);
        let answer = self
            .api
            .post("/v1/messages", &self.sender_key, &message)
            .await;
        assert_eq!(answer.status, 202, "submission accepted: {}", answer.body);
        answer.body["id"].as_str().expect("an id").to_string()
    }

    /// Waits until the relay recorded a delivery attempt of `id`.
    pub fn wait_for_attempt(&self, id: &str) {
        self.api.wait_for_attempts(&[id]);
    }

    /// The message's state in the store, if it is there.
    pub async fn state_of(&self, id: &str) -> Option<oxirelay::store::MessageState> {
        self.api
            .harness
            .context
            .store
            .message(&oxirelay::store::MessageId(id.to_string()))
            .await
            .expect("store")
            .map(|(message, _)| message.state)
    }

    /// Whether the account's consent (a refresh token) is stored.
    pub async fn consent_stored(&self) -> bool {
        self.api
            .harness
            .context
            .store
            .token_record(ACCOUNT)
            .await
            .expect("store")
            .is_some_and(|record| record.refresh_token.is_some())
    }

    /// The audit log's text.
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.api.harness.context.audit.path()).unwrap_or_default()
    }
}

/// The value of the form's `csrf` field in a console page.
pub fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a CSRF field on the page") + marker.len();
    let end = page[start..].find('"').expect("end of the value") + start;
    page[start..end].to_string()
}
