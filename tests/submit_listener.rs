//! The relay's submission listeners over real TCP and TLS, with the real
//! sandbox as the provider and a real SQLite queue: what is accepted lands
//! in the queue byte-exact behind one Received header, and everything that
//! must be refused is refused without touching the queue.

mod submit_common;

use oxirelay::sandbox::USER;
use submit_common::*;

const MESSAGE: &[u8] = b"From: Scanner <scanner@contoso.test>\r\nTo: bob@example.com\r\nSubject: scan 42\r\n\r\nLine one\r\n..a line that began with a dot\r\n\tindented, trailing space \r\n";
/// `MESSAGE` as the client sends it in DATA (dot-stuffed).
const MESSAGE_ON_WIRE: &[u8] = b"From: Scanner <scanner@contoso.test>\r\nTo: bob@example.com\r\nSubject: scan 42\r\n\r\nLine one\r\n...a line that began with a dot\r\n\tindented, trailing space \r\n";

#[tokio::test]
async fn starttls_auth_plain_message_is_queued_byte_exact_behind_a_received_header() {
    let relay = Relay::start().await;
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    let ehlo = client.greet_with_starttls(&relay.ca_file).await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN OAUTHBEARER XOAUTH2"),
        "{ehlo}"
    );
    assert!(ehlo.contains("SIZE 36700160"), "{ehlo}");
    assert!(
        client
            .auth_plain(SCANNER, SCANNER_PASSWORD)
            .await
            .starts_with("235 ")
    );

    let notified = relay.work_arrived.notified();
    let reply = client
        .send(SCANNER_FROM, "bob@example.com", MESSAGE_ON_WIRE)
        .await;
    let id = queue_id(&reply);
    tokio::time::timeout(WAIT, notified)
        .await
        .expect("the delivery engine is told that work arrived");

    let queued = relay.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].id.0, id);
    assert_eq!(queued[0].account, ACCOUNT);
    assert_eq!(queued[0].mail_from, SCANNER_FROM);
    assert_eq!(queued[0].submitted_by, SCANNER);
    assert_eq!(queued[0].recipients[0].address, "bob@example.com");

    let body = relay.body(&id).await;
    let split = body
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|first_line_end| first_line_end + 2)
        .expect("lines");
    let received_end = {
        // The Received header: its first line and the folded ones after it.
        let mut end = split;
        while body[end] == b'\t' {
            end += body[end..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("line end")
                + 2;
        }
        end
    };
    let header = String::from_utf8_lossy(&body[..received_end]);
    assert!(
        header.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby relay.test (oxirelay) with ESMTPSA\r\n\tfor <bob@example.com>;\r\n\t"),
        "{header}"
    );
    assert_eq!(
        &body[received_end..],
        MESSAGE,
        "the message is kept byte-exact"
    );
    assert!(client.command("QUIT").await.starts_with("221"));
    relay.shutdown().await;
}

#[tokio::test]
async fn implicit_tls_listener_accepts_a_store_user() {
    let relay = Relay::start().await;
    let mut client = Client::connect(relay.addr(IMPLICIT)).await;
    client.handshake(&relay.ca_file).await;
    assert!(client.reply().await.starts_with("220 "));
    assert!(
        client
            .command("EHLO client.test")
            .await
            .contains("AUTH PLAIN")
    );
    assert!(
        client
            .auth_plain(PRINTER, PRINTER_PASSWORD)
            .await
            .starts_with("235 ")
    );
    let from = format!("lp1@{PRINTER_DOMAIN}");
    let message =
        format!("From: <{from}>\r\nTo: bob@example.com\r\nSubject: scan\r\n\r\nscanned\r\n");
    let id = queue_id(
        &client
            .send(&from, "bob@example.com", message.as_bytes())
            .await,
    );
    let body = relay.body(&id).await;
    assert!(body.ends_with(message.as_bytes()));
    assert!(String::from_utf8_lossy(&body).starts_with("Received: from client.test"));
    relay.shutdown().await;
}

#[tokio::test]
async fn the_header_from_must_be_an_allowed_sender_too() {
    let relay = Relay::start().await;
    let mut client = Client::connect(relay.addr(IMPLICIT)).await;
    client.handshake(&relay.ca_file).await;
    assert!(client.reply().await.starts_with("220 "));
    client.command("EHLO client.test").await;
    assert!(
        client
            .auth_plain(PRINTER, PRINTER_PASSWORD)
            .await
            .starts_with("235 ")
    );
    // An allowed envelope sender, and someone else's address in From:.
    let from = format!("lp1@{PRINTER_DOMAIN}");
    let forged = b"From: The CEO <ceo@contoso.test>\r\nTo: bob@example.com\r\nSubject: pay this\r\n\r\nurgent\r\n";
    let reply = client.send(&from, "bob@example.com", forged).await;
    assert!(
        reply.starts_with(
            "550 5.7.1 The header From <ceo@contoso.test> is not in the allowed_from of printer"
        ),
        "{reply}"
    );
    assert!(relay.queued().await.is_empty(), "nothing queued");
    relay.shutdown().await;
}

#[tokio::test]
async fn commands_pipelined_before_starttls_are_discarded() {
    let relay = Relay::start().await;
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    assert!(client.reply().await.starts_with("220 "));
    assert!(client.command("EHLO client.test").await.starts_with("250"));
    // An attacker on the path appends an AUTH and a transaction to the
    // plaintext STARTTLS: none of it may run inside the TLS session.
    let injected = format!(
        "STARTTLS\r\nAUTH PLAIN {}\r\nMAIL FROM:<{SCANNER_FROM}>\r\n",
        plain(SCANNER, SCANNER_PASSWORD)
    );
    client.write(injected.as_bytes()).await;
    assert!(client.reply().await.starts_with("220 "));
    client.handshake(&relay.ca_file).await;
    // If the AUTH had run, EHLO would be fine but MAIL would be accepted.
    assert!(client.command("EHLO client.test").await.starts_with("250"));
    let mail = client.command(&format!("MAIL FROM:<{SCANNER_FROM}>")).await;
    assert!(mail.starts_with("530 5.7.0"), "{mail}");
    assert!(relay.queued().await.is_empty());
    relay.shutdown().await;
}

#[tokio::test]
async fn auth_before_tls_is_refused_and_not_offered() {
    let relay = Relay::start().await;
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    assert!(client.reply().await.starts_with("220 "));
    let ehlo = client.command("EHLO client.test").await;
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    let auth = client.auth_plain(SCANNER, SCANNER_PASSWORD).await;
    assert!(auth.starts_with("530 5.7.0"), "{auth}");
    let mail = client.command(&format!("MAIL FROM:<{SCANNER_FROM}>")).await;
    assert!(mail.starts_with("530"), "{mail}");
    relay.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_relay_and_foreign_senders_are_refused() {
    let relay = Relay::start().await;
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    client.greet_with_starttls(&relay.ca_file).await;
    let mail = client.command("MAIL FROM:<anyone@example.org>").await;
    assert!(mail.starts_with("530 5.7.0"), "{mail}");
    let rcpt = client.command("RCPT TO:<victim@example.net>").await;
    assert!(rcpt.starts_with('5'), "{rcpt}");

    assert!(
        client
            .auth_plain(SCANNER, SCANNER_PASSWORD)
            .await
            .starts_with("235 ")
    );
    for sender in [
        "ceo@contoso.test",
        "scanner@contoso.test.evil",
        "",
        "lp1@printers.test",
    ] {
        let mail = client.command(&format!("MAIL FROM:<{sender}>")).await;
        assert!(
            mail.starts_with("550 5.7.1 Sender not allowed for scanner"),
            "{sender}: {mail}"
        );
    }
    // The allowed sender still works on the same session.
    let id = queue_id(
        &client
            .send(
                SCANNER_FROM,
                "bob@example.com",
                b"Subject: ok\r\n\r\nok\r\n",
            )
            .await,
    );
    assert_eq!(relay.queued().await.len(), 1);
    assert_eq!(relay.queued().await[0].id.0, id);
    relay.shutdown().await;
}

#[tokio::test]
async fn smtp_smuggling_variants_are_refused_and_never_become_two_messages() {
    let relay = Relay::start().await;
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    client.greet_with_starttls(&relay.ca_file).await;
    assert!(
        client
            .auth_plain(SCANNER, SCANNER_PASSWORD)
            .await
            .starts_with("235 ")
    );
    let smuggled = format!(
        "MAIL FROM:<{SCANNER_FROM}>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
    );
    for end in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r", "\r\n.\r", "\r.\r\n"] {
        let body = format!("Subject: carrier\r\n\r\ncarrier{end}{smuggled}");
        let reply = client
            .send(SCANNER_FROM, "bob@example.com", body.as_bytes())
            .await;
        assert!(reply.starts_with("550 5.6.0"), "{end:?} accepted: {reply}");
        assert!(relay.queued().await.is_empty(), "{end:?} queued something");
        // The session is still in step: a command gets its own reply.
        assert!(client.command("NOOP").await.starts_with("250"), "{end:?}");
    }
    // A clean message afterwards is the one and only message queued.
    queue_id(
        &client
            .send(
                SCANNER_FROM,
                "bob@example.com",
                b"Subject: clean\r\n\r\nclean\r\n",
            )
            .await,
    );
    assert_eq!(relay.queued().await.len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn repeated_bad_passwords_lock_out_the_address_and_the_user() {
    let relay = Relay::start().await;
    // The session closes after 3 failures; the throttle counts across
    // sessions: 5 failures in 10 minutes lock out.
    for failures_in_session in [2, 2, 1] {
        let mut client = Client::connect(relay.addr(STARTTLS)).await;
        client.greet_with_starttls(&relay.ca_file).await;
        for _ in 0..failures_in_session {
            let reply = client.auth_plain(SCANNER, "wrong-password").await;
            assert!(reply.starts_with("535 5.7.8"), "{reply}");
        }
        assert!(client.command("QUIT").await.starts_with("221"));
    }
    // Now even the right password is refused, before any hashing.
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    client.greet_with_starttls(&relay.ca_file).await;
    let reply = client.auth_plain(SCANNER, SCANNER_PASSWORD).await;
    assert!(reply.starts_with("454 4.7.0"), "{reply}");
    // The address is locked for other users too.
    let reply = client.auth_plain(PRINTER, PRINTER_PASSWORD).await;
    assert!(reply.starts_with("454 4.7.0"), "{reply}");
    relay.shutdown().await;
}

#[tokio::test]
async fn allow_listed_plaintext_listener_takes_auth_plain_without_tls() {
    let relay = Relay::start().await;
    let mut client = Client::connect(relay.addr(PLAINTEXT_LOOPBACK)).await;
    assert!(client.reply().await.starts_with("220 "));
    let ehlo = client.command("EHLO printer.lan").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(
        !ehlo.contains("OAUTHBEARER"),
        "tokens are not taken in plaintext: {ehlo}"
    );
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        client
            .auth_plain(SCANNER, SCANNER_PASSWORD)
            .await
            .starts_with("235 ")
    );
    let id = queue_id(
        &client
            .send(SCANNER_FROM, "bob@example.com", MESSAGE_ON_WIRE)
            .await,
    );
    let body = relay.body(&id).await;
    assert!(
        String::from_utf8_lossy(&body).starts_with(
            "Received: from printer.lan ([127.0.0.1])\r\n\tby relay.test (oxirelay) with ESMTPA\r\n"
        ),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(body.ends_with(MESSAGE));

    // Without AUTH even an allow-listed address may not send.
    let mut anonymous = Client::connect(relay.addr(PLAINTEXT_LOOPBACK)).await;
    assert!(anonymous.reply().await.starts_with("220 "));
    assert!(
        anonymous
            .command("EHLO printer.lan")
            .await
            .starts_with("250")
    );
    let mail = anonymous
        .command(&format!("MAIL FROM:<{SCANNER_FROM}>"))
        .await;
    assert!(mail.starts_with("530"), "{mail}");
    relay.shutdown().await;
}

#[tokio::test]
async fn plaintext_listener_refuses_addresses_outside_its_allow_list() {
    let relay = Relay::start().await;
    let mut client = Client::connect(relay.addr(PLAINTEXT_ELSEWHERE)).await;
    let reply = client.reply().await;
    assert!(
        reply.starts_with("554 5.7.1 127.0.0.1 may not use this listener"),
        "{reply}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn oauth_only_user_cannot_use_a_password() {
    let relay = Relay::start().await;
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    client.greet_with_starttls(&relay.ca_file).await;
    let reply = client.auth_plain(USER, "").await;
    assert!(reply.starts_with("535"), "{reply}");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_bad_allow_list_entry_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nallow_ips = [\"lan\"]\n";
    let config = oxirelay::config::Config::parse(text, &dir.path().join("oxirelay.toml"))
        .expect("the config parses");
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let store: std::sync::Arc<dyn oxirelay::store::Store> = std::sync::Arc::new(
        oxirelay::store::SqliteStore::open(&url)
            .await
            .expect("store"),
    );
    let policy = oxirelay::submit::SubmissionPolicy::new(
        &config,
        store,
        std::sync::Arc::new(tokio::sync::Notify::new()),
        oxirelay::submit::SubmissionOptions::default(),
    );
    let (_trigger, signal) = oxirelay::smtp::server::shutdown_channel();
    let error = match oxirelay::submit::Listeners::start(&config, &policy, signal).await {
        Ok(_) => panic!("a listener started with allow_ips = [\"lan\"]"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("\"lan\""), "{error}");
    assert!(error.contains("192.168.10.0/24"), "{error}");
}

#[tokio::test]
async fn xoauth2_token_must_belong_to_the_sasl_user_and_name_a_user() {
    let relay = Relay::start().await;
    let token = relay.sandbox_token().await;
    let xoauth2 = |user: &str| {
        oxirelay::smtp::sasl::encode_base64(
            format!("user={user}\x01auth=Bearer {token}\x01\x01").as_bytes(),
        )
    };
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    client.greet_with_starttls(&relay.ca_file).await;
    // Alice's token presented as the scanner: the RFC 7628 error
    // challenge, then 535 once the client answers it.
    let reply = client
        .command(&format!("AUTH XOAUTH2 {}", xoauth2(SCANNER)))
        .await;
    assert!(reply.starts_with("334 "), "{reply}");
    assert!(client.command("").await.starts_with("535 5.7.8"));
    let reply = client
        .command(&format!("AUTH XOAUTH2 {}", xoauth2(USER)))
        .await;
    assert!(reply.starts_with("235 "), "{reply}");
    let mail = client.command(&format!("MAIL FROM:<{SCANNER_FROM}>")).await;
    assert!(mail.starts_with("550 5.7.1"), "{mail}");
    let id = queue_id(
        &client
            .send(USER, "bob@example.com", b"Subject: x\r\n\r\nx\r\n")
            .await,
    );
    assert_eq!(relay.queued().await[0].id.0, id);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_store_failure_is_a_temporary_refusal_and_queues_nothing() {
    let relay = Relay::start().await;
    let url = format!("sqlite://{}", relay.dir.path().join("relay.db").display());
    let mut side = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("a second connection to the store");
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    client.greet_with_starttls(&relay.ca_file).await;
    assert!(
        client
            .auth_plain(SCANNER, SCANNER_PASSWORD)
            .await
            .starts_with("235 ")
    );

    // Break the queue's recipients table under the running relay.
    sqlx::query("ALTER TABLE recipients RENAME TO recipients_away")
        .execute(&mut side)
        .await
        .expect("rename");
    let reply = client
        .send(SCANNER_FROM, "bob@example.com", MESSAGE_ON_WIRE)
        .await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    sqlx::query("ALTER TABLE recipients_away RENAME TO recipients")
        .execute(&mut side)
        .await
        .expect("rename back");
    assert!(
        relay.queued().await.is_empty(),
        "a refused message was queued"
    );

    // The same session goes on and the retry is queued once.
    queue_id(
        &client
            .send(SCANNER_FROM, "bob@example.com", MESSAGE_ON_WIRE)
            .await,
    );
    assert_eq!(relay.queued().await.len(), 1);
    relay.shutdown().await;
}
