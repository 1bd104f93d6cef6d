//! `oxirelay send`: compose (or read) one message and send it now through
//! an account, reporting what happened to each recipient.

use super::Context;
use crate::delivery::upstream::send_now;
use crate::message::{Composition, OutgoingMessage, check_address, from_file_bytes};
use crate::smtp::client::RecipientOutcome;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SendArgs {
    /// The account to send through.
    #[arg(long)]
    pub account: String,
    /// The sender (MAIL FROM and From); must be the account's mailbox or one of its send_as addresses.
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub to: Vec<String>,
    #[arg(long)]
    pub cc: Vec<String>,
    /// Envelope-only recipients (not shown in the headers).
    #[arg(long)]
    pub bcc: Vec<String>,
    #[arg(long, default_value = "")]
    pub subject: String,
    /// The text body.
    #[arg(long, conflicts_with = "file")]
    pub body: Option<String>,
    /// Send this RFC 5322 file as it is (headers included); --to/--cc/--bcc give the envelope.
    #[arg(long, value_name = "message.eml")]
    pub file: Option<PathBuf>,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: Option<PathBuf>, args: SendArgs) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    let account = context
        .broker
        .account(&args.account)
        .ok_or_else(|| anyhow::anyhow!("no account named {:?} in the config", args.account))?
        .clone();
    anyhow::ensure!(
        account.user.eq_ignore_ascii_case(&args.from)
            || account
                .send_as
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&args.from)),
        "account {} may send as {} only (add {} to its send_as to allow it)",
        account.name,
        std::iter::once(account.user.as_str())
            .chain(account.send_as.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", "),
        args.from
    );
    let message = match &args.file {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            check_address("from", &args.from)?;
            let rcpt_to: Vec<String> = args
                .to
                .iter()
                .chain(&args.cc)
                .chain(&args.bcc)
                .cloned()
                .collect();
            anyhow::ensure!(
                !rcpt_to.is_empty(),
                "give the recipients with --to, --cc or --bcc"
            );
            for address in &rcpt_to {
                check_address("to", address)?;
            }
            OutgoingMessage {
                envelope: crate::message::Envelope {
                    mail_from: args.from.clone(),
                    rcpt_to,
                },
                bytes: from_file_bytes(&bytes)?,
            }
        }
        None => Composition {
            from: args.from.clone(),
            to: args.to.clone(),
            cc: args.cc.clone(),
            bcc: args.bcc.clone(),
            subject: args.subject.clone(),
            body: args.body.clone().unwrap_or_default(),
        }
        .build()?,
    };
    let report = send_now(&context.broker, &account, &message).await?;
    let mut accepted = 0;
    let mut rows = Vec::new();
    for (address, outcome) in report.outcomes() {
        let (ok, reply) = match outcome {
            RecipientOutcome::Accepted(reply) => (true, reply.to_string()),
            RecipientOutcome::Refused { reply, .. } => (false, reply.to_string()),
        };
        accepted += usize::from(ok);
        rows.push(serde_json::json!({"recipient": address, "delivered": ok, "reply": reply}));
        if !args.json {
            println!(
                "{} {address}: {reply}",
                if ok { "sent   " } else { "REFUSED" }
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(if accepted == rows.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
