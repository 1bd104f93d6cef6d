//! `oxirelay sendmail` as cron and PHP run it: the real binary, a message on
//! its standard input, a config in a temp dir with the sandbox as the
//! account, and the queue read back from the real SQLite file.

use oxirelay::sandbox::{Sandbox, SandboxOptions, USER};
use oxirelay::store::{MessageState, QueuedMessage};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long one run of the binary may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// 32 bytes of base64: a master key for the test only.
const MASTER_KEY: &str = "c2VuZG1haWwtdGVzdC1tYXN0ZXIta2V5LTMyYnl0ZXM=";
const SHARED: &str = "billing@sandbox.test";

struct Setup {
    _dir: tempfile::TempDir,
    sandbox: Sandbox,
    config: PathBuf,
    store_url: String,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let sandbox = Sandbox::start(SandboxOptions::new(dir.path().join("sandbox")))
        .await
        .expect("sandbox starts");
    let store_url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let config = dir.path().join("oxirelay.toml");
    let text = format!(
        "[store]\nurl = \"{store_url}\"\n\n[secrets]\nmaster_key = \"env:OXIRELAY_MASTER_KEY\"\n\n{account}send_as = [\"{SHARED}\"]\n",
        account = sandbox.account_toml("sandbox", "client_credentials", "env:SANDBOX_SECRET"),
    );
    std::fs::write(&config, text).expect("config written");
    Setup {
        _dir: dir,
        sandbox,
        config,
        store_url,
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn sendmail(config: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .arg("-c")
        .arg(config)
        .arg("sendmail")
        .args(args)
        .env("OXIRELAY_MASTER_KEY", MASTER_KEY)
        .env("SANDBOX_SECRET", "not-used-for-enqueueing")
        .env("USER", "cronuser")
        .env_remove("OXIRELAY_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let mut input = child.stdin.take().expect("stdin piped");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("stdin written");
    drop(input);
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("sendmail finishes in time")
        .expect("sendmail output");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn queued(store_url: &str) -> Vec<(QueuedMessage, String)> {
    let store = oxirelay::store::open(store_url).await.expect("store opens");
    let mut out = Vec::new();
    for message in store.messages(None, 100).await.expect("messages") {
        let (_, body) = store
            .message(&message.id)
            .await
            .expect("message")
            .expect("present");
        out.push((message, String::from_utf8(body).expect("utf8 body")));
    }
    out
}

fn addresses(message: &QueuedMessage) -> Vec<&str> {
    message
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect()
}

#[tokio::test]
async fn dash_t_queues_with_bcc_in_envelope_only() {
    let s = setup().await;
    let input = format!(
        "From: Reports <{USER}>\nTo: ops@example.net\nCc: \"Team\" <team@example.net>\nBcc: auditor@example.org\nSubject: nightly backup\n\nAll good.\n.\nThis line is after a lone dot, and -i keeps it.\n"
    );
    let run = sendmail(&s.config, &["-t", "-i"], &input).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "", "sendmail prints nothing on success");

    let queue = queued(&s.store_url).await;
    assert_eq!(queue.len(), 1);
    let (message, body) = &queue[0];
    assert_eq!(message.state, MessageState::Queued);
    assert_eq!(message.account, "sandbox");
    assert_eq!(message.mail_from, USER);
    assert_eq!(message.submitted_by, "sendmail:cronuser");
    assert_eq!(
        addresses(message),
        ["ops@example.net", "team@example.net", "auditor@example.org"]
    );
    assert!(
        !body.contains("auditor"),
        "Bcc leaked into the headers: {body}"
    );
    assert!(!body.to_ascii_lowercase().contains("\nbcc:"), "{body}");
    assert!(body.contains("Subject: nightly backup\r\n"), "{body}");
    assert!(body.contains("Date: "), "{body}");
    assert!(body.contains("Message-ID: <"), "{body}");
    assert!(
        body.ends_with("All good.\r\n.\r\nThis line is after a lone dot, and -i keeps it.\r\n")
    );
    assert!(!body.replace("\r\n", "").contains('\n'), "bare LF left");
    s.sandbox.shutdown().await;
}

#[tokio::test]
async fn cron_style_send_as_with_recipient_arguments() {
    let s = setup().await;
    // Without -i, a lone "." ends the message; what follows is not read.
    let run = sendmail(
        &s.config,
        &[
            "-FCron Daemon",
            "-oi",
            "-oem",
            "-f",
            SHARED,
            "root@example.net",
        ],
        "Subject: cron output\n\nline\n",
    )
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let run = sendmail(
        &s.config,
        &[&format!("-f{USER}"), "a@example.net,b@example.net"],
        "Subject: dot\n\nkept\n.\nnot kept\n",
    )
    .await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);

    let mut queue = queued(&s.store_url).await;
    queue.sort_by_key(|(m, _)| m.recipients.len());
    let (cron, cron_body) = &queue[0];
    assert_eq!(cron.account, "sandbox", "send_as picks the account");
    assert_eq!(cron.mail_from, SHARED);
    assert_eq!(addresses(cron), ["root@example.net"]);
    assert!(
        cron_body.contains(&format!("From: \"Cron Daemon\" <{SHARED}>\r\n")),
        "{cron_body}"
    );
    let (dot, dot_body) = &queue[1];
    assert_eq!(addresses(dot), ["a@example.net", "b@example.net"]);
    assert!(dot_body.ends_with("\r\n\r\nkept\r\n"), "{dot_body}");
    s.sandbox.shutdown().await;
}

#[tokio::test]
async fn refusals_have_sendmail_exit_codes_and_queue_nothing() {
    let s = setup().await;
    let cases: [(&[&str], &str, i32, &str); 4] = [
        (&["-t", "-x"], "Subject: x\n\n", 64, "unknown flag -x"),
        (
            &["-f", "stranger@example.com", "a@example.net"],
            "Subject: x\n\n",
            67,
            "no account may send as stranger@example.com; add it to send_as",
        ),
        (&["-t"], "Subject: nobody\n\n", 64, "no recipients"),
        (
            &["-f", USER, "a@example.net"],
            "Subject: x\nnot a header line\n\nbody\n",
            65,
            "not a header",
        ),
    ];
    for (args, input, code, says) in cases {
        let run = sendmail(&s.config, args, input).await;
        assert_eq!(run.code, Some(code), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    let missing = sendmail(
        Path::new("/nonexistent/oxirelay.toml"),
        &["a@example.net"],
        "x\n",
    )
    .await;
    assert_eq!(missing.code, Some(78), "{}", missing.stderr);
    assert!(queued(&s.store_url).await.is_empty());
    s.sandbox.shutdown().await;
}
