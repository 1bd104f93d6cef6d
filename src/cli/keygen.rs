//! `oxirelay keygen`: a new master key.

use crate::secret::generate_master_key;
use anyhow::Context as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Write the key to this file (created with mode 0600; an existing file is not overwritten).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = generate_master_key();
    match args.file {
        None => println!("{key}"),
        Some(path) => {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&path).with_context(|| {
                format!("cannot create {} (it must not exist yet)", path.display())
            })?;
            writeln!(file, "{key}")?;
            file.sync_all()?;
            eprintln!(
                "wrote a new master key to {} (mode 0600); set [secrets] master_key = \"file:{}\"",
                path.display(),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
