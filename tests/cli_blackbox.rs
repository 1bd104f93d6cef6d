//! The built binary, run the way a user runs it: its output, its exit
//! status, and what it leaves on disk.

mod common;

use common::{ACCOUNT, Harness, write_private};
use oxirelay::sandbox::USER;
use std::process::{Command, Output};
use std::time::Duration;

fn oxirelay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .args(args)
        .env_remove("OXIRELAY_CONFIG")
        .env_remove("OXIRELAY_MASTER_KEY")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the binary off the async runtime, which serves the sandbox meanwhile.
async fn oxirelay_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        oxirelay(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_secret_in_the_store_file_or_the_logs() {
    let harness = Harness::start("authorization_code", "oauthbearer", Duration::from_secs(2)).await;
    let consent_token = harness.consent().await;
    let first_refresh = harness.stored_tokens().await.0.expect("a refresh token");
    // Make the binary refresh (and rotate) during its run.
    harness.wait_until_refresh_due().await;
    let config = harness
        .config_path
        .to_str()
        .expect("utf-8 path")
        .to_string();
    let mut logs = Vec::new();
    for args in [
        vec![
            "-vv",
            "--log-format",
            "json",
            "-c",
            &config,
            "send",
            "--account",
            ACCOUNT,
            "--from",
            USER,
            "--to",
            "someone@example.net",
            "--subject",
            "leak check",
            "--body",
            "hello",
        ],
        vec!["-vv", "-c", &config, "account", "list"],
        vec!["-vv", "-c", &config, "account", "list", "--json"],
        vec!["-vv", "-c", &config, "doctor"],
    ] {
        let output = oxirelay_async(args.iter().map(|s| s.to_string()).collect()).await;
        logs.push(output.stdout);
        logs.push(output.stderr);
    }
    assert!(
        text(&logs[0]).contains("sent"),
        "send worked: {}",
        text(&logs[1])
    );
    assert!(
        text(&logs[1]).contains("DEBUG") || text(&logs[1]).contains("\"level\""),
        "debug logs were captured"
    );
    // `token` prints the token on stdout, by design; its logs go to stderr.
    let token_run = oxirelay_async(
        ["-vv", "-c", &config, "token", ACCOUNT]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(token_run.status.success(), "{}", text(&token_run.stderr));
    let printed_token = text(&token_run.stdout).trim().to_string();
    logs.push(token_run.stderr);

    let (current_refresh, current_access) = harness.stored_tokens().await;
    let current_refresh = current_refresh.expect("a refresh token");
    let current_access = current_access.expect("an access token");
    assert_ne!(
        first_refresh.expose(),
        current_refresh.expose(),
        "the binary rotated the refresh token"
    );
    let secrets = [
        (
            "client secret",
            harness.sandbox.client_secret.expose().to_string(),
        ),
        (
            "first access token",
            consent_token.secret.expose().to_string(),
        ),
        ("first refresh token", first_refresh.expose().to_string()),
        (
            "current refresh token",
            current_refresh.expose().to_string(),
        ),
        ("current access token", current_access.expose().to_string()),
        ("printed access token", printed_token.clone()),
    ];
    let mut files = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", harness.db_path().display());
        if let Ok(bytes) = std::fs::read(&path) {
            files.push((path, bytes));
        }
    }
    assert!(!files.is_empty(), "the store file exists");
    for (name, secret) in &secrets {
        assert!(secret.len() >= 16, "{name} is a real value");
        for (path, bytes) in &files {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "{name} found in {path}"
            );
        }
        for (i, log) in logs.iter().enumerate() {
            assert!(
                !contains(log, secret.as_bytes()),
                "{name} found in captured output #{i}"
            );
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn config_with(dir: &std::path::Path, client_secret: &str, key_mode: u32) -> String {
    let key_path = dir.join("master.key");
    write_private(&key_path, &oxirelay::secret::generate_master_key());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(key_mode))
            .expect("chmod");
    }
    let path = dir.join("oxirelay.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\nurl = \"sqlite://oxirelay.db\"\n[secrets]\nmaster_key = \"file:master.key\"\n\n\
             [[account]]\nname = \"office\"\nprovider = \"microsoft\"\ngrant = \"client_credentials\"\n\
             tenant = \"contoso.onmicrosoft.com\"\nclient_id = \"00000000-0000-0000-0000-000000000000\"\n\
             client_secret = \"{client_secret}\"\nuser = \"noreply@contoso.com\"\n"
        ),
    )
    .expect("write config");
    path.to_str().expect("utf-8").to_string()
}

#[test]
fn a_literal_secret_in_the_config_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with(dir.path(), "hunter2-literal-secret", 0o600);
    let output = oxirelay(&["-c", &config, "account", "list"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("never the value itself"), "{stderr}");
    assert!(stderr.contains("line 12"), "names the line: {stderr}");
    let other_dir = tempfile::tempdir().expect("tempdir");
    let with_reference = config_with(other_dir.path(), "env:OFFICE_SECRET", 0o600);
    let ok = Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .args(["-c", &with_reference, "account", "list"])
        .env("OFFICE_SECRET", "value-from-the-environment")
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "a reference is accepted: {}",
        text(&ok.stderr)
    );
}

#[cfg(unix)]
#[test]
fn a_master_key_file_readable_by_others_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_with(dir.path(), "env:OFFICE_SECRET", 0o644);
    let output = oxirelay(&["-c", &config, "account", "list"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("readable by group or others") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[test]
fn keygen_writes_a_private_key_file_that_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("k");
    let output = oxirelay(&["keygen", "--file", path.to_str().expect("utf-8")]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    oxirelay::secret::MasterKey::from_file(&path).expect("loads");
    assert!(
        !oxirelay(&["keygen", "--file", path.to_str().expect("utf-8")])
            .status
            .success(),
        "never overwrites a key"
    );
}

#[test]
fn demo_runs_end_to_end() {
    let output = oxirelay(&["demo", "--messages", "3", "--token-ttl", "2s"]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("What the sandbox SMTP server received (5 messages)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("token refreshed"),
        "a refresh happened: {stdout}"
    );
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    // Standard error is a pipe here, as under journald or in a log file.
    let output = oxirelay(&["-vv", "demo", "--messages", "1", "--token-ttl", "2s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("DEBUG"),
        "debug logs were written: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "no ANSI escape codes: {stderr}");
}

#[test]
fn an_error_says_its_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("oxirelay.toml");
    let output = oxirelay(&["-c", missing.to_str().expect("utf8"), "account", "list"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

#[test]
fn help_suggests_a_key_file_the_relay_accepts() {
    let output = oxirelay(&["--help"]);
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("oxirelay keygen --file master.key"),
        "{stdout}"
    );
    assert!(!stdout.contains("keygen > "), "{stdout}");
}

#[test]
fn a_port_in_use_is_said_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = oxirelay(&[
        "sandbox",
        "--dir",
        dir.path().to_str().expect("utf8"),
        "--http",
        &port,
        "--smtp",
        "127.0.0.1:0",
    ]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains(&port), "names the address: {stderr}");
}
