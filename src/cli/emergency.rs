//! Revocation and the emergency stop: `account revoke`, `lockdown`,
//! `unlock`, and `rotate-key`.

use super::Context;
use crate::oauth::broker::RevocationReport;
use crate::store::TokenRecord;
use std::path::PathBuf;
use std::process::ExitCode;

fn print_report(report: &RevocationReport) {
    let at_provider = if report.revoked_at_provider.is_empty() {
        "nothing revoked at the provider".to_string()
    } else {
        format!(
            "revoked at the provider: {}",
            report.revoked_at_provider.join(", ")
        )
    };
    println!(
        "account {}: {at_provider}; local tokens {}",
        report.account,
        if report.wiped_locally {
            "wiped"
        } else {
            "NOT wiped (the store changed meanwhile; run again)"
        }
    );
    if let Some(note) = &report.provider_note {
        println!("  └ {note}");
    }
}

pub async fn revoke(
    context: &Context,
    account: String,
    reason: Option<String>,
) -> anyhow::Result<ExitCode> {
    let reason = reason.unwrap_or_else(|| "revoked by an operator".to_string());
    let report = context.broker.revoke(&account, &reason).await?;
    print_report(&report);
    println!("To use the account again: oxirelay account login {account}");
    Ok(ExitCode::SUCCESS)
}

pub async fn lockdown(config: Option<PathBuf>, reason: String) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    // Pause first, so that no delivery starts while tokens are revoked.
    context.store.set_lockdown(Some(&reason)).await?;
    context.audit("lockdown", None, &reason)?;
    println!("LOCKDOWN: delivery is paused (queued mail is kept). Reason: {reason}");
    let mut complete = true;
    let names: Vec<String> = context
        .config
        .accounts
        .iter()
        .map(|a| a.name.clone())
        .collect();
    for name in names {
        match context
            .broker
            .revoke(&name, &format!("lockdown: {reason}"))
            .await
        {
            Ok(report) => {
                complete &= report.wiped_locally;
                print_report(&report);
            }
            Err(e) => {
                complete = false;
                println!("account {name}: FAILED to revoke: {e}");
            }
        }
    }
    println!(
        "\nWhen it is safe: oxirelay unlock   (delegated accounts then need `oxirelay account login NAME`)"
    );
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn unlock(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    let Some(lockdown) = context.store.lockdown().await? else {
        println!("no lockdown is in force");
        return Ok(ExitCode::SUCCESS);
    };
    let records = context.store.token_records().await?;
    let mut need_login = Vec::new();
    for account in context.broker.accounts() {
        let revoked_by_lockdown = records.iter().any(|r| {
            r.account == account.name
                && r.state == crate::store::AccountState::Revoked
                && r.state_reason
                    .as_deref()
                    .is_some_and(|s| s.starts_with("lockdown"))
        });
        if revoked_by_lockdown {
            context.broker.reinstate(&account.name, "unlock").await?;
            if account.grant.uses_refresh_token() {
                need_login.push(account.name.clone());
            }
        }
    }
    context.store.set_lockdown(None).await?;
    context.audit(
        "unlock",
        None,
        format!(
            "lockdown since {} ({}) lifted",
            crate::clock::format_unix(lockdown.since),
            lockdown.reason
        ),
    )?;
    println!(
        "Delivery resumes. The lockdown ({}) is lifted.",
        lockdown.reason
    );
    for name in need_login {
        println!("account {name} needs a new consent: oxirelay account login {name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `rotate-key`, then tells every running process: each account's
/// credential epoch moves, so relays drop their cached tokens and pooled
/// sessions within their poll (a key is rotated when the old one may have
/// leaked, and with it the tokens it sealed). Kept apart from `rotate_key`,
/// which only re-seals.
pub async fn rotate_key_and_announce(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let code = rotate_key(config.clone()).await?;
    let context = Context::load(config).await?;
    for account in context.broker.accounts() {
        context
            .broker
            .announce_credential_change(&account.name)
            .await?;
    }
    println!("Running relays drop their cached tokens and sessions within seconds.");
    Ok(code)
}

/// Re-seals every sealed value under the current master key.
pub async fn rotate_key(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    let key = &context.key;
    let current = key.key_id();
    let mut resealed = 0;
    for record in context.store.token_records().await? {
        let seal_context = crate::oauth::account::seal_context(&record.account);
        let mut next: TokenRecord = record.clone();
        let mut changed = false;
        for field in [&mut next.refresh_token, &mut next.access_token] {
            if let Some(sealed) = field
                && sealed.key_id() != Some(current)
            {
                let plain = key.open_secret(&seal_context, sealed)?;
                *field = Some(key.seal_secret(&seal_context, &plain));
                changed = true;
            }
        }
        if changed {
            next.generation += 1;
            next.updated_at = crate::clock::now_unix();
            anyhow::ensure!(
                context.store.save_token_record(&next).await?,
                "account {} changed while re-sealing; run rotate-key again",
                record.account
            );
            resealed += 1;
        }
    }
    context.audit(
        "key.rotated",
        None,
        format!("{resealed} accounts re-sealed under key {current:08x}"),
    )?;
    println!("{resealed} accounts re-sealed under master key {current:08x}.");
    if !context.config.secrets.previous_master_keys.is_empty() {
        println!(
            "Now remove previous_master_keys from [secrets] (and destroy the old key file): nothing needs it any more."
        );
    }
    Ok(ExitCode::SUCCESS)
}
