//! `oxirelay account ...`: state of accounts and their consent.

use super::Context;
use crate::clock::{describe_from_now, format_unix};
use crate::store::AccountState;
use anyhow::Context as _;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum AccountCommand {
    /// Each account's state, token expiry and last success.
    #[command(
        after_help = "Examples:\n  oxirelay account list\n  oxirelay account list --json | jq '.[] | select(.state != \"valid\")'"
    )]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Give consent once (browser, or --device for machines without one) and store the tokens sealed.
    #[command(
        after_help = "Examples:\n  oxirelay account login office\n  oxirelay account login office --device       # headless server: enter a code on your phone\n  oxirelay account login office --no-browser   # print the URL only (open it via an SSH tunnel)"
    )]
    Login(super::login::LoginArgs),
    /// Validate accounts now: introspection where the provider has it, else a test SMTP AUTH.
    #[command(
        after_help = "Examples:\n  oxirelay account check            # every account\n  oxirelay account check office --json"
    )]
    Check {
        /// One account (default: all).
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke the account's tokens at the provider (RFC 7009 where it exists) and wipe them locally.
    #[command(after_help = "Example:\n  oxirelay account revoke office --reason \"laptop stolen\"")]
    Revoke {
        account: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Seal a Google service-account key (JSON, from standard input) into the store, for the jwt_bearer grant.
    #[command(
        after_help = "Example:\n  oxirelay account import-key workspace < sa-key.json && shred -u sa-key.json"
    )]
    ImportKey { account: String },
    /// Store a refresh token obtained elsewhere (read from standard input).
    #[command(
        after_help = "Example (migrating from another tool):\n  oxirelay account import-token office < refresh_token.txt"
    )]
    ImportToken {
        /// The account name from the config.
        account: String,
    },
}

pub async fn run(config: Option<PathBuf>, command: AccountCommand) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    match command {
        AccountCommand::List { json } => list(&context, json).await,
        AccountCommand::Check { account, json } => {
            let names: Vec<String> = match account {
                Some(name) => vec![context.config.account(&name)?.name.clone()],
                None => context
                    .config
                    .accounts
                    .iter()
                    .map(|a| a.name.clone())
                    .collect(),
            };
            let mut reports = Vec::new();
            for name in names {
                reports.push(crate::oauth::health::check_account(&context.broker, &name).await);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    let how = r.method.map(|m| format!(" ({m:?})")).unwrap_or_default();
                    println!(
                        "{} {}{how}: {}",
                        if r.healthy { "ok  " } else { "FAIL" },
                        r.account,
                        r.detail
                    );
                }
            }
            Ok(if reports.iter().all(|r| r.healthy) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AccountCommand::Revoke { account, reason } => {
            super::emergency::revoke(&context, account, reason).await
        }
        AccountCommand::Login(args) => {
            super::login::run(&context, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        AccountCommand::ImportKey { account } => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the key from standard input")?;
            context
                .broker
                .import_service_account_key(&account, crate::secret::Secret::new(text))
                .await?;
            context.audit(
                "account.key_imported",
                Some(&account),
                "service-account key sealed in the store",
            );
            eprintln!(
                "account {account}: service-account key checked and sealed in the store; delete the JSON file now"
            );
            Ok(ExitCode::SUCCESS)
        }
        AccountCommand::ImportToken { account } => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the refresh token from standard input")?;
            let token = text.trim();
            anyhow::ensure!(
                !token.is_empty(),
                "standard input was empty; pipe the refresh token in"
            );
            context
                .broker
                .import_refresh_token(&account, crate::secret::Secret::new(token))
                .await?;
            let access = context.broker.access_token(&account).await?;
            eprintln!(
                "account {account}: refresh token stored (sealed) and working; access token {} valid until {}",
                access.fingerprint(),
                format_unix(crate::clock::to_unix(access.expires_at))
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(context: &Context, json: bool) -> anyhow::Result<ExitCode> {
    let records = context.store.token_records().await?;
    let statuses = crate::oauth::status::account_statuses(&context.config, &records);
    if json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
        return Ok(ExitCode::SUCCESS);
    }
    if statuses.is_empty() {
        println!("no accounts in {}", context.config_path().display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<10} {:<19} {:<14} {:<30} TOKEN",
        "ACCOUNT", "PROVIDER", "GRANT", "STATE", "USER"
    );
    for status in &statuses {
        let token = match status.access_expires_at {
            Some(at) if at > crate::clock::now_unix() => {
                format!("expires {}", describe_from_now(at))
            }
            Some(at) => format!("expired {}", describe_from_now(at)),
            None => "none".to_string(),
        };
        println!(
            "{:<16} {:<10} {:<19} {:<14} {:<30} {}",
            status.name, status.provider, status.grant, status.state, status.user, token
        );
        if let Some(reason) = &status.reason
            && status.state != AccountState::Valid
        {
            println!("  └ {reason}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
