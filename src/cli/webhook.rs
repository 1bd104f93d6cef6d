//! `oxirelay webhook list|test`: where each `[[webhook]]` is in the event
//! log, and a signed test event sent to one of them now.

use super::Context;
use crate::clock::format_unix;
use crate::store::WebhookStatus;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum WebhookCommand {
    /// Each endpoint: its cursor in the event log, how far behind it is, failed attempts, last error, next attempt.
    #[command(
        after_help = "Examples:\n  oxirelay webhook list\n  oxirelay webhook list --json | jq '.[] | select(.attempts > 0)'\n\nlag counts the events in the log after the endpoint's cursor (of every kind: some may not be the endpoint's). An endpoint `serve` has not started yet has no cursor."
    )]
    List {
        #[arg(long)]
        json: bool,
    },
    /// POST a signed `webhook.test` event (id 0) to an endpoint now, and say what it answered.
    #[command(
        after_help = "Example:\n  oxirelay webhook test ops\n\nExit status 1 if the receiver did not answer 2xx."
    )]
    Test {
        /// The [[webhook]] name.
        name: String,
    },
}

/// One endpoint as `webhook list` shows it: its config and its place.
#[derive(Serialize)]
struct Listed {
    name: String,
    /// Scheme, host and port (a path may hold a token).
    origin: String,
    events: Vec<String>,
    api_key: Option<String>,
    /// `None` until `serve` has started delivering to it.
    cursor: Option<i64>,
    lag: Option<i64>,
    attempts: i64,
    next_attempt_at: Option<i64>,
    last_error: Option<String>,
    delivered: i64,
    last_delivered_at: Option<i64>,
    holder: Option<String>,
}

pub async fn run(config: Option<PathBuf>, command: WebhookCommand) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    match command {
        WebhookCommand::List { json } => list(&context, json).await,
        WebhookCommand::Test { name } => test(&context, &name).await,
    }
}

async fn list(context: &Context, json: bool) -> anyhow::Result<ExitCode> {
    let statuses = context.store.webhook_statuses().await?;
    let listed: Vec<Listed> = context
        .config
        .webhooks
        .iter()
        .map(|webhook| {
            let status: Option<&WebhookStatus> =
                statuses.iter().find(|s| s.cursor.endpoint == webhook.name);
            Listed {
                name: webhook.name.clone(),
                origin: url::Url::parse(&webhook.url)
                    .map(|u| u.origin().ascii_serialization())
                    .unwrap_or_default(),
                events: webhook.events(),
                api_key: webhook.api_key.clone(),
                cursor: status.map(|s| s.cursor.cursor),
                lag: status.map(|s| s.lag),
                attempts: status.map_or(0, |s| s.cursor.attempts),
                next_attempt_at: status.and_then(|s| s.cursor.next_attempt_at),
                last_error: status.and_then(|s| s.cursor.last_error.clone()),
                delivered: status.map_or(0, |s| s.cursor.delivered),
                last_delivered_at: status.and_then(|s| s.cursor.last_delivered_at),
                holder: status.and_then(|s| s.holder.clone()),
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    if listed.is_empty() {
        println!("no [[webhook]] in {}", context.config_path().display());
        return Ok(ExitCode::SUCCESS);
    }
    for endpoint in &listed {
        println!("{}  {}", endpoint.name, endpoint.origin);
        match (endpoint.cursor, endpoint.lag) {
            (Some(cursor), Some(lag)) => println!(
                "  cursor {cursor}, {lag} events behind, {} delivered{}",
                endpoint.delivered,
                endpoint
                    .last_delivered_at
                    .map(|t| format!(", last at {}", format_unix(t)))
                    .unwrap_or_default()
            ),
            _ => println!("  not started: `serve` begins at the end of the log"),
        }
        if endpoint.attempts > 0 {
            println!(
                "  failing: {} attempts, last error: {}; next attempt {}",
                endpoint.attempts,
                endpoint.last_error.as_deref().unwrap_or("-"),
                endpoint
                    .next_attempt_at
                    .map(crate::clock::describe_from_now)
                    .unwrap_or_else(|| "now".into())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn test(context: &Context, name: &str) -> anyhow::Result<ExitCode> {
    let endpoint = crate::webhooks::Endpoint::named(&context.config, name)?;
    let result = crate::webhooks::dispatch::send_test(&endpoint).await;
    let detail = match &result {
        Ok(status) => format!("test event to {name}: HTTP {status}"),
        Err(error) => format!("test event to {name}: {error}"),
    };
    context.audit("webhook.test", None, detail);
    match result {
        Ok(status) => {
            println!(
                "webhook {name}: {} answered HTTP {status}",
                endpoint.origin()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!(
                "error: webhook {name}: {} did not take the test event: {error}; check that the receiver runs, answers 2xx, and verifies signatures with the secret of this [[webhook]]",
                endpoint.origin()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
