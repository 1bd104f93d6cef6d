//! The relay as a real child process (`oxirelay serve`), killed with SIGKILL
//! while clients submit and while it delivers: every message that got a 250
//! is delivered after a restart (contract 1 and 2). The clients are Python's
//! smtplib, a real third-party SMTP client.

mod common;

use common::{Harness, RelayAccess, RelayProcess, WAIT};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const SUBMITTER: &str = r#"
import smtplib, ssl, sys
host, port, ca, user, password, prefix, count = sys.argv[1:8]
try:
    client = smtplib.SMTP(host, int(port), timeout=20)
    client.starttls(context=ssl.create_default_context(cafile=ca))
    client.login(user, password)
    for i in range(int(count)):
        subject = f"{prefix}-{i}"
        message = (f"From: alice@sandbox.test\r\nTo: someone@example.net\r\nSubject: {subject}\r\n"
                   f"Message-ID: <{subject}@relay.test>\r\n\r\nline one\r\n.line with a dot\r\n")
        client.sendmail("alice@sandbox.test", ["someone@example.net"], message)
        print("ACK", subject, flush=True)
    client.quit()
except Exception as error:
    print("ERR", type(error).__name__, flush=True)
"#;

fn python_available() -> bool {
    common::have("python3")
}

/// Starts one smtplib client; its acknowledged subjects arrive on the channel.
fn submit(
    relay: &RelayProcess,
    access: &RelayAccess,
    prefix: &str,
    count: usize,
    acks: std::sync::mpsc::Sender<String>,
) -> std::process::Child {
    let mut child = Command::new("python3")
        .args(["-c", SUBMITTER, "127.0.0.1", &relay.addr.port().to_string()])
        .arg(&access.ca_file)
        .args([&access.user, &access.password, prefix, &count.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(subject) = line.strip_prefix("ACK ") {
                let _ = acks.send(subject.to_string());
            }
        }
    });
    child
}

/// Waits until every subject in `expected` arrived at the sandbox; returns
/// how often each arrived.
async fn arrived(harness: &Harness, expected: &[String]) -> HashMap<String, usize> {
    let inbox = harness.sandbox.smtp.inbox();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for entry in inbox.list().expect("inbox") {
            *counts.entry(entry.subject.unwrap_or_default()).or_default() += 1;
        }
        let missing: Vec<&String> = expected
            .iter()
            .filter(|s| !counts.contains_key(*s))
            .collect();
        if missing.is_empty() {
            return counts;
        }
        let now = tokio::time::Instant::now();
        assert!(
            now < deadline,
            "{} acknowledged messages never arrived, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        // The next arrival is the event to wait for.
        let _ = inbox
            .wait_for_count(inbox.count() + 1, deadline - now)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_delivers_submitted_mail_and_stops_cleanly_on_sigterm() {
    if !python_available() {
        return;
    }
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    let access = harness.add_relay();
    let relay = RelayProcess::start(&harness.config_path, &[]);
    let (acks, received) = std::sync::mpsc::channel();
    let mut client = submit(&relay, &access, "clean", 5, acks);
    tokio::task::spawn_blocking(move || client.wait())
        .await
        .expect("join")
        .expect("client ends");
    let subjects: Vec<String> = received.try_iter().collect();
    assert_eq!(subjects.len(), 5, "all five acknowledged");
    let counts = arrived(&harness, &subjects).await;
    assert!(
        counts.values().all(|n| *n == 1),
        "no duplicates without a crash: {counts:?}"
    );
    let stored = harness.sandbox.smtp.inbox().list().expect("inbox");
    let body = harness
        .sandbox
        .smtp
        .inbox()
        .read(&stored[0].id)
        .expect("read");
    assert!(
        String::from_utf8_lossy(&body).starts_with("Received: "),
        "a Received header was added"
    );
    assert!(String::from_utf8_lossy(&body).contains("\r\n.line with a dot\r\n"));
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_clients_submit_loses_no_acknowledged_message() {
    if !python_available() {
        return;
    }
    let harness = Harness::start(
        "client_credentials",
        "oauthbearer",
        Duration::from_secs(3600),
    )
    .await;
    let access = harness.add_relay();
    let relay = RelayProcess::start(&harness.config_path, &["--lease", "3s", "--workers", "4"]);
    let (acks, received) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..4)
        .map(|n| submit(&relay, &access, &format!("c{n}"), 60, acks.clone()))
        .collect();
    drop(acks);
    // Kill the relay in the middle of the submissions.
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 40 {
        acknowledged.push(received.recv_timeout(WAIT).expect("acknowledgements flow"));
    }
    relay.kill9();
    for mut client in clients {
        tokio::task::spawn_blocking(move || client.wait())
            .await
            .expect("join")
            .expect("client ends");
    }
    acknowledged.extend(received.try_iter());
    assert!(
        acknowledged.len() < 240,
        "the kill happened mid-run ({} acknowledged)",
        acknowledged.len()
    );

    let relay = RelayProcess::start(&harness.config_path, &["--lease", "3s", "--workers", "4"]);
    let counts = arrived(&harness, &acknowledged).await;
    let duplicates = counts.values().filter(|n| **n > 1).count();
    assert!(
        duplicates <= 32,
        "duplicates only for messages in flight at the kill: {duplicates}"
    );
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_delivering_loses_nothing() {
    if !python_available() {
        return;
    }
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    let access = harness.add_relay();
    // A slow upstream keeps deliveries in flight when the kill comes.
    harness.sandbox.smtp.faults().inject(
        oxirelay::sandbox::smtp::Fault::SlowReplies(Duration::from_millis(100)),
        oxirelay::sandbox::smtp::FaultTimes::Always,
    );
    let relay = RelayProcess::start(&harness.config_path, &["--lease", "3s", "--workers", "2"]);
    let (acks, received) = std::sync::mpsc::channel();
    let mut client = submit(&relay, &access, "d", 30, acks);
    tokio::task::spawn_blocking(move || client.wait())
        .await
        .expect("join")
        .expect("client ends");
    let acknowledged: Vec<String> = received.try_iter().collect();
    assert_eq!(acknowledged.len(), 30);
    harness
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(3, WAIT)
        .await
        .expect("deliveries started");
    relay.kill9();
    let delivered_before = harness.sandbox.smtp.inbox().count();
    assert!(
        delivered_before < 30,
        "the kill came while delivering ({delivered_before} delivered)"
    );

    harness.sandbox.smtp.faults().clear();
    let relay = RelayProcess::start(&harness.config_path, &["--lease", "3s", "--workers", "2"]);
    let counts = arrived(&harness, &acknowledged).await;
    let duplicates = counts.values().filter(|n| **n > 1).count();
    assert!(
        duplicates <= 2 * 8,
        "duplicates only for messages in flight at the kill: {duplicates}"
    );
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
}

fn oxirelay(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockdown_pauses_delivery_keeps_mail_and_unlock_resumes() {
    if !python_available() {
        return;
    }
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    let access = harness.add_relay();
    // Its logs are read too: the engine's start and stop are the signals.
    let relay = RelayProcess::start_logged(&harness.config_path, &[], "info");
    let (acks, received) = std::sync::mpsc::channel();
    let mut client = submit(&relay, &access, "before", 1, acks.clone());
    tokio::task::spawn_blocking(move || client.wait())
        .await
        .expect("join")
        .expect("ends");
    harness
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(1, WAIT)
        .await
        .expect("delivered before the lockdown");

    let config = harness.config_path.clone();
    let lockdown = tokio::task::spawn_blocking(move || {
        oxirelay(&config, &["lockdown", "--reason", "incident drill"])
    })
    .await
    .expect("join");
    assert!(
        lockdown.status.success(),
        "{}",
        String::from_utf8_lossy(&lockdown.stdout)
    );
    // The positive signal that delivery is held: the relay reports the
    // lockdown and its engine reports that it has stopped. A relay that
    // printed the line but kept delivering would never log the stop.
    let relay = tokio::task::spawn_blocking(move || {
        relay.wait_for_all(&[
            "oxirelay: LOCKDOWN (incident drill)",
            "delivery engine stopped",
        ]);
        relay
    })
    .await
    .expect("join");
    let stopped_at = relay
        .transcript()
        .iter()
        .rposition(|line| line.contains("delivery engine stopped"))
        .expect("the stop is in the transcript");

    let mut client = submit(&relay, &access, "during", 3, acks);
    tokio::task::spawn_blocking(move || client.wait())
        .await
        .expect("join")
        .expect("ends");
    let during: Vec<String> = received
        .try_iter()
        .filter(|s| s.starts_with("during"))
        .collect();
    assert_eq!(during.len(), 3, "submission goes on during a lockdown");
    let queued = harness
        .context
        .store
        .messages(Some(oxirelay::store::MessageState::Queued), 10)
        .await
        .expect("store");
    assert_eq!(queued.len(), 3, "kept in the queue");
    assert!(
        queued.iter().all(|m| m.attempts == 0),
        "never tried: {queued:?}"
    );
    assert_eq!(
        harness.sandbox.smtp.inbox().count(),
        1,
        "nothing delivered during the lockdown"
    );
    // Since the stop, no engine started and no delivery was attempted.
    let since_stop = relay.transcript().split_off(stopped_at);
    assert!(
        !since_stop.iter().any(|line| {
            line.contains("delivery engine started") || line.contains("delivery attempt recorded")
        }),
        "delivery went on during the lockdown: {since_stop:#?}"
    );

    let config = harness.config_path.clone();
    let unlock = tokio::task::spawn_blocking(move || oxirelay(&config, &["unlock"]))
        .await
        .expect("join");
    assert!(unlock.status.success());
    let relay = tokio::task::spawn_blocking(move || {
        relay.wait_for_all(&["oxirelay: lockdown lifted", "delivery engine started"]);
        relay
    })
    .await
    .expect("join");
    arrived(&harness, &during).await;
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_t_enqueues_and_the_running_relay_delivers() {
    use std::io::Write;
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    harness.add_relay();
    let relay = RelayProcess::start(&harness.config_path, &[]);
    let config = harness.config_path.clone();
    let status = tokio::task::spawn_blocking(move || {
        let mut sendmail = Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .arg("-c")
            .arg(&config)
            .args(["sendmail", "-t", "-i"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sendmail runs");
        sendmail
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"From: alice@sandbox.test\nTo: ops@example.net\nBcc: audit@example.net\nSubject: cron output\n\nbackup finished\n")
            .expect("write");
        sendmail.wait().expect("sendmail ends")
    })
    .await
    .expect("join");
    assert!(status.success());
    let subjects = vec!["cron output".to_string()];
    arrived(&harness, &subjects).await;
    harness
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(1, WAIT)
        .await
        .expect("delivered");
    let entry = &harness.sandbox.smtp.inbox().list().expect("inbox")[0];
    assert_eq!(
        entry.rcpt_to,
        ["ops@example.net", "audit@example.net"],
        "Bcc in the envelope"
    );
    let body = harness.sandbox.smtp.inbox().read(&entry.id).expect("read");
    assert!(
        !String::from_utf8_lossy(&body).contains("Bcc:"),
        "but not in the headers"
    );
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_consent_is_caught_by_validation_and_queued_mail_waits_for_the_new_one() {
    if !python_available() {
        return;
    }
    let harness = Harness::start("authorization_code", "xoauth2", Duration::from_secs(3600)).await;
    let access = harness.add_relay();
    harness.consent().await;
    let relay = RelayProcess::start(&harness.config_path, &["--validate-every", "1s"]);
    // The person withdraws consent at the provider; the relay's access
    // token still has an hour on it, so only validation can tell.
    harness
        .sandbox
        .auth
        .revoke_all_for_subject(oxirelay::sandbox::USER);
    let relay = tokio::task::spawn_blocking(move || {
        let line = relay.wait_for_line("oxirelay: account acct failed validation");
        assert!(line.contains("oxirelay account login acct"), "{line}");
        relay
    })
    .await
    .expect("join");
    let record = harness
        .context
        .store
        .token_record(common::ACCOUNT)
        .await
        .expect("store")
        .expect("record");
    assert_eq!(record.state, oxirelay::store::AccountState::NeedsConsent);

    let (acks, received) = std::sync::mpsc::channel();
    let mut client = submit(&relay, &access, "waiting", 2, acks);
    tokio::task::spawn_blocking(move || client.wait())
        .await
        .expect("join")
        .expect("ends");
    let waiting: Vec<String> = received.try_iter().collect();
    assert_eq!(waiting.len(), 2, "the relay still accepts mail");
    let kept = harness
        .context
        .store
        .messages(None, 10)
        .await
        .expect("store");
    assert_eq!(kept.len(), 2);
    assert!(
        kept.iter().all(|m| !m.state.is_final()),
        "kept in the queue: {kept:?}"
    );
    assert_eq!(harness.sandbox.smtp.inbox().count(), 0);

    // A new consent; the operator retries the waiting mail at once.
    harness.consent().await;
    for message in &kept {
        let output = Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .arg("-c")
            .arg(&harness.config_path)
            .args(["queue", "retry", &message.id.0])
            .output()
            .expect("runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    arrived(&harness, &waiting).await;
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
}

/// Runs an `oxirelay` command off the runtime's threads; it must succeed.
async fn run_ok(config: &std::path::Path, args: &'static [&'static str]) -> std::process::Output {
    let config = config.to_path_buf();
    let output = tokio::task::spawn_blocking(move || oxirelay(&config, args))
        .await
        .expect("join");
    assert!(
        output.status.success(),
        "oxirelay {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Waits (off the runtime's threads) for the relay to print `prefix`.
async fn line(relay: RelayProcess, prefix: &'static str) -> RelayProcess {
    tokio::task::spawn_blocking(move || {
        relay.wait_for_line(prefix);
        relay
    })
    .await
    .expect("join")
}

/// Waits for a submitting client to end.
async fn finished(mut client: std::process::Child) {
    tokio::task::spawn_blocking(move || client.wait())
        .await
        .expect("join")
        .expect("client ends");
}

/// Waits until every message in the store has been tried at least once
/// (delivered, or deferred with its attempt recorded).
async fn every_message_attempted(harness: &Harness) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let messages = harness
            .context
            .store
            .messages(None, 100_000)
            .await
            .expect("store");
        if messages
            .iter()
            .all(|m| m.attempts > 0 || m.state.is_final())
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages were not tried within {WAIT:?}"
        );
        // The relay is another process: its progress shows in the store
        // only, which cannot notify.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_and_a_new_consent_reach_the_running_relay_within_seconds() {
    if !python_available() {
        return;
    }
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    let access = harness.add_relay();
    // Four workers: at most four transactions can be under way at a time.
    let relay = RelayProcess::start(&harness.config_path, &["--workers", "4"]);
    let inbox = harness.sandbox.smtp.inbox().clone();
    // Mail flowing: pooled sessions authenticated with the current token.
    let (acks, received) = std::sync::mpsc::channel();
    let flow = submit(&relay, &access, "flow", 150, acks.clone());
    inbox.wait_for_count(20, WAIT).await.expect("delivering");
    let old_token = inbox.list().expect("inbox")[0]
        .token_fingerprint
        .clone()
        .expect("a token fingerprint");

    run_ok(&harness.config_path, &["account", "revoke", "acct"]).await;
    let revoked_at = std::time::Instant::now();
    let relay = line(
        relay,
        "oxirelay: account acct: credentials changed (revoked",
    )
    .await;
    let noticed = revoked_at.elapsed();
    let delivered_when_noticed = inbox.count();
    assert!(
        noticed < Duration::from_secs(5),
        "the relay noticed within seconds, not at the token's expiry ({noticed:?})"
    );
    finished(flow).await;

    // Submitted after the change: accepted and kept, not sent.
    finished(submit(&relay, &access, "after", 5, acks)).await;
    let acknowledged: Vec<String> = received.try_iter().collect();
    assert_eq!(
        acknowledged
            .iter()
            .filter(|s| s.starts_with("after-"))
            .count(),
        5
    );
    every_message_attempted(&harness).await;
    let entries = inbox.list().expect("inbox");
    assert!(
        entries.iter().all(|e| !e
            .subject
            .as_deref()
            .is_some_and(|s| s.starts_with("after-"))),
        "nothing submitted after the revocation was sent"
    );
    assert!(
        entries.len() <= delivered_when_noticed + 4,
        "only the transactions under way when the change was noticed finished ({} delivered then, {} now)",
        delivered_when_noticed,
        entries.len()
    );
    assert!(
        entries
            .iter()
            .all(|e| e.token_fingerprint.as_deref() == Some(old_token.as_str())),
        "one token before the revocation, none after"
    );

    // A new consent (`account login`; for this grant it fetches a token).
    run_ok(&harness.config_path, &["account", "login", "acct"]).await;
    let relay = line(relay, "oxirelay: account acct: credentials changed (").await;
    let (_, stored) = harness.stored_tokens().await;
    let new_token = stored
        .expect("the new consent's token")
        .fingerprint()
        .to_string();
    assert_ne!(new_token, old_token);
    let now = oxirelay::clock::now_unix();
    for message in harness
        .context
        .store
        .messages(None, 100_000)
        .await
        .expect("store")
    {
        if !message.state.is_final() {
            harness
                .context
                .store
                .retry_now(&message.id, now)
                .await
                .expect("retry");
        }
    }
    arrived(&harness, &acknowledged).await;
    for entry in inbox.list().expect("inbox") {
        if entry
            .subject
            .as_deref()
            .is_some_and(|s| s.starts_with("after-"))
        {
            assert_eq!(
                entry.token_fingerprint.as_deref(),
                Some(new_token.as_str()),
                "sent with the new consent's token"
            );
        }
    }
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
}

/// Waits until every subject in `expected` has arrived, without listing
/// the inbox again for every one of thousands of arrivals.
async fn arrived_by(
    harness: &Harness,
    expected: &[String],
    deadline: tokio::time::Instant,
) -> HashMap<String, usize> {
    let inbox = harness.sandbox.smtp.inbox();
    loop {
        let count = inbox.count();
        if count >= expected.len() {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for entry in inbox.list().expect("inbox") {
                *counts.entry(entry.subject.unwrap_or_default()).or_default() += 1;
            }
            let missing = expected.iter().filter(|s| !counts.contains_key(*s)).count();
            if missing == 0 {
                return counts;
            }
        }
        let now = tokio::time::Instant::now();
        assert!(
            now < deadline,
            "{} of {} acknowledged messages arrived in time",
            count.min(expected.len()),
            expected.len()
        );
        let _ = inbox
            .wait_for_count(
                count.max(expected.len().saturating_sub(1)) + 1,
                deadline - now,
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill_9_under_load_delivers_every_acknowledged_message_within_a_minute() {
    if !python_available() {
        return;
    }
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    let access = harness.add_relay();
    // The default lease (five minutes): the restart must not wait for it.
    let relay = RelayProcess::start(&harness.config_path, &["--workers", "8"]);
    let (acks, received) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..8)
        .map(|n| submit(&relay, &access, &format!("load{n}"), 500, acks.clone()))
        .collect();
    drop(acks);
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 2000 {
        acknowledged.push(received.recv_timeout(WAIT).expect("acknowledgements flow"));
    }
    harness
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(200, WAIT)
        .await
        .expect("deliveries under way");
    relay.kill9();
    for client in clients {
        finished(client).await;
    }
    acknowledged.extend(received.try_iter());
    let delivered_before = harness.sandbox.smtp.inbox().count();
    // What the dead process held: only these may arrive twice.
    let mut in_flight = std::collections::HashSet::new();
    for message in harness
        .context
        .store
        .messages(Some(oxirelay::store::MessageState::InFlight), 100_000)
        .await
        .expect("store")
    {
        let (_, body) = harness
            .context
            .store
            .message(&message.id)
            .await
            .expect("store")
            .expect("message");
        let text = String::from_utf8_lossy(&body).into_owned();
        if let Some(subject) = text.lines().find_map(|line| line.strip_prefix("Subject: ")) {
            in_flight.insert(subject.trim().to_string());
        }
    }
    eprintln!(
        "killed with {} acknowledged, {delivered_before} delivered, {} in flight",
        acknowledged.len(),
        in_flight.len()
    );
    assert!(
        !in_flight.is_empty(),
        "the kill came while messages were in flight"
    );

    let restarted = tokio::time::Instant::now();
    let relay = RelayProcess::start(&harness.config_path, &["--workers", "8"]);
    let counts = arrived_by(&harness, &acknowledged, restarted + Duration::from_secs(60)).await;
    eprintln!(
        "all {} acknowledged messages delivered {:?} after the restart",
        acknowledged.len(),
        restarted.elapsed()
    );
    let mut duplicates: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    duplicates.sort();
    eprintln!(
        "{} delivered more than once: {duplicates:?}",
        duplicates.len()
    );
    for (subject, _) in &duplicates {
        assert!(
            in_flight.contains(*subject),
            "{subject} arrived twice but was not in flight at the kill"
        );
    }
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
}
