//! The built binary, run the way a user runs it: its output, its exit
//! status, and what it leaves on disk.

mod common;
#[path = "line_client/mod.rs"]
mod line_client;

use common::{ACCOUNT, Harness, RelayProcess, WAIT, write_private};
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
    let account = harness.account();
    let server = oxirelay::smtp::sasl::ServerName {
        host: &account.smtp.host,
        port: account.smtp.port,
    };
    for (name, secret) in &secrets {
        assert!(secret.len() >= 16, "{name} is a real value");
        for (name, form) in forms_of(name, secret, Some((&account.user, &server))) {
            for (path, bytes) in &files {
                assert!(!contains(bytes, form.as_bytes()), "{name} found in {path}");
            }
            for (i, log) in logs.iter().enumerate() {
                assert!(
                    !contains(log, form.as_bytes()),
                    "{name} found in captured output #{i}"
                );
            }
        }
    }
}

/// Every form in which `secret` could reach a log or a file: as it is, in
/// base64 (standard and URL-safe, padded or not) and, for a token, inside
/// the XOAUTH2 and OAUTHBEARER messages exactly as the relay's client
/// writes them on the AUTH line.
fn forms_of(
    name: &str,
    secret: &str,
    sasl_user: Option<(&str, &oxirelay::smtp::sasl::ServerName<'_>)>,
) -> Vec<(String, String)> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use oxirelay::smtp::sasl::{self, BearerCredentials};
    let mut raws = vec![(name.to_string(), secret.to_string())];
    if let Some((user, server)) = sasl_user {
        let credentials = BearerCredentials {
            user: user.to_string(),
            token: oxirelay::secret::Secret::new(secret),
        };
        raws.push((
            format!("{name} in XOAUTH2"),
            sasl::encode_xoauth2(&credentials).expose().to_string(),
        ));
        raws.push((
            format!("{name} in OAUTHBEARER"),
            sasl::encode_oauthbearer(&credentials, server)
                .expose()
                .to_string(),
        ));
    }
    let mut forms = Vec::new();
    for (what, raw) in raws {
        for (encoding, engine) in [
            ("base64", &STANDARD),
            ("unpadded base64", &STANDARD_NO_PAD),
            ("base64url", &URL_SAFE),
            ("unpadded base64url", &URL_SAFE_NO_PAD),
        ] {
            forms.push((format!("{what}, {encoding}"), engine.encode(&raw)));
        }
        forms.push((what, raw));
    }
    forms
}

/// `oxirelay serve` at `OXIRELAY_LOG=trace` with mail flowing both ways
/// (a password user submits; the relay refreshes and rotates the token,
/// then delivers over OAUTHBEARER): none of the secrets involved appears
/// in any form in its output, its logs, the store (with its WAL) or the
/// audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_at_trace_writes_no_secret_in_any_form_anywhere() {
    use oxirelay::sandbox::authz::TokenFault;
    let harness = Harness::start(
        "authorization_code",
        "oauthbearer",
        Duration::from_secs(3600),
    )
    .await;
    // The consent's token lives two seconds, and is past its refresh time
    // when serve starts: the relay must refresh (and rotate the refresh
    // token) before it delivers; the fresh token lasts the hour.
    harness
        .sandbox
        .auth
        .faults()
        .fail_next(1, TokenFault::ShortLived(Duration::from_secs(2)));
    let consent_token = harness.consent().await;
    harness.wait_until_refresh_due().await;
    let (first_refresh, _) = harness.stored_tokens().await;
    let first_refresh = first_refresh.expect("a refresh token");
    let access = harness.add_relay();
    let issued_before = harness.sandbox.auth.stats().tokens_issued;

    let relay = RelayProcess::start_logged(&harness.config_path, &[], "trace");
    let message =
        format!("From: {USER}\r\nTo: someone@example.net\r\nSubject: leak check\r\n\r\nhello\r\n");
    let mut client = line_client::Client::connect_addr(relay.addr, WAIT).await;
    client.greet_with_starttls_trusting(&access.ca_file).await;
    let reply = client.auth_plain(&access.user, &access.password).await;
    assert!(reply.starts_with("235 "), "{reply}");
    for _ in 0..2 {
        let reply = client
            .send(USER, "someone@example.net", message.as_bytes())
            .await;
        assert!(reply.starts_with("250 "), "{reply}");
    }
    let _ = client.command("QUIT").await;
    harness
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(2, WAIT)
        .await
        .expect("delivered");
    let relay = tokio::task::spawn_blocking(move || {
        let mut relay = relay;
        let status = {
            let pid = relay.child.id().to_string();
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill -TERM");
            relay.child.wait().expect("serve exits")
        };
        assert!(status.success(), "{status}");
        relay
    })
    .await
    .expect("join");
    // Its logs are read to the end: both pipes closed with the process.
    let transcript = relay.wait_for_all(&["oxirelay: stopped"]);
    drop(transcript);
    let output = relay.transcript().join("\n");
    assert!(
        output.contains(" TRACE "),
        "trace logs were captured: {}",
        &output[..output.len().min(2000)]
    );

    // Every token the run used is known: the consent's, and the one
    // refresh the run made.
    assert_eq!(
        harness.sandbox.auth.stats().tokens_issued,
        issued_before + 1,
        "exactly one refresh during the run"
    );
    let (refresh, current) = harness.stored_tokens().await;
    let (refresh, current) = (refresh.expect("refresh"), current.expect("access"));
    assert_ne!(refresh.expose(), first_refresh.expose(), "rotated");
    let smtp = harness.sandbox.smtp.stats();
    assert!(
        smtp.auth_attempts
            .get("OAUTHBEARER")
            .is_some_and(|n| *n >= 1)
            && smtp.auth_successes == smtp.auth_attempts_total(),
        "the relay logged in over OAUTHBEARER: {smtp:?}"
    );

    let account = harness.account();
    let server = oxirelay::smtp::sasl::ServerName {
        host: &account.smtp.host,
        port: account.smtp.port,
    };
    let bearer = Some((account.user.as_str(), &server));
    let client_secret = harness.sandbox.client_secret.expose().to_string();
    let master_key = std::fs::read_to_string(harness.dir.path().join("master.key"))
        .expect("master key")
        .trim()
        .to_string();
    let plain_message =
        oxirelay::smtp::sasl::encode_plain(&oxirelay::smtp::sasl::PasswordCredentials {
            authzid: None,
            user: access.user.clone(),
            password: oxirelay::secret::Secret::new(access.password.as_str()),
        });
    let mut forms = Vec::new();
    forms.extend(forms_of("client secret", &client_secret, None));
    forms.extend(forms_of(
        "client id:secret (HTTP Basic)",
        &format!("{}:{client_secret}", oxirelay::sandbox::CLIENT_ID),
        None,
    ));
    forms.extend(forms_of("master key", &master_key, None));
    forms.extend(forms_of("app password", &access.password, None));
    forms.extend(forms_of("AUTH PLAIN message", plain_message.expose(), None));
    forms.extend(forms_of(
        "consent access token",
        consent_token.secret.expose(),
        bearer,
    ));
    forms.extend(forms_of(
        "consent refresh token",
        first_refresh.expose(),
        bearer,
    ));
    forms.extend(forms_of("refreshed access token", current.expose(), bearer));
    forms.extend(forms_of("rotated refresh token", refresh.expose(), bearer));

    // The forms are those of the wire: AUTH PLAIN's is what the client sent.
    let sent = line_client::plain(&access.user, &access.password);
    assert!(forms.iter().any(|(_, form)| *form == sent));

    let mut places = vec![("serve's output and logs".to_string(), output.into_bytes())];
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", harness.db_path().display());
        if let Ok(bytes) = std::fs::read(&path) {
            places.push((path, bytes));
        }
    }
    let audit = harness.dir.path().join("oxirelay-audit.jsonl");
    places.push((
        audit.display().to_string(),
        std::fs::read(&audit).expect("the audit log exists"),
    ));
    for (what, form) in &forms {
        assert!(form.len() >= 12, "{what} is a real value: {form:?}");
        for (place, bytes) in &places {
            assert!(!contains(bytes, form.as_bytes()), "{what} found in {place}");
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
    assert!(!stderr.contains("hunter2"), "repeats the secret: {stderr}");
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
