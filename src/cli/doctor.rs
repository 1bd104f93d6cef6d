//! `oxirelay doctor`: the self-audit, as text or JSON, with an exit status
//! a deployment pipeline can gate on.

use crate::config::Config;
use crate::doctor::{Status, run as run_checks, worst};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config_path: Option<PathBuf>, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let path = Config::locate(config_path.as_deref());
    let config = Config::load(&path)?;
    let store = crate::store::open(&config.store.url).await.ok();
    let findings = run_checks(&config, store.as_deref()).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        for finding in &findings {
            let mark = match finding.status {
                Status::Pass => "pass",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            println!("{mark}  {}: {}", finding.check, finding.message);
            if let Some(fix) = &finding.fix
                && finding.status != Status::Pass
            {
                println!("      fix: {fix}");
            }
        }
        let count = |s| findings.iter().filter(|f| f.status == s).count();
        println!(
            "\n{} passed, {} warnings, {} failed",
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail)
        );
    }
    Ok(if worst(&findings) == Status::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
