//! The relay's submission side met by third-party clients: `oxirelay serve`
//! (the built binary) with a STARTTLS and an implicit-TLS `[[listener]]`
//! (certificate from a generated CA), a password `[[user]]`, a bearer
//! identity for the sandbox mailbox (`[[issuer]]`), and the full sandbox
//! (authorization server + OAuth2-enforcing SMTP server) as its upstream
//! account, so each submitted message can be followed to the sandbox inbox.
//!
//! [`Client`] is how each third-party client is driven; one function,
//! [`submit`], runs any of them with any TLS mode and mechanism.

use super::relay::{RelayConfig, ServedRelay};
use super::tools::{run, run_with_input, write_private};
use super::{RECIPIENT, USER, WAIT};
use oxirelay::sandbox::certs::SandboxCa;
use oxirelay::sandbox::{CLIENT_ID, SMTP_SCOPE, Sandbox, SandboxOptions};
use std::path::PathBuf;
use std::process::Output;
use tokio::process::Command;

/// The password user's name.
pub const DEVICE: &str = "scanner";
/// Its account (the sandbox).
pub const ACCOUNT: &str = "upstream";

/// How the client protects the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Starttls,
    Implicit,
}

/// The password mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Plain,
    Login,
}

impl Auth {
    pub fn name(self) -> &'static str {
        match self {
            Auth::Plain => "PLAIN",
            Auth::Login => "LOGIN",
        }
    }
}

/// Every combination the password clients are tested with.
pub const COMBINATIONS: [(Tls, Auth); 4] = [
    (Tls::Starttls, Auth::Plain),
    (Tls::Starttls, Auth::Login),
    (Tls::Implicit, Auth::Plain),
    (Tls::Implicit, Auth::Login),
];

/// The third-party submission clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Swaks,
    Msmtp,
    Curl,
    Smtplib,
}

impl Client {
    pub fn program(self) -> &'static str {
        match self {
            Client::Swaks => "swaks",
            Client::Msmtp => "msmtp",
            Client::Curl => "curl",
            Client::Smtplib => "python3",
        }
    }

    /// Whether it is installed (saying SKIPPED when not).
    pub fn installed(self) -> bool {
        match self {
            Client::Swaks => super::tools::have_swaks(),
            other => super::have(other.program()),
        }
    }
}

pub struct SubmissionRelay {
    pub sandbox: Sandbox,
    pub config: RelayConfig,
    pub relay: ServedRelay,
    pub password: String,
    /// The CA the listeners' certificate chains to.
    pub ca_file: PathBuf,
    _sandbox_dir: tempfile::TempDir,
}

impl SubmissionRelay {
    pub async fn start() -> SubmissionRelay {
        let sandbox_dir = tempfile::tempdir().expect("tempdir");
        let mut options = SandboxOptions::new(sandbox_dir.path());
        options.auto_approve = true;
        let sandbox = Sandbox::start(options).await.expect("sandbox starts");
        let password = oxirelay::users::generate_app_password();
        let hash = oxirelay::users::hash_password(&password).expect("hash");
        let ca = SandboxCa::generate().expect("CA");
        let config = RelayConfig::write(sandbox.client_secret.expose(), |secret| {
            let dir = secret.parent().expect("config dir");
            let (cert, key) = (dir.join("listener-cert.pem"), dir.join("listener-key.pem"));
            ca.write_leaf(&cert, &key).expect("listener certificate");
            ca.write_ca(&dir.join("listener-ca.pem")).expect("CA file");
            format!(
                r#"
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

[[user]]
name = "{DEVICE}"
password_hash = "{hash}"
allowed_from = ["{USER}"]
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
"#,
                account = sandbox.account_toml(
                    ACCOUNT,
                    "client_credentials",
                    &format!("file:{}", secret.display())
                ),
                cert = cert.display(),
                key = key.display(),
                issuer = sandbox.auth.issuer_id(),
            )
        });
        let ca_file = config.dir.path().join("listener-ca.pem");
        let relay = ServedRelay::start(&config).await;
        assert_eq!(relay.listeners.len(), 2, "two listeners");
        SubmissionRelay {
            sandbox,
            config,
            relay,
            password: password.expose().to_string(),
            ca_file,
            _sandbox_dir: sandbox_dir,
        }
    }

    pub fn port(&self, tls: Tls) -> u16 {
        self.relay.listeners[match tls {
            Tls::Starttls => 0,
            Tls::Implicit => 1,
        }]
        .port()
    }

    /// The message that reached the sandbox's SMTP server with `subject`,
    /// waiting until `n` messages arrived there in all.
    pub async fn arrived(&self, n: usize, subject: &str) -> Vec<u8> {
        arrived(&self.sandbox, n, subject).await
    }

    /// A client-credentials token for the sandbox mailbox from the sandbox's
    /// authorization server (what an OAuth-capable device would hold).
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
            .expect("an access token")
            .to_string()
    }

    pub async fn stop(self) {
        self.relay.stop().await;
        self.sandbox.shutdown().await;
    }
}

/// The message that reached `sandbox`'s SMTP server with `subject`, from
/// [`USER`] to [`RECIPIENT`], waiting until `n` messages arrived in all.
pub async fn arrived(sandbox: &Sandbox, n: usize, subject: &str) -> Vec<u8> {
    let inbox = sandbox.smtp.inbox();
    let entries = inbox
        .wait_for_count(n, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{n} messages did not reach the sandbox: {e}"));
    let entry = entries
        .iter()
        .find(|e| e.subject.as_deref() == Some(subject))
        .unwrap_or_else(|| panic!("no message {subject:?} at the sandbox"));
    assert_eq!(entry.mail_from, USER);
    assert_eq!(entry.rcpt_to, vec![RECIPIENT.to_string()]);
    inbox.read(&entry.id).expect("read")
}

const SMTPLIB: &str = r#"
import smtplib, ssl, sys
host, port, ca, tls, mechanism, user, password, sender, rcpt, path = sys.argv[1:11]
context = ssl.create_default_context(cafile=ca)
if tls == "implicit":
    smtp = smtplib.SMTP_SSL(host, int(port), local_hostname="python.test", context=context, timeout=15)
else:
    smtp = smtplib.SMTP(host, int(port), local_hostname="python.test", timeout=15)
    smtp.starttls(context=context)
with smtp:
    smtp.ehlo()
    smtp.user, smtp.password = user, password
    method = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login}[mechanism]
    smtp.auth(mechanism, method)
    refused = smtp.sendmail(sender, [rcpt], open(path, "rb").read())
    assert not refused, refused
print("sent")
"#;

/// Submits `message` with `client` to the relay's listener for `tls`,
/// authenticating as the password user with `auth`.
pub async fn submit(
    relay: &SubmissionRelay,
    client: Client,
    tls: Tls,
    auth: Auth,
    message: &[u8],
) -> Output {
    let dir = relay.config.dir.path();
    let tag = format!(
        "{}-{:?}-{:?}-{}",
        client.program(),
        tls,
        auth,
        rand::random::<u32>()
    );
    let file = dir.join(format!("{tag}.eml"));
    std::fs::write(&file, message).expect("write message");
    let port = relay.port(tls).to_string();
    let ca = relay.ca_file.to_str().expect("UTF-8").to_string();
    let file_arg = file.to_str().expect("UTF-8").to_string();
    match client {
        Client::Swaks => {
            // swaks ends DATA with CRLF "." CRLF after the text it is given,
            // so it is given the message without its last CRLF.
            std::fs::write(&file, message.strip_suffix(b"\r\n").expect("CRLF")).expect("write");
            run(Command::new("swaks").args([
                "--server",
                &format!("127.0.0.1:{port}"),
                match tls {
                    Tls::Starttls => "--tls",
                    Tls::Implicit => "--tls-on-connect",
                },
                "--tls-verify",
                "--tls-ca-path",
                &ca,
                "--auth",
                auth.name(),
                "--auth-user",
                DEVICE,
                "--auth-password",
                &relay.password,
                "--from",
                USER,
                "--to",
                RECIPIENT,
                "--data",
                &format!("@{file_arg}"),
            ]))
            .await
        }
        Client::Msmtp => {
            let rc = dir.join(format!("{tag}.msmtprc"));
            let text = format!(
                "account relay\nhost 127.0.0.1\nport {port}\ntls on\ntls_starttls {starttls}\n\
                 tls_trust_file {ca}\nauth {auth}\nuser {DEVICE}\npassword {password}\nfrom {USER}\n",
                starttls = if tls == Tls::Starttls { "on" } else { "off" },
                auth = auth.name().to_lowercase(),
                password = relay.password,
            );
            // msmtp refuses a config with a password that others may read.
            write_private(&rc, text.as_bytes());
            run_with_input(
                Command::new("msmtp")
                    .arg("-C")
                    .arg(&rc)
                    .args(["-a", "relay", RECIPIENT]),
                message,
            )
            .await
        }
        Client::Curl => {
            let scheme = match tls {
                Tls::Starttls => "smtp",
                Tls::Implicit => "smtps",
            };
            run(Command::new("curl").args([
                "--silent",
                "--show-error",
                "--url",
                &format!("{scheme}://127.0.0.1:{port}"),
                "--ssl-reqd",
                "--cacert",
                &ca,
                "--user",
                &format!("{DEVICE}:{}", relay.password),
                "--login-options",
                &format!("AUTH={}", auth.name()),
                "--mail-from",
                USER,
                "--mail-rcpt",
                RECIPIENT,
                "--upload-file",
                &file_arg,
            ]))
            .await
        }
        Client::Smtplib => {
            run(Command::new("python3").args([
                "-c",
                SMTPLIB,
                "localhost",
                &port,
                &ca,
                match tls {
                    Tls::Starttls => "starttls",
                    Tls::Implicit => "implicit",
                },
                auth.name(),
                DEVICE,
                &relay.password,
                USER,
                RECIPIENT,
                &file_arg,
            ]))
            .await
        }
    }
}
