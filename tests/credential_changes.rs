//! Every command that changes an account's credentials reaches the other
//! processes on the store: `account import-token`, a consent given
//! elsewhere, `lockdown`, `unlock`, `account revoke`, `rotate-key` each move
//! the account's credential epoch, and a broker that watches (what `serve`
//! runs every second) drops its cached token and retires its sessions. The
//! end-to-end case with `serve` and mail flowing is in `relay_crash.rs`.

mod common;

use common::{ACCOUNT, Harness, write_private};
use oxirelay::oauth::broker::{Broker, BrokerError};
use oxirelay::store::AccountState;
use std::process::Output;
use std::time::Duration;

async fn oxirelay(args: &[&str], stdin: Option<String>) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .args(&args)
            .env_remove("OXIRELAY_MASTER_KEY")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("ends")
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

/// Asserts that the watching broker sees exactly one change of the account,
/// in `state`, and returns its credentials version afterwards.
async fn sees_change(broker: &Broker, state: AccountState, what: &str) -> u64 {
    let before = broker.credentials_version(ACCOUNT);
    let changes = broker.sync_credentials().await.expect("store");
    assert_eq!(changes.len(), 1, "{what}: one change seen: {changes:?}");
    assert_eq!(changes[0].account, ACCOUNT);
    assert_eq!(changes[0].state, state, "{what}");
    let after = broker.credentials_version(ACCOUNT);
    assert_eq!(after, before + 1, "{what}: its sessions are retired");
    assert!(
        broker.sync_credentials().await.expect("store").is_empty(),
        "{what}: seen once"
    );
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_change_made_elsewhere_reaches_a_watching_broker() {
    let harness = Harness::start(
        "authorization_code",
        "oauthbearer",
        Duration::from_secs(3600),
    )
    .await;
    harness.consent().await;
    let config = harness.config_path.to_str().expect("utf-8").to_string();
    // The watching broker: serve's, in another process as far as the
    // store is concerned (it shares nothing with the commands but the file).
    let watcher = Broker::new(
        harness.context.store.clone(),
        harness.context.key.clone(),
        vec![harness.account()],
    );
    let cached = watcher.access_token(ACCOUNT).await.expect("token");
    assert!(
        watcher.sync_credentials().await.expect("store").is_empty(),
        "the first look learns the epochs"
    );
    let refreshes = harness.sandbox.auth.stats().token_requests;

    // A refresh elsewhere is not a credential change.
    let other = &harness.context.broker;
    other.invalidate(ACCOUNT, &cached).await.expect("drop");
    other
        .access_token(ACCOUNT)
        .await
        .expect("refreshed elsewhere");
    assert!(harness.sandbox.auth.stats().token_requests > refreshes);
    assert!(watcher.sync_credentials().await.expect("store").is_empty());

    // import-token: a refresh token from elsewhere replaces the grant.
    let (refresh, _) = harness.stored_tokens().await;
    let output = oxirelay(
        &["-c", &config, "account", "import-token", ACCOUNT],
        Some(refresh.expect("refresh token").expose().to_string()),
    )
    .await;
    assert!(output.status.success(), "{}", text(&output));
    sees_change(&watcher, AccountState::Valid, "import-token").await;
    let (_, stored) = harness.stored_tokens().await;
    assert_eq!(
        watcher
            .access_token(ACCOUNT)
            .await
            .expect("token")
            .secret
            .expose(),
        stored.expect("access token").expose(),
        "the cached token was dropped: the watcher uses the one now stored"
    );

    // A consent given by another process (`account login`).
    let elsewhere = Broker::new(
        harness.context.store.clone(),
        harness.context.key.clone(),
        vec![harness.account()],
    );
    let consented = harness
        .sandbox
        .grant_consent(&elsewhere, ACCOUNT)
        .await
        .expect("consent");
    sees_change(&watcher, AccountState::Valid, "a new consent").await;
    assert_eq!(
        watcher
            .access_token(ACCOUNT)
            .await
            .expect("token")
            .secret
            .expose(),
        consented.secret.expose()
    );

    let output = oxirelay(&["-c", &config, "lockdown", "--reason", "drill"], None).await;
    assert!(output.status.success(), "{}", text(&output));
    sees_change(&watcher, AccountState::Revoked, "lockdown").await;
    assert!(matches!(
        watcher.access_token(ACCOUNT).await,
        Err(BrokerError::Revoked { .. })
    ));

    let output = oxirelay(&["-c", &config, "unlock"], None).await;
    assert!(output.status.success(), "{}", text(&output));
    sees_change(&watcher, AccountState::New, "unlock").await;

    let output = oxirelay(&["-c", &config, "account", "revoke", ACCOUNT], None).await;
    assert!(output.status.success(), "{}", text(&output));
    sees_change(&watcher, AccountState::Revoked, "account revoke").await;

    // rotate-key: re-sealed under a new master key.
    let dir = harness.dir.path();
    write_private(
        &dir.join("master-2.key"),
        &oxirelay::secret::generate_master_key(),
    );
    let rotated = std::fs::read_to_string(&harness.config_path)
        .expect("config")
        .replace(
            "master_key = \"file:master.key\"",
            "master_key = \"file:master-2.key\"\nprevious_master_keys = [\"file:master.key\"]",
        );
    std::fs::write(&harness.config_path, rotated).expect("write config");
    let output = oxirelay(&["-c", &config, "rotate-key"], None).await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("Running relays drop their cached tokens"),
        "{}",
        text(&output)
    );
    sees_change(&watcher, AccountState::Revoked, "rotate-key").await;
}
