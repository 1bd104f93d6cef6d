//! Webhooks through the binary: `serve` delivers mail to the sandbox, and
//! the events of those deliveries reach a real HTTP receiver in the test,
//! signed, in log order, after the receiver's failures and across a
//! restart of `serve`, each received once.

mod common;
mod webhooks_common;

use common::{ACCOUNT, Harness, RelayProcess};
use oxirelay::store::{MessageId, NewMessage};
use std::collections::HashSet;
use std::time::Duration;
use webhooks_common::Receiver;

const SECRET: &str = "whsec-test-0123456789";

async fn harness_with(webhooks: &str) -> Harness {
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    harness.add_relay();
    common::write_private(&harness.dir.path().join("hook.secret"), SECRET);
    let mut text = std::fs::read_to_string(&harness.config_path).expect("config");
    text.push_str(webhooks);
    std::fs::write(&harness.config_path, text).expect("write config");
    harness
}

fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!(
        "\n[[webhook]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"file:hook.secret\"\nretry_first = \"1s\"\nretry_max = \"2s\"\n{extra}\n"
    )
}

/// Queues message `n` as if submitted by `submitted_by`, straight into
/// the store the running relay reads (it finds new mail within 2 s).
async fn enqueue(harness: &Harness, n: usize, submitted_by: &str) -> MessageId {
    let message = common::message(n);
    harness
        .context
        .store
        .enqueue(NewMessage {
            account: ACCOUNT.into(),
            mail_from: message.envelope.mail_from.clone(),
            recipients: message.envelope.rcpt_to.clone(),
            body: message.bytes,
            submitted_by: submitted_by.into(),
        })
        .await
        .expect("queued")
}

fn delivered_ids(received: &[webhooks_common::Received]) -> HashSet<String> {
    received
        .iter()
        .filter(|r| r.accepted() && r.kind() == "message.delivered")
        .map(|r| {
            r.json()["message_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn ids(messages: &[MessageId]) -> HashSet<String> {
    messages.iter().map(|m| m.0.clone()).collect()
}

/// The ids the receiver accepted, checked to be strictly increasing: in
/// log order, none twice.
fn assert_in_order_once(received: &[webhooks_common::Received]) -> Vec<i64> {
    let accepted: Vec<i64> = received
        .iter()
        .filter(|r| r.accepted())
        .map(|r| r.id())
        .collect();
    assert!(
        accepted.windows(2).all(|w| w[0] < w[1]),
        "accepted in log order, each once: {accepted:?}"
    );
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_gets_signed_events_in_order_and_an_api_key_endpoint_only_its_own() {
    let receiver = Receiver::start().await;
    let harness = harness_with(&format!(
        "{}{}",
        webhook("all", &format!("{}/all", receiver.url), ""),
        webhook(
            "shop",
            &format!("{}/shop", receiver.url),
            "api_key = \"shop\"\nevents = [\"message.*\"]"
        )
    ))
    .await;
    let relay = RelayProcess::start(&harness.config_path, &[]);
    relay.wait_for_line("oxirelay: webhook shop to ");

    let shop = vec![
        enqueue(&harness, 1, "api:shop").await,
        enqueue(&harness, 2, "api:shop").await,
    ];
    let other = enqueue(&harness, 3, "api:other").await;
    let mut all = shop.clone();
    all.push(other.clone());

    let received = receiver
        .wait_for("the three deliveries", |r| {
            let on_all: Vec<_> = r.iter().filter(|r| r.path == "/all").cloned().collect();
            delivered_ids(&on_all) == ids(&all)
        })
        .await;
    for request in &received {
        request.assert_signed(SECRET);
    }
    let on_all: Vec<_> = received
        .iter()
        .filter(|r| r.path == "/all")
        .cloned()
        .collect();
    assert_in_order_once(&on_all);
    let delivered = on_all
        .iter()
        .find(|r| r.kind() == "message.delivered")
        .expect("a delivery")
        .json();
    assert_eq!(delivered["account"], ACCOUNT);
    assert!(
        delivered["submitted_by"]
            .as_str()
            .is_some_and(|s| s.starts_with("api:"))
    );
    let reply = delivered["recipients"][0]["reply"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reply.starts_with("250"),
        "the upstream's reply: {delivered}"
    );
    assert!(
        on_all.iter().all(|r| r.kind() != "token.issued"),
        "kinds outside the default set stay out"
    );

    // The API key's endpoint got its two messages and nothing else.
    let on_shop = receiver
        .wait_for("the shop's two deliveries", |r| {
            let on_shop: Vec<_> = r.iter().filter(|r| r.path == "/shop").cloned().collect();
            delivered_ids(&on_shop) == ids(&shop)
        })
        .await;
    let on_shop: Vec<_> = on_shop.into_iter().filter(|r| r.path == "/shop").collect();
    assert_in_order_once(&on_shop);
    assert!(
        on_shop
            .iter()
            .all(|r| r.json()["submitted_by"] == "api:shop"),
        "only the shop's messages: {:?}",
        on_shop.iter().map(|r| r.json()).collect::<Vec<_>>()
    );

    // One more message: its event is POSTed only after the cursor moved
    // past the earlier ones (one event at a time), so the listing below
    // counts them.
    let fourth = enqueue(&harness, 4, "api:other").await;
    let mut with_fourth = all.clone();
    with_fourth.push(fourth);
    receiver
        .wait_for("the fourth delivery", |r| {
            let on_all: Vec<_> = r.iter().filter(|r| r.path == "/all").cloned().collect();
            delivered_ids(&on_all) == ids(&with_fourth)
        })
        .await;

    // `webhook list --json` shows both endpoints and what they received.
    let config = harness.config_path.clone();
    let listed = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .arg("-c")
            .arg(&config)
            .args(["webhook", "list", "--json"])
            .output()
            .expect("runs")
    })
    .await
    .expect("join");
    assert!(listed.status.success(), "{listed:?}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let names: Vec<_> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["all", "shop"]);
    assert!(
        listed[0]["delivered"].as_i64().unwrap_or(0) >= 3,
        "{listed}"
    );
    assert_eq!(listed[0]["attempts"], 0);
    assert!(relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_at_first_gets_every_event_later_in_order() {
    let receiver = Receiver::start().await;
    receiver.fail_next(3);
    let harness = harness_with(&webhook("ops", &format!("{}/hook", receiver.url), "")).await;
    let relay = RelayProcess::start(&harness.config_path, &[]);
    relay.wait_for_line("oxirelay: webhook ops to ");
    let mut messages = Vec::new();
    for n in 0..3 {
        messages.push(enqueue(&harness, n, "app").await);
    }
    let received = receiver
        .wait_for("every delivery, after three refusals", |r| {
            delivered_ids(r) == ids(&messages)
        })
        .await;
    // The first event was refused three times and sent again each time,
    // before anything after it.
    let first = received[0].id();
    assert!(
        received[..3]
            .iter()
            .all(|r| !r.accepted() && r.id() == first)
    );
    assert!(received[3].accepted() && received[3].id() == first);
    let accepted = assert_in_order_once(&received);
    // Nothing lost: every event of the log the endpoint takes was accepted.
    let log = harness
        .context
        .store
        .events_after(first - 1, 1000)
        .await
        .expect("events");
    let expected: Vec<i64> = log
        .iter()
        .filter(|e| e.event.kind.starts_with("message.") && e.event.kind != "message.dsn_queued")
        .map(|e| e.id)
        .collect();
    let accepted_messages: Vec<i64> = accepted
        .iter()
        .copied()
        .filter(|id| expected.contains(id))
        .collect();
    assert_eq!(accepted_messages, expected);
    assert!(relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_cursor() {
    let receiver = Receiver::start().await;
    let harness = harness_with(&webhook("ops", &format!("{}/hook", receiver.url), "")).await;
    let relay = RelayProcess::start(&harness.config_path, &[]);
    relay.wait_for_line("oxirelay: webhook ops to ");
    let first = enqueue(&harness, 1, "app").await;
    receiver
        .wait_for("the first delivery", |r| {
            delivered_ids(r) == ids(std::slice::from_ref(&first))
        })
        .await;

    // The receiver goes down; two more deliveries happen meanwhile.
    receiver.fail_always(true);
    let later = vec![
        enqueue(&harness, 2, "app").await,
        enqueue(&harness, 3, "app").await,
    ];
    // Two refusals: the second attempt comes only after the first failure
    // was recorded, so the store has it when this relay stops.
    let refused = receiver
        .wait_for("two refused attempts after the first", |r| {
            r.iter().filter(|r| !r.accepted()).count() >= 2
        })
        .await;
    assert!(relay.terminate().success());
    let statuses = harness
        .context
        .store
        .webhook_statuses()
        .await
        .expect("statuses");
    let status = &statuses[0];
    let last_accepted = refused
        .iter()
        .filter(|r| r.accepted())
        .map(|r| r.id())
        .max()
        .expect("the first delivery was accepted");
    let first_refused = refused
        .iter()
        .find(|r| !r.accepted())
        .map(|r| r.id())
        .expect("a refusal");
    // The cursor stays before the refused event (it may have passed over
    // events the endpoint does not take).
    assert!(
        (last_accepted..first_refused).contains(&status.cursor.cursor),
        "{status:?}"
    );
    assert!(status.cursor.attempts >= 1);
    assert!(
        status
            .cursor
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("HTTP 500")),
        "{status:?}"
    );
    assert!(status.lag >= 1);

    // Back up, and a new relay process: the backlog arrives, nothing twice.
    receiver.fail_always(false);
    let relay = RelayProcess::start(&harness.config_path, &[]);
    let mut all = later.clone();
    all.push(first);
    let received = receiver
        .wait_for("the deliveries made while it was down", |r| {
            delivered_ids(r) == ids(&all)
        })
        .await;
    assert_in_order_once(&received);
    assert!(relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_run_is_followed_by_one_that_takes_the_endpoint_at_once() {
    let receiver = Receiver::start().await;
    let harness = harness_with(&webhook("ops", &format!("{}/hook", receiver.url), "")).await;
    let relay = RelayProcess::start(&harness.config_path, &[]);
    relay.wait_for_line("oxirelay: webhook ops to ");
    let first = enqueue(&harness, 1, "app").await;
    receiver
        .wait_for("the first delivery", |r| {
            delivered_ids(r) == ids(std::slice::from_ref(&first))
        })
        .await;
    // SIGKILL: the hold on the endpoint is not given back; the next relay
    // on this host sees its holder is gone and takes it without waiting
    // for the hold to end (30 s, beyond this test's waits for a delivery).
    relay.kill9();
    let second = enqueue(&harness, 2, "app").await;
    let relay = RelayProcess::start(&harness.config_path, &[]);
    let started = std::time::Instant::now();
    let received = receiver
        .wait_for("the delivery after the restart", |r| {
            delivered_ids(r) == ids(&[first.clone(), second.clone()])
        })
        .await;
    assert!(
        started.elapsed() < oxirelay::webhooks::dispatch::HOLD,
        "taken over before the hold ended"
    );
    // At least once: the kill may fall between the receiver's 2xx and the
    // cursor's commit, and then that event comes again (same id) first.
    // Never out of order, never anything older than the last one.
    let accepted: Vec<i64> = received
        .iter()
        .filter(|r| r.accepted())
        .map(|r| r.id())
        .collect();
    assert!(
        accepted.windows(2).all(|w| w[0] <= w[1]),
        "in log order, a resend only of the last: {accepted:?}"
    );
    let mut unique = accepted.clone();
    unique.dedup();
    assert!(
        accepted.len() - unique.len() <= 1,
        "at most the event in flight at the kill again: {accepted:?}"
    );
    assert!(relay.terminate().success());
}

#[tokio::test]
async fn webhook_test_sends_one_signed_test_event() {
    let receiver = Receiver::start().await;
    let harness = harness_with(&webhook("ops", &format!("{}/hook", receiver.url), "")).await;
    let config = harness.config_path.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .arg("-c")
            .arg(&config)
            .args(["webhook", "test", "ops"])
            .output()
            .expect("runs")
    })
    .await
    .expect("join");
    assert!(output.status.success(), "{output:?}");
    let received = receiver.wait_for("the test event", |r| !r.is_empty()).await;
    assert_eq!(received.len(), 1);
    received[0].assert_signed(SECRET);
    assert_eq!(received[0].kind(), "webhook.test");
    assert_eq!(received[0].id(), 0);

    receiver.fail_always(true);
    let config = harness.config_path.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .arg("-c")
            .arg(&config)
            .args(["webhook", "test", "ops"])
            .output()
            .expect("runs")
    })
    .await
    .expect("join");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HTTP 500"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}

#[test]
fn the_config_refuses_plain_http_to_a_host_that_is_not_loopback() {
    let parse = |url: &str| {
        oxirelay::config::Config::parse(
            &format!(
                "[[webhook]]\nname = \"ops\"\nurl = \"{url}\"\nsecret = \"env:HOOK_SECRET\"\n"
            ),
            std::path::Path::new("/etc/oxirelay/oxirelay.toml"),
        )
    };
    let error = parse("http://hooks.example.com/oxirelay")
        .expect_err("plain HTTP across the network")
        .to_string();
    assert!(error.contains("[[webhook]] \"ops\""), "{error}");
    assert!(
        error.contains("not loopback") && error.contains("https://"),
        "{error}"
    );
    for good in [
        "https://hooks.example.com/oxirelay",
        "http://127.0.0.1:9000/hook",
        "http://[::1]:9000/hook",
        "http://localhost/hook",
    ] {
        assert!(parse(good).is_ok(), "{good}");
    }
    let error = parse("https://user:pw@hooks.example.com/").expect_err("credentials");
    assert!(error.to_string().contains("credentials"), "{error}");
    let literal = oxirelay::config::Config::parse(
        "[[webhook]]\nname = \"ops\"\nurl = \"https://h.example.com/\"\nsecret = \"hunter2\"\n",
        std::path::Path::new("/etc/oxirelay/oxirelay.toml"),
    )
    .expect_err("a literal secret is refused");
    assert!(
        literal.to_string().contains("must be a reference"),
        "{literal}"
    );
}
