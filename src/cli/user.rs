//! `oxirelay user add|list|remove`: submission users with app passwords.

use super::Context;
use crate::users::{SubmissionUser, generate_app_password, hash_password};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum UserCommand {
    /// Create a user and print its new app password (shown once, stored only as an Argon2id hash).
    #[command(
        after_help = "Example:\n  oxirelay user add scanner --account office --allowed-from scanner@contoso.com"
    )]
    Add {
        name: String,
        /// The upstream account that carries this user's mail.
        #[arg(long)]
        account: String,
        /// A sender address (or @domain) this user may use; repeat for more.
        #[arg(long = "allowed-from", required = true)]
        allowed_from: Vec<String>,
    },
    /// List users (from the config and the store).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a user made with `user add`.
    Remove { name: String },
}

pub async fn run(config: Option<PathBuf>, command: UserCommand) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    match command {
        UserCommand::Add {
            name,
            account,
            allowed_from,
        } => {
            context.config.account(&account)?;
            anyhow::ensure!(
                !context.config.users.iter().any(|u| u.name == name),
                "user {name} is defined in the config file; choose another name"
            );
            for address in &allowed_from {
                let bare = address.strip_prefix('@').map(|d| format!("x@{d}"));
                crate::message::check_address(
                    "--allowed-from",
                    bare.as_deref().unwrap_or(address),
                )?;
            }
            let password = generate_app_password();
            let user = SubmissionUser {
                name: name.clone(),
                password_hash: hash_password(&password)?,
                allowed_from,
                account,
                source: "store",
                header_from_checked: true,
            };
            anyhow::ensure!(
                context.store.add_user(&user).await?,
                "user {name} exists already; remove it first to issue a new password"
            );
            eprintln!("user {name} created. Its app password, shown only now:");
            // The one time this password exists outside a hash.
            println!("{}", password.expose());
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List { json } => {
            let users = crate::submit::directory::UserDirectory::new(
                &context.config.users,
                context.store.clone(),
            )
            .all()
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else if users.is_empty() {
                println!("no users; add one with `oxirelay user add`");
            } else {
                println!(
                    "{:<20} {:<8} {:<16} ALLOWED FROM",
                    "USER", "SOURCE", "ACCOUNT"
                );
                for user in users {
                    println!(
                        "{:<20} {:<8} {:<16} {}",
                        user.name,
                        user.source,
                        user.account,
                        user.allowed_from.join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Remove { name } => {
            if context.store.remove_user(&name).await? {
                eprintln!("user {name} removed");
                Ok(ExitCode::SUCCESS)
            } else if context.config.users.iter().any(|u| u.name == name) {
                anyhow::bail!(
                    "user {name} is defined in {}; remove it there",
                    context.config_path().display()
                )
            } else {
                anyhow::bail!("no user named {name}")
            }
        }
    }
}
