//! The client over real loopback TCP and real TLS, against a scripted peer.

mod auth_exchange;
mod peer;

use super::*;
use crate::secret::Secret;
use crate::smtp::sasl::{self, BearerCredentials, Mechanism, OAuthErrorStatus};
use peer::{Peer, Step, TestPki, expect, send};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "ya29.a0-secret-token-value";

fn target(port: u16, security: TlsMode, tls: Arc<rustls::ClientConfig>) -> UpstreamTarget {
    UpstreamTarget {
        host: "localhost".into(),
        port,
        security,
        tls_config: tls,
        ehlo_name: "client.test".into(),
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            command: Duration::from_secs(5),
            data: Duration::from_secs(5),
        },
    }
}

fn credentials(token: &str) -> BearerCredentials {
    BearerCredentials {
        user: "user@example.com".into(),
        token: Secret::new(token),
    }
}

fn auth_line(mechanism: Mechanism, token: &str, port: u16) -> String {
    let message = match mechanism {
        Mechanism::XOAuth2 => sasl::encode_xoauth2(&credentials(token)),
        _ => sasl::encode_oauthbearer(
            &credentials(token),
            &sasl::ServerName {
                host: "localhost",
                port,
            },
        ),
    };
    format!(
        "AUTH {mechanism} {}",
        sasl::encode_base64(message.expose().as_bytes())
    )
}

/// Greeting, EHLO offering STARTTLS, the upgrade and EHLO again.
fn starttls_opening(after_tls_capabilities: &str) -> Vec<Step> {
    vec![
        send("220 mx.test ESMTP\r\n"),
        expect("EHLO client.test"),
        send("250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
        expect("STARTTLS"),
        send("220 2.0.0 ready for TLS\r\n"),
        Step::StartTls,
        expect("EHLO client.test"),
        send(after_tls_capabilities),
    ]
}

fn closing() -> Vec<Step> {
    vec![expect("QUIT"), send("221 2.0.0 bye\r\n"), Step::ReadToEnd]
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

async fn starttls_then_auth(mechanism: Mechanism) {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let mut script =
        starttls_opening("250-mx.test\r\n250-PIPELINING\r\n250 AUTH XOAUTH2 OAUTHBEARER\r\n");
    script.extend([
        Step::Expect(auth_line(mechanism, TOKEN, port)),
        send("235 2.7.0 Authentication successful\r\n"),
    ]);
    script.extend(closing());
    let running = peer.run(script);

    let mut session = Session::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
        .await
        .expect("STARTTLS session");
    assert!(session.is_encrypted());
    assert!(session.capabilities().offers_auth(mechanism));
    session
        .authenticate(mechanism, &credentials(TOKEN))
        .await
        .expect("authenticated");
    assert!(session.is_authenticated());
    session.quit().await.expect("quit");

    let transcript = running.finish().await.expect("script followed");
    assert_eq!(transcript.plaintext, b"EHLO client.test\r\nSTARTTLS\r\n");
    assert!(contains(
        &transcript.encrypted,
        &auth_line(mechanism, TOKEN, port)
    ));
}

#[tokio::test]
async fn starttls_then_xoauth2() {
    starttls_then_auth(Mechanism::XOAuth2).await;
}

#[tokio::test]
async fn starttls_then_oauthbearer() {
    starttls_then_auth(Mechanism::OAuthBearer).await;
}

#[tokio::test]
async fn no_starttls_means_no_auth_bytes_at_all() {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let mut script = vec![
        send("220 mx.test ESMTP\r\n"),
        expect("EHLO client.test"),
        send("250-mx.test\r\n250 AUTH XOAUTH2 OAUTHBEARER PLAIN\r\n"),
    ];
    script.extend(closing());
    let running = peer.run(script);

    let error = Session::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
        .await
        .expect_err("STARTTLS is required");
    assert!(
        matches!(error, ClientError::StartTlsNotOffered { .. }),
        "{error:?}"
    );
    assert!(error.is_permanent());
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "localhost:{port} does not offer STARTTLS; refusing to send credentials over an unencrypted connection (no credentials were sent)"
        )),
        "{text}"
    );

    let transcript = running.finish().await.expect("script followed");
    assert_eq!(transcript.all(), b"EHLO client.test\r\nQUIT\r\n");
}

async fn error_challenge_then_retry(mechanism: Mechanism, ack: &str) {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let status = OAuthErrorStatus {
        status: "invalid_token".into(),
        schemes: Some("bearer".into()),
        scope: Some("https://mail.example/smtp".into()),
        openid_configuration: None,
    };
    let mut script = starttls_opening("250-mx.test\r\n250 AUTH OAUTHBEARER XOAUTH2\r\n");
    script.extend([
        Step::Expect(auth_line(mechanism, "expired-token", port)),
        Step::Send(format!("334 {}\r\n", status.to_base64())),
        expect(ack),
        send("535 5.7.8 Authentication credentials invalid\r\n"),
        // Contract 4: the same session takes a second AUTH with a new token.
        Step::Expect(auth_line(mechanism, TOKEN, port)),
        send("235 2.7.0 Accepted\r\n"),
        expect("NOOP"),
        send("250 2.0.0 OK\r\n"),
    ]);
    script.extend(closing());
    let running = peer.run(script);

    let mut session = Session::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
        .await
        .expect("session");
    let error = session
        .authenticate(mechanism, &credentials("expired-token"))
        .await
        .expect_err("refused");
    let ClientError::AuthRejected {
        reply,
        status: Some(decoded),
        ..
    } = &error
    else {
        panic!("expected AuthRejected with a status, got {error:?}");
    };
    assert_eq!(reply.code, 535);
    assert_eq!(reply.enhanced, Some((5, 7, 8)));
    assert_eq!(**decoded, status);
    assert!(error.is_auth_rejected() && error.is_permanent());
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains("expired-token"), "{shown}");
    }
    assert!(session.is_usable() && !session.is_authenticated());

    session
        .authenticate(mechanism, &credentials(TOKEN))
        .await
        .expect("the retry is accepted");
    session.noop().await.expect("noop");
    session.quit().await.expect("quit");
    running.finish().await.expect("script followed");
}

#[tokio::test]
async fn oauthbearer_error_challenge_is_acknowledged_with_0x01() {
    error_challenge_then_retry(Mechanism::OAuthBearer, "AQ==").await;
}

#[tokio::test]
async fn xoauth2_error_challenge_is_acknowledged_with_an_empty_line() {
    error_challenge_then_retry(Mechanism::XOAuth2, "").await;
}

#[tokio::test]
async fn pipelined_send_reports_each_recipient() {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let message: &[u8] = b"Subject: hi\r\n\r\n.dot first\r\nlast line without CRLF";
    let mut script = starttls_opening(
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250 AUTH XOAUTH2\r\n",
    );
    script.extend([
        Step::Expect(auth_line(Mechanism::XOAuth2, TOKEN, port)),
        send("235 2.7.0 ok\r\n"),
        // All four commands are read before any reply is sent: a client
        // that waited for a reply between them would stall here.
        Step::Expect(format!(
            "MAIL FROM:<from@example.com> SIZE={}",
            message.len()
        )),
        expect("RCPT TO:<one@example.com>"),
        expect("RCPT TO:<nobody@example.com>"),
        expect("RCPT TO:<two@example.com>"),
        expect("DATA"),
        send("250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n550 5.1.1 User unknown\r\n250 2.1.5 Recipient OK\r\n354 Start mail input\r\n"),
        Step::ExpectData(
            b"Subject: hi\r\n\r\n..dot first\r\nlast line without CRLF\r\n.\r\n".to_vec(),
        ),
        send("250 2.0.0 Queued as 42\r\n"),
        // A second message on the same connection, 8-bit this time.
        Step::Expect("MAIL FROM:<from@example.com> SIZE=9 BODY=8BITMIME".into()),
        expect("RCPT TO:<one@example.com>"),
        expect("DATA"),
        send("250 ok\r\n250 ok\r\n354 go\r\n"),
        Step::ExpectData("caf\u{e9}\r\n\r\n.\r\n".as_bytes().to_vec()),
        send("451 4.3.0 try later\r\n"),
    ]);
    script.extend(closing());
    let running = peer.run(script);

    let mut session = Session::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
        .await
        .expect("session");
    session
        .authenticate(Mechanism::XOAuth2, &credentials(TOKEN))
        .await
        .expect("authenticated");
    let envelope = Envelope {
        mail_from: "from@example.com".into(),
        rcpt_to: vec![
            "one@example.com".into(),
            "nobody@example.com".into(),
            "two@example.com".into(),
        ],
    };
    let report = session.send(&envelope, message).await.expect("sent");
    assert!(report.accepted());
    let outcomes: Vec<_> = report
        .outcomes()
        .map(|(address, outcome)| match outcome {
            RecipientOutcome::Accepted(reply) => (address, "accepted", reply.code),
            RecipientOutcome::Refused { reply, .. } => (address, "refused", reply.code),
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("one@example.com", "accepted", 250),
            ("nobody@example.com", "refused", 550),
            ("two@example.com", "accepted", 250),
        ]
    );
    assert_eq!(report.recipients[1].reply.enhanced, Some((5, 1, 1)));
    assert_eq!(session.messages_sent(), 1);

    let second = Envelope {
        mail_from: "from@example.com".into(),
        rcpt_to: vec!["one@example.com".into()],
    };
    let report = session
        .send(&second, "caf\u{e9}\r\n\r\n".as_bytes())
        .await
        .expect("sent");
    assert!(!report.accepted());
    assert!(matches!(&report.data, DataOutcome::Final(reply) if reply.is_transient()));
    assert_eq!(session.messages_sent(), 1);
    assert!(session.is_usable());
    session.quit().await.expect("quit");
    running.finish().await.expect("script followed");
}

#[tokio::test]
async fn without_pipelining_all_refused_sends_rset_not_data() {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let mut script = vec![
        Step::StartTls,
        send("220 mx.test ESMTP\r\n"),
        expect("EHLO client.test"),
        send("250-mx.test\r\n250 AUTH XOAUTH2\r\n"),
        expect("MAIL FROM:<>"),
        send("250 ok\r\n"),
        expect("RCPT TO:<a@example.com>"),
        send("550 5.1.1 no\r\n"),
        expect("RCPT TO:<b@example.com>"),
        send("450 4.2.1 busy\r\n"),
        expect("RSET"),
        send("250 flushed\r\n"),
    ];
    script.extend(closing());
    let running = peer.run(script);

    let mut session = Session::connect(&target(port, TlsMode::Implicit, pki.client_config.clone()))
        .await
        .expect("implicit TLS session");
    assert!(session.is_encrypted());
    let envelope = Envelope {
        mail_from: String::new(),
        rcpt_to: vec!["a@example.com".into(), "b@example.com".into()],
    };
    let report = session.send(&envelope, b"x").await.expect("report");
    assert_eq!(report.data, DataOutcome::NotSent);
    let refusals: Vec<_> = report
        .outcomes()
        .map(|(_, outcome)| match outcome {
            RecipientOutcome::Refused { stage, reply } => (stage, reply.is_transient()),
            RecipientOutcome::Accepted(_) => panic!("nobody was accepted"),
        })
        .collect();
    assert_eq!(refusals, [(Stage::Rcpt, false), (Stage::Rcpt, true)]);
    session.quit().await.expect("quit");
    let transcript = running.finish().await.expect("script followed");
    assert!(!contains(&transcript.all(), "DATA"));
}

#[tokio::test]
async fn certificate_for_another_host_is_a_tls_error_naming_the_host() {
    let pki = TestPki::for_names(&["wrong.example"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let running = peer.run(vec![Step::StartTls, send("220 never seen\r\n")]);

    let error = Session::connect(&target(port, TlsMode::Implicit, pki.client_config.clone()))
        .await
        .expect_err("certificate does not match");
    let ClientError::TlsHandshake {
        host, certificate, ..
    } = &error
    else {
        panic!("expected a TLS handshake error, got {error:?}");
    };
    assert_eq!(host, "localhost");
    assert!(*certificate && error.is_permanent());
    let text = error.to_string();
    assert!(
        text.starts_with("TLS handshake with localhost failed"),
        "{text}"
    );
    // The certificate is trusted (the CA is in ca_file): the name is what
    // is wrong, and setting ca_file would not help.
    assert!(
        text.contains("is valid for wrong.example, not for localhost"),
        "{text}"
    );
    assert!(!text.contains("ca_file"), "{text}");
    // The peer sees the client abort the handshake.
    assert!(running.finish().await.is_err());
}

#[tokio::test]
async fn plaintext_only_to_loopback_and_only_when_asked_for() {
    let pki = TestPki::for_names(&["localhost"]);

    // A remote host is refused before any connection is attempted.
    let mut remote = target(25, TlsMode::None, pki.client_config.clone());
    remote.host = "192.0.2.1".into();
    let error = Session::connect(&remote).await.expect_err("not loopback");
    assert!(
        matches!(error, ClientError::PlaintextNotLoopback { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("192.0.2.1:25"));

    // Loopback in StartTls mode cannot be downgraded by hand.
    let peer = Peer::bind(None).await;
    let port = peer.port();
    let mut script = vec![
        send("220 mx.test\r\n"),
        expect("EHLO client.test"),
        send("250-mx.test\r\n250 AUTH XOAUTH2\r\n"),
    ];
    script.extend(closing());
    let running = peer.run(script);
    let plain =
        PlaintextSession::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
            .await
            .expect("connected");
    let error = plain
        .allow_plaintext_on_loopback()
        .await
        .expect_err("not marked plaintext");
    assert!(
        matches!(error, ClientError::PlaintextNotLoopback { .. }),
        "{error:?}"
    );
    running.finish().await.expect("script followed");

    // Loopback marked plaintext (the sandbox): AUTH is allowed.
    let peer = Peer::bind(None).await;
    let port = peer.port();
    let mut script = vec![
        send("220 sandbox\r\n"),
        expect("EHLO client.test"),
        send("250-sandbox\r\n250 AUTH OAUTHBEARER\r\n"),
        Step::Expect(auth_line(Mechanism::OAuthBearer, TOKEN, port)),
        send("235 ok\r\n"),
    ];
    script.extend(closing());
    let running = peer.run(script);
    let mut session = Session::connect(&target(port, TlsMode::None, pki.client_config.clone()))
        .await
        .expect("loopback plaintext");
    assert!(!session.is_encrypted());
    session
        .authenticate(Mechanism::OAuthBearer, &credentials(TOKEN))
        .await
        .expect("authenticated");
    session.quit().await.expect("quit");
    running.finish().await.expect("script followed");
}

#[tokio::test]
async fn bytes_after_the_starttls_reply_are_refused() {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let running = peer.run(vec![
        send("220 mx.test\r\n"),
        expect("EHLO client.test"),
        send("250-mx.test\r\n250 STARTTLS\r\n"),
        expect("STARTTLS"),
        send("220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n"),
        Step::ReadToEnd,
    ]);
    let error = Session::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
        .await
        .expect_err("injection refused");
    assert!(
        matches!(
            error,
            ClientError::Protocol {
                stage: Stage::StartTls,
                ..
            }
        ),
        "{error:?}"
    );
    running.finish().await.expect("peer done");
}

#[tokio::test]
async fn a_silent_server_times_out_at_the_greeting() {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(None).await;
    let port = peer.port();
    let running = peer.run(vec![Step::ReadToEnd]);
    let mut quiet = target(port, TlsMode::Starttls, pki.client_config.clone());
    quiet.timeouts.command = Duration::from_millis(200);
    let error = Session::connect(&quiet).await.expect_err("no greeting");
    assert!(
        matches!(
            error,
            ClientError::Timeout {
                stage: Stage::Greeting,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_transient());
    let transcript = running.finish().await.expect("peer done");
    assert!(transcript.all().is_empty());
}

#[tokio::test]
async fn mechanism_not_offered_sends_nothing() {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let mut script = starttls_opening("250-mx.test\r\n250 AUTH LOGIN XOAUTH2\r\n");
    script.extend(closing());
    let running = peer.run(script);
    let mut session = Session::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
        .await
        .expect("session");
    let error = session
        .authenticate(Mechanism::OAuthBearer, &credentials(TOKEN))
        .await
        .expect_err("not offered");
    assert_eq!(
        error.to_string(),
        format!(
            "localhost:{port} does not offer AUTH OAUTHBEARER (it offers: LOGIN XOAUTH2); no credentials were sent. Set sasl to a mechanism it offers"
        )
    );
    session.quit().await.expect("quit");
    let transcript = running.finish().await.expect("script followed");
    assert!(!contains(&transcript.all(), "AUTH"));
}

#[tokio::test]
async fn pipelined_mail_refusal_is_an_error_and_the_session_stays_clean() {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let mut script = starttls_opening("250-mx.test\r\n250 PIPELINING\r\n");
    script.extend([
        expect("MAIL FROM:<boss@example.com>"),
        expect("RCPT TO:<a@example.com>"),
        expect("DATA"),
        send("550 5.7.60 SMTP; Client does not have permissions to send as this sender\r\n503 5.5.1 Need MAIL\r\n503 5.5.1 Need RCPT\r\n"),
        expect("RSET"),
        send("250 2.0.0 Resetting\r\n"),
        expect("NOOP"),
        send("250 2.0.0 OK\r\n"),
    ]);
    script.extend(closing());
    let running = peer.run(script);

    let mut session = Session::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
        .await
        .expect("session");
    let envelope = Envelope {
        mail_from: "boss@example.com".into(),
        rcpt_to: vec!["a@example.com".into()],
    };
    let error = session
        .send(&envelope, b"x")
        .await
        .expect_err("sender refused");
    assert!(
        matches!(&error, ClientError::Reply { stage: Stage::Mail, reply, .. } if reply.enhanced == Some((5, 7, 60))),
        "{error:?}"
    );
    assert!(error.is_permanent());
    assert!(session.is_usable());
    session.noop().await.expect("still in step");
    session.quit().await.expect("quit");
    running.finish().await.expect("script followed");
}

#[tokio::test]
async fn many_recipients_are_pipelined_in_bounded_groups() {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let rcpt_to: Vec<String> = (0..150).map(|i| format!("r{i}@example.com")).collect();
    let mut script = starttls_opening("250-mx.test\r\n250 PIPELINING\r\n");
    // First group: MAIL and 100 RCPT, all read before any reply.
    script.push(expect("MAIL FROM:<a@example.com>"));
    script.extend(
        rcpt_to[..100]
            .iter()
            .map(|r| Step::Expect(format!("RCPT TO:<{r}>"))),
    );
    script.push(Step::Send(format!(
        "250 ok\r\n{}",
        "250 ok\r\n".repeat(100)
    )));
    // Second group: the other 50 and DATA.
    script.extend(
        rcpt_to[100..]
            .iter()
            .map(|r| Step::Expect(format!("RCPT TO:<{r}>"))),
    );
    script.push(expect("DATA"));
    script.push(Step::Send(format!("{}354 go\r\n", "250 ok\r\n".repeat(50))));
    script.push(Step::ExpectData(b"x\r\n.\r\n".to_vec()));
    script.push(send("250 queued\r\n"));
    script.extend(closing());
    let running = peer.run(script);

    let mut session = Session::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
        .await
        .expect("session");
    let envelope = Envelope {
        mail_from: "a@example.com".into(),
        rcpt_to,
    };
    let report = session.send(&envelope, b"x").await.expect("sent");
    assert!(report.accepted());
    assert_eq!(report.recipients.len(), 150);
    assert!(report.recipients.iter().all(RecipientReport::accepted));
    session.quit().await.expect("quit");
    running.finish().await.expect("script followed");
}
