//! Helpers shared by the `smtpd_*` integration tests: a sandbox SMTP server
//! on 127.0.0.1:0 with a fixed-token verifier, and a small line-level SMTP
//! client over real TCP that upgrades to real TLS (trusting the sandbox CA).

#![allow(dead_code)]

use oxirelay::sandbox::certs::SandboxCa;
use oxirelay::sandbox::smtp::{
    BearerVerifier, RunningSandboxSmtp, SandboxSmtp, SandboxSmtpConfig, VerifiedBearer,
};
use oxirelay::secret::Secret;
use oxirelay::smtp::sasl::OAuthErrorStatus;
use oxirelay::smtp::server::BoxFuture;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub const ALICE: &str = "alice@example.com";
/// Alice's token with the right scope.
pub const GOOD_TOKEN: &str = "good-token-for-alice";
/// Alice's token without `smtp.send`.
pub const NO_SCOPE_TOKEN: &str = "token-without-scope";

/// A verifier with a fixed table of tokens: enough to test the session and
/// the shell; JWT validation is `oauth::validate`'s business.
pub struct FixedTokens(HashMap<String, VerifiedBearer>);

impl FixedTokens {
    pub fn standard() -> Arc<Self> {
        let mut tokens = HashMap::new();
        tokens.insert(
            GOOD_TOKEN.to_string(),
            VerifiedBearer {
                subject: ALICE.into(),
                scopes: vec!["openid".into(), "smtp.send".into()],
            },
        );
        tokens.insert(
            NO_SCOPE_TOKEN.to_string(),
            VerifiedBearer {
                subject: ALICE.into(),
                scopes: vec!["openid".into()],
            },
        );
        Arc::new(FixedTokens(tokens))
    }
}

impl BearerVerifier for FixedTokens {
    fn verify<'a>(
        &'a self,
        token: &'a Secret,
    ) -> BoxFuture<'a, Result<VerifiedBearer, OAuthErrorStatus>> {
        Box::pin(async move {
            self.0.get(token.expose()).cloned().ok_or(OAuthErrorStatus {
                status: "invalid_token".into(),
                schemes: Some("bearer".into()),
                scope: None,
                openid_configuration: None,
            })
        })
    }
}

pub struct Sandbox {
    pub server: RunningSandboxSmtp,
    pub ca: Arc<SandboxCa>,
    pub dir: tempfile::TempDir,
}

pub async fn start_sandbox(adjust: impl FnOnce(&mut SandboxSmtpConfig)) -> Sandbox {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Arc::new(SandboxCa::generate().expect("CA"));
    let mut config = SandboxSmtpConfig::new(
        FixedTokens::standard(),
        dir.path().join("inbox"),
        ca.clone(),
    );
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let server = SandboxSmtp::start(listener, config)
        .await
        .expect("sandbox starts");
    Sandbox { server, ca, dir }
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
    pub async fn connect(sandbox: &Sandbox) -> Client {
        Client::connect_addr(sandbox.server.addr()).await
    }

    pub async fn connect_addr(addr: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Client {
            transport: Some(Transport::Plain(stream)),
            received: Vec::new(),
        }
    }

    /// Connects and does the TLS handshake at once (implicit TLS).
    pub async fn connect_tls(sandbox: &Sandbox) -> Client {
        let mut client = Client::connect(sandbox).await;
        client.handshake(sandbox.server.ca_file()).await;
        client
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
            .expect("handshake succeeds with the sandbox CA");
        self.transport = Some(Transport::Tls(Box::new(tls)));
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        let result = match self.transport.as_mut().expect("connected") {
            Transport::Plain(stream) => stream.write_all(bytes).await,
            Transport::Tls(stream) => {
                let written = stream.write_all(bytes).await;
                match written {
                    Ok(()) => stream.flush().await,
                    Err(error) => Err(error),
                }
            }
        };
        result.expect("write");
    }

    /// Reads once; 0 means the server closed (a reset counts as closed).
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

    /// Sends a command line and returns the reply.
    pub async fn command(&mut self, line: &str) -> String {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Waits until the server closes the connection; returns what it sent
    /// before closing.
    pub async fn closed(&mut self) -> String {
        tokio::time::timeout(WAIT, async { while self.read_some().await > 0 {} })
            .await
            .expect("the server closes in time");
        String::from_utf8_lossy(&std::mem::take(&mut self.received)).into_owned()
    }

    /// Greeting, EHLO, STARTTLS, handshake, EHLO again. Returns the second
    /// EHLO reply.
    pub async fn greet_with_starttls(&mut self, sandbox: &Sandbox) -> String {
        self.greet_with_starttls_trusting(sandbox.server.ca_file())
            .await
    }

    /// The same, trusting the CA certificate in `ca_file`.
    pub async fn greet_with_starttls_trusting(&mut self, ca_file: &Path) -> String {
        assert!(self.reply().await.starts_with("220 "));
        assert!(self.command("EHLO client.test").await.starts_with("250"));
        assert_eq!(
            self.command("STARTTLS").await,
            "220 2.0.0 Ready to start TLS\r\n"
        );
        self.handshake(ca_file).await;
        self.command("EHLO client.test").await
    }
}

/// The end of the first complete reply in `bytes` (after the CRLF of its
/// last line, the one with a space after the code).
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

pub fn base64(raw: &str) -> String {
    oxirelay::smtp::sasl::encode_base64(raw.as_bytes())
}

pub fn xoauth2(user: &str, token: &str) -> String {
    base64(&format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

pub fn oauthbearer(user: &str, token: &str) -> String {
    base64(&format!(
        "n,a={user},\x01host=localhost\x01port=587\x01auth=Bearer {token}\x01\x01"
    ))
}
