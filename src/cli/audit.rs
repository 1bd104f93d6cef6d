//! `oxirelay audit verify`: check the audit log's keyed chain, across its
//! rotated files, against the store's anchor; and the other logs the
//! store anchors (each instance writes its own) that are on this host.

use crate::audit::{AnchorCheck, AuditError, VerifyReport, verify};
use crate::config::Config;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check that no line of the audit log or its rotated files was edited,
    /// inserted or deleted, and that none is missing from its end.
    #[command(
        after_help = "The MACs are checked with the master key and the end of the log with the anchor in the store, both from the relay's config (-c).\n\nExample:\n  oxirelay -c /etc/oxirelay/oxirelay.toml audit verify && echo intact"
    )]
    Verify {
        /// The audit log file [default: [audit] path in the config]. Its
        /// rotated files (same name plus a suffix) are checked with it.
        path: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Check only the unkeyed links, without the master key or the
        /// store: a rewrite with recomputed hashes, or lines deleted from
        /// the end, then go unnoticed.
        #[arg(long)]
        without_key: bool,
    },
}

pub async fn run(config: Option<PathBuf>, command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            path,
            json,
            without_key,
        } => {
            if without_key {
                let path = match path {
                    Some(path) => path,
                    None => load_config(config)?.audit.path,
                };
                let outcome = verify(&path, None, AnchorCheck::NotChecked);
                print_outcome(&path, outcome, json)
            } else {
                let config = load_config(config)?;
                let key = config.master_key().context(
                    "audit verify checks the MACs with the master key that keyed the log, and cannot read it; fix [secrets] master_key, or pass --without-key to check only the unkeyed links",
                )?;
                let store = crate::store::open(&config.store.url)
                    .await
                    .context("audit verify reads the chain's anchor from the store")?;
                let path = path.unwrap_or_else(|| config.audit.path.clone());
                let chain = crate::audit::chain_id(&path);
                // The anchor first, the log after: a line appended between
                // the two reads then only makes the log longer than the
                // anchor, never shorter.
                let anchor = store
                    .audit_anchor(&chain)
                    .await
                    .context("cannot read the audit anchor from the store")?;
                let outcome = verify(&path, Some(&key), AnchorCheck::Stored(anchor));
                let mut code = print_outcome(&path, outcome, json)?;
                // Every instance on the store writes its own log: check the
                // others this host has, name those of other hosts.
                for (other, anchor) in store.audit_anchors().await.unwrap_or_default() {
                    if other == chain || other.is_empty() {
                        continue;
                    }
                    let Some(local) = other
                        .strip_prefix(&format!("{}:", crate::instance::host_name()))
                        .map(PathBuf::from)
                    else {
                        if !json {
                            println!(
                                "another instance's log: {other} (anchored at line {}); run `oxirelay audit verify PATH` on that host",
                                anchor.seq
                            );
                        }
                        continue;
                    };
                    let outcome = if local.exists() {
                        verify(&local, Some(&key), AnchorCheck::Stored(Some(anchor)))
                    } else {
                        Err(AuditError::Unverifiable(format!(
                            "the store anchors a log at {} on this host (line {}), and it is gone; if that instance's [audit] path moved, verify the new path",
                            local.display(),
                            anchor.seq
                        )))
                    };
                    if print_outcome(&local, outcome, json)? == ExitCode::FAILURE {
                        code = ExitCode::FAILURE;
                    }
                }
                Ok(code)
            }
        }
    }
}

fn load_config(config: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = Config::locate(config.as_deref());
    Config::load(&path).with_context(|| {
        format!(
            "audit verify needs the relay's config (for the master key that keys the log and the store that anchors it), and {} is not usable; pass -c PATH, or --without-key with the log's path to check only the unkeyed links",
            path.display()
        )
    })
}

fn print_outcome(
    path: &std::path::Path,
    outcome: Result<VerifyReport, AuditError>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match outcome {
        Ok(report) => {
            if json {
                let mut value = serde_json::to_value(&report)?;
                value["intact"] = serde_json::Value::Bool(true);
                println!("{value}");
            } else {
                println!("{}", summary(path, &report));
                for file in &report.checked {
                    let range = match (file.first_seq, file.last_seq) {
                        (Some(first), Some(last)) => format!("lines {first}..{last}"),
                        _ => "no lines".to_string(),
                    };
                    println!("  checked: {} ({range})", file.path.display());
                }
                if let Some(start) = &report.removed_by_retention {
                    // Retention may have removed hundreds of daily files:
                    // the span is what a reader needs, `--json` has all.
                    let names: Vec<&str> = start.files.iter().map(|f| f.file.as_str()).collect();
                    let files = match names.as_slice() {
                        [] => String::new(),
                        [one] => format!(", file {one}"),
                        [first, .., last] if names.len() > 3 => {
                            format!(", {} files: {first} .. {last}", names.len())
                        }
                        all => format!(", files {}", all.join(", ")),
                    };
                    println!(
                        "  removed by retention: lines 1..{} (recorded at line {}{files}); checked from line {}",
                        start.through_seq,
                        start.recorded_at,
                        start.through_seq + 1
                    );
                }
                for notice in &report.notices {
                    println!("  note: {notice}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ AuditError::Open { .. }) => Err(error.into()),
        Err(error) => {
            let verdict = match error {
                AuditError::Unverifiable(_) => "CANNOT VERIFY",
                _ => "TAMPERED OR DAMAGED",
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"intact": false, "verdict": verdict, "error": error.to_string()})
                );
            } else {
                eprintln!("{verdict}: {error}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn summary(path: &std::path::Path, report: &VerifyReport) -> String {
    let range = match (report.first_seq, report.last_seq) {
        (Some(first), Some(last)) => format!(" (lines {first}..{last})"),
        _ => String::new(),
    };
    let files = match report.files.len() {
        0 | 1 => String::new(),
        n => format!(" in {n} files"),
    };
    let macs = if report.macs_checked > 0 {
        format!(
            "; {} MACs checked (master key {})",
            report.macs_checked,
            report.key_ids.join(", ")
        )
    } else {
        String::new()
    };
    let anchored = report
        .anchored_at
        .map(|seq| format!("; anchored at line {seq}"))
        .unwrap_or_default();
    format!(
        "{}: intact, {} lines{range}{files}{macs}{anchored}",
        path.display(),
        report.lines
    )
}
