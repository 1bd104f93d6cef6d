//! The command line: argument parsing (clap derive) and wiring. One file per
//! command group; errors become the sentence a person reads here, and only
//! here (`anyhow` at the edge).

mod account;
mod apikey;
mod audit;
mod context;
mod demo;
mod doctor;
mod emergency;
mod keygen;
mod login;
mod migrate;
mod notify;
mod queue;
mod sandbox;
mod send;
mod sendmail;
mod serve;
mod tls;
mod token;
mod user;
mod webhook;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub use context::Context;

#[derive(Parser)]
#[command(
    name = "oxirelay",
    version,
    about = "Send email through OAuth2-protected SMTP (Microsoft 365, Gmail, any XOAUTH2/OAUTHBEARER server).",
    after_help = "Start here:\n  oxirelay demo                      see the whole path work against the built-in sandbox\n  oxirelay keygen --file master.key  make the master key that seals tokens at rest (mode 0600)\n  oxirelay -c oxirelay.toml account list"
)]
pub struct Cli {
    /// Config file [default: $OXIRELAY_CONFIG, else ./oxirelay.toml]
    #[arg(short = 'c', long = "config", global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// More log output (-v info, -vv debug). OXIRELAY_LOG=<filter> overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the whole path end to end against the built-in sandbox (no account needed).
    #[command(
        after_help = "Examples:\n  oxirelay demo\n  oxirelay demo --messages 6 --token-ttl 5s --keep"
    )]
    Demo(demo::DemoArgs),
    /// Run the sandbox provider: a real OAuth2 server and an OAuth2-enforcing SMTP server on loopback.
    #[command(
        after_help = "Examples:\n  oxirelay sandbox --token-ttl 60s\n  oxirelay sandbox inbox"
    )]
    Sandbox(sandbox::SandboxArgs),
    /// Print a new master key (base64 of 32 random bytes).
    #[command(
        after_help = "Examples:\n  export OXIRELAY_MASTER_KEY=$(oxirelay keygen)\n  oxirelay keygen --file /etc/oxirelay/master.key   # written with mode 0600"
    )]
    Keygen(keygen::KeygenArgs),
    /// Run the relay: SMTP listeners into the durable queue, delivery through the accounts.
    #[command(
        after_help = "Examples:\n  oxirelay -c /etc/oxirelay/oxirelay.toml serve\n  oxirelay serve --workers 16 --validate-every 15m\n\nStop with SIGTERM or Ctrl-C: it stops accepting, finishes or releases deliveries in progress, and exits."
    )]
    Serve(serve::ServeArgs),
    /// Send one message now through an account.
    #[command(
        after_help = "Examples:\n  oxirelay send --account office --from noreply@contoso.com --to ops@contoso.com --subject 'Backup done' --body 'OK'\n  oxirelay send --account office --from noreply@contoso.com --to ops@contoso.com --file report.eml\n  OXIRELAY_API_KEY=$(cat key) oxirelay send --via http://127.0.0.1:8025 --from noreply@contoso.com --to ops@contoso.com --subject Hi --body OK\n  oxirelay send --via https://relay.example.net --api-key-file /etc/app/oxr.key --from noreply@contoso.com --to ops@contoso.com --file report.eml"
    )]
    Send(send::SendArgs),
    /// Print a current access token for an account (for msmtp, mutt, curl).
    #[command(
        after_help = "Examples:\n  oxirelay token office\n  curl --oauth2-bearer \"$(oxirelay token office)\" ...\n  msmtp: passwordeval \"oxirelay -c /etc/oxirelay/oxirelay.toml token office\""
    )]
    Token(token::TokenArgs),
    /// Accounts: their state, token expiry, consent.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Check this deployment against OAuth2 and mail relay best practices.
    #[command(
        after_help = "Examples:\n  oxirelay -c /etc/oxirelay/oxirelay.toml doctor\n  oxirelay doctor --json | jq '.[] | select(.status != \"pass\")'\n\nExit status 1 if any check failed, so it can gate a deployment."
    )]
    Doctor(doctor::DoctorArgs),
    /// Emergency stop: revoke every account's tokens and pause delivery (queued mail is kept).
    #[command(
        after_help = "Example:\n  oxirelay lockdown --reason \"suspected key leak, ticket 4711\""
    )]
    Lockdown {
        /// Why: recorded in the store and the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Lift the emergency stop and resume delivery.
    Unlock,
    /// Re-seal every token and sealed service-account key under the current master key (after adding the old one to previous_master_keys).
    #[command(
        after_help = "Procedure:\n  1. oxirelay keygen --file /etc/oxirelay/master-2.key\n  2. in [secrets]: master_key = \"file:/etc/oxirelay/master-2.key\", previous_master_keys = [\"file:/etc/oxirelay/master.key\"]\n  3. restart the relay (it opens both keys; queued mail is unaffected)\n  4. oxirelay rotate-key\n  5. remove previous_master_keys and destroy the old key"
    )]
    RotateKey,
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Submission users (app passwords for devices).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Keys of the HTTP send API (/v1): create (shown once), list, revoke.
    #[command(subcommand)]
    Apikey(apikey::ApiKeyCommand),
    /// The message queue.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// TLS of upstream servers: print the pin of a private server's key.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// Apply the store's schema migrations now (serve applies them on start too).
    #[command(
        after_help = "Examples:\n  oxirelay -c /etc/oxirelay/oxirelay.toml migrate\n  oxirelay migrate --url 'postgres://oxirelay@db.internal/oxirelay?sslmode=verify-full&sslrootcert=/etc/oxirelay/db-ca.pem'\n  oxirelay migrate --json"
    )]
    Migrate(migrate::MigrateArgs),
    /// Stand in for /usr/sbin/sendmail: queue a message read from standard input.
    #[command(after_help = sendmail::USAGE)]
    Sendmail(sendmail::SendmailArgs),
    /// Notifications ([notify]): the conditions being told; a test notification.
    #[command(subcommand)]
    Notify(notify::NotifyCommand),
    /// Webhook endpoints ([[webhook]]): where each is in the event log; send a test event.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
}

pub fn main() -> ExitCode {
    restrict_new_files();
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", report(&error));
            ExitCode::FAILURE
        }
    }
}

/// Everything the process creates (the store and the `-wal`/`-shm` files
/// SQLite makes itself, the audit log, keys, the sandbox's files and
/// directories) is the relay user's alone from its first byte: files 0600,
/// directories 0700. A umask, not a chmod afterwards, so that there is no
/// moment when another user could open them.
fn restrict_new_files() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// The error and its causes as one line, each said once. Many library
/// errors already put their source in their own message (a `{source}` in
/// the thiserror text), and anyhow's `{:#}` would then repeat it.
fn report(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    crate::tls::install_crypto_provider();
    let config = cli.config.clone();
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Sandbox(args) => sandbox::run(args).await,
        Command::Keygen(args) => keygen::run(args),
        Command::Send(args) => send::run(config, args).await,
        Command::Serve(args) => serve::run(config, args).await,
        Command::Token(args) => token::run(config, args).await,
        Command::Account(command) => account::run(config, command).await,
        Command::Doctor(args) => doctor::run(config, args).await,
        Command::Lockdown { reason } => emergency::lockdown(config, reason).await,
        Command::Unlock => emergency::unlock(config).await,
        Command::RotateKey => emergency::rotate_key_and_announce(config).await,
        Command::Audit(command) => audit::run(config, command).await,
        Command::User(command) => user::run(config, command).await,
        Command::Apikey(command) => apikey::run(config, command).await,
        Command::Queue(command) => queue::run(config, command).await,
        Command::Sendmail(args) => sendmail::run(config, args).await,
        Command::Migrate(args) => migrate::run(config, args).await,
        Command::Webhook(command) => webhook::run(config, command).await,
        Command::Notify(command) => notify::run(config, command).await,
        Command::Tls(command) => tls::run(command).await,
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info,oxirelay=info",
        _ => "debug,hyper=info,sqlx=warn,rustls=info",
    };
    let filter =
        EnvFilter::try_from_env("OXIRELAY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal: files, pipes and journald
    // get plain text (and NO_COLOR is honoured, https://no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    // A second initialisation (tests calling in-process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// "20s", "5m", "1h", "1d12h", or "90" (seconds, as the flags always took).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(seconds) => Ok(std::time::Duration::from_secs(seconds)),
        Err(_) => crate::clock::parse_period(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_reported_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read the config file oxirelay.toml: {0}")]
        struct Read(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let error = anyhow::Error::new(Read(io)).context("cannot start");
        assert_eq!(
            report(&error),
            "cannot start: cannot read the config file oxirelay.toml: No such file or directory"
        );
        let plain = anyhow::anyhow!("outer").context("top");
        assert_eq!(report(&plain), "top: outer");
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("20s"),
            Ok(std::time::Duration::from_secs(20))
        );
        assert_eq!(
            parse_duration("5m"),
            Ok(std::time::Duration::from_secs(300))
        );
        assert_eq!(parse_duration("90"), Ok(std::time::Duration::from_secs(90)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
