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
