//! `oxirelay doctor` on planted problems and on a good deployment.

mod common;

use common::write_private;
use std::process::Command;

fn doctor(config: &std::path::Path, env: &[(&str, &str)]) -> (bool, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .args(["-c", config.to_str().expect("utf-8"), "doctor", "--json"])
        .envs(env.iter().copied())
        .output()
        .expect("runs");
    let findings = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON output ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), findings)
}

fn statuses(findings: &serde_json::Value, status: &str) -> Vec<String> {
    findings
        .as_array()
        .expect("a list")
        .iter()
        .filter(|f| f["status"] == status)
        .map(|f| {
            format!(
                "{}: {}",
                f["check"].as_str().unwrap_or(""),
                f["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn a_bad_config_reports_each_planted_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("master.key");
    write_private(&key, &oxirelay::secret::generate_master_key());
    let secret = dir.path().join("office.secret");
    std::fs::write(&secret, "s3cret").expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let config = dir.path().join("oxirelay.toml");
    std::fs::write(
        &config,
        r#"[secrets]
master_key = "file:master.key"

[[account]]
name = "office"
provider = "microsoft"
grant = "client_credentials"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret = "file:office.secret"
user = "noreply@contoso.com"
scopes = ["https://outlook.office365.com/.default", "https://graph.microsoft.com/Mail.ReadWrite"]

[[account]]
name = "lab"
provider = "generic"
grant = "client_credentials"
token_url = "http://127.0.0.1:9/token"
client_id = "relay"
client_secret = "env:LAB_SECRET_NOT_SET"
user = "alice@lab.test"
smtp = "127.0.0.1:2525"
tls = "none"
insecure_loopback = true

[[listener]]
addr = "0.0.0.0:25"
tls = "none"
allow_ips = ["0.0.0.0/0"]

[[user]]
name = "printer"
password_hash = "plaintext-password"
allowed_from = []
account = "office"
"#,
    )
    .expect("write config");
    let (ok, findings) = doctor(&config, &[]);
    assert!(!ok, "a failing doctor exits non-zero");
    let fails = statuses(&findings, "fail").join("\n");
    let warns = statuses(&findings, "warn").join("\n");
    assert!(
        fails.contains("office.secret is readable by group or others"),
        "{fails}"
    );
    assert!(fails.contains("LAB_SECRET_NOT_SET is not set"), "{fails}");
    assert!(fails.contains("listener 0.0.0.0:25"), "{fails}");
    assert!(
        fails.contains("user printer") && fails.contains("not an Argon2id hash"),
        "{fails}"
    );
    assert!(
        warns.contains("account office: scopes") && warns.contains("Mail.ReadWrite"),
        "{warns}"
    );
    assert!(warns.contains("account lab: TLS"), "{warns}");
    assert!(warns.contains("account lab: transport"), "{warns}");
    assert!(
        warns.contains("user printer") && warns.contains("allowed_from is empty"),
        "{warns}"
    );
}

#[test]
fn a_good_config_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_private(
        &dir.path().join("master.key"),
        &oxirelay::secret::generate_master_key(),
    );
    write_private(&dir.path().join("office.secret"), "s3cret");
    let config = dir.path().join("oxirelay.toml");
    std::fs::write(
        &config,
        r#"[store]
url = "sqlite://oxirelay.db"

[secrets]
master_key = "file:master.key"

[[account]]
name = "office"
provider = "microsoft"
grant = "client_credentials"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret = "file:office.secret"
user = "noreply@contoso.com"
"#,
    )
    .expect("write config");
    let (ok, findings) = doctor(&config, &[]);
    assert!(ok, "{findings:#}");
    assert!(statuses(&findings, "fail").is_empty(), "{findings:#}");
}

#[test]
fn pinned_accounts_are_noted_and_a_pinned_public_provider_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_private(
        &dir.path().join("master.key"),
        &oxirelay::secret::generate_master_key(),
    );
    write_private(&dir.path().join("relay.secret"), "s3cret");
    let pin = "89FDIbOT6GJTcWKLEEBKF3yw411zUUEW4tEPLIy2p7s=";
    let config = dir.path().join("oxirelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"[secrets]
master_key = "file:master.key"

[[account]]
name = "internal"
provider = "generic"
grant = "client_credentials"
token_url = "https://id.internal.test/token"
client_id = "relay"
client_secret = "file:relay.secret"
user = "relay@internal.test"
smtp = "mail.internal.test:587"
tls_pin_sha256 = ["{pin}", "sha256//{pin}"]

[[account]]
name = "office"
provider = "microsoft"
grant = "client_credentials"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret = "file:relay.secret"
user = "noreply@contoso.com"
tls_pin_sha256 = "{pin}"
"#
        ),
    )
    .expect("write config");
    let (_, findings) = doctor(&config, &[]);
    let passes = statuses(&findings, "pass").join("\n");
    let warns = statuses(&findings, "warn").join("\n");
    assert!(
        passes.contains(
            "account internal: TLS: the upstream server is trusted by its pinned key (2 pins)"
        ),
        "{passes}"
    );
    assert!(
        warns.contains("account office: TLS: tls_pin_sha256 pins a public provider's key"),
        "{warns}"
    );
}
