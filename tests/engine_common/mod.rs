//! What the delivery engine tests share: the real sandbox as the upstream
//! provider (OAuth2 authorization server + OAuth2-enforcing SMTP server
//! over STARTTLS on loopback), a real SQLite store in a temporary
//! directory, the token broker, and an account made from the sandbox's own
//! config snippet with the client credentials grant.

#![allow(dead_code)]

use oxirelay::config::Config;
use oxirelay::delivery::engine::{Engine, EngineConfig, RunningEngine};
use oxirelay::delivery::pool::PoolConfig;
use oxirelay::delivery::schedule::RetrySchedule;
use oxirelay::oauth::account::Account;
use oxirelay::oauth::broker::Broker;
use oxirelay::sandbox::{Sandbox, SandboxOptions};
use oxirelay::secret::MasterKey;
use oxirelay::store::{MessageId, NewMessage, QueuedMessage, SqliteStore, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(30);
pub const ACCOUNT: &str = "sandbox";
pub const SENDER: &str = "app@example.com";

pub struct Harness {
    pub sandbox: Sandbox,
    pub store: Arc<dyn Store>,
    pub broker: Arc<Broker>,
    pub wake: Arc<Notify>,
    pub shutdown: watch::Sender<bool>,
    pub dir: tempfile::TempDir,
}

pub async fn harness() -> Harness {
    harness_with(|_| {}).await
}

/// A harness whose sandbox is set up by `configure` (a provider profile,
/// a changed limit).
pub async fn harness_with(configure: impl FnOnce(&mut SandboxOptions)) -> Harness {
    harness_custom(configure, |toml| toml).await
}

/// A harness whose sandbox is set up by `configure` and whose account is
/// the sandbox's snippet as `edit` changes it (another SASL mechanism).
pub async fn harness_custom(
    configure: impl FnOnce(&mut SandboxOptions),
    edit: impl FnOnce(String) -> String,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SandboxOptions::new(dir.path().join("sandbox"));
    configure(&mut options);
    let sandbox = Sandbox::start(options).await.expect("sandbox");
    let secret_path = dir.path().join("client.secret");
    write_private(&secret_path, sandbox.client_secret.expose());
    let text = edit(sandbox.account_toml(
        ACCOUNT,
        "client_credentials",
        &format!("file:{}", secret_path.display()),
    ));
    let config =
        Config::parse(&text, &dir.path().join("oxirelay.toml")).expect("the sandbox's config");
    let account = Account::from_config(&config.accounts[0]).expect("account");
    let url = format!("sqlite://{}", dir.path().join("oxirelay.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("store"));
    let key = Arc::new(MasterKey::from_bytes([7; 32]));
    let broker = Arc::new(Broker::new(store.clone(), key, vec![account]));
    let (shutdown, _) = watch::channel(false);
    Harness {
        sandbox,
        store,
        broker,
        wake: Arc::new(Notify::new()),
        shutdown,
        dir,
    }
}

fn write_private(path: &std::path::Path, contents: &str) {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).expect("secret file");
    file.write_all(contents.as_bytes()).expect("write secret");
}

/// Engine settings for tests: a fast retry schedule (the store keeps whole
/// seconds, so a retry comes one to two seconds later), a short throttling
/// back-off, connections well under the sandbox's session cap.
pub fn test_config() -> EngineConfig {
    EngineConfig {
        workers: 3,
        claim_batch: 4,
        schedule: RetrySchedule {
            first: Duration::from_millis(200),
            max_interval: Duration::from_secs(1),
            max_age: Duration::from_secs(3600),
        },
        pool: PoolConfig {
            // The sandbox accounts are `generic`: their cap is the one used.
            max_connections_per_account: 2,
            generic_max_connections: 2,
            ..PoolConfig::default()
        },
        throttle_backoff: Duration::from_secs(1),
        reporting_mta: "relay.test".into(),
        maintenance_interval: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}

impl Harness {
    pub fn start(&self, config: EngineConfig) -> RunningEngine {
        Engine::start(
            self.store.clone(),
            self.broker.clone(),
            config,
            self.wake.clone(),
            self.shutdown.subscribe(),
        )
    }

    /// Enqueues (committed on return, as the submission side does) and
    /// wakes the engine.
    pub async fn enqueue(&self, n: usize, recipients: &[&str]) -> Vec<MessageId> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let body = format!(
                "From: {SENDER}\r\nTo: {}\r\nSubject: engine test {i}\r\n\r\nmessage {i}\r\n",
                recipients.join(", ")
            );
            let id = self
                .store
                .enqueue(NewMessage {
                    account: ACCOUNT.into(),
                    mail_from: SENDER.into(),
                    recipients: recipients.iter().map(|r| r.to_string()).collect(),
                    body: body.into_bytes(),
                    submitted_by: "test".into(),
                })
                .await
                .expect("enqueue");
            self.wake.notify_one();
            ids.push(id);
        }
        ids
    }

    /// Revokes one access token at the sandbox's RFC 7009 endpoint, as an
    /// administrator's action elsewhere would.
    pub async fn revoke_access_token(&self, token: &oxirelay::secret::Secret) {
        let response = reqwest::Client::new()
            .post(self.sandbox.auth.revocation_url())
            .basic_auth(
                oxirelay::sandbox::CLIENT_ID,
                Some(self.sandbox.client_secret.expose()),
            )
            .form(&[
                ("token", token.expose()),
                ("token_type_hint", "access_token"),
            ])
            .send()
            .await
            .expect("revocation request");
        assert!(response.status().is_success(), "{}", response.status());
        assert!(!self.sandbox.auth.is_token_active(token));
    }

    /// The account's row: its state and the reason.
    pub async fn account_state(&self) -> (oxirelay::store::AccountState, String) {
        let record = self
            .store
            .token_record(ACCOUNT)
            .await
            .expect("read")
            .expect("the account has a row");
        (record.state, record.state_reason.unwrap_or_default())
    }

    /// The kinds of the events recorded for the account, oldest first.
    pub async fn event_kinds(&self) -> Vec<String> {
        let events = self.store.events(1000).await.expect("events");
        events
            .into_iter()
            .filter(|e| e.account.as_deref() == Some(ACCOUNT))
            .map(|e| e.kind)
            .collect()
    }

    pub async fn messages(&self) -> Vec<QueuedMessage> {
        self.store.messages(None, 10_000).await.expect("messages")
    }

    pub async fn message(&self, id: &MessageId) -> QueuedMessage {
        self.store
            .message(id)
            .await
            .expect("read")
            .expect("exists")
            .0
    }
}
