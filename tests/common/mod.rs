//! The end-to-end harness: the real sandbox (authorization server + SMTP
//! server) on loopback, a relay account against it written to a real config
//! file with a real master key file and client-secret file, and the relay's
//! library (store, broker, client) on a real SQLite file.

#![allow(dead_code)]

use oxirelay::cli::Context;
use oxirelay::config::Config;
use oxirelay::message::{Composition, OutgoingMessage};
use oxirelay::sandbox::{Sandbox, SandboxOptions, USER};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);
pub const ACCOUNT: &str = "acct";

pub struct Harness {
    pub sandbox: Sandbox,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub context: Context,
}

pub fn write_private(path: &Path, contents: &str) {
    std::fs::write(path, contents).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

impl Harness {
    /// `grant`: "client_credentials" or "authorization_code"; `sasl`:
    /// "xoauth2" or "oauthbearer".
    pub async fn start(grant: &str, sasl: &str, token_ttl: Duration) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = SandboxOptions::new(dir.path().join("sandbox"));
        options.token_ttl = token_ttl;
        options.auto_approve = true;
        let sandbox = Sandbox::start(options).await.expect("sandbox starts");
        write_private(
            &dir.path().join("master.key"),
            &oxirelay::secret::generate_master_key(),
        );
        write_private(
            &dir.path().join("client.secret"),
            sandbox.client_secret.expose(),
        );
        let account = sandbox
            .account_toml(ACCOUNT, grant, "file:client.secret")
            .replace("sasl = \"oauthbearer\"", &format!("sasl = \"{sasl}\""));
        let text = format!(
            "[store]\nurl = \"sqlite://oxirelay.db\"\n\n[secrets]\nmaster_key = \"file:master.key\"\n\n{account}"
        );
        let config_path = dir.path().join("oxirelay.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let context = Self::load(&config_path).await;
        Harness {
            sandbox,
            dir,
            config_path,
            context,
        }
    }

    async fn load(path: &Path) -> Context {
        let config = Config::load(path).expect("the harness config is valid");
        Context::from_config(config).await.expect("context")
    }

    /// A fresh store, key and broker from the same files: a relay restart.
    pub async fn restart(&mut self) {
        self.context = Self::load(&self.config_path).await;
    }

    pub fn account(&self) -> oxirelay::oauth::account::Account {
        self.context
            .broker
            .account(ACCOUNT)
            .expect("account")
            .clone()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("oxirelay.db")
    }

    /// Consent through the sandbox's auto-approve (what `account login` does).
    pub async fn consent(&self) -> oxirelay::oauth::broker::AccessToken {
        self.sandbox
            .grant_consent(&self.context.broker, ACCOUNT)
            .await
            .expect("consent")
    }

    /// The account's stored (refresh, access) tokens, unsealed.
    pub async fn stored_tokens(
        &self,
    ) -> (
        Option<oxirelay::secret::Secret>,
        Option<oxirelay::secret::Secret>,
    ) {
        let record = self
            .context
            .store
            .token_record(ACCOUNT)
            .await
            .expect("store")
            .expect("a token record");
        let context = oxirelay::oauth::account::seal_context(ACCOUNT);
        let open = |sealed: Option<&oxirelay::secret::SealedValue>| {
            sealed.map(|s| self.context.key.open_secret(&context, s).expect("opens"))
        };
        (
            open(record.refresh_token.as_ref()),
            open(record.access_token.as_ref()),
        )
    }

    /// Sends message `n` now through the account.
    pub async fn send(
        &self,
        n: usize,
    ) -> Result<oxirelay::smtp::client::SendReport, oxirelay::delivery::upstream::UpstreamError>
    {
        oxirelay::delivery::upstream::send_now(&self.context.broker, &self.account(), &message(n))
            .await
    }

    /// Waits (on the clock: this is what is being tested) until the
    /// account's stored access token is due for refresh.
    pub async fn wait_until_refresh_due(&self) {
        let record = self
            .context
            .store
            .token_record(ACCOUNT)
            .await
            .expect("store")
            .expect("a token record");
        let due = record.access_refresh_at.expect("a refresh time");
        let wait = (due + 1 - oxirelay::clock::now_unix()).max(0) as u64;
        assert!(wait <= 30, "refresh due too far ahead ({wait}s)");
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// A message whose body has lines that begin with dots (dot-stuffing).
pub fn message(n: usize) -> OutgoingMessage {
    Composition {
        from: USER.into(),
        to: vec![format!("rcpt{n}@example.net")],
        subject: format!("test message {n}"),
        body: format!(".\n..\n.leading dot line\nbody of message {n}\n.\n"),
        ..Default::default()
    }
    .build()
    .expect("message builds")
}
