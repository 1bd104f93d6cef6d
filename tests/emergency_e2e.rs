//! Revocation, the emergency stop and key rotation, through the binary,
//! against the sandbox.

mod common;

use common::{ACCOUNT, Harness, write_private};
use oxirelay::oauth::account::seal_context;
use oxirelay::oauth::broker::BrokerError;
use oxirelay::secret::MasterKey;
use std::process::Output;
use std::time::Duration;

async fn oxirelay(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .args(&args)
            .env_remove("OXIRELAY_MASTER_KEY")
            .output()
            .expect("runs")
    })
    .await
    .expect("join")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockdown_revokes_every_token_at_the_provider_and_unlock_resumes() {
    let mut harness =
        Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    let token = harness
        .context
        .broker
        .access_token(ACCOUNT)
        .await
        .expect("token");
    assert!(harness.sandbox.auth.is_token_active(&token.secret));
    let config = harness.config_path.to_str().expect("utf-8").to_string();

    let output = oxirelay(&["-c", &config, "lockdown", "--reason", "drill"]).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("revoked at the provider: access_token"),
        "{}",
        text(&output)
    );
    assert!(
        !harness.sandbox.auth.is_token_active(&token.secret),
        "introspection says inactive"
    );
    assert_eq!(harness.sandbox.auth.stats().revocations, 1);

    harness.restart().await;
    let lockdown = harness
        .context
        .store
        .lockdown()
        .await
        .expect("store")
        .expect("in force");
    assert_eq!(lockdown.reason, "drill");
    let before = harness.sandbox.auth.stats().token_requests;
    let refused = harness.send(1).await;
    assert!(matches!(
        refused,
        Err(oxirelay::delivery::upstream::UpstreamError::Broker(
            BrokerError::Revoked { .. }
        ))
    ));
    assert_eq!(
        harness.sandbox.auth.stats().token_requests,
        before,
        "a revoked account asks for nothing"
    );

    let output = oxirelay(&["-c", &config, "unlock"]).await;
    assert!(output.status.success(), "{}", text(&output));
    harness.restart().await;
    assert!(
        harness
            .context
            .store
            .lockdown()
            .await
            .expect("store")
            .is_none()
    );
    harness.send(2).await.expect("delivers again");

    let audit = oxirelay(&[
        "-c",
        &config,
        "audit",
        "verify",
        harness
            .dir
            .path()
            .join("oxirelay-audit.jsonl")
            .to_str()
            .expect("utf-8"),
    ])
    .await;
    assert!(audit.status.success(), "{}", text(&audit));
    let log = std::fs::read_to_string(harness.dir.path().join("oxirelay-audit.jsonl"))
        .expect("audit log");
    for action in [
        "\"lockdown\"",
        "\"account.revoked\"",
        "\"unlock\"",
        "\"account.reinstated\"",
    ] {
        assert!(log.contains(action), "audit log records {action}");
    }
    assert!(
        !log.contains(token.secret.expose()),
        "no token in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_reseals_everything_and_the_old_key_opens_nothing() {
    let mut harness = Harness::start(
        "authorization_code",
        "oauthbearer",
        Duration::from_secs(3600),
    )
    .await;
    harness.consent().await;
    let dir = harness.dir.path().to_path_buf();
    let old_key = MasterKey::from_file(&dir.join("master.key")).expect("old key");
    write_private(
        &dir.join("master-2.key"),
        &oxirelay::secret::generate_master_key(),
    );
    let config = std::fs::read_to_string(&harness.config_path)
        .expect("config")
        .replace(
            "master_key = \"file:master.key\"",
            "master_key = \"file:master-2.key\"\nprevious_master_keys = [\"file:master.key\"]",
        );
    std::fs::write(&harness.config_path, config).expect("write config");

    let output = oxirelay(&[
        "-c",
        harness.config_path.to_str().expect("utf-8"),
        "rotate-key",
    ])
    .await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("1 accounts re-sealed"),
        "{}",
        text(&output)
    );

    let record = harness
        .context
        .store
        .token_record(ACCOUNT)
        .await
        .expect("store")
        .expect("record");
    for sealed in [record.refresh_token.as_ref(), record.access_token.as_ref()]
        .into_iter()
        .flatten()
    {
        assert!(
            old_key.open(&seal_context(ACCOUNT), sealed).is_err(),
            "the old key opens nothing"
        );
    }
    // Without the old key at all, the account still works.
    let config = std::fs::read_to_string(&harness.config_path)
        .expect("config")
        .replace("previous_master_keys = [\"file:master.key\"]\n", "");
    std::fs::write(&harness.config_path, config).expect("write config");
    std::fs::remove_file(dir.join("master.key")).expect("destroy the old key");
    harness.restart().await;
    harness.send(1).await.expect("still works");
}

#[tokio::test]
async fn validation_detects_a_token_revoked_at_the_provider_and_consent_restores_it() {
    let mut harness =
        Harness::start("authorization_code", "xoauth2", Duration::from_secs(3600)).await;
    harness.consent().await;
    let healthy = oxirelay::oauth::health::check_account(&harness.context.broker, ACCOUNT).await;
    assert!(healthy.healthy, "{}", healthy.detail);

    // The person withdraws consent at the provider; the access token still
    // looks valid to the relay (an hour left), so only a check can tell.
    harness
        .sandbox
        .auth
        .revoke_all_for_subject(oxirelay::sandbox::USER);
    let report = oxirelay::oauth::health::check_account(&harness.context.broker, ACCOUNT).await;
    assert!(!report.healthy);
    assert!(
        report.detail.contains("oxirelay account login acct"),
        "{}",
        report.detail
    );
    let record = harness
        .context
        .store
        .token_record(ACCOUNT)
        .await
        .expect("store")
        .expect("record");
    assert_eq!(
        record.state,
        oxirelay::store::AccountState::NeedsConsent,
        "the account left the valid state"
    );
    let events = harness.context.store.events(20).await.expect("events");
    assert!(events.iter().any(|e| e.kind == "account.validation_failed"));

    harness.consent().await;
    harness.restart().await;
    assert!(
        oxirelay::oauth::health::check_account(&harness.context.broker, ACCOUNT)
            .await
            .healthy
    );
    harness.send(1).await.expect("delivers again");
}

#[tokio::test]
async fn validation_checks_a_jwt_locally_when_the_audience_is_known() {
    let mut harness =
        Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    let config = std::fs::read_to_string(&harness.config_path).expect("config");
    // The account table is the last one in the file.
    std::fs::write(
        &harness.config_path,
        format!("{config}audience = \"smtp\"\n"),
    )
    .expect("write");
    harness.restart().await;
    let good = oxirelay::oauth::health::check_account(&harness.context.broker, ACCOUNT).await;
    assert!(good.healthy, "{}", good.detail);

    std::fs::write(
        &harness.config_path,
        format!("{config}audience = \"another-service\"\n"),
    )
    .expect("write");
    harness.restart().await;
    let wrong = oxirelay::oauth::health::check_account(&harness.context.broker, ACCOUNT).await;
    assert!(!wrong.healthy, "{:?}: {}", wrong.method, wrong.detail);
    assert_eq!(
        wrong.method,
        Some(oxirelay::oauth::health::CheckMethod::Jwt)
    );
    assert!(
        wrong.detail.contains("JWT check") && wrong.detail.contains("another-service"),
        "{}",
        wrong.detail
    );
}

#[tokio::test]
async fn a_service_account_key_is_sealed_in_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_private(
        &dir.path().join("master.key"),
        &oxirelay::secret::generate_master_key(),
    );
    let config_path = dir.path().join("oxirelay.toml");
    std::fs::write(
        &config_path,
        "[store]\nurl = \"sqlite://oxirelay.db\"\n[secrets]\nmaster_key = \"file:master.key\"\n\n\
         [[account]]\nname = \"workspace\"\nprovider = \"google\"\ngrant = \"jwt_bearer\"\n\
         client_id = \"1234567890\"\nuser = \"noreply@example.com\"\n",
    )
    .expect("write");
    let context = oxirelay::cli::Context::from_config(
        oxirelay::config::Config::load(&config_path).expect("config"),
    )
    .await
    .expect("context");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let json = serde_json::json!({
        "type": "service_account",
        "client_email": "relay@project.iam.gserviceaccount.com",
        "private_key": key.serialize_pem(),
        "token_uri": "https://oauth2.googleapis.com/token",
    })
    .to_string();
    context
        .broker
        .import_service_account_key("workspace", oxirelay::secret::Secret::new(json.clone()))
        .await
        .expect("imported");
    let sealed = context
        .store
        .sealed_secret("workspace", oxirelay::oauth::account::SERVICE_ACCOUNT_KEY)
        .await
        .expect("store")
        .expect("sealed");
    assert_eq!(
        context
            .key
            .open_secret(&seal_context("workspace"), &sealed)
            .expect("opens")
            .expose(),
        json
    );
    for suffix in ["", "-wal"] {
        if let Ok(bytes) = std::fs::read(format!(
            "{}{suffix}",
            dir.path().join("oxirelay.db").display()
        )) {
            assert!(
                !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
                "no key material in the store file"
            );
        }
    }
    let refused = context
        .broker
        .import_service_account_key(
            "workspace",
            oxirelay::secret::Secret::new("{\"not\":\"a key\"}"),
        )
        .await;
    assert!(
        refused.is_err(),
        "a file that is not a key is refused before it is stored"
    );
}
