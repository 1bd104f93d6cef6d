//! The delivery engine against the real sandbox over real TCP + STARTTLS,
//! with a real SQLite queue: connection reuse, per-recipient outcomes with
//! a DSN, expired leases coming back, shutdown releasing claims.

mod engine_common;

use engine_common::*;
use oxirelay::delivery::engine::RunningEngine;
use oxirelay::sandbox::smtp::{Fault, FaultStage, FaultTimes};
use oxirelay::smtp::server::Reply;
use oxirelay::store::{MessageId, MessageState, RecipientState};
use std::time::Duration;

#[tokio::test]
async fn many_messages_share_few_upstream_logins_and_one_token() {
    let h = harness().await;
    let engine = h.start(test_config());
    let ids = h.enqueue(40, &["rcpt@example.net"]).await;
    let entries = h
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(40, WAIT)
        .await
        .expect("all 40 delivered");
    assert_eq!(entries.len(), 40);
    if engine
        .wait_until(|s| s.messages_delivered == 40, WAIT)
        .await
        .is_none()
    {
        panic!(
            "not all recorded: {:?} {:?} {:?}",
            engine.stats(),
            engine.pool_stats(),
            h.messages()
                .await
                .iter()
                .map(|m| (m.state, m.attempts, m.last_error.clone()))
                .collect::<Vec<_>>()
        );
    }
    for id in &ids {
        let message = h.message(id).await;
        assert_eq!(message.state, MessageState::Delivered, "{message:?}");
        assert_eq!(message.attempts, 1);
        assert_eq!(message.recipients[0].state, RecipientState::Delivered);
    }

    let smtp = h.sandbox.smtp.stats();
    let pool = engine.pool_stats();
    // At most two connections per account (the cap), each one login.
    assert!(pool.sessions_opened <= 2, "{pool:?}");
    assert!(smtp.auth_attempts_total() <= 2, "{smtp:?}");
    assert!(smtp.connections <= 2, "{smtp:?}");
    assert_eq!(pool.messages_sent, 40);
    assert!(pool.sessions_reused >= 38, "{pool:?}");
    assert_eq!(
        h.sandbox.auth.stats().token_requests,
        1,
        "one token serves every session"
    );
    let events = h.store.events(100).await.expect("events");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == "message.delivered")
            .count(),
        40
    );

    let report = engine.shutdown().await;
    assert_eq!(report.workers_cut_off, 0);
    // The idle sessions are closed with QUIT on shutdown.
    h.sandbox
        .smtp
        .wait_until(|s| s.active_sessions == 0, WAIT)
        .await
        .expect("sessions closed");
}

#[tokio::test]
async fn one_recipient_refused_for_good_bounces_and_the_sender_gets_a_dsn() {
    let h = harness().await;
    // The first RCPT of the session is refused for good; the other two go.
    h.sandbox.smtp.faults().inject(
        Fault::Reply {
            stage: FaultStage::Rcpt,
            reply: Reply::new(550, "5.1.1 No such user here"),
        },
        FaultTimes::Next(1),
    );
    let engine = h.start(test_config());
    let ids = h
        .enqueue(
            1,
            &["gone@example.net", "ok1@example.net", "ok2@example.net"],
        )
        .await;
    // The message, then the DSN to its sender through the same account.
    let entries = h
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(2, WAIT)
        .await
        .expect("message and DSN delivered");
    engine
        .wait_until(|s| s.messages_delivered == 2, WAIT)
        .await
        .expect("both recorded");

    let message = h.message(&ids[0]).await;
    assert_eq!(message.state, MessageState::Delivered);
    let states: Vec<_> = message.recipients.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            RecipientState::Bounced,
            RecipientState::Delivered,
            RecipientState::Delivered
        ]
    );
    assert!(
        message.recipients[0]
            .reply
            .as_deref()
            .is_some_and(|r| r.starts_with("550 5.1.1")),
        "{message:?}"
    );

    let original = entries
        .iter()
        .find(|e| e.mail_from == SENDER)
        .expect("original");
    assert_eq!(original.rcpt_to, ["ok1@example.net", "ok2@example.net"]);
    let dsn = entries
        .iter()
        .find(|e| e.mail_from.is_empty())
        .expect("a DSN from the null sender");
    assert_eq!(dsn.rcpt_to, [SENDER]);
    let body =
        String::from_utf8(h.sandbox.smtp.inbox().read(&dsn.id).expect("read")).expect("utf-8");
    assert!(body.contains("report-type=delivery-status"), "{body}");
    assert!(body.contains("MAILER-DAEMON@"), "{body}");
    assert!(
        body.contains(
            "Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{body}"
    );
    assert!(
        !body.contains("Final-Recipient: rfc822; ok1@"),
        "only the failed recipient is reported"
    );

    let stats = engine.shutdown().await.stats;
    assert_eq!(stats.dsns_enqueued, 1, "no DSN for the DSN");
    assert_eq!(stats.recipients_bounced, 1);
    assert_eq!(stats.recipients_delivered, 3);
    let kinds: Vec<String> = h
        .store
        .events(100)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"message.bounced".to_string()), "{kinds:?}");
    assert!(
        kinds.contains(&"message.dsn_queued".to_string()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn without_dsn_a_bounce_sends_nothing_back() {
    let h = harness().await;
    h.sandbox.smtp.faults().inject(
        Fault::Reply {
            stage: FaultStage::Rcpt,
            reply: Reply::new(550, "5.1.1 No such user here"),
        },
        FaultTimes::Next(1),
    );
    let mut config = test_config();
    config.dsn = false;
    let engine = h.start(config);
    let ids = h.enqueue(1, &["gone@example.net"]).await;
    let stats = engine
        .wait_until(|s| s.messages_bounced == 1, WAIT)
        .await
        .expect("bounced");
    assert_eq!(stats.dsns_enqueued, 0);
    assert_eq!(h.message(&ids[0]).await.state, MessageState::Bounced);
    assert_eq!(h.messages().await.len(), 1, "no DSN queued");
    engine.shutdown().await;
    assert_eq!(h.sandbox.smtp.inbox().count(), 0);
}

#[tokio::test]
async fn a_crashed_workers_expired_lease_comes_back_on_start() {
    let h = harness().await;
    let ids = h.enqueue(2, &["rcpt@example.net"]).await;
    // Another process claimed both and died: its lease ran out a second ago.
    let now = oxirelay::clock::now_unix();
    let taken = h
        .store
        .claim("crashed-host:1:dead/w0", now, now - 1, 10)
        .await
        .expect("claim");
    assert_eq!(taken.len(), 2);
    assert_eq!(h.message(&ids[0]).await.state, MessageState::InFlight);

    let engine = h.start(test_config());
    h.sandbox
        .smtp
        .inbox()
        .wait_for_count(2, WAIT)
        .await
        .expect("delivered after the lease expired");
    engine
        .wait_until(|s| s.messages_delivered == 2, WAIT)
        .await
        .expect("recorded");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_start_gives_back_at_once_what_gone_instances_held_and_leaves_the_living_alone() {
    use oxirelay::instance::Holder;
    let h = harness().await;
    let ids = h.enqueue(3, &["rcpt@example.net"]).await;
    let now = oxirelay::clock::now_unix();
    let here = Holder::new_in_this_process();
    // Killed on this host: a reaped child's pid, its heartbeat and lease an
    // hour long, so only the proof of its death can free its claim.
    let mut child = std::process::Command::new("true").spawn().expect("true");
    let pid = child.id();
    child.wait().expect("reaped");
    let dead = Holder {
        id: format!("{}:{pid}:00000001", oxirelay::instance::host_name()),
        pid,
        locality: here.locality.clone(),
    };
    // Silent on another host: its heartbeat ended a minute ago.
    let silent = Holder {
        id: "elsewhere:10:00000002".into(),
        pid: 10,
        locality: "elsewhere boot:b pidns:pid:[1]".into(),
    };
    // Alive on another host, delivering.
    let alive = Holder {
        id: "elsewhere:11:00000003".into(),
        pid: 11,
        locality: "elsewhere boot:b pidns:pid:[1]".into(),
    };
    // The silent instance claims last: a claim takes messages whose
    // instance has gone silent before due ones (so that a backlog cannot
    // starve them), and the living one claiming after it would take its.
    for (holder, heartbeat_until) in [
        (&dead, now + 3600),
        (&alive, now + 3600),
        (&silent, now - 60),
    ] {
        h.store
            .heartbeat(holder, now - 120, heartbeat_until)
            .await
            .expect("register");
        let taken = h
            .store
            .claim(&format!("{}/w0", holder.id), now, now + 3600, 1)
            .await
            .expect("claim");
        assert_eq!(taken.len(), 1);
    }

    let engine = h.start(test_config());
    let stats = engine
        .wait_until(|s| s.messages_delivered == 2, WAIT)
        .await
        .expect("the gone instances' messages delivered");
    assert_eq!(stats.released_from_gone_instances, 2);
    let states: Vec<MessageState> = {
        let mut states = Vec::new();
        for id in &ids {
            states.push(h.message(id).await.state);
        }
        states
    };
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == MessageState::InFlight)
            .count(),
        1,
        "the living instance keeps its claim: {states:?}"
    );
    let instances: Vec<String> = h
        .store
        .instances()
        .await
        .expect("store")
        .into_iter()
        .map(|i| i.holder.id)
        .collect();
    assert!(instances.contains(&alive.id));
    assert!(
        instances.contains(&engine.instance().to_string()),
        "registered"
    );
    assert!(!instances.contains(&dead.id) && !instances.contains(&silent.id));
    engine.shutdown().await;
    let instances = h.store.instances().await.expect("store");
    assert_eq!(instances.len(), 1, "a clean shutdown unregisters");
}

#[tokio::test]
async fn shutdown_finishes_the_delivery_in_progress_and_releases_the_rest() {
    let h = harness().await;
    let ids = h.enqueue(6, &["rcpt@example.net"]).await;
    // A slow upstream, so the first delivery is still running when the
    // engine is asked to stop; one worker holds all six claims.
    h.sandbox.smtp.faults().inject(
        Fault::SlowReplies(Duration::from_millis(150)),
        FaultTimes::Always,
    );
    let mut config = test_config();
    config.workers = 1;
    config.claim_batch = 10;
    let engine = h.start(config);
    h.sandbox
        .smtp
        .wait_until(|s| s.auth_successes >= 1, WAIT)
        .await
        .expect("the first delivery is under way");
    // The caller's shutdown signal, as `serve` sends it on SIGTERM.
    h.shutdown.send(true).expect("engine listening");
    let report = engine.shutdown().await;
    assert_eq!(report.workers_cut_off, 0);
    assert!(report.stats.released_at_shutdown >= 1, "{report:?}");

    let messages = h.messages().await;
    assert!(
        messages.iter().all(|m| m.state != MessageState::InFlight),
        "nothing is left leased: {messages:?}"
    );
    let delivered = messages
        .iter()
        .filter(|m| m.state == MessageState::Delivered)
        .count();
    let queued: Vec<_> = messages
        .iter()
        .filter(|m| m.state == MessageState::Queued)
        .collect();
    assert!(delivered >= 1, "the delivery in progress finished");
    assert_eq!(delivered + queued.len(), ids.len());
    assert!(
        queued.iter().all(|m| m.attempts == 0),
        "released, not counted as attempts"
    );
    assert_eq!(h.sandbox.smtp.inbox().count(), delivered);
}

#[tokio::test]
async fn a_message_past_its_maximum_age_expires_with_an_event_and_a_dsn() {
    let h = harness().await;
    h.sandbox.smtp.faults().inject(
        Fault::Reply {
            stage: FaultStage::Rcpt,
            reply: Reply::new(450, "4.2.1 Mailbox busy"),
        },
        FaultTimes::Always,
    );
    let mut config = test_config();
    config.schedule.max_age = Duration::from_secs(2);
    config.maintenance_interval = Duration::from_millis(500);
    let engine = h.start(config);
    let ids = h.enqueue(1, &["busy@example.net"]).await;
    let stats = engine
        .wait_until(|s| s.messages_expired >= 1 && s.dsns_enqueued >= 1, WAIT)
        .await
        .unwrap_or_else(|| panic!("expired: {:?}", engine.stats()));
    assert!(stats.recipients_deferred >= 1);
    engine.shutdown().await;

    let message = h.message(&ids[0]).await;
    assert_eq!(message.state, MessageState::Expired);
    assert_eq!(message.recipients[0].state, RecipientState::Expired);
    let dsn = h
        .messages()
        .await
        .into_iter()
        .find(|m| m.submitted_by == "dsn")
        .expect("a DSN is queued");
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.recipients[0].address, SENDER);
    let (_, body) = h
        .store
        .message(&dsn.id)
        .await
        .expect("read")
        .expect("exists");
    let body = String::from_utf8(body).expect("utf-8");
    assert!(body.contains("Status: 4.4.7\r\n"), "{body}");
    let events = h.store.events(100).await.expect("events");
    assert!(events.iter().any(|e| e.kind == "message.expired"));
}

/// One message delivered, so that the pool holds an idle session (every
/// reuse going straight to MAIL, no RSET, however slow the machine); then
/// `fault` armed once and a second message queued. Its id.
async fn after_an_idle_session(fault: Fault) -> (Harness, RunningEngine, MessageId) {
    let h = harness().await;
    let mut config = test_config();
    config.pool.probe_after_idle = Duration::from_secs(600);
    let engine = h.start(config);
    h.enqueue(1, &["first@example.net"]).await;
    h.sandbox
        .smtp
        .inbox()
        .wait_for_count(1, WAIT)
        .await
        .expect("the first message delivered");
    engine
        .wait_until(|s| s.messages_delivered == 1, WAIT)
        .await
        .expect("the first recorded");
    h.sandbox.smtp.faults().inject(fault, FaultTimes::Next(1));
    let ids = h.enqueue(1, &["second@example.net"]).await;
    (h, engine, ids[0].clone())
}

/// The process's `oxirelay_upstream_sessions_total{event="found_gone"}`
/// for the harness's account, as /metrics shows it.
fn found_gone_on_metrics() -> f64 {
    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, oxirelay::metrics::global().registry())
        .expect("the metrics encode");
    let series = format!(
        "oxirelay_upstream_sessions_total{{account=\"{}\",event=\"found_gone\"}} ",
        engine_common::ACCOUNT
    );
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str())?.parse().ok())
        .unwrap_or(0.0)
}

/// A session reused without RSET that the server had dropped while idle
/// (here: closed at MAIL, no reply) costs the message nothing: it goes on
/// another session in the same attempt, neither deferred nor sent twice.
#[tokio::test]
async fn a_reused_session_the_server_dropped_is_replaced_within_the_attempt() {
    let found_gone_before = found_gone_on_metrics();
    let (h, engine, id) = after_an_idle_session(Fault::Disconnect {
        stage: FaultStage::Mail,
    })
    .await;
    engine
        .wait_until(|s| s.messages_delivered == 2, WAIT)
        .await
        .expect("the second recorded");
    let message = h.message(&id).await;
    assert_eq!(message.state, MessageState::Delivered, "{message:?}");
    assert_eq!(message.attempts, 1, "not deferred: {message:?}");
    let pool = engine.pool_stats();
    assert_eq!(pool.reused_found_gone, 1, "{pool:?}");
    assert_eq!(pool.sessions_opened, 2, "{pool:?}");
    assert_eq!(h.sandbox.smtp.inbox().count(), 2, "once each");
    // And the operator's view of it: /metrics counts the session found gone.
    assert!(
        found_gone_on_metrics() >= found_gone_before + 1.0,
        "oxirelay_upstream_sessions_total{{event=\"found_gone\"}} did not move"
    );
    assert_eq!(
        h.sandbox.auth.stats().token_requests,
        1,
        "the replacement session logs in with the token already held"
    );
}

/// A 421 to MAIL on a session reused without RSET that says the server is
/// limiting us ("too many", 4.7.0) is a throttle to wait out, not a dropped
/// session: no second login at once, the message deferred, the account
/// backed off.
#[tokio::test]
async fn a_throttling_421_on_a_reused_session_is_waited_out_not_resent() {
    let (h, engine, id) = after_an_idle_session(Fault::Reply {
        stage: FaultStage::Mail,
        reply: Reply::new(
            421,
            "4.7.0 Too many concurrent connections, try again later",
        ),
    })
    .await;
    engine
        .wait_until(|s| s.throttled >= 1 && s.attempts >= 2, WAIT)
        .await
        .expect("the throttle recorded");
    let message = h.message(&id).await;
    assert_eq!(message.state, MessageState::Deferred, "{message:?}");
    assert!(
        message
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("Too many concurrent connections"),
        "{message:?}"
    );
    let pool = engine.pool_stats();
    assert_eq!(pool.reused_found_gone, 0, "{pool:?}");
    assert_eq!(
        pool.sessions_opened, 1,
        "no login after the throttle: {pool:?}"
    );
    assert_eq!(h.sandbox.smtp.inbox().count(), 1, "only the first");
}

/// A connection lost after the message's content was sent is not a stale
/// session: the server may have the message, so it is not sent again at
/// once on another session but deferred as any lost transfer is.
#[tokio::test]
async fn a_session_lost_after_the_content_is_not_resent_at_once() {
    let (h, engine, id) = after_an_idle_session(Fault::Disconnect {
        stage: FaultStage::EndOfData,
    })
    .await;
    engine
        .wait_until(|s| s.messages_delivered == 2, WAIT)
        .await
        .expect("delivered on a later attempt");
    let message = h.message(&id).await;
    assert_eq!(message.state, MessageState::Delivered, "{message:?}");
    assert_eq!(message.attempts, 2, "deferred once: {message:?}");
    assert_eq!(engine.pool_stats().reused_found_gone, 0);
}
