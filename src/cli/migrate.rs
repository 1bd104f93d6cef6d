//! `oxirelay migrate`: brings the store's schema up to date and says what
//! it did. `serve` (and every command that opens the store) does the same
//! on start; this is for operators who apply schema changes apart from a
//! deployment, or before starting several instances at once.

use crate::config::Config;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The store to migrate, instead of the config's `[store] url` (no
    /// config file or master key is needed then).
    #[arg(long, value_name = "URL", env = "OXIRELAY_STORE_URL")]
    pub url: Option<String>,

    /// Machine-readable output: {"backend", "applied": [{"version"}], "version"}.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config_path: Option<PathBuf>, args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let url = match args.url {
        Some(url) => url,
        None => {
            let path = Config::locate(config_path.as_deref());
            Config::load(&path)
                .with_context(|| {
                    format!(
                        "cannot read the store URL from {}; pass --url URL or -c PATH",
                        path.display()
                    )
                })?
                .store
                .url
        }
    };
    let shown = crate::store::redact_url(&url);
    // The store's error names the URL (without its password) already.
    let report = crate::store::migrate(&url).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.applied.is_empty() {
        println!(
            "store {shown} ({}): up to date at schema version {}; nothing applied",
            report.backend, report.version
        );
    } else {
        let versions: Vec<String> = report
            .applied
            .iter()
            .map(|m| m.version.to_string())
            .collect();
        println!(
            "store {shown} ({}): applied migration{} {}; now at schema version {}",
            report.backend,
            if versions.len() == 1 { "" } else { "s" },
            versions.join(", "),
            report.version
        );
    }
    Ok(ExitCode::SUCCESS)
}
