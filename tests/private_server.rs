//! Issue 7, item 5, end to end: an upstream SMTP server on 127.0.0.1 whose
//! certificate is a self-signed CA (the sandbox with
//! `ServerCertificate::SelfSignedCa`, real TCP and real TLS). With it as
//! `ca_file` delivery fails and says exactly why; with its key pinned in
//! `tls_pin_sha256` a message is delivered; with another pin it fails before
//! any token is written; `oxirelay tls pin` prints the pin this test computes
//! on its own from the certificate file.

mod common;

use base64::Engine;
use common::{Harness, WAIT};
use oxirelay::delivery::upstream::UpstreamError;
use oxirelay::sandbox::ServerCertificate;
use oxirelay::smtp::client::ClientError;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

async fn private_server() -> Harness {
    Harness::start_with("client_credentials", "oauthbearer", HOUR, |options| {
        options.server_certificate = ServerCertificate::SelfSignedCa;
    })
    .await
}

/// SHA-256 over the DER SubjectPublicKeyInfo of the certificate in `pem`,
/// base64: computed here with x509-parser directly, not with oxirelay's code.
fn independent_pin(pem: &Path) -> String {
    let text = std::fs::read(pem).expect("certificate file");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    assert!(cert.is_ca(), "the sandbox presents a CA certificate");
    let spki = cert.tbs_certificate.subject_pki.raw;
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki))
}

/// Replaces the account's `ca_file` line (or an earlier pin) with `line`.
fn set_trust_line(harness: &Harness, line: &str) {
    let text = std::fs::read_to_string(&harness.config_path).expect("config");
    let replaced: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("ca_file =") || l.starts_with("tls_pin_sha256 =") {
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&harness.config_path, replaced.join("\n") + "\n").expect("write config");
}

fn handshake_error(error: &UpstreamError) -> &ClientError {
    match error {
        UpstreamError::Smtp(
            client @ ClientError::TlsHandshake {
                certificate: true, ..
            },
        ) => client,
        other => panic!("expected a refused certificate, got {other:?}"),
    }
}

#[tokio::test]
async fn ca_file_fails_saying_why_a_pin_delivers_and_a_wrong_pin_sends_nothing() {
    let mut harness = private_server().await;
    let port = harness.sandbox.smtp.addr().port();
    let pin = independent_pin(harness.sandbox.ca_file());

    // The certificate as ca_file (what the sandbox's config snippet says).
    let error = harness.send(1).await.expect_err("webpki refuses it");
    assert!(!error.is_transient(), "a configuration problem: {error}");
    let text = handshake_error(&error).to_string();
    assert!(
        text.starts_with("TLS handshake with 127.0.0.1 failed: the server presents a self-signed CA certificate (subject CN=oxirelay sandbox private server) as its own certificate; webpki does not accept a CA certificate as a server certificate, even when it is in ca_file. Either give the server a certificate signed by that CA, or pin the server's key"),
        "{text}"
    );
    assert!(
        text.contains(&format!("run `oxirelay tls pin 127.0.0.1:{port}`")),
        "{text}"
    );
    assert!(text.contains("out of band"), "{text}");
    assert!(
        text.contains("tls_pin_sha256 = \"<that pin>\" in place of ca_file"),
        "{text}"
    );
    assert!(!text.contains("set ca_file"), "{text}");
    let stats = harness.sandbox.smtp.stats();
    assert_eq!(stats.auth_attempts_total(), 0, "no token was written");

    // Pinned: the session is established and the message delivered.
    set_trust_line(&harness, &format!("tls_pin_sha256 = \"{pin}\""));
    harness.restart().await;
    let report = harness.send(2).await.expect("delivered with the pin");
    assert!(report.accepted());
    harness
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(1, WAIT)
        .await
        .expect("arrives");
    let before = harness.sandbox.smtp.stats();
    assert_eq!(before.auth_successes, 1);

    // Another pin (a key rolled over elsewhere, or an interceptor).
    let wrong = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"another key"));
    set_trust_line(&harness, &format!("tls_pin_sha256 = [\"{wrong}\"]"));
    harness.restart().await;
    let error = harness.send(3).await.expect_err("the key is not pinned");
    let text = handshake_error(&error).to_string();
    assert!(
        text.contains(&format!(
            "the server's key does not match tls_pin_sha256: expected \"{wrong}\", presented \"{pin}\""
        )),
        "{text}"
    );
    assert!(text.contains("no credentials were sent"), "{text}");
    let after = harness.sandbox.smtp.stats();
    assert_eq!(
        after.auth_attempts_total(),
        before.auth_attempts_total(),
        "no token was written before the failure"
    );
    assert_eq!(after.messages_accepted, 1);
    assert_eq!(harness.sandbox.smtp.inbox().list().expect("list").len(), 1);
}

/// `oxirelay tls pin ARGS`, the built binary, bounded by [`WAIT`].
async fn tls_pin(args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .arg("tls")
        .arg("pin")
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WAIT, run)
        .await
        .expect("tls pin finishes in time")
        .expect("the binary runs")
}

#[tokio::test]
async fn tls_pin_prints_the_pin_of_the_presented_key() {
    let harness = private_server().await;
    let address = harness.sandbox.smtp.addr().to_string();
    let pin = independent_pin(harness.sandbox.ca_file());

    let output = tls_pin(&[&address, "--json"]).await;
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["pin"], pin.as_str());
    assert_eq!(report["address"], address.as_str());
    assert_eq!(
        report["tls"], "starttls",
        "STARTTLS is the default but on 465"
    );
    assert_eq!(report["verified"], false);
    assert_eq!(report["is_ca"], true);
    assert_eq!(report["self_signed"], true);
    assert_eq!(report["subject"], "CN=oxirelay sandbox private server");
    assert_eq!(report["issuer"], report["subject"]);
    assert_eq!(report["chain_length"], 1);
    assert_eq!(report["expired"], false);
    assert!(
        report["names"]
            .as_array()
            .expect("names")
            .contains(&"127.0.0.1".into())
    );
    assert!(
        report["check"]
            .as_str()
            .expect("check")
            .contains("out of band")
    );

    let output = tls_pin(&[&address, "--starttls"]).await;
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("NOT VERIFIED"), "{text}");
    assert!(text.contains(&format!("  pin           {pin}\n")), "{text}");
    assert!(text.contains("Check the pin out of band"), "{text}");
    assert!(
        text.contains(&format!("tls_pin_sha256 = \"{pin}\"")),
        "{text}"
    );

    // Reading the certificate sent nothing but EHLO, STARTTLS and QUIT.
    let stats = harness.sandbox.smtp.stats();
    assert_eq!(stats.auth_attempts_total(), 0);
    assert_eq!(stats.starttls_completed, 2);
}
