//! `oxirelay sendmail`: a stand-in for /usr/sbin/sendmail (cron, PHP's
//! `mail()`, scripts). It reads one message from standard input and
//! prepares it (`crate::sendmail`). With `[sendmail]` in the config it then
//! drops it into the spool for `oxirelay serve` (`crate::maildrop`): no
//! master key, no store, no secret is opened, so any local user mapped by a
//! `[[sendmail.local]]` can run it; the checks `serve` will make are made
//! here first, so a refusal reaches the caller's exit status. Without
//! `[sendmail]` it queues directly, which needs the key (the relay's own
//! user). Like sendmail it prints nothing on success and exits with a
//! `sysexits.h` code on failure.

use super::Context;
use crate::config::{AccountConfig, Config, ConfigError};
use crate::maildrop::Spool;
use crate::maildrop::format;
use crate::maildrop::local::{LocalSenders, SystemUsers};
use crate::maildrop::write::write_drop;
use crate::sendmail::{
    EX_CONFIG, EX_DATAERR, EX_NOPERM, EX_NOUSER, EX_TEMPFAIL, EX_USAGE, Invocation, LocalIdentity,
    MAX_MESSAGE_BYTES, parse_args, prepare, read_message,
};
use crate::store::MessageId;
use crate::submit::{AcceptError, AcceptRules, Acceptance, Refused, Submission};
use crate::users::SubmissionUser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::Notify;

pub const USAGE: &str = "\
usage: oxirelay [-c CONFIG] sendmail [flags] [recipient ...] < message

Reads a message from standard input and hands it to `oxirelay serve`: with
[sendmail] in the config, as a drop in its spool (no key needed; serve need
not be running), else straight into the queue (needs the master key).
  -t          also take recipients from the To, Cc and Bcc headers
  -f ADDR     envelope sender (default: the From header, else USER@hostname)
  -F NAME     full name for the From header added when the message has none
  -i, -oi     a line with only \".\" does not end the message
  -bm         read a message and send it (the default)
Accepted and ignored: -v -U -n -m -G -od* -oe* -om -oQ* -oL* -O -B -N -R -V -h -L -p -C.
The Bcc header is always removed. Exit status: 0 taken (durably), 64 usage,
65 bad message, 67 bad sender or recipient, 75 try again later, 77 this user
may not send, 78 configuration.
As /usr/sbin/sendmail, install a wrapper:
  #!/bin/sh
  exec oxirelay -c /etc/oxirelay/oxirelay.toml sendmail \"$@\"";

#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct SendmailArgs {
    /// sendmail's own flags and recipients (see `oxirelay sendmail --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// A failure as sendmail reports it: a sentence on standard error and an exit code.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

pub async fn run(config: Option<PathBuf>, args: SendmailArgs) -> anyhow::Result<ExitCode> {
    if matches!(args.args.as_slice(), [only] if only == "--help") {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    Ok(match submit(config, &args.args).await {
        Ok(done) => {
            tracing::info!("sendmail: message {done}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("oxirelay sendmail: {}", failure.message);
            ExitCode::from(failure.code)
        }
    })
}

async fn submit(config: Option<PathBuf>, args: &[String]) -> Result<String, Failure> {
    let invocation: Invocation =
        parse_args(args).map_err(|e| Failure::new(e.exit_code(), e.to_string()))?;
    if !invocation.ignored.is_empty() {
        tracing::debug!(flags = ?invocation.ignored, "sendmail: flags accepted and ignored");
    }
    // Read the message before anything can fail for a reason of ours, so a
    // writer on the other end of the pipe never blocks on a full pipe.
    let dot_ends_input = invocation.dot_ends_input;
    let raw =
        tokio::task::spawn_blocking(move || read_message(std::io::stdin().lock(), dot_ends_input))
            .await
            .map_err(|e| Failure::new(EX_TEMPFAIL, format!("reading standard input failed: {e}")))?
            .map_err(|e| Failure::new(e.exit_code(), e.to_string()))?;

    let path = Config::locate(config.as_deref());
    let config = Config::load(&path).map_err(|e| {
        let hint = match &e {
            ConfigError::Read { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                "; the users who run sendmail must be able to read it (it holds references to secrets, never secrets: chmod 644)"
            }
            ConfigError::Read { .. } if config.is_none() => {
                "; pass -c PATH or set OXIRELAY_CONFIG (see README.md, \"Configuration\")"
            }
            _ => "",
        };
        Failure::new(EX_CONFIG, format!("{e}{hint}"))
    })?;
    let now = crate::clock::now_unix();
    let unique = format!("{}.{now}", MessageId::generate());
    match config.sendmail.clone() {
        Some(sendmail) => {
            let (user, submitter) = LocalSenders::new(&sendmail, &config.path)
                .submitter_for(nix::unistd::geteuid().as_raw(), &SystemUsers)
                .map_err(|refusal| {
                    let code = if refusal.is_transient() {
                        EX_TEMPFAIL
                    } else {
                        EX_NOPERM
                    };
                    Failure::new(code, refusal.to_string())
                })?;
            // The default sender is the user the system says this is, not
            // $USER, which the caller sets.
            let local = LocalIdentity {
                user: user.name,
                ..local_identity()
            };
            let message = prepare(&invocation, &raw, &local, now, &unique)
                .map_err(|e| Failure::new(e.exit_code(), e.to_string()))?;
            let bytes = format::encode(
                &message.envelope.mail_from,
                &message.envelope.rcpt_to,
                &message.bytes,
            );
            // The checks `serve` makes when it picks the drop up, made now
            // too, so the caller hears of a refusal in the exit status
            // rather than from a log it may never read.
            let drop =
                format::parse(&bytes).map_err(|e| Failure::new(EX_DATAERR, e.to_string()))?;
            AcceptRules::from_config(&config, MAX_MESSAGE_BYTES)
                .check(&submitter, &drop.mail_from, &drop.recipients, drop.message)
                .map_err(|refused| Failure::new(refused_code(&refused), refused.to_string()))?;
            let spool = Spool::new(&sendmail.spool);
            let maildrop = spool.maildrop();
            let name = tokio::task::spawn_blocking(move || write_drop(&maildrop, &bytes))
                .await
                .map_err(|e| Failure::new(EX_TEMPFAIL, format!("writing the message failed: {e}")))?
                .map_err(|e| Failure::new(e.exit_code(), e.to_string()))?;
            Ok(format!("dropped as {name} for `oxirelay serve`"))
        }
        None => {
            let local = local_identity();
            let message = prepare(&invocation, &raw, &local, now, &unique)
                .map_err(|e| Failure::new(e.exit_code(), e.to_string()))?;
            queue_directly(config, message, &local.user).await
        }
    }
}

/// Without `[sendmail]`: straight into the queue, which needs the master key
/// and the store, so only the relay's own user (or root) can do it. The
/// identity is the account that may send as the sender.
async fn queue_directly(
    config: Config,
    message: crate::sendmail::PreparedMessage,
    user: &str,
) -> Result<String, Failure> {
    let context = Context::from_config(config)
        .await
        .map_err(|e| Failure::new(EX_CONFIG, format!("{e:#}")))?;
    let account = account_for_sender(&context.config.accounts, &message.envelope.mail_from)
        .ok_or_else(|| {
            Failure::new(
                EX_NOUSER,
                format!(
                    "no account may send as {sender}; add it to send_as of an [[account]] in {config} (or send with -f as an account's user)",
                    sender = message.envelope.mail_from,
                    config = context.config_path().display()
                ),
            )
        })?;
    let submitter = SubmissionUser {
        name: format!("sendmail:{user}"),
        password_hash: String::new(),
        allowed_from: std::iter::once(&account.user)
            .chain(&account.send_as)
            .cloned()
            .collect(),
        account: account.name.clone(),
        source: "sendmail",
        header_from_checked: true,
    };
    let acceptance = Acceptance::new(
        AcceptRules::from_config(&context.config, MAX_MESSAGE_BYTES),
        context.store.clone(),
        Arc::new(Notify::new()),
    );
    let trace = format!(
        "Received: by {host} (oxirelay sendmail, from userid {uid});\r\n\t{date}\r\n",
        host = crate::instance::host_name(),
        uid = nix::unistd::geteuid(),
        date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S +0000"),
    );
    acceptance
        .accept(Submission {
            submitter: &submitter,
            mail_from: &message.envelope.mail_from,
            recipients: &message.envelope.rcpt_to,
            trace: &trace,
            message: &message.bytes,
            id: None,
        })
        .await
        .map(|id| format!("queued as {id}"))
        .map_err(|error| match error {
            AcceptError::Refused(refused) => {
                Failure::new(refused_code(&refused), refused.to_string())
            }
            AcceptError::Store(_) => Failure::new(
                EX_TEMPFAIL,
                format!("the message was not queued ({error}); nothing was sent, try again"),
            ),
        })
}

/// The sysexits code of a refusal.
fn refused_code(refused: &Refused) -> u8 {
    match refused {
        Refused::Sender { .. } | Refused::HeaderFrom { .. } => EX_NOUSER,
        Refused::NoRecipients | Refused::TooManyRecipients { .. } => EX_USAGE,
        Refused::TooBig { .. }
        | Refused::BareLineEnding { .. }
        | Refused::Nul { .. }
        | Refused::LineTooLong { .. } => EX_DATAERR,
    }
}

/// The account whose mailbox is `sender`, else one that may send as it.
fn account_for_sender<'a>(
    accounts: &'a [AccountConfig],
    sender: &str,
) -> Option<&'a AccountConfig> {
    accounts
        .iter()
        .find(|a| a.user.eq_ignore_ascii_case(sender))
        .or_else(|| {
            accounts
                .iter()
                .find(|a| a.send_as.iter().any(|s| s.eq_ignore_ascii_case(sender)))
        })
}

/// The Unix user (from the environment, as cron and PHP set it) and the
/// host name, for the default sender and Message-ID.
fn local_identity() -> LocalIdentity {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "nobody".to_string());
    let hostname = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string());
    LocalIdentity { user, hostname }
}
