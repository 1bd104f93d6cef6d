//! What the providers really answer, played by the sandbox's `microsoft`
//! and `google` profiles, and what the relay does about each: the account's
//! state and reason in the store, the message's schedule, the events, and
//! the number of token requests. Throttling and quotas keep mail queued,
//! never bounce it; settings only an administrator can change say exactly
//! which; replies that say nothing about the token cost no refresh.

mod engine_common;

use engine_common::*;
use oxirelay::delivery::engine::EngineStats;
use oxirelay::sandbox::profile::Limit;
use oxirelay::sandbox::{ProfileName, USER};
use oxirelay::smtp::server::{LineLimit, Reply};
use oxirelay::store::{AccountState, MessageState};
use std::time::Duration;

fn microsoft() -> impl FnOnce(&mut oxirelay::sandbox::SandboxOptions) {
    |options| options.profile = ProfileName::Microsoft
}

/// A profile with one row changed.
fn profile_with(
    profile: ProfileName,
    change: impl FnOnce(&mut oxirelay::sandbox::SmtpProfile),
) -> impl FnOnce(&mut oxirelay::sandbox::SandboxOptions) {
    move |options| {
        let mut smtp = profile.smtp();
        change(&mut smtp);
        options.profile = profile;
        options.smtp = Some(smtp);
    }
}

async fn wait_stats(
    engine: &oxirelay::delivery::engine::RunningEngine,
    what: &str,
    condition: impl Fn(&EngineStats) -> bool,
) -> EngineStats {
    engine
        .wait_until(condition, WAIT)
        .await
        .unwrap_or_else(|| panic!("{what}: {:?}", engine.stats()))
}

fn now() -> i64 {
    oxirelay::clock::now_unix()
}

/// The token endpoint's count of issued tokens.
fn tokens_issued(h: &Harness) -> u64 {
    h.sandbox.auth.stats().tokens_issued
}

#[tokio::test]
async fn smtp_auth_disabled_needs_an_administrator_then_the_mail_goes() {
    let h = harness_with(microsoft()).await;
    let mailboxes = h.sandbox.smtp.mailboxes();
    mailboxes.grant_send_as(USER, SENDER);
    mailboxes.disable_smtp_auth(USER);
    let mut config = test_config();
    config.admin_backoff = Duration::from_secs(1);
    let engine = h.start(config);
    let ids = h.enqueue(1, &["rcpt@example.net"]).await;

    wait_stats(&engine, "an attempt stopped by the setting", |s| {
        s.needs_admin >= 1 && s.attempts >= 1
    })
    .await;
    let (state, reason) = h.account_state().await;
    assert_eq!(state, AccountState::NeedsAdmin, "{reason}");
    assert!(
        reason.contains(&format!(
            "Set-CASMailbox -Identity {USER} -SmtpClientAuthenticationDisabled $false"
        )),
        "{reason}"
    );
    let message = h.message(&ids[0]).await;
    assert_ne!(message.state, MessageState::Bounced, "{message:?}");
    assert!(
        message
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("5.7.139"),
        "{message:?}"
    );
    // No refresh: a new token does not turn SMTP AUTH back on.
    assert_eq!(tokens_issued(&h), 1);
    assert!(
        h.event_kinds()
            .await
            .contains(&"account.needs_admin".to_string())
    );
    assert!(
        !h.event_kinds()
            .await
            .contains(&"token.invalidated".to_string())
    );

    // The administrator turns it on: the next try logs in, delivers, and
    // the account is valid again.
    mailboxes.enable_smtp_auth(USER);
    h.sandbox
        .smtp
        .inbox()
        .wait_for_count(1, WAIT)
        .await
        .expect("delivered once SMTP AUTH is on");
    wait_stats(&engine, "delivered", |s| s.messages_delivered == 1).await;
    let (state, reason) = h.account_state().await;
    assert_eq!(state, AccountState::Valid, "{reason}");
    assert!(
        h.event_kinds()
            .await
            .contains(&"account.admin_resolved".to_string())
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn send_as_denied_keeps_the_message_and_names_the_grant() {
    let h = harness_with(microsoft()).await;
    let engine = h.start(test_config());
    let ids = h.enqueue(1, &["rcpt@example.net"]).await;
    wait_stats(&engine, "refused Send As", |s| {
        s.needs_admin >= 1 && s.attempts >= 1
    })
    .await;
    let message = h.message(&ids[0]).await;
    assert_eq!(message.state, MessageState::Deferred, "{message:?}");
    assert!(
        message
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("5.7.60"),
        "{message:?}"
    );
    let (state, reason) = h.account_state().await;
    assert_eq!(state, AccountState::NeedsAdmin, "{reason}");
    assert!(
        reason.contains(&format!(
            "Add-RecipientPermission -Identity <From address> -Trustee {USER} -AccessRights SendAs"
        )),
        "{reason}"
    );
    assert_eq!(engine.stats().dsns_enqueued, 0, "nothing bounced");

    h.sandbox.smtp.mailboxes().grant_send_as(USER, SENDER);
    assert!(h.store.retry_now(&ids[0], now()).await.expect("retry"));
    h.wake.notify_one();
    wait_stats(&engine, "delivered after the grant", |s| {
        s.messages_delivered == 1
    })
    .await;
    let (state, reason) = h.account_state().await;
    assert_eq!(state, AccountState::Valid, "{reason}");
    engine.shutdown().await;
}

/// A quota reply defers the message until the provider's window has
/// passed and pauses the account; the account stays valid.
async fn quota_pauses_and_defers(h: Harness, window: Duration, expect_text: &str) {
    let engine = h.start(test_config());
    let ids = h.enqueue(3, &["rcpt@example.net"]).await;
    wait_stats(&engine, "two delivered, one deferred", |s| {
        s.messages_delivered == 2 && s.recipients_deferred >= 1 && s.quota_pauses >= 1
    })
    .await;
    let mut deferred = Vec::new();
    for id in &ids {
        let message = h.message(id).await;
        assert_ne!(message.state, MessageState::Bounced, "{message:?}");
        if message.state != MessageState::Delivered {
            deferred.push(message);
        }
    }
    assert_eq!(deferred.len(), 1, "{deferred:?}");
    let message = &deferred[0];
    assert!(
        message
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains(expect_text),
        "{message:?}"
    );
    let due_in = message.next_attempt_at - now();
    assert!(
        due_in >= window.as_secs() as i64 - 5,
        "not due before the window passes: {due_in}s"
    );
    let (state, reason) = h.account_state().await;
    assert_eq!(state, AccountState::Valid, "{reason}");
    assert_eq!(tokens_issued(&h), 1);
    assert_eq!(engine.stats().dsns_enqueued, 0);
    engine.shutdown().await;
}

#[tokio::test]
async fn exchange_submission_quota_defers_for_its_minute() {
    let h = harness_with(profile_with(ProfileName::Microsoft, |smtp| {
        smtp.message_limits[0].count = 2;
    }))
    .await;
    h.sandbox.smtp.mailboxes().grant_send_as(USER, SENDER);
    quota_pauses_and_defers(
        h,
        Duration::from_secs(60),
        "SubmissionQuotaExceededException",
    )
    .await;
}

#[tokio::test]
async fn gmail_daily_limit_defers_and_probes_hourly() {
    let h = harness_with(profile_with(ProfileName::Google, |smtp| {
        smtp.message_limits = vec![Limit {
            count: 2,
            ..smtp.message_limits[0].clone()
        }];
    }))
    .await;
    quota_pauses_and_defers(
        h,
        Duration::from_secs(3600),
        "5.4.5 Daily user sending limit",
    )
    .await;
}

/// A reply to AUTH that is a throttle keeps the mail queued, costs no
/// refresh and leaves the account valid.
async fn throttled_at_login(h: Harness, at_least: Duration, expect_text: &str) {
    let engine = h.start(test_config());
    let ids = h.enqueue(1, &["rcpt@example.net"]).await;
    wait_stats(&engine, "throttled", |s| {
        s.throttled >= 1 && s.attempts >= 1
    })
    .await;
    let message = h.message(&ids[0]).await;
    assert_eq!(message.state, MessageState::Deferred, "{message:?}");
    assert!(
        message
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains(expect_text),
        "{message:?}"
    );
    assert!(
        message.next_attempt_at - now() >= at_least.as_secs() as i64 - 5,
        "{message:?}"
    );
    let (state, reason) = h.account_state().await;
    assert_eq!(state, AccountState::Valid, "{reason}");
    assert_eq!(tokens_issued(&h), 1, "no refresh for a throttle");
    engine.shutdown().await;
}

#[tokio::test]
async fn google_too_many_login_attempts_waits_out_the_lockout() {
    let h = harness_with(profile_with(ProfileName::Google, |smtp| {
        if let Some(limit) = smtp.failed_logins.as_mut() {
            limit.count = 0;
        }
    }))
    .await;
    throttled_at_login(
        h,
        Duration::from_secs(600),
        "454 4.7.0 Too many login attempts",
    )
    .await;
}

#[tokio::test]
async fn google_try_again_later_closes_and_backs_off() {
    let h = harness_with(profile_with(ProfileName::Google, |smtp| {
        if let Some(cap) = smtp.sessions_per_mailbox.as_mut() {
            cap.sessions = 0;
        }
    }))
    .await;
    let engine = h.start(test_config());
    let ids = h.enqueue(1, &["rcpt@example.net"]).await;
    wait_stats(&engine, "throttled", |s| {
        s.throttled >= 1 && s.attempts >= 1
    })
    .await;
    let message = h.message(&ids[0]).await;
    assert_eq!(message.state, MessageState::Deferred, "{message:?}");
    assert!(
        message
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("421 4.7.0 Try again later"),
        "{message:?}"
    );
    let (state, _) = h.account_state().await;
    assert_eq!(state, AccountState::Valid);
    engine.shutdown().await;
}

#[tokio::test]
async fn exchange_sender_thread_limit_is_a_throttle() {
    let h = harness_with(profile_with(ProfileName::Microsoft, |smtp| {
        if let Some(cap) = smtp.sessions_per_mailbox.as_mut() {
            cap.sessions = 0;
        }
    }))
    .await;
    h.sandbox.smtp.mailboxes().grant_send_as(USER, SENDER);
    throttled_at_login(h, Duration::from_secs(1), "432 4.3.2 STOREDRV.ClientSubmit").await;
}

#[tokio::test]
async fn a_line_too_long_reply_to_auth_costs_no_token_and_keeps_the_account_valid() {
    // A server that takes SASL responses of at most 256 octets: the token
    // never reaches its judge.
    let h = harness_with(profile_with(ProfileName::Strict, |smtp| {
        smtp.line_limit = LineLimit {
            command: 512,
            auth_command: 512,
            sasl_response: 256,
            reply: Reply::new(500, "5.5.2 Line too long"),
        };
    }))
    .await;
    let engine = h.start(test_config());
    let ids = h.enqueue(1, &["rcpt@example.net"]).await;
    wait_stats(&engine, "an attempt", |s| s.attempts >= 1).await;
    let message = h.message(&ids[0]).await;
    assert_eq!(message.state, MessageState::Deferred, "{message:?}");
    let error = message.last_error.unwrap_or_default();
    assert!(error.contains("500 5.5.2 Line too long"), "{error}");
    assert!(error.contains("says nothing about the token"), "{error}");
    assert_eq!(tokens_issued(&h), 1, "no refresh");
    let (state, reason) = h.account_state().await;
    assert_eq!(state, AccountState::Valid, "{reason}");
    let kinds = h.event_kinds().await;
    assert!(
        !kinds.contains(&"token.invalidated".to_string()),
        "{kinds:?}"
    );
    assert!(
        !kinds.contains(&"token.refresh_failed".to_string()),
        "{kinds:?}"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn a_token_refused_in_the_providers_words_is_refreshed_once() {
    for profile in [ProfileName::Microsoft, ProfileName::Google] {
        let h = harness_with(move |options| options.profile = profile).await;
        h.sandbox.smtp.mailboxes().grant_send_as(USER, SENDER);
        // The relay holds a token that the provider then stops accepting.
        let token = h.broker.access_token(ACCOUNT).await.expect("token");
        assert!(h.sandbox.auth.is_token_active(&token.secret));
        h.revoke_access_token(&token.secret).await;
        let engine = h.start(test_config());
        h.enqueue(1, &["rcpt@example.net"]).await;
        h.sandbox
            .smtp
            .inbox()
            .wait_for_count(1, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{profile}: delivered after one refresh: {e}"));
        assert_eq!(tokens_issued(&h), 2, "{profile}: one refresh");
        let kinds = h.event_kinds().await;
        assert!(
            kinds.contains(&"token.invalidated".to_string()),
            "{kinds:?}"
        );
        engine.shutdown().await;
    }
}

#[tokio::test]
async fn google_refuses_passwords_as_gmail_does() {
    use oxirelay::delivery::classify::{ReplyClass, ReplyFacts, classify, explain};
    use oxirelay::smtp::client::{ClientError, Session};
    use oxirelay::smtp::sasl::PasswordCredentials;
    let h = harness_with(|options| options.profile = ProfileName::Google).await;
    let account = h.broker.account(ACCOUNT).expect("account");
    let target = oxirelay::delivery::upstream::target_for(account).expect("target");
    let mut session = Session::connect(&target).await.expect("STARTTLS session");
    let error = session
        .authenticate_password(&PasswordCredentials {
            authzid: None,
            user: USER.into(),
            password: oxirelay::secret::Secret::new("the-old-password"),
        })
        .await
        .expect_err("passwords are refused");
    let ClientError::AuthRejected { reply, .. } = &error else {
        panic!("a refusal of the credentials: {error:?}");
    };
    assert_eq!((reply.code, reply.enhanced), (534, Some((5, 7, 9))));
    let text = reply.text();
    assert!(
        text.contains("Application-specific password required"),
        "{text}"
    );
    let facts = ReplyFacts::of(reply, &text);
    assert_eq!(classify(facts), ReplyClass::AuthFailure);
    assert!(explain(facts).expect("explained").contains("OAuth"));
    let _ = session.quit().await;
}

#[tokio::test]
async fn a_token_exchange_calls_close_to_expiry_is_refreshed_without_failing_the_account() {
    use oxirelay::sandbox::authz::TokenFault;
    let h = harness_with(microsoft()).await;
    h.sandbox.smtp.mailboxes().grant_send_as(USER, SENDER);
    // The relay holds a token with five minutes left: inside Exchange's
    // ten-minute margin (501 5.5.127).
    let faults = h.sandbox.auth.faults();
    faults.fail_next(1, TokenFault::ShortLived(Duration::from_secs(300)));
    h.broker
        .access_token(ACCOUNT)
        .await
        .expect("a short-lived token");
    let engine = h.start(test_config());
    h.enqueue(1, &["rcpt@example.net"]).await;
    wait_stats(&engine, "delivered after a refresh", |s| {
        s.messages_delivered == 1
    })
    .await;
    assert_eq!(tokens_issued(&h), 2, "one refresh");
    let (state, reason) = h.account_state().await;
    assert_eq!(state, AccountState::Valid, "{reason}");
    let kinds = h.event_kinds().await;
    assert!(
        kinds.contains(&"token.invalidated".to_string()),
        "{kinds:?}"
    );
    assert!(
        !kinds.contains(&"token.refresh_failed".to_string()),
        "{kinds:?}"
    );

    engine.shutdown().await;

    // A provider that only ever issues tokens inside its own margin: the
    // fresh token is refused too; the mail waits, the account is not failed.
    // (A new engine: the first one's pooled session is logged in already.)
    faults.fail_next(2, TokenFault::ShortLived(Duration::from_secs(300)));
    let token = h.broker.access_token(ACCOUNT).await.expect("token");
    h.broker.invalidate(ACCOUNT, &token).await.expect("drop it");
    h.broker
        .access_token(ACCOUNT)
        .await
        .expect("a short-lived token");
    let engine = h.start(test_config());
    let ids = h.enqueue(1, &["rcpt2@example.net"]).await;
    wait_stats(&engine, "deferred", |s| s.attempts >= 1).await;
    let message = h.message(&ids[0]).await;
    assert_eq!(message.state, MessageState::Deferred, "{message:?}");
    let error = message.last_error.unwrap_or_default();
    assert!(
        error.contains("5.5.127") && error.contains("no refresh can help"),
        "{error}"
    );
    let (state, reason) = h.account_state().await;
    assert_eq!(state, AccountState::Valid, "{reason}");
    engine.shutdown().await;
}
