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
        Self::start_with(grant, sasl, token_ttl, |_| {}).await
    }

    /// As [`Harness::start`], with the sandbox's options changed first.
    pub async fn start_with(
        grant: &str,
        sasl: &str,
        token_ttl: Duration,
        configure: impl FnOnce(&mut SandboxOptions),
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = SandboxOptions::new(dir.path().join("sandbox"));
        options.token_ttl = token_ttl;
        options.auto_approve = true;
        // The device flow's polling interval: short, so device tests are quick.
        options.device_interval = Duration::from_secs(1);
        // The server keeps its interval; the client's own +5 s is what the
        // device tests measure.
        options.slow_down_increment = Duration::ZERO;
        configure(&mut options);
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

/// What a client needs to submit to the relay that `Harness::add_relay` configured.
pub struct RelayAccess {
    pub user: String,
    pub password: String,
    pub ca_file: PathBuf,
}

impl Harness {
    /// Adds a STARTTLS listener on 127.0.0.1 (port chosen at start) and a
    /// submission user allowed to send as the sandbox mailbox.
    pub fn add_relay(&self) -> RelayAccess {
        let dir = self.dir.path();
        let ca = oxirelay::sandbox::certs::SandboxCa::generate().expect("CA");
        ca.write_leaf(
            &dir.join("listener-cert.pem"),
            &dir.join("listener-key.pem"),
        )
        .expect("leaf");
        ca.write_ca(&dir.join("listener-ca.pem")).expect("ca");
        let password = oxirelay::users::generate_app_password();
        let hash = oxirelay::users::hash_password(&password).expect("hash");
        let extra = format!(
            "\n[[listener]]\naddr = \"127.0.0.1:0\"\ntls = \"starttls\"\ncert = \"listener-cert.pem\"\nkey = \"listener-key.pem\"\n\n\
             [[user]]\nname = \"app\"\npassword_hash = \"{hash}\"\nallowed_from = [\"{USER}\"]\naccount = \"{ACCOUNT}\"\n"
        );
        let mut text = std::fs::read_to_string(&self.config_path).expect("config");
        text.push_str(&extra);
        std::fs::write(&self.config_path, text).expect("write config");
        RelayAccess {
            user: "app".into(),
            password: password.expose().to_string(),
            ca_file: dir.join("listener-ca.pem"),
        }
    }
}

/// The addresses of `Harness::add_network_relay`: 127.0.0.1 is a device of
/// the network, 127.0.0.2 may connect but is not in it, 127.0.0.3 may not
/// connect at all.
pub const DEVICE_IP: [u8; 4] = [127, 0, 0, 1];
pub const OTHER_HOST_IP: [u8; 4] = [127, 0, 0, 2];
pub const OUTSIDE_IP: [u8; 4] = [127, 0, 0, 3];

impl Harness {
    /// Two plaintext listeners for devices that cannot authenticate: the
    /// first maps the network "devices" (127.0.0.1, sending as the sandbox
    /// user) to the account, the second has the same allow_ips and no
    /// mapping.
    pub fn add_network_relay(&self) {
        let extra = format!(
            "\n[[listener]]\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nallow_ips = [\"127.0.0.1\", \"127.0.0.2\"]\nnetworks = [\"devices\"]\n\n\
             [[listener]]\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nallow_ips = [\"127.0.0.1\", \"127.0.0.2\"]\n\n\
             [[network]]\nname = \"devices\"\naddrs = [\"127.0.0.1/32\"]\naccount = \"{ACCOUNT}\"\nallowed_from = [\"{USER}\"]\n"
        );
        let mut text = std::fs::read_to_string(&self.config_path).expect("config");
        text.push_str(&extra);
        std::fs::write(&self.config_path, text).expect("write config");
    }
}

/// Whether a program is installed (it answers `--version`). A test that
/// needs it and finds it missing says so, in the words README promises,
/// and returns: CI installs everything with `scripts/install-test-tools`,
/// so CI never skips.
pub fn have(program: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("SKIPPED: {program} is not installed; run scripts/install-test-tools");
    }
    found
}

/// A running `oxirelay serve` child process.
pub struct RelayProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    output: std::sync::mpsc::Receiver<String>,
    /// Every line read so far, in the order read.
    transcript: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RelayProcess {
    /// `serve` with its standard output read here and its logs (standard
    /// error) passed through to the test's.
    pub fn start(config: &Path, extra_args: &[&str]) -> RelayProcess {
        Self::spawn(config, extra_args, None)
    }

    /// `serve` at `OXIRELAY_LOG=filter`, its logs read here as well, in the
    /// same stream as its standard output ([`RelayProcess::wait_for`],
    /// [`RelayProcess::transcript`]).
    pub fn start_logged(config: &Path, extra_args: &[&str], filter: &str) -> RelayProcess {
        Self::spawn(config, extra_args, Some(filter))
    }

    fn spawn(config: &Path, extra_args: &[&str], log_filter: Option<&str>) -> RelayProcess {
        use std::io::BufRead;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"));
        command
            .arg("-c")
            .arg(config)
            .arg("serve")
            .args(extra_args)
            .stdout(std::process::Stdio::piped());
        match log_filter {
            Some(filter) => command
                .env("OXIRELAY_LOG", filter)
                .stderr(std::process::Stdio::piped()),
            None => command.stderr(std::process::Stdio::inherit()),
        };
        let mut child = command.spawn().expect("serve starts");
        let (sender, output) = std::sync::mpsc::channel();
        let transcript = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut streams: Vec<Box<dyn std::io::Read + Send>> =
            vec![Box::new(child.stdout.take().expect("stdout"))];
        if let Some(stderr) = child.stderr.take() {
            streams.push(Box::new(stderr));
        }
        for stream in streams {
            let (sender, transcript) = (sender.clone(), transcript.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    transcript
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line.clone());
                    // The receiver may be gone; keep draining the pipe so
                    // the relay never blocks writing its logs.
                    let _ = sender.send(line);
                }
            });
        }
        let mut relay = RelayProcess {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
            output,
            transcript,
        };
        let line = relay.wait_for_line("oxirelay: listening on ");
        relay.addr = line["oxirelay: listening on ".len()..]
            .parse()
            .expect("an address");
        relay
    }

    /// Waits until the relay prints a line starting with `prefix`.
    pub fn wait_for_line(&self, prefix: &str) -> String {
        self.wait_for(&[prefix], |line, pattern| line.starts_with(pattern))
            .remove(0)
    }

    /// Waits until the relay has printed (or logged) a line containing each
    /// of `patterns`, in any order (its output and its logs are two pipes);
    /// returns those lines, in the order of `patterns`.
    pub fn wait_for_all(&self, patterns: &[&str]) -> Vec<String> {
        self.wait_for(patterns, |line, pattern| line.contains(pattern))
    }

    fn wait_for(&self, patterns: &[&str], matches: impl Fn(&str, &str) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + WAIT;
        let mut found: Vec<Option<String>> = vec![None; patterns.len()];
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.output.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "serve did not print {:?} in time",
                    patterns
                        .iter()
                        .zip(&found)
                        .filter(|(_, f)| f.is_none())
                        .map(|(p, _)| p)
                        .collect::<Vec<_>>()
                )
            });
            for (pattern, slot) in patterns.iter().zip(found.iter_mut()) {
                if slot.is_none() && matches(&line, pattern) {
                    *slot = Some(line.clone());
                }
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Every line the relay printed (and, started logged, logged) so far.
    pub fn transcript(&self) -> Vec<String> {
        self.transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not stop within {WAIT:?} of SIGTERM"
            );
            // Waiting for a child process to exit: there is no event to
            // wait on portably without blocking the runtime's thread.
            let _ = self.output.recv_timeout(Duration::from_millis(50));
        }
    }
}

impl Drop for RelayProcess {
    /// A failing test must not leave a relay running (it would hold the
    /// test's output open and a port).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
