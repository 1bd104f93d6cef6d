//! `oxirelay account login NAME`: give consent once, in the browser
//! (authorization code + PKCE + state, loopback redirect) or, with
//! `--device`, on another device (RFC 8628), and store the tokens sealed.

use super::Context;
use crate::oauth::consent;
use crate::oauth::device::{self, PollOutcome};
use crate::oauth::loopback::RedirectListener;
use crate::oauth::preset::{GrantKind, ProviderKind, explain_scope};
use anyhow::Context as _;
use std::time::Duration;

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The account name from the config.
    pub account: String,
    /// Use the device flow: show a code to enter on another device (for machines without a browser).
    #[arg(long)]
    pub device: bool,
    /// Do not try to open a browser; only print the URL.
    #[arg(long)]
    pub no_browser: bool,
    /// How long to wait for the person to finish.
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

fn explain_scopes(scopes: &[String]) {
    println!("oxirelay will ask for these permissions, and no others:");
    for scope in scopes {
        println!("  {scope}\n      {}", explain_scope(scope));
    }
}

fn report_granted(asked: &[String], granted: Option<&str>) {
    let Some(granted) = granted else {
        println!("The provider did not list the granted scopes; it granted what was asked.");
        return;
    };
    println!("Granted: {granted}");
    let granted: Vec<&str> = granted.split_whitespace().collect();
    let missing: Vec<&String> = asked
        .iter()
        .filter(|s| *s != "offline_access" && !granted.contains(&s.as_str()))
        .collect();
    let extra: Vec<&&str> = granted
        .iter()
        .filter(|s| !asked.iter().any(|a| a == **s) && **s != "offline_access")
        .collect();
    if !missing.is_empty() {
        println!(
            "WARNING: not granted: {} — sending may fail; check the app registration's permissions",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !extra.is_empty() {
        println!(
            "WARNING: granted more than asked: {} — consider narrowing the app registration",
            extra.iter().map(|s| **s).collect::<Vec<_>>().join(", ")
        );
    }
}

pub async fn run(context: &Context, args: LoginArgs) -> anyhow::Result<()> {
    let broker = &context.broker;
    let account = broker
        .account(&args.account)
        .ok_or_else(|| anyhow::anyhow!("no account named {:?} in the config", args.account))?
        .clone();
    let device_flow = args.device || account.grant == GrantKind::DeviceCode;
    if !account.grant.uses_refresh_token() {
        // App-only grants need no person; "login" re-enables a revoked account.
        broker.reinstate(&account.name, "login").await?;
        let token = broker.access_token(&account.name).await?;
        println!(
            "account {} uses the {} grant: no consent screen is needed. It is enabled and has access token {}.",
            account.name,
            account.grant,
            token.fingerprint()
        );
        return Ok(());
    }
    if device_flow && let Some(reason) = account.preset.grant_refusal(GrantKind::DeviceCode) {
        anyhow::bail!("{reason}");
    }
    let endpoints = broker.endpoints(&account.name).await?;
    println!(
        "Login for account {} ({}, mailbox {}).",
        account.name, account.preset.kind, account.user
    );
    explain_scopes(&account.scopes);
    if account.scopes.iter().any(|s| s == "offline_access")
        && !endpoints.metadata.may_support_scope("offline_access")
    {
        println!(
            "WARNING: the provider does not list offline_access among the scopes it supports; it may issue no refresh token."
        );
    }
    let (token, refresh_token_issued) = if device_flow {
        let device_url = endpoints.device.clone().ok_or_else(|| {
            anyhow::anyhow!("the provider of account {} has no device authorization endpoint; log in with the browser instead (without --device)", account.name)
        })?;
        let endpoint = broker.token_endpoint(&account.name).await?;
        let http = broker.http(&account.name)?;
        let authorization = device::start(&http, &device_url, &endpoint, &account.scopes).await?;
        println!("\nOn any device, open {}", authorization.verification_uri);
        println!("and enter the code:  {}\n", authorization.user_code);
        if let Some(complete) = &authorization.verification_uri_complete {
            println!("(or open {complete})");
        }
        println!(
            "Waiting for approval (the code expires in {} s)...",
            authorization.expires_in.as_secs()
        );
        let response = device::poll(&http, &endpoint, &authorization, |outcome| match outcome {
            PollOutcome::Pending => eprint!("."),
            PollOutcome::SlowDown { new_interval } => {
                eprint!(
                    "\n(the provider asked to poll more slowly: every {} s)",
                    new_interval.as_secs()
                )
            }
        })
        .await?;
        eprintln!();
        let issued = response.refresh_token.is_some();
        (broker.store_consent(&account.name, response).await?, issued)
    } else {
        let listener = RedirectListener::bind("/").await?;
        // Microsoft registers desktop redirects as http://localhost (any
        // port); Google and RFC 8252 prefer the loopback IP literal.
        let host = if account.preset.kind == ProviderKind::Microsoft {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let redirect_uri = listener.redirect_uri(host);
        let request = consent::begin(&account, &endpoints, &redirect_uri, Some(&account.user))?;
        println!(
            "\nOpen this URL in a browser to sign in and allow access:\n\n  {}\n",
            request.url
        );
        if !args.no_browser && open::that_detached(request.url.as_str()).is_ok() {
            println!("(a browser window was opened)");
        }
        println!("Waiting for the browser to come back to {redirect_uri} ...");
        let query = listener.wait_for_query(args.timeout).await?;
        let code = consent::code_from_callback(&request, &query, &account.name)?;
        let consent = consent::finish(broker, &account.name, &request, &code)
            .await
            .context("exchanging the authorization code")?;
        (consent.token, consent.refresh_token_issued)
    };
    let record = context.store.token_record(&account.name).await?;
    let valid_until = crate::clock::format_unix(crate::clock::to_unix(token.expires_at));
    if refresh_token_issued {
        println!(
            "\nConsent stored for account {}: refresh token sealed in the store, access token {} valid until {valid_until}.",
            account.name,
            token.fingerprint(),
        );
    } else {
        // Loud, and on both streams: a login that looks fine and dies in an
        // hour is the worst outcome of this command.
        let older = if record.as_ref().is_some_and(|r| r.refresh_token.is_some()) {
            " The refresh token of an earlier login is still stored; it may no longer work."
        } else {
            ""
        };
        let warning = format!(
            "WARNING: the provider issued NO refresh token. Account {} works only until its access token {} expires at {valid_until}; then it needs `oxirelay account login {}` again.{older}\nLikely cause: {}.",
            account.name,
            token.fingerprint(),
            account.name,
            consent::missing_refresh_token(&account, &endpoints),
        );
        println!("\n{warning}");
        eprintln!("{warning}");
    }
    report_granted(
        &account.scopes,
        record.as_ref().and_then(|r| r.granted_scope.as_deref()),
    );
    if account.preset.kind == ProviderKind::Google && refresh_token_issued {
        println!(
            "Note: if the Google app's OAuth consent screen has the External user type and Testing publishing status, this refresh token dies in 7 days: publish the app (In production), or, for a Workspace mailbox, use the Internal user type."
        );
    }
    Ok(())
}
