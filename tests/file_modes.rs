//! Everything oxirelay creates is readable by its own user only, from the
//! first byte: the store and the `-wal`/`-shm` files SQLite makes, the
//! audit log, the master key, the sandbox's keys and directories. Checked
//! by `stat` on the built binary's files while they are open.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs `oxirelay ARGS` until it prints a line starting with `ready`.
fn start_until(args: &[&str], ready: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .args(args)
        .env_remove("OXIRELAY_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("oxirelay runs");
    let stdout = child.stdout.take().expect("stdout");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) if line.starts_with(ready) => return child,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("oxirelay {args:?} did not print {ready:?} in time");
            }
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_relays_files_are_private_from_the_first_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("master.key");
    let status = Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .args(["keygen", "--file", key.to_str().expect("utf8")])
        .status()
        .expect("keygen");
    assert!(status.success());
    let config = dir.path().join("oxirelay.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{db}\"\n\n[secrets]\nmaster_key = \"file:{key}\"\n\n\
             [[listener]]\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nallow_ips = [\"127.0.0.1\"]\n",
            db = dir.path().join("oxirelay.db").display(),
            key = key.display(),
        ),
    )
    .expect("config");
    let serve = Killed(start_until(
        &["-c", config.to_str().expect("utf8"), "serve"],
        "oxirelay: listening on ",
    ));
    // While the store is open: SQLite has made its -wal and -shm files.
    for name in [
        "master.key",
        "oxirelay.db",
        "oxirelay.db-wal",
        "oxirelay.db-shm",
        "oxirelay-audit.jsonl",
    ] {
        let path = dir.path().join(name);
        assert_eq!(mode(&path), 0o600, "{name}");
    }
    drop(serve);

    let sandbox_dir = dir.path().join("sandbox");
    let sandbox = Killed(start_until(
        &[
            "sandbox",
            "--dir",
            sandbox_dir.to_str().expect("utf8"),
            "--http",
            "127.0.0.1:0",
            "--smtp",
            "127.0.0.1:0",
        ],
        "oxirelay sandbox is running",
    ));
    assert_eq!(mode(&sandbox_dir), 0o700, "the sandbox directory");
    let mut checked = 0;
    for entry in std::fs::read_dir(&sandbox_dir).expect("list") {
        let path = entry.expect("entry").path();
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), expected, "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 3, "the secret, the CA and the inbox: {checked}");
    drop(sandbox);
}
