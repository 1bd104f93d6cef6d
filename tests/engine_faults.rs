//! Upstream faults from the sandbox (4xx on RCPT and after DATA, a
//! connection dropped mid-DATA, 421 at the greeting, a slow upstream, the
//! token endpoint down): messages defer, and every one is delivered once
//! the fault clears. Nothing is bounced for a passing fault.

mod engine_common;

use engine_common::*;
use oxirelay::sandbox::authz::TokenFault;
use oxirelay::sandbox::smtp::{Fault, FaultStage, FaultTimes};
use oxirelay::smtp::server::Reply;
use oxirelay::store::MessageState;
use std::time::Duration;

const MESSAGES: usize = 3;

/// Arms a fault, checks that the messages are deferred while it lasts,
/// clears it, and checks that all are delivered with no bounce.
async fn deferred_while_faulty_then_delivered(
    h: &Harness,
    arm: impl FnOnce(&Harness),
    clear: impl FnOnce(&Harness),
) -> oxirelay::delivery::engine::EngineStats {
    arm(h);
    let engine = h.start(test_config());
    let ids = h.enqueue(MESSAGES, &["rcpt@example.net"]).await;
    engine
        .wait_until(|s| s.recipients_deferred >= MESSAGES as u64, WAIT)
        .await
        .unwrap_or_else(|| panic!("deferred while faulty: {:?}", engine.stats()));
    assert_eq!(
        h.sandbox.smtp.inbox().count(),
        0,
        "nothing delivered while faulty"
    );
    for id in &ids {
        let message = h.message(id).await;
        assert!(
            // Queued: released untried while the account is backed off.
            matches!(
                message.state,
                MessageState::Deferred | MessageState::InFlight | MessageState::Queued
            ),
            "{message:?}"
        );
    }
    clear(h);
    h.sandbox
        .smtp
        .inbox()
        .wait_for_count(MESSAGES, WAIT)
        .await
        .expect("delivered once the fault cleared");
    let stats = engine
        .wait_until(|s| s.messages_delivered == MESSAGES as u64, WAIT)
        .await
        .unwrap_or_else(|| panic!("all recorded: {:?}", engine.stats()));
    for id in &ids {
        let message = h.message(id).await;
        assert_eq!(message.state, MessageState::Delivered, "{message:?}");
        assert!(message.attempts >= 1, "{message:?}");
    }
    assert!(stats.attempts > MESSAGES as u64, "retried: {stats:?}");
    assert_eq!(stats.recipients_bounced, 0);
    engine.shutdown().await;
    stats
}

fn reply_fault(stage: FaultStage, code: u16, text: &str) -> Fault {
    Fault::Reply {
        stage,
        reply: Reply::new(code, text),
    }
}

#[tokio::test]
async fn a_4xx_on_rcpt_defers() {
    let h = harness().await;
    deferred_while_faulty_then_delivered(
        &h,
        |h| {
            h.sandbox.smtp.faults().inject(
                reply_fault(FaultStage::Rcpt, 450, "4.2.1 Mailbox busy"),
                FaultTimes::Always,
            )
        },
        |h| h.sandbox.smtp.faults().clear(),
    )
    .await;
    let events = h.store.events(100).await.expect("events");
    assert!(events.iter().any(|e| e.kind == "message.deferred"));
}

#[tokio::test]
async fn a_4xx_after_data_defers() {
    let h = harness().await;
    deferred_while_faulty_then_delivered(
        &h,
        |h| {
            h.sandbox.smtp.faults().inject(
                reply_fault(
                    FaultStage::EndOfData,
                    451,
                    "4.3.0 Temporary storage failure",
                ),
                FaultTimes::Always,
            )
        },
        |h| h.sandbox.smtp.faults().clear(),
    )
    .await;
}

#[tokio::test]
async fn a_connection_dropped_mid_data_defers() {
    let h = harness().await;
    deferred_while_faulty_then_delivered(
        &h,
        |h| {
            h.sandbox
                .smtp
                .faults()
                .inject(Fault::DisconnectMidData, FaultTimes::Always)
        },
        |h| h.sandbox.smtp.faults().clear(),
    )
    .await;
}

#[tokio::test]
async fn a_421_at_the_greeting_defers_and_backs_off_the_account() {
    let h = harness().await;
    let stats = deferred_while_faulty_then_delivered(
        &h,
        |h| {
            h.sandbox.smtp.faults().inject(
                reply_fault(
                    FaultStage::Greeting,
                    421,
                    "4.3.2 Too many concurrent connections",
                ),
                FaultTimes::Always,
            )
        },
        |h| h.sandbox.smtp.faults().clear(),
    )
    .await;
    assert!(stats.throttled >= 1, "{stats:?}");
}

#[tokio::test]
async fn the_token_endpoint_down_defers() {
    let h = harness().await;
    deferred_while_faulty_then_delivered(
        &h,
        |h| {
            h.sandbox
                .auth
                .faults()
                .fail_fraction(1.0, TokenFault::ServerError)
        },
        |h| h.sandbox.auth.faults().clear(),
    )
    .await;
    let auth = h.sandbox.auth.stats();
    assert!(auth.token_failures >= 1, "{auth:?}");
    assert_eq!(auth.tokens_issued, 1);
    // No session was opened without a token.
    assert_eq!(h.sandbox.smtp.stats().auth_failures, 0);
}

#[tokio::test]
async fn a_slow_upstream_is_waited_for() {
    let h = harness().await;
    h.sandbox.smtp.faults().inject(
        Fault::SlowReplies(Duration::from_millis(200)),
        FaultTimes::Next(30),
    );
    let engine = h.start(test_config());
    h.enqueue(MESSAGES, &["rcpt@example.net"]).await;
    h.sandbox
        .smtp
        .inbox()
        .wait_for_count(MESSAGES, WAIT)
        .await
        .expect("delivered, slowly");
    let stats = engine
        .wait_until(|s| s.messages_delivered == MESSAGES as u64, WAIT)
        .await
        .expect("recorded");
    assert_eq!(stats.recipients_deferred, 0, "slow is not failed");
    engine.shutdown().await;
}

/// Contract 4, to the end: the provider refuses the token (535 5.7.3, as
/// Exchange does), the relay drops it and refreshes once; the provider
/// refuses the fresh token too: the message is deferred, the account is
/// marked failing, there was exactly one extra token request, and the
/// account backs off: what comes meanwhile waits without a login. Once the
/// back-off is over (and the provider takes tokens again) the mail goes.
#[tokio::test]
async fn a_fresh_token_refused_too_defers_marks_the_account_failing_and_backs_off() {
    let h = harness().await;
    h.broker.access_token(ACCOUNT).await.expect("a token");
    assert_eq!(h.sandbox.auth.stats().tokens_issued, 1);
    h.sandbox.smtp.faults().inject(
        reply_fault(FaultStage::Auth, 535, "5.7.3 Authentication unsuccessful"),
        FaultTimes::Next(2),
    );
    let engine = h.start(test_config());
    let first = h.enqueue(1, &["rcpt@example.net"]).await;
    engine
        .wait_until(|s| s.attempts >= 1, WAIT)
        .await
        .unwrap_or_else(|| panic!("an attempt: {:?}", engine.stats()));
    let message = h.message(&first[0]).await;
    assert_eq!(message.state, MessageState::Deferred, "{message:?}");
    let error = message.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("refused a freshly refreshed token too") && error.contains("5.7.3"),
        "{error}"
    );
    let smtp = h.sandbox.smtp.stats();
    assert_eq!(smtp.auth_attempts_total(), 2, "two logins: {smtp:?}");
    assert_eq!(smtp.auth_failures, 2, "{smtp:?}");
    assert_eq!(
        h.sandbox.auth.stats().tokens_issued,
        2,
        "exactly one refresh"
    );
    let (state, reason) = h.account_state().await;
    assert_eq!(state, oxirelay::store::AccountState::Failing, "{reason}");
    assert!(reason.contains("5.7.3"), "{reason}");
    let kinds = h.event_kinds().await;
    assert!(
        kinds.contains(&"token.invalidated".to_string()),
        "{kinds:?}"
    );

    // The account backs off: the next message is taken up and held (the
    // positive signal), without a token request or a login.
    let before = engine.stats();
    h.enqueue(1, &["rcpt2@example.net"]).await;
    engine
        .wait_until(
            |s| s.released_by_backoff > before.released_by_backoff || s.attempts > before.attempts,
            WAIT,
        )
        .await
        .unwrap_or_else(|| panic!("the second message taken up: {:?}", engine.stats()));
    assert_eq!(
        h.sandbox.smtp.stats().auth_attempts_total(),
        2,
        "no login while backed off"
    );
    assert_eq!(h.sandbox.auth.stats().tokens_issued, 2, "no token request");

    // After the back-off both go, with one new token.
    h.sandbox
        .smtp
        .inbox()
        .wait_for_count(2, WAIT)
        .await
        .expect("delivered after the back-off");
    engine
        .wait_until(|s| s.messages_delivered == 2, WAIT)
        .await
        .unwrap_or_else(|| panic!("both recorded: {:?}", engine.stats()));
    assert_eq!(h.sandbox.auth.stats().tokens_issued, 3);
    let smtp = h.sandbox.smtp.stats();
    assert!(
        smtp.auth_attempts_total() <= 4 && smtp.auth_failures == 2,
        "no login storm: {smtp:?}"
    );
    let (state, reason) = h.account_state().await;
    assert_eq!(state, oxirelay::store::AccountState::Valid, "{reason}");
    engine.shutdown().await;
}
