//! `oxirelay apikey create|list|revoke`: keys of the HTTP send API
//! (`crate::api::keys`). A key is printed once, when it is made; the store
//! keeps only its hash. Every create and revoke is audited.

use super::Context;
use crate::api::keys::{self, Rate, Scope};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it (shown once, stored only as a SHA-256 hash).
    #[command(after_help = "Examples:\n  \
        oxirelay apikey create billing --scope send,read --allowed-from billing@contoso.com --account office --rate 10/s\n  \
        oxirelay apikey create ops-console --scope admin --allowed-from @contoso.com --account office\n\n\
        Scopes: send (POST /v1/messages...), read (GET its own messages), admin (read and cancel every message; the console).\n\
        Use the key as `Authorization: Bearer oxr_...`, or with `oxirelay send --via URL` from --api-key-file or OXIRELAY_API_KEY.")]
    Create {
        name: String,
        /// Comma-separated: send, read, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<String>,
        /// A sender address (or @domain) the key may use; repeat for more.
        #[arg(long = "allowed-from", required = true)]
        allowed_from: Vec<String>,
        /// An account the key may send through (the first is the default); repeat for more.
        #[arg(long, required = true)]
        account: Vec<String>,
        /// The key's own rate limit: COUNT/UNIT (10/s, 600/min, 1000/h); none if absent.
        #[arg(long)]
        rate: Option<String>,
        /// Print the key and its settings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: requests with it are refused within a second (a running relay rereads keys a second old).
    #[command(after_help = "Example:\n  oxirelay apikey revoke billing")]
    Revoke { name: String },
}

pub async fn run(config: Option<PathBuf>, command: ApiKeyCommand) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    match command {
        ApiKeyCommand::Create {
            name,
            scope,
            allowed_from,
            account,
            rate,
            json,
        } => {
            anyhow::ensure!(
                !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "a key name is 1 to 64 letters, digits, '-', '_' or '.'"
            );
            let scopes = scope
                .iter()
                .map(|s| {
                    Scope::parse(s.trim()).ok_or_else(|| keys::ApiKeyError::BadScope(s.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            for account in &account {
                context.config.account(account)?;
            }
            for address in &allowed_from {
                let bare = address.strip_prefix('@').map(|d| format!("x@{d}"));
                crate::message::check_address(
                    "--allowed-from",
                    bare.as_deref().unwrap_or(address),
                )?;
            }
            let rate = rate.as_deref().map(Rate::parse).transpose()?;
            let new = keys::generate(
                &name,
                &scopes,
                &allowed_from,
                &account,
                rate,
                crate::clock::now_unix(),
            );
            anyhow::ensure!(
                context.store.create_api_key(&new.record).await?,
                "an API key named {name} exists already; revoke it first (`oxirelay apikey revoke {name}`) or choose another name"
            );
            context.audit(
                "apikey.created",
                None,
                format!(
                    "key {name} (id {}): scopes {}, allowed_from {}, accounts {}, rate {}",
                    new.record.id,
                    new.record.scopes.join(","),
                    allowed_from.join(","),
                    account.join(","),
                    rate.map_or("none".to_string(), |r| r.to_string())
                ),
            );
            if json {
                let mut value = serde_json::to_value(&new.record)?;
                // The one time this key exists outside a hash.
                value["key"] = serde_json::Value::String(new.presented.expose().to_string());
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                eprintln!("API key {name} created. The key, shown only now:");
                // The one time this key exists outside a hash.
                println!("{}", new.presented.expose());
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiKeyCommand::List { all, json } => {
            let keys: Vec<_> = context
                .store
                .api_keys()
                .await?
                .into_iter()
                .filter(|k| all || k.revoked_at.is_none())
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else if keys.is_empty() {
                println!("no API keys; make one with `oxirelay apikey create`");
            } else {
                println!(
                    "{:<20} {:<16} {:<16} {:<10} {:<16} ALLOWED FROM",
                    "NAME", "ID", "SCOPES", "RATE", "ACCOUNTS"
                );
                for key in keys {
                    let rate = key
                        .rate
                        .map(|(count, period_secs)| Rate { count, period_secs }.to_string())
                        .unwrap_or_else(|| "-".into());
                    let name = match key.revoked_at {
                        Some(_) => format!("{} (revoked)", key.name),
                        None => key.name.clone(),
                    };
                    println!(
                        "{:<20} {:<16} {:<16} {:<10} {:<16} {}",
                        name,
                        key.id,
                        key.scopes.join(","),
                        rate,
                        key.accounts.join(","),
                        key.allowed_from.join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ApiKeyCommand::Revoke { name } => {
            anyhow::ensure!(
                context
                    .store
                    .revoke_api_key(&name, crate::clock::now_unix())
                    .await?,
                "no active API key named {name} (see `oxirelay apikey list --all`)"
            );
            context.audit("apikey.revoked", None, format!("key {name}"));
            eprintln!("API key {name} revoked");
            Ok(ExitCode::SUCCESS)
        }
    }
}
