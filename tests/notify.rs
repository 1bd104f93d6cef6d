//! Notifications through the binary: `serve` against the sandbox, a real
//! webhook receiver, and a real `[notify] command` (bash, which reports
//! each run over TCP to a listener in the test, so the test waits on the
//! run itself). An account that needs consent is told once per interval,
//! however many deliveries fail on it and across a restart; a lockdown is
//! told; a condition that lasts is repeated at the interval and mailed to
//! the operator through another account.

mod common;
mod webhooks_common;

use common::{ACCOUNT, Harness, RelayProcess, WAIT};
use oxirelay::store::{MessageId, NewMessage};
use std::collections::HashSet;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use webhooks_common::{Received, Receiver};

const SECRET: &str = "whsec-notify-0123456789";

/// A TCP listener that records one line per connection: the command's runs.
struct CommandRuns {
    port: u16,
    runs: watch::Receiver<Vec<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl CommandRuns {
    async fn start() -> CommandRuns {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (sender, runs) = watch::channel(Vec::new());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sender = sender.clone();
                tokio::spawn(async move {
                    let mut text = String::new();
                    let read = tokio::time::timeout(WAIT, stream.read_to_string(&mut text)).await;
                    if matches!(read, Ok(Ok(_))) {
                        sender.send_modify(|runs| runs.push(text.trim().to_string()));
                    }
                });
            }
        });
        CommandRuns { port, runs, task }
    }

    /// `[notify] command`: bash writes the event and account to our port.
    fn command(&self) -> String {
        format!(
            "command = [\"bash\", \"-c\", \"echo \\\"$OXIRELAY_EVENT $OXIRELAY_ACCOUNT\\\" > /dev/tcp/127.0.0.1/{}\"]",
            self.port
        )
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let mut runs = self.runs.clone();
        match tokio::time::timeout(WAIT, runs.wait_for(|r| done(r))).await {
            Ok(Ok(found)) => found.clone(),
            _ => panic!(
                "the command did not run for {what} within {WAIT:?}; runs: {:?}",
                self.runs.borrow()
            ),
        }
    }
}

impl Drop for CommandRuns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn count(received: &[Received], kind: &str) -> usize {
    received
        .iter()
        .filter(|r| r.accepted() && r.kind() == kind)
        .count()
}

fn runs_of(runs: &[String], kind: &str) -> usize {
    runs.iter().filter(|r| r.starts_with(kind)).count()
}

async fn enqueue(harness: &Harness, n: usize) -> MessageId {
    let message = common::message(n);
    harness
        .context
        .store
        .enqueue(NewMessage {
            account: ACCOUNT.into(),
            mail_from: message.envelope.mail_from.clone(),
            recipients: message.envelope.rcpt_to.clone(),
            body: message.bytes,
            submitted_by: "app".into(),
        })
        .await
        .expect("queued")
}

fn append(harness: &Harness, text: &str) {
    let mut config = std::fs::read_to_string(&harness.config_path).expect("config");
    config.push_str(text);
    std::fs::write(&harness.config_path, config).expect("write config");
}

fn webhook(receiver: &Receiver) -> String {
    format!(
        "\n[[webhook]]\nname = \"ops\"\nurl = \"{}/hook\"\nsecret = \"file:hook.secret\"\nretry_first = \"1s\"\nretry_max = \"2s\"\n",
        receiver.url
    )
}

async fn oxirelay(harness: &Harness, args: &[&str]) -> std::process::Output {
    let config = harness.config_path.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
            .arg("-c")
            .arg(&config)
            .args(&args)
            .output()
            .expect("runs")
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_consent_is_told_once_per_interval_not_once_per_delivery_and_lockdown_is_told() {
    let receiver = Receiver::start().await;
    let runs = CommandRuns::start().await;
    let harness = Harness::start("authorization_code", "xoauth2", Duration::from_secs(3600)).await;
    harness.add_relay();
    common::write_private(&harness.dir.path().join("hook.secret"), SECRET);
    append(&harness, &webhook(&receiver));
    append(
        &harness,
        &format!(
            "\n[notify]\n{}\nrepeat_every = \"1h\"\ncheck_every = \"1s\"\n",
            runs.command()
        ),
    );
    harness.consent().await;
    // The person withdraws consent at the provider; the relay's regular
    // validation finds out.
    assert!(
        harness
            .sandbox
            .auth
            .revoke_all_for_subject(oxirelay::sandbox::USER)
            > 0
    );
    let relay = RelayProcess::start(&harness.config_path, &["--validate-every", "1s"]);

    let received = receiver
        .wait_for("notify.needs_consent", |r| {
            count(r, "notify.needs_consent") >= 1
        })
        .await;
    let told = received
        .iter()
        .find(|r| r.kind() == "notify.needs_consent")
        .expect("told");
    told.assert_signed(SECRET);
    assert_eq!(told.json()["account"], ACCOUNT);
    assert!(
        told.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("oxirelay account login acct")),
        "{}",
        told.json()
    );
    runs.wait_for("needs_consent", |r| {
        r.iter()
            .any(|run| run == &format!("notify.needs_consent {ACCOUNT}"))
    })
    .await;

    // Several messages, each failing on the account.
    let mut queued = HashSet::new();
    for n in 0..4 {
        queued.insert(enqueue(&harness, n).await.0);
    }
    receiver
        .wait_for("a deferral of each message", |r| {
            let deferred: HashSet<String> = r
                .iter()
                .filter(|r| r.accepted() && r.kind() == "message.deferred")
                .map(|r| {
                    r.json()["message_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            queued.is_subset(&deferred)
        })
        .await;

    // A restart does not tell again before the interval.
    assert!(relay.terminate().success());
    let relay = RelayProcess::start(&harness.config_path, &["--validate-every", "1s"]);
    relay.wait_for_line("oxirelay: delivering with");

    // The lockdown is told; the look that tells it also looked at the
    // account, and did not tell it again.
    let locked = oxirelay(&harness, &["lockdown", "--reason", "drill"]).await;
    assert!(locked.status.success(), "{locked:?}");
    let received = receiver
        .wait_for("notify.lockdown", |r| count(r, "notify.lockdown") >= 1)
        .await;
    let lockdown = received
        .iter()
        .find(|r| r.kind() == "notify.lockdown")
        .expect("told")
        .json();
    assert!(
        lockdown["detail"]
            .as_str()
            .is_some_and(|d| d.contains("drill") && d.contains("oxirelay unlock")),
        "{lockdown}"
    );
    let all_runs = runs
        .wait_for("the lockdown", |r| runs_of(r, "notify.lockdown") >= 1)
        .await;
    assert_eq!(
        count(&received, "notify.needs_consent"),
        1,
        "one webhook event"
    );
    assert_eq!(
        runs_of(&all_runs, "notify.needs_consent"),
        1,
        "one command run: {all_runs:?}"
    );
    assert_eq!(
        count(&received, "notify.revoked"),
        0,
        "the lockdown's revocations are told as the lockdown"
    );
    assert!(relay.terminate().success());

    let audit = std::fs::read_to_string(harness.dir.path().join("oxirelay-audit.jsonl"))
        .expect("the audit log");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"notify.sent\"") && l.contains("notify.lockdown")),
        "each notification is audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_condition_is_repeated_at_the_interval_and_mailed_through_another_account() {
    let receiver = Receiver::start().await;
    let runs = CommandRuns::start().await;
    let mut harness =
        Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    harness.add_relay();
    common::write_private(&harness.dir.path().join("hook.secret"), SECRET);
    append(&harness, &webhook(&receiver));
    append(
        &harness,
        &format!(
            "\n[notify]\n{}\nrepeat_every = \"2s\"\ncheck_every = \"1s\"\nemail_to = \"operator@example.net\"\nemail_account = [\"spare\", \"{ACCOUNT}\"]\n\n",
            runs.command()
        ),
    );
    let spare = harness
        .sandbox
        .account_toml("spare", "client_credentials", "file:client.secret");
    append(&harness, &format!("\n{spare}"));
    harness.restart().await;
    harness
        .context
        .broker
        .revoke("spare", "retired in the test")
        .await
        .expect("revoked");

    let relay = RelayProcess::start(&harness.config_path, &[]);
    let received = receiver
        .wait_for("notify.revoked twice", |r| count(r, "notify.revoked") >= 2)
        .await;
    let times: Vec<i64> = received
        .iter()
        .filter(|r| r.kind() == "notify.revoked")
        .map(|r| r.json()["at"].as_i64().expect("at"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[1] - w[0] >= 2),
        "never more often than repeat_every: {times:?}"
    );
    runs.wait_for("notify.revoked twice", |r| {
        runs_of(r, "notify.revoked") >= 2
    })
    .await;

    // The e-mail went through the working account (not the revoked one)
    // to the operator, as a queued message with events of its own.
    let received = receiver
        .wait_for("the operator's e-mail delivered", |r| {
            r.iter().any(|r| {
                let json = r.json();
                r.accepted()
                    && json["kind"] == "message.delivered"
                    && json["submitted_by"] == "notify"
            })
        })
        .await;
    let mail = received
        .iter()
        .map(Received::json)
        .find(|j| j["kind"] == "message.delivered" && j["submitted_by"] == "notify")
        .expect("found");
    assert_eq!(mail["account"], ACCOUNT);
    assert_eq!(mail["recipients"][0]["address"], "operator@example.net");
    assert!(relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_goes_through_every_channel() {
    let runs = CommandRuns::start().await;
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    append(
        &harness,
        &format!(
            "\n[notify]\n{}\nemail_to = \"operator@example.net\"\nemail_account = \"{ACCOUNT}\"\n",
            runs.command()
        ),
    );
    let output = oxirelay(&harness, &["notify", "test", "--json"]).await;
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["event"], true, "{report}");
    assert_eq!(report["command"]["ok"], true, "{report}");
    assert_eq!(report["email"]["ok"], true, "{report}");
    let id = report["email"]["detail"]
        .as_str()
        .expect("queued")
        .to_string();
    runs.wait_for("notify.test", |r| {
        r.iter().any(|run| run.starts_with("notify.test"))
    })
    .await;
    let events = harness.context.store.events(20).await.expect("events");
    assert!(events.iter().any(|e| e.kind == "notify.test"));
    let (message, body) = harness
        .context
        .store
        .message(&MessageId(id))
        .await
        .expect("store")
        .expect("the e-mail is queued");
    assert_eq!(message.submitted_by, "notify");
    assert_eq!(message.recipients[0].address, "operator@example.net");
    assert!(String::from_utf8_lossy(&body).contains("a test notification from oxirelay"));

    let listed = oxirelay(&harness, &["notify", "list", "--json"]).await;
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&listed.stdout).expect("JSON"),
        serde_json::json!([]),
        "a test is no condition"
    );
}
