//! `oxirelay serve` with plaintext listeners for devices that cannot
//! authenticate (`allow_ips` + `networks`, README "Running the relay") in
//! front of the full sandbox, and the third-party clients' ways of
//! submitting to them without AUTH from a chosen loopback address.
//!
//! On Linux every 127.0.0.0/8 address is loopback, so "another host" is a
//! client bound to 127.0.0.2 or 127.0.0.3. Postfix's smtp-source cannot
//! bind a source address (it connects from 127.0.0.1), so two listeners
//! exist for it: one whose network excludes 127.0.0.1 and one whose
//! allow_ips does.

use super::relay::{RelayConfig, ServedRelay};
use super::tools::run;
use super::{RECIPIENT, USER};
use oxirelay::sandbox::{Sandbox, SandboxOptions};
use std::process::Output;
use tokio::process::Command;

/// The account the networks deliver through (the sandbox).
pub const ACCOUNT: &str = "upstream";
/// The devices' address: in the network "devices".
pub const DEVICE_IP: &str = "127.0.0.1";
/// Allowed to connect to the devices' listener, but not in its network.
pub const OTHER_HOST_IP: &str = "127.0.0.2";
/// Outside the devices' listener's allow_ips.
pub const OUTSIDE_IP: &str = "127.0.0.3";

/// The relay's listeners, in config order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// allow_ips 127.0.0.1 and .2; network "devices" = 127.0.0.1.
    Devices,
    /// allow_ips 127.0.0.1 and .2; network "printers" = 127.0.0.2 only, so a
    /// client on 127.0.0.1 may connect but must authenticate.
    PrintersOnly,
    /// allow_ips 127.0.0.2 only: a client on 127.0.0.1 is refused at connect.
    Elsewhere,
}

pub struct NetworkRelay {
    pub sandbox: Sandbox,
    pub config: RelayConfig,
    pub relay: ServedRelay,
    _sandbox_dir: tempfile::TempDir,
}

impl NetworkRelay {
    pub async fn start() -> NetworkRelay {
        let sandbox_dir = tempfile::tempdir().expect("tempdir");
        let mut options = SandboxOptions::new(sandbox_dir.path());
        options.auto_approve = true;
        let sandbox = Sandbox::start(options).await.expect("sandbox starts");
        let config = RelayConfig::write(sandbox.client_secret.expose(), |secret| {
            format!(
                r#"
{account}
[[listener]]
addr = "127.0.0.1:0"
tls = "none"
allow_ips = ["{DEVICE_IP}", "{OTHER_HOST_IP}"]
networks = ["devices"]

[[listener]]
addr = "127.0.0.1:0"
tls = "none"
allow_ips = ["127.0.0.1", "127.0.0.2"]
networks = ["printers"]

[[listener]]
addr = "127.0.0.1:0"
tls = "none"
allow_ips = ["127.0.0.2"]
networks = ["printers"]

[[network]]
name = "devices"
addrs = ["{DEVICE_IP}/32"]
account = "{ACCOUNT}"
allowed_from = ["{USER}"]

[[network]]
name = "printers"
addrs = ["127.0.0.2/32"]
account = "{ACCOUNT}"
allowed_from = ["{USER}"]
"#,
                account = sandbox.account_toml(
                    ACCOUNT,
                    "client_credentials",
                    &format!("file:{}", secret.display())
                ),
            )
        });
        let relay = ServedRelay::start(&config).await;
        assert_eq!(relay.listeners.len(), 3, "three listeners");
        NetworkRelay {
            sandbox,
            config,
            relay,
            _sandbox_dir: sandbox_dir,
        }
    }

    pub fn port(&self, listener: Listener) -> u16 {
        self.relay.listeners[listener as usize].port()
    }

    /// The message that reached the sandbox with `subject`, waiting until
    /// `n` messages arrived there in all.
    pub async fn arrived(&self, n: usize, subject: &str) -> Vec<u8> {
        super::submission::arrived(&self.sandbox, n, subject).await
    }

    /// What the relay's queue holds, submitter by submitter.
    pub async fn queued_by(&self) -> Vec<String> {
        let store = oxirelay::store::open(&format!(
            "sqlite://{}",
            self.config.dir.path().join("oxirelay.db").display()
        ))
        .await
        .expect("store");
        store
            .messages(None, 100)
            .await
            .expect("messages")
            .into_iter()
            .map(|m| m.submitted_by)
            .collect()
    }

    pub async fn stop(self) {
        self.relay.stop().await;
        self.sandbox.shutdown().await;
    }
}

/// The clients that submit without AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Swaks,
    Curl,
    Smtplib,
    SmtpSource,
}

/// Where Debian's postfix package puts smtp-source.
pub const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";

impl Client {
    pub fn program(self) -> &'static str {
        match self {
            Client::Swaks => "swaks",
            Client::Curl => "curl",
            Client::Smtplib => "python3",
            Client::SmtpSource => SMTP_SOURCE,
        }
    }

    /// Whether it is installed (saying SKIPPED when not). swaks needs no
    /// TLS here, so no Net::SSLeay either.
    pub fn installed(self) -> bool {
        match self {
            // smtp-source has no --version: it is there or not.
            Client::SmtpSource => {
                let found = std::path::Path::new(SMTP_SOURCE).is_file();
                if !found {
                    eprintln!(
                        "SKIPPED: {SMTP_SOURCE} is not installed (Debian package postfix); run scripts/install-test-tools"
                    );
                }
                found
            }
            other => super::have(other.program()),
        }
    }

    /// Whether it can choose its source address.
    pub fn binds_source(self) -> bool {
        self != Client::SmtpSource
    }
}

/// How a refused submission shows in `smtplib`'s output.
const SMTPLIB: &str = r#"
import smtplib, sys
host, port, source, sender, rcpt, path = sys.argv[1:7]
try:
    smtp = smtplib.SMTP(host, int(port), local_hostname="python.test", timeout=15,
                        source_address=(source, 0))
except smtplib.SMTPConnectError as e:
    print("refused at connect:", e.smtp_code, e.smtp_error.decode())
    sys.exit(3)
with smtp:
    try:
        refused = smtp.sendmail(sender, [rcpt], open(path, "rb").read())
    except smtplib.SMTPSenderRefused as e:
        print("refused at MAIL:", e.smtp_code, e.smtp_error.decode())
        sys.exit(3)
    assert not refused, refused
print("sent")
"#;

/// Submits `message` without AUTH with `client` from `source` (ignored by
/// smtp-source, which always connects from 127.0.0.1) to `port`.
pub async fn submit(
    relay: &NetworkRelay,
    client: Client,
    source: &str,
    port: u16,
    message: &[u8],
) -> Output {
    let dir = relay.config.dir.path();
    let file = dir.join(format!(
        "{}-{}.eml",
        client.program().rsplit('/').next().expect("name"),
        rand::random::<u32>()
    ));
    let file_arg = file.to_str().expect("UTF-8").to_string();
    let server = format!("127.0.0.1:{port}");
    match client {
        Client::Swaks => {
            // swaks ends DATA with CRLF "." CRLF after the text it is given.
            std::fs::write(&file, message.strip_suffix(b"\r\n").expect("CRLF")).expect("write");
            run(Command::new("swaks").args([
                "--server",
                &server,
                "--local-interface",
                source,
                "--ehlo",
                "swaks.test",
                "--from",
                USER,
                "--to",
                RECIPIENT,
                "--data",
                &format!("@{file_arg}"),
            ]))
            .await
        }
        Client::Curl => {
            std::fs::write(&file, message).expect("write");
            run(Command::new("curl").args([
                "--verbose",
                "--url",
                &format!("smtp://{server}/curl.test"),
                "--interface",
                source,
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
            std::fs::write(&file, message).expect("write");
            run(Command::new("python3").args([
                "-c",
                SMTPLIB,
                "127.0.0.1",
                &port.to_string(),
                source,
                USER,
                RECIPIENT,
                &file_arg,
            ]))
            .await
        }
        Client::SmtpSource => {
            // -F: the file's lines, dot-stuffed, each ended with CRLF; so the
            // file has bare LF lines. One message, one session, HELO with -M.
            let text = String::from_utf8(message.to_vec()).expect("UTF-8");
            std::fs::write(&file, text.replace("\r\n", "\n")).expect("write");
            run(Command::new(SMTP_SOURCE).args([
                "-m",
                "1",
                "-s",
                "1",
                "-M",
                "smtp-source.test",
                "-f",
                USER,
                "-t",
                RECIPIENT,
                "-F",
                &file_arg,
                &format!("inet:{server}"),
            ]))
            .await
        }
    }
}
