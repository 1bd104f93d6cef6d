//! Real third-party clients submit to the relay's listeners and each
//! message is followed to the upstream: swaks, msmtp, curl and Python's
//! smtplib, each with AUTH PLAIN and AUTH LOGIN after STARTTLS and on
//! implicit TLS, trusting the listeners' CA; and curl with OAUTHBEARER and
//! a sandbox token, validated by the relay against the sandbox issuer's
//! JWKS. The relay is `oxirelay serve` (the built binary); its upstream is
//! the sandbox, whose inbox must hold each message intact.
//!
//! Needs the clients (`scripts/install-test-tools`); a test whose client is
//! missing prints SKIPPED and returns.

mod interop_common;

use interop_common::submission::{COMBINATIONS, Client, SubmissionRelay, submit};
use interop_common::tools::{describe, run};
use interop_common::{RECIPIENT, USER, assert_intact, message};
use tokio::process::Command;

/// `client` submits one message for each TLS mode and mechanism; each must
/// reach the sandbox, byte for byte after the trace headers.
async fn submits_with_every_tls_mode_and_password_mechanism(client: Client) {
    if !client.installed() {
        return;
    }
    let relay = SubmissionRelay::start().await;
    for (n, (tls, auth)) in COMBINATIONS.into_iter().enumerate() {
        let subject = format!("{} {tls:?} {}", client.program(), auth.name());
        let sent = message(&subject);
        let output = submit(&relay, client, tls, auth, &sent).await;
        assert!(
            output.status.success(),
            "{client:?} with {tls:?} and AUTH {}: {}",
            auth.name(),
            describe(&output)
        );
        let arrived = relay.arrived(n + 1, &subject).await;
        assert_intact(&arrived, &sent);
        let text = String::from_utf8_lossy(&arrived);
        assert!(
            text.starts_with("Received: from ") && text.contains("with ESMTPSA"),
            "the relay's trace header records TLS and AUTH: {text}"
        );
        if client == Client::Smtplib {
            // The EHLO name smtplib was given.
            assert!(
                text.starts_with("Received: from python.test ([127.0.0.1])"),
                "{text}"
            );
        }
    }
    relay.stop().await;
}

#[tokio::test]
async fn swaks_submits_with_plain_and_login_over_starttls_and_implicit_tls() {
    submits_with_every_tls_mode_and_password_mechanism(Client::Swaks).await;
}

#[tokio::test]
async fn msmtp_submits_with_plain_and_login_over_starttls_and_implicit_tls() {
    submits_with_every_tls_mode_and_password_mechanism(Client::Msmtp).await;
}

#[tokio::test]
async fn curl_submits_with_plain_and_login_over_starttls_and_implicit_tls() {
    submits_with_every_tls_mode_and_password_mechanism(Client::Curl).await;
}

#[tokio::test]
async fn python_smtplib_submits_with_plain_and_login_over_starttls_and_implicit_tls() {
    submits_with_every_tls_mode_and_password_mechanism(Client::Smtplib).await;
}

#[tokio::test]
async fn curl_submits_with_oauthbearer_and_a_sandbox_token() {
    if !Client::Curl.installed() {
        return;
    }
    let relay = SubmissionRelay::start().await;
    let token = relay.sandbox_token().await;
    let subject = "curl OAUTHBEARER to the relay";
    let sent = message(subject);
    let file = relay.config.dir.path().join("bearer.eml");
    std::fs::write(&file, &sent).expect("write message");
    let curl = |token: &str| {
        let mut command = Command::new("curl");
        command.args([
            "--silent",
            "--show-error",
            "--url",
            &format!("smtp://127.0.0.1:{}", relay.relay.listeners[0].port()),
            "--ssl-reqd",
            "--cacert",
            relay.ca_file.to_str().expect("UTF-8"),
            "--mail-from",
            USER,
            "--mail-rcpt",
            RECIPIENT,
            "--user",
            &format!("{USER}:"),
            "--oauth2-bearer",
            token,
            "--login-options",
            "AUTH=OAUTHBEARER",
            "--upload-file",
            file.to_str().expect("UTF-8"),
        ]);
        command
    };
    let output = run(&mut curl(&token)).await;
    assert!(output.status.success(), "curl: {}", describe(&output));
    let arrived = relay.arrived(1, subject).await;
    assert_intact(&arrived, &sent);

    // A forged token (right shape, wrong signature) is refused, and
    // nothing more reaches the sandbox.
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[2] = "AAAA";
    let output = run(&mut curl(&parts.join("."))).await;
    assert!(!output.status.success(), "a forged token was accepted");
    assert_eq!(relay.sandbox.smtp.inbox().count(), 1);
    relay.stop().await;
}
