//! The delivery engine's audit lines against the real sandbox and a real
//! audit log: the lines of many workers' attempts are written by one task,
//! in batches, after the outcomes are committed; an attempt is counted in
//! the stats only once its line is on disk, and shutdown ends only once
//! every recorded attempt's line is.

mod engine_common;

use engine_common::*;
use oxirelay::audit::{AuditLog, AuditOptions};
use oxirelay::config::Config;
use oxirelay::delivery::engine::{Engine, RunningEngine};
use oxirelay::oauth::account::Account;
use oxirelay::oauth::broker::Broker;
use oxirelay::secret::MasterKey;
use oxirelay::store::MessageState;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The engine of `h`, with a broker that writes the audit log it returns.
fn start_audited(h: &Harness) -> (RunningEngine, PathBuf) {
    let text = h.sandbox.account_toml(
        ACCOUNT,
        "client_credentials",
        &format!("file:{}", h.dir.path().join("client.secret").display()),
    );
    let config = Config::parse(&text, &h.dir.path().join("oxirelay.toml")).expect("config");
    let account = Account::from_config(&config.accounts[0]).expect("account");
    let key = MasterKey::from_bytes([7; 32]);
    let path = h.dir.path().join("audit.jsonl");
    let audit = Arc::new(AuditLog::open(&path, &key, AuditOptions::default()).expect("audit"));
    let broker = Arc::new(
        Broker::new(h.store.clone(), Arc::new(key), vec![account]).with_audit(audit, "relay"),
    );
    let engine = Engine::start(
        h.store.clone(),
        broker,
        test_config(),
        h.wake.clone(),
        h.shutdown.subscribe(),
    );
    (engine, path)
}

fn delivered_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .expect("read the audit log")
        .lines()
        .filter(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            value["action"] == "message.delivered"
        })
        .count()
}

#[tokio::test]
async fn every_counted_attempt_has_its_audit_line_and_shutdown_writes_the_last() {
    let h = harness().await;
    let (engine, log) = start_audited(&h);
    h.enqueue(60, &["rcpt@example.net"]).await;
    // Whenever the stats count an attempt, its line is already written.
    let mut seen = 0;
    while seen < 20 {
        let stats = engine
            .wait_until(|s| s.messages_delivered > seen, WAIT)
            .await
            .expect("deliveries go on");
        seen = stats.messages_delivered;
        let lines = delivered_lines(&log) as u64;
        assert!(
            lines >= seen,
            "{seen} attempts counted, {lines} audit lines"
        );
    }
    // Stopped in the middle: every outcome the store holds has its line.
    let report = engine.shutdown().await;
    assert_eq!(report.workers_cut_off, 0);
    let delivered = h
        .messages()
        .await
        .iter()
        .filter(|m| m.state == MessageState::Delivered)
        .count();
    assert!(delivered >= 20);
    assert_eq!(delivered_lines(&log), delivered);
    // And the chain the lines were written into is whole.
    let report = oxirelay::audit::verify(
        &log,
        Some(&MasterKey::from_bytes([7; 32])),
        oxirelay::audit::AnchorCheck::NotChecked,
    )
    .expect("an intact chain");
    assert!(report.lines >= delivered, "{report:?}");
}
