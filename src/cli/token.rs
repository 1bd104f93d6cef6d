//! `oxirelay token NAME`: print a current access token, so that msmtp's
//! `passwordeval`, mutt or `curl --oauth2-bearer` can use oxirelay as their
//! token source. Only the token goes to standard output.

use super::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct TokenArgs {
    /// The account name from the config.
    pub account: String,
}

pub async fn run(config: Option<PathBuf>, args: TokenArgs) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    let token = context.broker.access_token(&args.account).await?;
    // The one place a token is printed: the user asked for exactly this.
    println!("{}", token.secret.expose());
    Ok(ExitCode::SUCCESS)
}
