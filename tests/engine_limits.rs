//! Per-account limits against the real sandbox: a message over the
//! per-minute quota is released for later (not an attempt), and an
//! envelope over the recipients-per-message limit goes as several
//! transactions.

mod engine_common;

use engine_common::*;
use oxirelay::delivery::limits::AccountLimits;
use oxirelay::store::{MessageState, RecipientState};

#[tokio::test]
async fn messages_over_the_per_minute_quota_are_released_for_later() {
    let h = harness().await;
    let mut config = test_config();
    config.limits.insert(
        ACCOUNT.into(),
        AccountLimits {
            messages_per_minute: Some(2),
            ..AccountLimits::default()
        },
    );
    let engine = h.start(config);
    let started = oxirelay::clock::now_unix();
    h.enqueue(4, &["rcpt@example.net"]).await;
    h.sandbox
        .smtp
        .inbox()
        .wait_for_count(2, WAIT)
        .await
        .expect("the quota's two");
    let stats = engine
        .wait_until(
            |s| s.messages_delivered == 2 && s.released_by_limit >= 2,
            WAIT,
        )
        .await
        .unwrap_or_else(|| panic!("two delivered, two released: {:?}", engine.stats()));
    assert_eq!(stats.attempts, 2, "a release is not an attempt");
    let report = engine.shutdown().await;
    assert_eq!(report.stats.messages_delivered, 2);

    let messages = h.messages().await;
    let waiting: Vec<_> = messages
        .iter()
        .filter(|m| m.state == MessageState::Queued)
        .collect();
    assert_eq!(waiting.len(), 2, "{messages:?}");
    for message in waiting {
        assert_eq!(message.attempts, 0);
        // Two per minute: the next one may go some 30 seconds later.
        assert!(
            message.next_attempt_at >= started + 20,
            "released until the quota refills: {message:?}"
        );
    }
    assert_eq!(h.sandbox.smtp.inbox().count(), 2);
}

#[tokio::test]
async fn a_large_envelope_goes_in_transactions_of_the_allowed_size() {
    let h = harness().await;
    let mut config = test_config();
    config.limits.insert(
        ACCOUNT.into(),
        AccountLimits {
            recipients_per_message: Some(2),
            ..AccountLimits::default()
        },
    );
    let engine = h.start(config);
    let recipients = [
        "a@example.net",
        "b@example.net",
        "c@example.net",
        "d@example.net",
        "e@example.net",
    ];
    let ids = h.enqueue(1, &recipients).await;
    let entries = h
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(3, WAIT)
        .await
        .expect("three transactions");
    let mut sizes: Vec<usize> = entries.iter().map(|e| e.rcpt_to.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 2, 2]);
    engine
        .wait_until(|s| s.messages_delivered == 1, WAIT)
        .await
        .expect("recorded");
    let message = h.message(&ids[0]).await;
    assert_eq!(message.state, MessageState::Delivered);
    assert_eq!(message.attempts, 1, "one attempt, three transactions");
    assert!(
        message
            .recipients
            .iter()
            .all(|r| r.state == RecipientState::Delivered)
    );
    engine.shutdown().await;
}
