//! `oxirelay queue list|show|retry|delete`.

use super::Context;
use crate::clock::format_unix;
use crate::store::{MessageId, MessageState};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum QueueCommand {
    /// Messages in the queue, newest first.
    #[command(
        after_help = "Examples:\n  oxirelay queue list\n  oxirelay queue list --state deferred --json"
    )]
    List {
        /// Only messages in this state (queued, in_flight, deferred, delivered, bounced, expired).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// One message with its recipients (and with --body, its content).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        body: bool,
    },
    /// Make a deferred, bounced or expired message due now.
    Retry { id: String },
    /// Remove a message from the queue.
    Delete { id: String },
}

pub async fn run(config: Option<PathBuf>, command: QueueCommand) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    let store = &context.store;
    match command {
        QueueCommand::List { state, limit, json } => {
            let state = state
                .map(|s| {
                    MessageState::parse(&s).ok_or_else(|| anyhow::anyhow!("unknown state {s:?}"))
                })
                .transpose()?;
            let messages = store.messages(state, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&messages)?);
            } else if messages.is_empty() {
                println!("the queue is empty");
            } else {
                println!(
                    "{:<17} {:<10} {:<20} {:>8} {:>4} {:<28} FROM → TO",
                    "ID", "STATE", "CREATED", "SIZE", "TRY", "NEXT"
                );
                for m in messages {
                    let to: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
                    let next = if m.state.is_final() {
                        "-".to_string()
                    } else {
                        format_unix(m.next_attempt_at)
                    };
                    println!(
                        "{:<17} {:<10} {:<20} {:>8} {:>4} {:<28} {} → {}",
                        m.id,
                        m.state,
                        format_unix(m.created_at),
                        m.size,
                        m.attempts,
                        next,
                        m.mail_from,
                        to.join(", ")
                    );
                    if let Some(error) = &m.last_error
                        && !m.state.is_final()
                    {
                        println!("  └ {error}");
                    }
                }
            }
        }
        QueueCommand::Show { id, json, body } => {
            let (message, content) = store
                .message(&MessageId(id.clone()))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no message {id} in the queue"))?;
            if json {
                let mut value = serde_json::to_value(&message)?;
                if body {
                    value["body"] = String::from_utf8_lossy(&content).into_owned().into();
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("id:         {}", message.id);
                println!("state:      {}", message.state);
                println!("account:    {}", message.account);
                println!("from:       {}", message.mail_from);
                println!(
                    "submitted:  {} by {}",
                    format_unix(message.created_at),
                    message.submitted_by
                );
                println!("attempts:   {}", message.attempts);
                if let Some(error) = &message.last_error {
                    println!("last error: {error}");
                }
                for r in &message.recipients {
                    println!(
                        "  {:<40} {:<10} {}",
                        r.address,
                        r.state.as_str(),
                        r.reply.as_deref().unwrap_or("")
                    );
                }
                if body {
                    println!("\n{}", String::from_utf8_lossy(&content));
                }
            }
        }
        QueueCommand::Retry { id } => {
            anyhow::ensure!(
                store
                    .retry_now(&MessageId(id.clone()), crate::clock::now_unix())
                    .await?,
                "message {id} is not in the queue, or was delivered"
            );
            eprintln!("message {id} is due now");
        }
        QueueCommand::Delete { id } => {
            anyhow::ensure!(
                store.delete(&MessageId(id.clone())).await?,
                "no message {id} in the queue"
            );
            eprintln!("message {id} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
