//! `oxirelay sendmail`: a stand-in for /usr/sbin/sendmail (cron, PHP's
//! `mail()`, scripts). It reads one message from standard input, prepares
//! it (`crate::sendmail`), picks the account that may send as the sender
//! and puts the message in the durable queue, which the running
//! `oxirelay serve` delivers. Like sendmail it prints nothing on success
//! and exits with a `sysexits.h` code on failure.

use super::Context;
use crate::config::AccountConfig;
use crate::sendmail::{
    EX_CONFIG, EX_NOUSER, EX_TEMPFAIL, Invocation, LocalIdentity, parse_args, prepare, read_message,
};
use crate::store::{MessageId, NewMessage};
use std::path::PathBuf;
use std::process::ExitCode;

pub const USAGE: &str = "\
usage: oxirelay [-c CONFIG] sendmail [flags] [recipient ...] < message

Reads a message from standard input and queues it for `oxirelay serve`.
  -t          also take recipients from the To, Cc and Bcc headers
  -f ADDR     envelope sender (default: the From header, else $USER@hostname)
  -F NAME     full name for the From header added when the message has none
  -i, -oi     a line with only \".\" does not end the message
  -bm         read a message and send it (the default)
Accepted and ignored: -v -U -n -m -G -od* -oe* -om -oQ* -oL* -O -B -N -R -V -h -L -p -C.
The Bcc header is always removed. Exit status: 0 queued, 64 usage, 65 bad
message, 67 bad recipient, 75 try again later, 78 configuration.
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
        Ok(id) => {
            tracing::info!(%id, "sendmail: message queued");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("oxirelay sendmail: {}", failure.message);
            ExitCode::from(failure.code)
        }
    })
}

async fn submit(config: Option<PathBuf>, args: &[String]) -> Result<MessageId, Failure> {
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

    let local = local_identity();
    let now = crate::clock::now_unix();
    let unique = format!("{}.{now}", MessageId::generate());
    let message = prepare(&invocation, &raw, &local, now, &unique)
        .map_err(|e| Failure::new(e.exit_code(), e.to_string()))?;

    let context = Context::load(config)
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
    context
        .store
        .enqueue(NewMessage {
            account: account.name.clone(),
            mail_from: message.envelope.mail_from,
            recipients: message.envelope.rcpt_to,
            body: message.bytes,
            submitted_by: format!("sendmail:{}", local.user),
        })
        .await
        .map_err(|e| {
            Failure::new(
                EX_TEMPFAIL,
                format!("the message was not queued ({e}); nothing was sent, try again"),
            )
        })
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
