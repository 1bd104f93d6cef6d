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
    context.audit("lockdown", None, &reason);
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
    );
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

/// Re-seals every sealed value under the current master key: the tokens
/// of every account and the secrets sealed beside them (service-account
/// keys from `account import-key`), so that the old key can be destroyed.
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
    let (secrets, failures) = reseal_secrets(&context).await?;
    context.audit(
        "key.rotated",
        None,
        format!(
            "{resealed} accounts and {secrets} sealed secrets re-sealed under key {current:08x}{}",
            if failures.is_empty() {
                String::new()
            } else {
                format!("; {} could not be opened", failures.len())
            }
        ),
    );
    println!(
        "{resealed} accounts re-sealed under master key {current:08x}; {secrets} sealed secrets (service-account keys) re-sealed."
    );
    if !failures.is_empty() {
        for failure in &failures {
            println!("  FAILED: {failure}");
        }
        println!(
            "Keep previous_master_keys until these are fixed (import the key again with `oxirelay account import-key NAME < key.json`), then run rotate-key again."
        );
        return Ok(ExitCode::FAILURE);
    }
    if !context.config.secrets.previous_master_keys.is_empty() {
        println!(
            "Now remove previous_master_keys from [secrets] (and destroy the old key file): nothing needs it any more. The audit log's older lines stay verifiable: the chain ties them to the lines keyed from now on."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Re-seals the secrets kept beside the accounts. A secret that does not
/// open is reported and left as it is, so that the others are still done.
async fn reseal_secrets(context: &Context) -> anyhow::Result<(usize, Vec<String>)> {
    let key = &context.key;
    let current = key.key_id();
    let mut resealed = 0;
    let mut failures = Vec::new();
    for (account, kind) in context.store.sealed_secret_names().await? {
        let Some(sealed) = context.store.sealed_secret(&account, &kind).await? else {
            continue;
        };
        if sealed.key_id() == Some(current) {
            continue;
        }
        let seal_context = crate::oauth::account::seal_context(&account);
        match key.open_secret(&seal_context, &sealed) {
            Ok(plain) => {
                context
                    .store
                    .put_sealed_secret(&account, &kind, &key.seal_secret(&seal_context, &plain))
                    .await?;
                resealed += 1;
            }
            Err(e) => failures.push(format!("account {account}, {kind}: {e}")),
        }
    }
    Ok((resealed, failures))
}
