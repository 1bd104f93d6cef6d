//! `oxirelay sandbox`: run the sandbox provider standalone, to learn and to
//! test a setup without a provider account; `oxirelay sandbox inbox` shows
//! what its SMTP server received.

use crate::sandbox::inbox::Inbox;
use crate::sandbox::{Sandbox, SandboxOptions};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct SandboxArgs {
    #[command(subcommand)]
    pub command: Option<SandboxCommand>,
    /// Where the inbox, the CA certificate and the client secret go.
    #[arg(long, default_value = "oxirelay-sandbox", global = true)]
    pub dir: PathBuf,
    /// Access-token lifetime (short values show refreshes quickly).
    #[arg(long, default_value = "1h", value_parser = super::parse_duration)]
    pub token_ttl: Duration,
    /// The authorization server's address.
    #[arg(long, default_value = "127.0.0.1:9080")]
    pub http: SocketAddr,
    /// The SMTP server's address.
    #[arg(long, default_value = "127.0.0.1:2587")]
    pub smtp: SocketAddr,
    /// The Graph- and Gmail-shaped sending APIs' address (HTTPS).
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub api: SocketAddr,
    /// Approve every consent request without showing the page.
    #[arg(long)]
    pub auto_approve: bool,
    /// Concurrent SMTP sessions before the greeting is 421 (raise it for load tests).
    #[arg(long, default_value_t = 256)]
    pub max_sessions: usize,
    /// Which provider to behave like: its token shape, line limits, replies
    /// and limits (strict: the RFCs at their tightest).
    #[arg(long, value_enum, default_value_t = crate::sandbox::ProfileName::Strict)]
    pub profile: crate::sandbox::ProfileName,
    /// The SMTP server's certificate: ca-signed (trust it with ca_file), or
    /// self-signed-ca, like many internal servers (pin it with tls_pin_sha256).
    #[arg(long, value_enum, default_value_t = crate::sandbox::ServerCertificate::CaSigned)]
    pub server_certificate: crate::sandbox::ServerCertificate,
    /// Benchmarks only: count accepted messages and store none (a fast sink;
    /// the count is kept in DIR/inbox/count). Nothing can be read back.
    #[arg(long)]
    pub count_only: bool,
}

#[derive(clap::Subcommand)]
pub enum SandboxCommand {
    /// List the messages the sandbox SMTP server received.
    #[command(
        after_help = "Examples:\n  oxirelay sandbox inbox\n  oxirelay sandbox inbox --dir /tmp/sb --json"
    )]
    Inbox {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    if let Some(SandboxCommand::Inbox { json }) = args.command {
        return inbox(&args.dir, json);
    }
    for addr in [args.http, args.smtp, args.api] {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "the sandbox listens on loopback only; {addr} is not a loopback address"
        );
    }
    let mut options = SandboxOptions::new(&args.dir);
    options.token_ttl = args.token_ttl;
    options.auto_approve = args.auto_approve;
    options.http_addr = args.http;
    options.smtp_addr = args.smtp;
    options.api_addr = args.api;
    options.max_smtp_sessions = args.max_sessions;
    options.profile = args.profile;
    options.server_certificate = args.server_certificate;
    options.count_only = args.count_only;
    let sandbox = Sandbox::start(options).await?;
    if args.count_only {
        let file = args.dir.join("inbox").join("count");
        tokio::spawn(report_count(
            sandbox.smtp.inbox().subscribe_count(),
            file.clone(),
        ));
        println!(
            "count-only (benchmarks): messages are counted, not stored; the count is in {}\n",
            file.display()
        );
    }
    let secret_file = std::fs::canonicalize(&args.dir)?.join("client.secret");
    write_secret(&secret_file, sandbox.client_secret.expose())?;
    println!("oxirelay sandbox is running (Ctrl-C to stop)\n");
    println!("  authorization server  {}", sandbox.auth.issuer());
    println!(
        "    metadata            {}.well-known/oauth-authorization-server",
        sandbox.auth.issuer()
    );
    println!("    token               {}", sandbox.auth.token_url());
    println!(
        "    authorize           {}",
        sandbox.auth.authorization_url()
    );
    println!(
        "    device              {}",
        sandbox.auth.device_authorization_url()
    );
    println!(
        "  SMTP (STARTTLS, AUTH XOAUTH2/OAUTHBEARER after TLS)  127.0.0.1:{}",
        sandbox.smtp.addr().port()
    );
    println!("    CA certificate      {}", sandbox.ca_file().display());
    println!(
        "  Graph sendMail        {}/v1.0/users/{{mailbox}}/sendMail",
        sandbox.api.base_url()
    );
    println!(
        "  Gmail messages.send   {}/gmail/v1/users/{{user}}/messages/send (and /upload/...?uploadType=media)",
        sandbox.api.base_url()
    );
    println!(
        "    (HTTPS with the same CA certificate; transport = \"graph\" or \"gmail_api\", api_url = the address)"
    );
    println!(
        "  mailbox {} with client {} (secret in {})",
        crate::sandbox::USER,
        crate::sandbox::CLIENT_ID,
        secret_file.display()
    );
    println!(
        "  access tokens live {}s; refresh tokens rotate on every use\n",
        args.token_ttl.as_secs()
    );
    println!("A ready config (add [store] and [secrets]; see README.md):\n");
    println!(
        "{}",
        sandbox.account_toml(
            "sandbox",
            "client_credentials",
            &format!("file:{}", secret_file.display())
        )
    );
    if args.server_certificate == crate::sandbox::ServerCertificate::SelfSignedCa {
        println!(
            "The SMTP server presents a self-signed CA certificate, as many internal servers do: with the ca_file above, sending fails and says why. To send, remove ca_file and pin the key instead: tls_pin_sha256 = the pin `oxirelay tls pin 127.0.0.1:{}` prints.\n",
            sandbox.smtp.addr().port()
        );
    }
    println!(
        "Then: oxirelay -c oxirelay.toml send --account sandbox --from {} --to you@example.net --subject hi --body hello",
        crate::sandbox::USER
    );
    println!("      oxirelay sandbox inbox --dir {}", args.dir.display());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("\nstopping");
    sandbox.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// How often the count file may be rewritten: a benchmark polls it, and a
/// rename per accepted message would cost the sink more than the message.
const COUNT_FILE_INTERVAL: Duration = Duration::from_millis(20);

/// Keeps `file` holding the count-only inbox's count (written to a
/// temporary file and renamed, so a reader never sees half a number).
async fn report_count(mut count: tokio::sync::watch::Receiver<usize>, file: PathBuf) {
    let temporary = file.with_extension("tmp");
    loop {
        let value = *count.borrow_and_update();
        let written = std::fs::write(&temporary, format!("{value}\n"))
            .and_then(|()| std::fs::rename(&temporary, &file));
        if let Err(error) = written {
            tracing::warn!(%error, file = %file.display(), "cannot write the message count");
        }
        tokio::time::sleep(COUNT_FILE_INTERVAL).await;
        if count.changed().await.is_err() {
            return;
        }
    }
}

/// Writes the client secret with mode 0600 from the first byte (a rerun
/// replaces the previous run's secret).
fn write_secret(path: &std::path::Path, value: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn inbox(dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let inbox_dir = dir.join("inbox");
    anyhow::ensure!(
        inbox_dir.exists(),
        "no sandbox inbox at {}; start the sandbox with `oxirelay sandbox --dir {}` first",
        inbox_dir.display(),
        dir.display()
    );
    let entries = Inbox::open(&inbox_dir)?.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else if entries.is_empty() {
        println!("the sandbox inbox is empty");
    } else {
        println!(
            "{:<20} {:<10} {:<24} {:<28} {:<12} {:<16} SUBJECT",
            "RECEIVED", "TRANSPORT", "FROM", "TO", "SASL", "TOKEN"
        );
        for e in entries {
            println!(
                "{:<20} {:<10} {:<24} {:<28} {:<12} {:<16} {}",
                e.received_at.get(..19).unwrap_or(&e.received_at),
                e.transport,
                e.mail_from,
                e.rcpt_to.join(","),
                e.mechanism.map(|m| m.to_string()).unwrap_or_default(),
                e.token_fingerprint.as_deref().unwrap_or("-"),
                e.subject.as_deref().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
