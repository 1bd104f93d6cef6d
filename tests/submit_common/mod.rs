//! Helpers for the `submit_*` integration tests: a relay submission side
//! (real listeners on 127.0.0.1:0 with real TLS from a generated CA written
//! to PEM files, a real SQLite store in a temp dir) in front of the real
//! sandbox as the upstream provider and token issuer; and a line-level
//! SMTP client over real TCP/TLS.

#![allow(dead_code)]

#[path = "../line_client/mod.rs"]
mod line_client;
// Not every test crate that includes this module uses every helper.
#[allow(unused_imports)]
pub use line_client::{Client, oauthbearer, plain};

use oxirelay::config::Config;
use oxirelay::sandbox::certs::SandboxCa;
use oxirelay::sandbox::{CLIENT_ID, SMTP_SCOPE, Sandbox, SandboxOptions, USER};
use oxirelay::secret::Secret;
use oxirelay::smtp::server::{SessionLimits, ShutdownTrigger, shutdown_channel};
use oxirelay::store::{QueuedMessage, SqliteStore, Store};
use oxirelay::submit::{Listeners, RunningListeners, SubmissionOptions, SubmissionPolicy};
use oxirelay::users::SubmissionUser;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A config user with an app password.
pub const SCANNER: &str = "scanner";
pub const SCANNER_PASSWORD: &str = "correct-horse-battery";
pub const SCANNER_FROM: &str = "scanner@contoso.test";
/// A store user (added as `oxirelay user add` would) for a whole domain.
pub const PRINTER: &str = "printer";
pub const PRINTER_PASSWORD: &str = "printer-app-password";
pub const PRINTER_DOMAIN: &str = "printers.test";
/// The account every user's mail goes to.
pub const ACCOUNT: &str = "upstream";

/// The order of the listeners in the config.
pub const STARTTLS: usize = 0;
pub const IMPLICIT: usize = 1;
pub const PLAINTEXT_LOOPBACK: usize = 2;
pub const PLAINTEXT_ELSEWHERE: usize = 3;
/// Implicit TLS for 127.0.0.2 only (Linux routes all of 127/8 to
/// loopback, so a test can connect from either address).
pub const IMPLICIT_SECOND_LOOPBACK: usize = 4;

pub struct Relay {
    pub sandbox: Sandbox,
    pub store: Arc<dyn Store>,
    pub work_arrived: Arc<Notify>,
    pub listeners: Option<RunningListeners>,
    pub trigger: ShutdownTrigger,
    pub ca_file: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Relay {
    pub async fn start() -> Relay {
        Self::start_custom("", |_| {}).await
    }

    /// As [`Relay::start`], with the submission options changed first
    /// (short session limits, other caps).
    pub async fn start_with(adjust: impl FnOnce(&mut SubmissionOptions)) -> Relay {
        Self::start_custom("", adjust).await
    }

    /// The relay with `extra` (TOML: more `[[issuer]]`s, `[[user]]`s)
    /// appended to its config.
    pub async fn start_with_config(extra: &str) -> Relay {
        Self::start_custom(extra, |_| {}).await
    }

    async fn start_custom(extra: &str, adjust: impl FnOnce(&mut SubmissionOptions)) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = SandboxOptions::new(dir.path().join("sandbox"));
        options.auto_approve = true;
        let sandbox = Sandbox::start(options).await.expect("sandbox starts");

        let ca = SandboxCa::generate().expect("CA");
        let ca_file = dir.path().join("relay-ca.pem");
        let cert = dir.path().join("relay-cert.pem");
        let key = dir.path().join("relay-key.pem");
        ca.write_ca(&ca_file).expect("write CA");
        ca.write_leaf(&cert, &key).expect("write leaf");

        let hash = oxirelay::users::hash_password(&Secret::new(SCANNER_PASSWORD)).expect("hash");
        let text = format!(
            r#"
[store]
url = "sqlite://{store}"

{account}

[[listener]]
addr = "127.0.0.1:0"
tls = "starttls"
cert = "{cert}"
key = "{key}"

[[listener]]
addr = "127.0.0.1:0"
tls = "implicit"
cert = "{cert}"
key = "{key}"

[[listener]]
addr = "127.0.0.1:0"
tls = "none"
allow_ips = ["10.0.0.0/8", "127.0.0.1/32"]

[[listener]]
addr = "127.0.0.1:0"
tls = "none"
allow_ips = ["192.0.2.0/24"]

[[listener]]
addr = "127.0.0.1:0"
tls = "implicit"
cert = "{cert}"
key = "{key}"
allow_ips = ["127.0.0.2/32"]

[[user]]
name = "{SCANNER}"
password_hash = "{hash}"
allowed_from = ["{SCANNER_FROM}"]
account = "{ACCOUNT}"

[[user]]
name = "{USER}"
issuer = "{issuer}"
allowed_from = ["{USER}"]
account = "{ACCOUNT}"

[[issuer]]
url = "{issuer}"
audience = "smtp"
required_scope = "{SMTP_SCOPE}"
insecure_loopback = true
{extra}"#,
            store = dir.path().join("relay.db").display(),
            account = sandbox.account_toml(ACCOUNT, "client_credentials", "env:SUBMIT_TEST_UNUSED"),
            cert = cert.display(),
            key = key.display(),
            issuer = sandbox.auth.issuer_id(),
        );
        let config =
            Config::parse(&text, &dir.path().join("oxirelay.toml")).expect("the config is valid");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&config.store.url)
                .await
                .expect("store opens"),
        );
        let printer = SubmissionUser {
            name: PRINTER.into(),
            password_hash: oxirelay::users::hash_password(&Secret::new(PRINTER_PASSWORD))
                .expect("hash"),
            allowed_from: vec![format!("@{PRINTER_DOMAIN}")],
            account: ACCOUNT.into(),
            source: "store",
            header_from_checked: true,
        };
        assert!(store.add_user(&printer).await.expect("add user"));

        let work_arrived = Arc::new(Notify::new());
        let mut options = SubmissionOptions {
            hostname: "relay.test".into(),
            limits: SessionLimits {
                command_timeout: Duration::from_secs(30),
                ..SessionLimits::default()
            },
            ..SubmissionOptions::default()
        };
        adjust(&mut options);
        let policy = SubmissionPolicy::new(&config, store.clone(), work_arrived.clone(), options);
        let (trigger, signal) = shutdown_channel();
        let listeners = Listeners::start(&config, &policy, signal)
            .await
            .expect("listeners start");
        Relay {
            sandbox,
            store,
            work_arrived,
            listeners: Some(listeners),
            trigger,
            ca_file,
            dir,
        }
    }

    pub fn addr(&self, listener: usize) -> SocketAddr {
        self.listeners.as_ref().expect("running").addrs()[listener]
    }

    pub async fn queued(&self) -> Vec<QueuedMessage> {
        self.store.messages(None, 1000).await.expect("messages")
    }

    pub async fn body(&self, id: &str) -> Vec<u8> {
        let id = oxirelay::store::MessageId(id.to_string());
        self.store
            .message(&id)
            .await
            .expect("message")
            .expect("the message exists")
            .1
    }

    /// A client-credentials access token from the sandbox's authorization
    /// server (its subject is the sandbox user).
    pub async fn sandbox_token(&self) -> String {
        let response: serde_json::Value = oxirelay::oauth::grant::http_client(true)
            .post(self.sandbox.auth.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_secret", self.sandbox.client_secret.expose()),
                ("scope", SMTP_SCOPE),
            ])
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token JSON");
        response["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token in {response}"))
            .to_string()
    }

    pub async fn shutdown(mut self) {
        self.trigger.trigger();
        if let Some(listeners) = self.listeners.take() {
            tokio::time::timeout(WAIT, listeners.wait())
                .await
                .expect("listeners stop in time")
                .expect("listeners stop cleanly");
        }
        self.sandbox.shutdown().await;
    }
}

/// The relay's listeners, on the shared line client.
impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_addr(addr, WAIT).await
    }

    /// Greeting, EHLO, STARTTLS, handshake, EHLO; returns the last EHLO reply.
    pub async fn greet_with_starttls(&mut self, ca_file: &Path) -> String {
        self.greet_with_starttls_trusting(ca_file).await
    }
}

/// The queue id in "250 2.0.0 Ok: queued as ID".
pub fn queue_id(reply: &str) -> String {
    assert!(
        reply.starts_with("250 "),
        "expected acceptance, got {reply}"
    );
    reply
        .trim_end()
        .rsplit(' ')
        .next()
        .expect("an id")
        .to_string()
}

/// Whether a program is installed; tests that drive it skip (saying so)
/// when it is not. `scripts/install-test-tools` installs them in CI.
pub fn have(program: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("SKIPPED: {program} is not installed; run scripts/install-test-tools");
    }
    found
}
