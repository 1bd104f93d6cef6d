//! `oxirelay audit verify`: check the audit log's hash chain.

use crate::audit::verify;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check that no line of the audit log was edited, inserted or deleted.
    #[command(
        after_help = "Example:\n  oxirelay audit verify /var/lib/oxirelay/audit.jsonl && echo intact"
    )]
    Verify {
        /// The audit log file.
        path: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { path, json } => match verify(&path) {
            Ok(report) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"intact": true, "lines": report.lines})
                    );
                } else {
                    println!("{}: intact, {} lines", path.display(), report.lines);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"intact": false, "error": error.to_string()})
                    );
                } else {
                    eprintln!("TAMPERED OR DAMAGED: {error}");
                }
                Ok(ExitCode::FAILURE)
            }
        },
    }
}
