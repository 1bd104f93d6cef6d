//! Helpers shared by the `smtpd_*` integration tests: a sandbox SMTP server
//! on 127.0.0.1:0 with a fixed-token verifier, and a small line-level SMTP
//! client over real TCP that upgrades to real TLS (trusting the sandbox CA).

#![allow(dead_code)]

#[path = "../line_client/mod.rs"]
mod line_client;
// Not every test crate that includes this module uses every helper.
#[allow(unused_imports)]
pub use line_client::{Client, base64, oauthbearer, xoauth2};

use oxirelay::sandbox::certs::SandboxCa;
use oxirelay::sandbox::smtp::{
    BearerVerifier, RunningSandboxSmtp, SandboxSmtp, SandboxSmtpConfig, VerifiedBearer,
};
use oxirelay::secret::Secret;
use oxirelay::smtp::sasl::OAuthErrorStatus;
use oxirelay::smtp::server::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
                expires_at: None,
            },
        );
        tokens.insert(
            NO_SCOPE_TOKEN.to_string(),
            VerifiedBearer {
                subject: ALICE.into(),
                scopes: vec!["openid".into()],
                expires_at: None,
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

/// The sandbox's own ways in, on the shared line client.
impl Client {
    pub async fn connect(sandbox: &Sandbox) -> Client {
        Client::connect_addr(sandbox.server.addr(), WAIT).await
    }

    /// Connects and does the TLS handshake at once (implicit TLS).
    pub async fn connect_tls(sandbox: &Sandbox) -> Client {
        let mut client = Client::connect(sandbox).await;
        client.handshake(sandbox.server.ca_file()).await;
        client
    }

    /// Greeting, EHLO, STARTTLS, handshake, EHLO again, trusting the
    /// sandbox's CA. Returns the second EHLO reply.
    pub async fn greet_with_starttls(&mut self, sandbox: &Sandbox) -> String {
        self.greet_with_starttls_trusting(sandbox.server.ca_file())
            .await
    }
}
