//! The sandbox SMTP server over real TCP and real TLS: AUTH only after
//! STARTTLS, byte-exact delivery into the inbox, the RFC 7628 failure
//! exchange, faults, timeouts, the session cap and shutdown.

mod smtpd_common;

use oxirelay::sandbox::smtp::{Fault, FaultStage, FaultTimes};
use oxirelay::secret::Secret;
use oxirelay::smtp::sasl::Mechanism;
use oxirelay::smtp::server::{Reply, TlsMode};
use smtpd_common::*;
use std::time::Duration;

#[tokio::test]
async fn auth_is_offered_only_after_starttls() {
    let sandbox = start_sandbox(|_| {}).await;
    let mut client = Client::connect(&sandbox).await;
    assert!(client.reply().await.starts_with("220 localhost ESMTP"));
    let ehlo = client.command("EHLO client.test").await;
    assert!(
        ehlo.contains("250-STARTTLS\r\n") || ehlo.contains("250 STARTTLS\r\n"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    // A badly behaved client trying anyway is refused, and counted.
    assert_eq!(
        client
            .command(&format!("AUTH XOAUTH2 {}", xoauth2(ALICE, GOOD_TOKEN)))
            .await,
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(
        client.command("STARTTLS").await,
        "220 2.0.0 Ready to start TLS\r\n"
    );
    client.handshake(sandbox.server.ca_file()).await;
    let ehlo = client.command("EHLO client.test").await;
    assert!(ehlo.contains("AUTH OAUTHBEARER XOAUTH2\r\n"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let stats = sandbox
        .server
        .wait_until(|s| s.starttls_completed == 1 && s.ehlos == 2, WAIT)
        .await
        .expect("stats");
    assert_eq!(stats.auth_attempts_before_tls, 1);
    assert_eq!(stats.auth_successes, 0);
}

#[tokio::test]
async fn full_delivery_is_stored_byte_exact() {
    let sandbox = start_sandbox(|_| {}).await;
    let mut client = Client::connect(&sandbox).await;
    client.greet_with_starttls(&sandbox).await;
    assert_eq!(
        client
            .command(&format!("AUTH XOAUTH2 {}", xoauth2(ALICE, GOOD_TOKEN)))
            .await,
        "235 2.7.0 Authentication successful\r\n"
    );
    // Pipelined envelope, as PIPELINING allows.
    client
        .write(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
        .await;
    assert_eq!(client.reply().await, "250 2.1.0 Sender OK\r\n");
    assert_eq!(client.reply().await, "250 2.1.5 Recipient OK\r\n");
    assert!(client.reply().await.starts_with("354 "));
    client
        .write(
            b"From: alice@example.com\r\nSubject: Dots and bytes\r\n\r\n\
              ..starts with a dot\r\n.\xc3\xa9\r\n...\r\nlast line\r\n.\r\n",
        )
        .await;
    let accepted = client.reply().await;
    assert!(
        accepted.starts_with("250 2.0.0 Ok: queued as "),
        "{accepted}"
    );
    assert_eq!(
        client.command("QUIT").await,
        "221 2.0.0 localhost closing connection\r\n"
    );

    let entries = sandbox
        .server
        .inbox()
        .wait_for_count(1, WAIT)
        .await
        .expect("one message");
    let entry = &entries[0];
    assert!(accepted.contains(&entry.id));
    assert_eq!(
        sandbox.server.inbox().read(&entry.id).expect("read"),
        b"From: alice@example.com\r\nSubject: Dots and bytes\r\n\r\n\
          .starts with a dot\r\n\xc3\xa9\r\n..\r\nlast line\r\n"
    );
    assert_eq!(entry.mail_from, ALICE);
    assert_eq!(entry.rcpt_to, ["bob@example.net"]);
    assert_eq!(entry.user.as_deref(), Some(ALICE));
    assert_eq!(entry.mechanism, Some(Mechanism::XOAuth2));
    assert_eq!(
        entry.token_fingerprint.as_deref(),
        Some(Secret::new(GOOD_TOKEN).fingerprint().to_string().as_str())
    );
    assert_eq!(entry.subject.as_deref(), Some("Dots and bytes"));
    let stats = sandbox
        .server
        .wait_until(|s| s.messages_accepted == 1 && s.active_sessions == 0, WAIT)
        .await
        .expect("stats");
    assert_eq!(stats.auth_attempts.get("XOAUTH2"), Some(&1));
    assert_eq!(stats.auth_attempts_before_tls, 0);
    sandbox.server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn rfc7628_failure_exchange_byte_for_byte() {
    let sandbox = start_sandbox(|_| {}).await;
    let mut client = Client::connect(&sandbox).await;
    client.greet_with_starttls(&sandbox).await;

    // A token without the required scope: OAUTHBEARER, ack with AQ==.
    let challenge = client
        .command(&format!(
            "AUTH OAUTHBEARER {}",
            oauthbearer(ALICE, NO_SCOPE_TOKEN)
        ))
        .await;
    assert_eq!(
        challenge,
        format!(
            "334 {}\r\n",
            base64(r#"{"status":"insufficient_scope","schemes":"bearer","scope":"smtp.send"}"#)
        )
    );
    assert_eq!(
        client.command("AQ==").await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );

    // Someone else's token for alice's mailbox: XOAUTH2 via continuation,
    // ack with an empty line.
    assert_eq!(client.command("AUTH XOAUTH2").await, "334 \r\n");
    let challenge = client
        .command(&xoauth2("mallory@example.com", GOOD_TOKEN))
        .await;
    assert_eq!(
        challenge,
        format!(
            "334 {}\r\n",
            base64(r#"{"status":"invalid_token","schemes":"bearer"}"#)
        )
    );
    assert_eq!(
        client.command("").await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    // The session survives and MAIL still needs AUTH.
    assert_eq!(
        client.command("MAIL FROM:<alice@example.com>").await,
        "530 5.7.0 Authentication required\r\n"
    );
    let stats = sandbox
        .server
        .wait_until(|s| s.auth_failures == 2, WAIT)
        .await
        .expect("stats");
    assert_eq!(stats.auth_successes, 0);
}

#[tokio::test]
async fn greeting_fault_421_then_normal_service() {
    let sandbox = start_sandbox(|_| {}).await;
    sandbox.server.faults().inject(
        Fault::Reply {
            stage: FaultStage::Greeting,
            reply: Reply::new(421, "4.3.2 Service not available, closing channel"),
        },
        FaultTimes::Next(1),
    );
    let mut client = Client::connect(&sandbox).await;
    assert_eq!(
        client.closed().await,
        "421 4.3.2 Service not available, closing channel\r\n"
    );
    let mut client = Client::connect(&sandbox).await;
    assert!(client.reply().await.starts_with("220 "));
}

#[tokio::test]
async fn drop_mid_data_stores_nothing() {
    let sandbox = start_sandbox(|_| {}).await;
    sandbox
        .server
        .faults()
        .inject(Fault::DisconnectMidData, FaultTimes::Next(1));
    let mut client = Client::connect(&sandbox).await;
    client.greet_with_starttls(&sandbox).await;
    client
        .command(&format!(
            "AUTH OAUTHBEARER {}",
            oauthbearer(ALICE, GOOD_TOKEN)
        ))
        .await;
    assert!(
        client
            .command("MAIL FROM:<alice@example.com>")
            .await
            .starts_with("250")
    );
    assert!(
        client
            .command("RCPT TO:<bob@example.net>")
            .await
            .starts_with("250")
    );
    assert!(client.command("DATA").await.starts_with("354"));
    client.write(b"Subject: lost\r\n\r\nbody\r\n").await;
    assert_eq!(client.closed().await, "");
    sandbox
        .server
        .wait_until(|s| s.active_sessions == 0, WAIT)
        .await
        .expect("session ended");
    assert_eq!(sandbox.server.inbox().count(), 0);
}

#[tokio::test]
async fn stage_faults_reply_as_configured() {
    let sandbox = start_sandbox(|_| {}).await;
    let faults = sandbox.server.faults();
    faults.inject(
        Fault::Reply {
            stage: FaultStage::Rcpt,
            reply: Reply::new(450, "4.2.1 Mailbox busy, try later"),
        },
        FaultTimes::Next(1),
    );
    faults.inject(
        Fault::Reply {
            stage: FaultStage::EndOfData,
            reply: Reply::new(554, "5.6.0 Content refused"),
        },
        FaultTimes::Next(1),
    );
    let mut client = Client::connect(&sandbox).await;
    client.greet_with_starttls(&sandbox).await;
    client
        .command(&format!("AUTH XOAUTH2 {}", xoauth2(ALICE, GOOD_TOKEN)))
        .await;
    client.command("MAIL FROM:<alice@example.com>").await;
    assert_eq!(
        client.command("RCPT TO:<bob@example.net>").await,
        "450 4.2.1 Mailbox busy, try later\r\n"
    );
    assert!(
        client
            .command("RCPT TO:<bob@example.net>")
            .await
            .starts_with("250")
    );
    client.command("DATA").await;
    assert_eq!(
        client.command("Subject: x\r\n\r\nx\r\n.").await,
        "554 5.6.0 Content refused\r\n"
    );
    assert_eq!(sandbox.server.inbox().count(), 0);
}

#[tokio::test]
async fn without_starttls_no_auth_is_offered_or_accepted() {
    let sandbox = start_sandbox(|_| {}).await;
    sandbox
        .server
        .faults()
        .inject(Fault::NoStartTls, FaultTimes::Always);
    let mut client = Client::connect(&sandbox).await;
    client.reply().await;
    let ehlo = client.command("EHLO client.test").await;
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(client.command("STARTTLS").await.starts_with("454 4.7.0"));
}

#[tokio::test]
async fn slow_replies_still_complete() {
    let sandbox = start_sandbox(|_| {}).await;
    sandbox.server.faults().inject(
        Fault::SlowReplies(Duration::from_millis(50)),
        FaultTimes::Next(2),
    );
    let started = std::time::Instant::now();
    let mut client = Client::connect(&sandbox).await;
    client.reply().await;
    client.command("NOOP").await;
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn idle_client_is_cut_off_with_421() {
    let sandbox = start_sandbox(|config| config.read_timeout = Duration::from_millis(200)).await;
    let mut client = Client::connect(&sandbox).await;
    client.reply().await;
    let last = client.closed().await;
    assert!(last.starts_with("421 4.4.2 localhost Timeout"), "{last:?}");
}

#[tokio::test]
async fn session_cap_refuses_extra_connections() {
    let sandbox = start_sandbox(|config| config.max_sessions = 1).await;
    let mut first = Client::connect(&sandbox).await;
    first.reply().await;
    let mut second = Client::connect(&sandbox).await;
    assert_eq!(
        second.closed().await,
        "421 4.3.2 localhost Too many connections, try again later\r\n"
    );
    assert_eq!(
        first.command("QUIT").await,
        "221 2.0.0 localhost closing connection\r\n"
    );
    first.closed().await;
    sandbox
        .server
        .wait_until(|s| s.active_sessions == 0, WAIT)
        .await
        .expect("first session ended");
    let mut third = Client::connect(&sandbox).await;
    assert!(third.reply().await.starts_with("220 "));
}

#[tokio::test]
async fn shutdown_ends_open_sessions_with_421() {
    let sandbox = start_sandbox(|_| {}).await;
    let mut client = Client::connect(&sandbox).await;
    client.reply().await;
    let Sandbox { server, .. } = sandbox;
    let stopping = tokio::spawn(server.shutdown());
    assert_eq!(
        client.closed().await,
        "421 4.3.2 localhost Server shutting down, try again later\r\n"
    );
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("stops in time")
        .expect("join")
        .expect("clean shutdown");
}

#[tokio::test]
async fn implicit_tls_offers_auth_at_once() {
    let sandbox = start_sandbox(|config| config.tls_mode = TlsMode::Implicit).await;
    let mut client = Client::connect_tls(&sandbox).await;
    assert!(client.reply().await.starts_with("220 "));
    let ehlo = client.command("EHLO client.test").await;
    assert!(ehlo.contains("AUTH OAUTHBEARER XOAUTH2"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        client
            .command(&format!(
                "AUTH OAUTHBEARER {}",
                oauthbearer(ALICE, GOOD_TOKEN)
            ))
            .await
            .starts_with("235 ")
    );
}

#[tokio::test]
async fn smuggled_message_over_the_wire_is_refused_and_not_stored() {
    let sandbox = start_sandbox(|_| {}).await;
    let mut client = Client::connect(&sandbox).await;
    client.greet_with_starttls(&sandbox).await;
    client
        .command(&format!("AUTH XOAUTH2 {}", xoauth2(ALICE, GOOD_TOKEN)))
        .await;
    client.command("MAIL FROM:<alice@example.com>").await;
    client.command("RCPT TO:<bob@example.net>").await;
    assert!(client.command("DATA").await.starts_with("354"));
    client
        .write(
            b"Subject: legit\r\n\r\nhi\n.\nMAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.net>\r\n\
              DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n",
        )
        .await;
    assert!(
        client
            .reply()
            .await
            .starts_with("550 5.6.0 Message refused: bare CR or LF")
    );
    assert_eq!(client.command("NOOP").await, "250 2.0.0 OK\r\n");
    assert_eq!(sandbox.server.inbox().count(), 0);
    assert_eq!(sandbox.server.stats().messages_refused, 1);
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_never_executed() {
    let sandbox = start_sandbox(|_| {}).await;
    let mut client = Client::connect(&sandbox).await;
    client.reply().await;
    client.command("EHLO client.test").await;
    // One write, as an injecting man-in-the-middle would append it.
    client
        .write(b"STARTTLS\r\nAUTH XOAUTH2 =\r\nMAIL FROM:<injected@example.com>\r\n")
        .await;
    assert_eq!(client.reply().await, "220 2.0.0 Ready to start TLS\r\n");
    client.handshake(sandbox.server.ca_file()).await;
    assert_eq!(
        client.command("MAIL FROM:<alice@example.com>").await,
        "503 5.5.1 Send EHLO first\r\n"
    );
    assert_eq!(sandbox.server.stats().auth_attempts_total(), 0);
}
