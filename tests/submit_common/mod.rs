//! Helpers for the `submit_*` integration tests: a relay submission side
//! (real listeners on 127.0.0.1:0 with real TLS from a generated CA written
//! to PEM files, a real SQLite store in a temp dir) in front of the real
//! sandbox as the upstream provider and token issuer; and a line-level
//! SMTP client over real TCP/TLS.

#![allow(dead_code)]

use oxirelay::config::Config;
use oxirelay::sandbox::certs::SandboxCa;
use oxirelay::sandbox::{CLIENT_ID, SMTP_SCOPE, Sandbox, SandboxOptions, USER};
use oxirelay::secret::Secret;
use oxirelay::smtp::server::{ShutdownTrigger, shutdown_channel};
use oxirelay::store::{QueuedMessage, SqliteStore, Store};
use oxirelay::submit::{Listeners, RunningListeners, SubmissionOptions, SubmissionPolicy};
use oxirelay::users::SubmissionUser;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

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

[[user]]
name = "{SCANNER}"
password_hash = "{hash}"
allowed_from = ["{SCANNER_FROM}"]
account = "{ACCOUNT}"

[[user]]
name = "{USER}"
allowed_from = ["{USER}"]
account = "{ACCOUNT}"

[[issuer]]
url = "{issuer}"
audience = "smtp"
required_scope = "{SMTP_SCOPE}"
insecure_loopback = true
"#,
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
        };
        assert!(store.add_user(&printer).await.expect("add user"));

        let work_arrived = Arc::new(Notify::new());
        let policy = SubmissionPolicy::new(
            &config,
            store.clone(),
            work_arrived.clone(),
            SubmissionOptions {
                hostname: "relay.test".into(),
                read_timeout: Duration::from_secs(30),
                ..SubmissionOptions::default()
            },
        );
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

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A line-level SMTP client for tests.
pub struct Client {
    transport: Option<Transport>,
    received: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Client {
            transport: Some(Transport::Plain(stream)),
            received: Vec::new(),
        }
    }

    pub async fn handshake(&mut self, ca_file: &Path) {
        let Some(Transport::Plain(stream)) = self.transport.take() else {
            panic!("handshake on a non-plaintext transport");
        };
        let config = oxirelay::tls::client_config(Some(ca_file)).expect("client TLS config");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, stream))
            .await
            .expect("handshake in time")
            .expect("handshake succeeds with the test CA");
        self.transport = Some(Transport::Tls(Box::new(tls)));
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        let result = match self.transport.as_mut().expect("connected") {
            Transport::Plain(stream) => stream.write_all(bytes).await,
            Transport::Tls(stream) => match stream.write_all(bytes).await {
                Ok(()) => stream.flush().await,
                Err(error) => Err(error),
            },
        };
        result.expect("write");
    }

    async fn read_some(&mut self) -> usize {
        let mut buffer = [0u8; 4096];
        let read = match self.transport.as_mut().expect("connected") {
            Transport::Plain(stream) => stream.read(&mut buffer).await,
            Transport::Tls(stream) => stream.read(&mut buffer).await,
        };
        let read = read.unwrap_or(0);
        self.received.extend_from_slice(&buffer[..read]);
        read
    }

    /// The next complete reply (all its lines), as text.
    pub async fn reply(&mut self) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = complete_reply_end(&self.received) {
                    let reply: Vec<u8> = self.received.drain(..end).collect();
                    return String::from_utf8(reply).expect("UTF-8 reply");
                }
                if self.read_some().await == 0 {
                    panic!(
                        "connection closed before a complete reply; got {:?}",
                        String::from_utf8_lossy(&self.received)
                    );
                }
            }
        })
        .await
        .expect("a reply in time")
    }

    pub async fn command(&mut self, line: &str) -> String {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Greeting, EHLO, STARTTLS, handshake, EHLO; returns the last EHLO reply.
    pub async fn greet_with_starttls(&mut self, ca_file: &Path) -> String {
        assert!(self.reply().await.starts_with("220 "));
        assert!(self.command("EHLO client.test").await.starts_with("250"));
        assert!(self.command("STARTTLS").await.starts_with("220 "));
        self.handshake(ca_file).await;
        self.command("EHLO client.test").await
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> String {
        self.command(&format!("AUTH PLAIN {}", plain(user, password)))
            .await
    }

    /// MAIL, RCPT, DATA and `message` (which must end with CRLF); returns
    /// the reply to the end of data.
    pub async fn send(&mut self, from: &str, to: &str, message: &[u8]) -> String {
        let reply = self.command(&format!("MAIL FROM:<{from}>")).await;
        assert!(reply.starts_with("250"), "MAIL: {reply}");
        let reply = self.command(&format!("RCPT TO:<{to}>")).await;
        assert!(reply.starts_with("250"), "RCPT: {reply}");
        let reply = self.command("DATA").await;
        assert!(reply.starts_with("354"), "DATA: {reply}");
        self.write(message).await;
        self.write(b".\r\n").await;
        self.reply().await
    }
}

fn complete_reply_end(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(offset) = bytes[start..].windows(2).position(|w| w == b"\r\n") {
        let line = &bytes[start..start + offset];
        start += offset + 2;
        if line.len() < 4 || line[3] == b' ' {
            return Some(start);
        }
    }
    None
}

pub fn plain(user: &str, password: &str) -> String {
    oxirelay::smtp::sasl::encode_base64(format!("\0{user}\0{password}").as_bytes())
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
