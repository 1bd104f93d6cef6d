//! Real third-party clients submit to the relay: Python's smtplib
//! (STARTTLS + AUTH PLAIN, trusting the test CA) and curl (OAUTHBEARER with
//! an access token from the sandbox's authorization server, validated by
//! the relay against the sandbox issuer's discovered JWKS).

mod submit_common;

use oxirelay::sandbox::USER;
use std::process::Stdio;
use submit_common::*;
use tokio::process::Command;

async fn run(command: &mut Command) -> std::process::Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the client finishes in time")
        .expect("the client runs")
}

const SMTPLIB: &str = r#"
import smtplib, ssl, sys
host, port, ca, user, password, sender, rcpt = sys.argv[1:8]
context = ssl.create_default_context(cafile=ca)
with smtplib.SMTP(host, int(port), local_hostname="python.test", timeout=15) as smtp:
    smtp.starttls(context=context)
    smtp.login(user, password)
    message = "From: %s\r\nTo: %s\r\nSubject: from smtplib\r\n\r\nhello from python\r\n" % (sender, rcpt)
    refused = smtp.sendmail(sender, [rcpt], message)
    assert not refused, refused
print("sent")
"#;

#[tokio::test]
async fn python_smtplib_submits_with_starttls_and_auth_plain() {
    if !have("python3") {
        return;
    }
    let relay = Relay::start().await;
    let sender = format!("lp1@{PRINTER_DOMAIN}");
    let output = run(Command::new("python3").args([
        "-c",
        SMTPLIB,
        "localhost",
        &relay.addr(STARTTLS).port().to_string(),
        &relay.ca_file.display().to_string(),
        PRINTER,
        PRINTER_PASSWORD,
        &sender,
        "bob@example.com",
    ]))
    .await;
    assert!(
        output.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let queued = relay.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].submitted_by, PRINTER);
    assert_eq!(queued[0].mail_from, sender);
    let body = String::from_utf8(relay.body(&queued[0].id.0).await).expect("UTF-8");
    assert!(
        body.starts_with("Received: from python.test ([127.0.0.1])"),
        "{body}"
    );
    assert!(body.ends_with("\r\n\r\nhello from python\r\n"), "{body}");
    relay.shutdown().await;
}

#[tokio::test]
async fn curl_submits_with_oauthbearer_and_a_sandbox_token() {
    if !have("curl") {
        return;
    }
    let relay = Relay::start().await;
    let token = relay.sandbox_token().await;
    let message = relay.dir.path().join("message.eml");
    std::fs::write(
        &message,
        format!(
            "From: {USER}\r\nTo: bob@example.com\r\nSubject: from curl\r\n\r\nhello from curl\r\n"
        ),
    )
    .expect("write message");
    let curl = |token: &str| {
        let mut command = Command::new("curl");
        command.args([
            "--silent",
            "--show-error",
            "--url",
            &format!("smtp://127.0.0.1:{}", relay.addr(STARTTLS).port()),
            "--ssl-reqd",
            "--cacert",
            &relay.ca_file.display().to_string(),
            "--mail-from",
            USER,
            "--mail-rcpt",
            "bob@example.com",
            "--user",
            &format!("{USER}:"),
            "--oauth2-bearer",
            token,
            "--login-options",
            "AUTH=OAUTHBEARER",
            "-T",
            &message.display().to_string(),
        ]);
        command
    };
    let output = run(&mut curl(&token)).await;
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let queued = relay.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].submitted_by, USER);
    assert_eq!(queued[0].account, ACCOUNT);
    let body = String::from_utf8(relay.body(&queued[0].id.0).await).expect("UTF-8");
    assert!(body.contains("with ESMTPSA"), "{body}");
    assert!(body.ends_with("\r\n\r\nhello from curl\r\n"), "{body}");

    // A forged token (right shape, wrong signature) is refused.
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[2] = "AAAA";
    let output = run(&mut curl(&parts.join("."))).await;
    assert!(!output.status.success(), "a forged token was accepted");
    assert_eq!(relay.queued().await.len(), 1);
    relay.shutdown().await;
}
