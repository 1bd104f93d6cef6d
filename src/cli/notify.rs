//! `oxirelay notify list|test`: the conditions being notified, and a test
//! notification through every `[notify]` channel.

use super::Context;
use crate::clock::format_unix;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum NotifyCommand {
    /// The conditions in force that the operator has been told of: since when, how often, when last.
    #[command(after_help = "Examples:\n  oxirelay notify list\n  oxirelay notify list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Send a `notify.test` notification now: a webhook event (delivered by `serve`), the [notify] command, the e-mail.
    #[command(
        after_help = "Example:\n  oxirelay notify test\n\nThe command runs here, with the same environment `serve` gives it (OXIRELAY_EVENT=notify.test ...). Exit status 1 if a channel failed."
    )]
    Test {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: Option<PathBuf>, command: NotifyCommand) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    match command {
        NotifyCommand::List { json } => {
            let marks = context.store.notify_marks().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&marks)?);
            } else if marks.is_empty() {
                println!("nothing to notify: no account or relay condition in force");
            } else {
                for mark in &marks {
                    println!(
                        "{}  since {}, told {} times, last at {}",
                        mark.condition,
                        format_unix(mark.first_at),
                        mark.times,
                        format_unix(mark.last_notified_at)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NotifyCommand::Test { json } => {
            let report = crate::notify::send_test(context.store.as_ref(), &context.config).await;
            context.audit("notify.test", None, format!("{report:?}"));
            let ok = report.event
                && report.command.as_ref().is_none_or(|c| c.ok)
                && report.email.as_ref().is_none_or(|e| e.ok);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "event notify.test: {}",
                    if report.event {
                        "recorded (the webhooks get it while `serve` runs)"
                    } else {
                        "NOT recorded"
                    }
                );
                let detail =
                    |c: &crate::notify::ChannelOutcome| c.detail.clone().unwrap_or_default();
                match &report.command {
                    None => println!("command: none configured"),
                    Some(c) if c.ok => println!("command: ran and succeeded"),
                    Some(c) => println!("command: FAILED: {}", detail(c)),
                }
                match &report.email {
                    None => println!("e-mail: none configured (email_to)"),
                    Some(e) if e.ok => {
                        println!("e-mail: queued as {} (`serve` delivers it)", detail(e))
                    }
                    Some(e) => println!("e-mail: FAILED: {}", detail(e)),
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
