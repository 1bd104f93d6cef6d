//! The relay as a user runs it: a config file with its master key and
//! client-secret files in a temp dir, and the built binary
//! (`env!("CARGO_BIN_EXE_oxirelay")`) for `send`, `token` and `serve`.

use super::tools::{describe, run, write_private};
use super::{USER, WAIT};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The built relay binary.
pub const OXIRELAY: &str = env!("CARGO_BIN_EXE_oxirelay");

/// One upstream `[[account]]` against a generic OAuth2 provider.
pub struct UpstreamAccount<'a> {
    pub name: &'a str,
    /// `xoauth2` or `oauthbearer`.
    pub sasl: &'a str,
    /// `starttls` or `implicit`.
    pub tls: &'a str,
    pub smtp: SocketAddr,
    pub ca_file: &'a Path,
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub scopes: Vec<String>,
}

impl UpstreamAccount<'_> {
    /// The TOML; the client secret is the file `client_secret_file`.
    pub fn toml(&self, client_secret_file: &Path) -> String {
        let scopes: Vec<String> = self.scopes.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            r#"
[[account]]
name = "{name}"
provider = "generic"
grant = "client_credentials"
issuer = "{issuer}"
client_id = "{client_id}"
client_secret = "file:{secret}"
user = "{USER}"
scopes = [{scopes}]
smtp = "{smtp}"
tls = "{tls}"
ca_file = "{ca}"
sasl = "{sasl}"
insecure_loopback = true   # the sandbox issuer is plain HTTP on 127.0.0.1
"#,
            name = self.name,
            issuer = self.issuer,
            client_id = self.client_id,
            secret = client_secret_file.display(),
            scopes = scopes.join(", "),
            smtp = self.smtp,
            tls = self.tls,
            ca = self.ca_file.display(),
            sasl = self.sasl,
        )
    }
}

/// A relay config on disk: `[store]` (SQLite in the dir), `[secrets]` (a
/// master key file) and whatever the test adds.
pub struct RelayConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl RelayConfig {
    /// `body` is the rest of the config (accounts, listeners, users);
    /// `client_secret` goes to the file `client.secret` that accounts
    /// reference (see [`RelayConfig::secret_file`]).
    pub fn write(client_secret: &str, body: impl FnOnce(&Path) -> String) -> RelayConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_file = dir.path().join("client.secret");
        write_private(&secret_file, client_secret.as_bytes());
        write_private(
            &dir.path().join("master.key"),
            oxirelay::secret::generate_master_key().as_bytes(),
        );
        let text = format!(
            "[store]\nurl = \"sqlite://{db}\"\n\n[secrets]\nmaster_key = \"file:{key}\"\n{body}",
            db = dir.path().join("oxirelay.db").display(),
            key = dir.path().join("master.key").display(),
            body = body(&secret_file),
        );
        let path = dir.path().join("oxirelay.toml");
        std::fs::write(&path, text).expect("write the relay config");
        RelayConfig { dir, path }
    }

    pub fn secret_file(&self) -> PathBuf {
        self.dir.path().join("client.secret")
    }

    /// `oxirelay -c CONFIG ARGS...`, to completion.
    pub async fn oxirelay(&self, args: &[&str]) -> Output {
        run(Command::new(OXIRELAY)
            .arg("-c")
            .arg(&self.path)
            .args(args)
            .env_remove("OXIRELAY_MASTER_KEY")
            .env("RUST_LOG", "warn"))
        .await
    }

    /// `oxirelay send --account ACCOUNT --file MESSAGE`: the one-shot path.
    pub async fn send(&self, account: &str, message: &[u8]) -> Output {
        let file = self
            .dir
            .path()
            .join(format!("{account}-{}.eml", rand::random::<u32>()));
        std::fs::write(&file, message).expect("write the message");
        self.oxirelay(&[
            "send",
            "--account",
            account,
            "--from",
            USER,
            "--to",
            super::RECIPIENT,
            "--file",
            file.to_str().expect("UTF-8 path"),
        ])
        .await
    }

    /// `oxirelay token ACCOUNT`: the current access token (never printed).
    pub async fn token(&self, account: &str) -> String {
        let output = self.oxirelay(&["token", account]).await;
        assert!(
            output.status.success(),
            "oxirelay token failed: {}",
            describe(&output)
        );
        let token = String::from_utf8(output.stdout).expect("UTF-8 token");
        let token = token.trim_end_matches('\n').to_string();
        assert!(
            !token.is_empty() && !token.contains(char::is_whitespace),
            "oxirelay token printed more than a token"
        );
        token
    }

    /// The command line a program runs to get a token (`passwordeval`).
    pub fn token_command(&self, account: &str) -> String {
        format!("{OXIRELAY} -c {} token {account}", self.path.display())
    }
}

/// A running `oxirelay serve`: listeners in config order, delivery workers.
pub struct ServedRelay {
    child: Child,
    pub listeners: Vec<SocketAddr>,
    output: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ServedRelay {
    pub async fn start(config: &RelayConfig) -> ServedRelay {
        let mut child = Command::new(OXIRELAY)
            .arg("-c")
            .arg(&config.path)
            .args(["serve", "--workers", "2"])
            .env_remove("OXIRELAY_MASTER_KEY")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("oxirelay serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, mut output) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut listeners = Vec::new();
        let ready = async {
            while let Some(line) = output.recv().await {
                if let Some(addr) = line.strip_prefix("oxirelay: listening on ") {
                    listeners.push(addr.parse().expect("a listening address"));
                }
                if line.starts_with("oxirelay: delivering with") {
                    return true;
                }
            }
            false
        };
        let started = tokio::time::timeout(WAIT, ready).await;
        assert!(
            matches!(started, Ok(true)),
            "oxirelay serve did not start within {WAIT:?}"
        );
        ServedRelay {
            child,
            listeners,
            output,
        }
    }

    /// Waits until the relay prints a line containing `needle`.
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.output.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("oxirelay serve did not print {needle:?} within {WAIT:?}"),
        }
    }

    /// SIGTERM and a clean exit (what an operator's stop does).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("oxirelay serve stops in time after SIGTERM")
            .expect("wait");
        assert!(status.success(), "oxirelay serve exited with {status}");
    }
}
