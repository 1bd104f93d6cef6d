//! RFC 5321 syntax through the real submission listener (real TCP and TLS,
//! a real SQLite queue) and, for the quoted local part, on through the
//! delivery engine to the sandbox's SMTP server: what is valid arrives
//! exactly as written, what is not is refused with a reason and queues
//! nothing (DESIGN.md contract 7).

mod submit_common;

use oxirelay::config::Config;
use oxirelay::delivery::engine::{Engine, EngineConfig};
use oxirelay::oauth::account::Account;
use oxirelay::oauth::broker::Broker;
use oxirelay::secret::MasterKey;
use oxirelay::store::{MessageState, RecipientState};
use std::sync::Arc;
use submit_common::*;

const MESSAGE: &[u8] =
    b"From: scanner@contoso.test\r\nTo: \"a b\"@example.net\r\nSubject: quoted\r\n\r\nhello\r\n";

/// A client on the STARTTLS listener, authenticated as the scanner.
async fn scanner(relay: &Relay) -> Client {
    let mut client = Client::connect(relay.addr(STARTTLS)).await;
    client.greet_with_starttls(&relay.ca_file).await;
    let auth = client.auth_plain(SCANNER, SCANNER_PASSWORD).await;
    assert!(auth.starts_with("235 "), "{auth}");
    client
}

/// The scanner with a transaction open (MAIL FROM accepted).
async fn scanner_transaction(relay: &Relay) -> Client {
    let mut client = scanner(relay).await;
    let mail = client.command(&format!("MAIL FROM:<{SCANNER_FROM}>")).await;
    assert!(mail.starts_with("250 "), "{mail}");
    client
}

/// Writes the sandbox's client secret where an account can read it.
fn secret_file(relay: &Relay) -> std::path::PathBuf {
    use std::io::Write;
    let path = relay.dir.path().join("upstream.secret");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).expect("secret file");
    file.write_all(relay.sandbox.client_secret.expose().as_bytes())
        .expect("write secret");
    path
}

#[tokio::test]
async fn a_quoted_local_part_is_queued_and_delivered_upstream_exactly() {
    let relay = Relay::start().await;
    let mut client = scanner_transaction(&relay).await;
    let rcpt = client.command("RCPT TO:<\"a b\"@example.net>").await;
    assert!(rcpt.starts_with("250 "), "{rcpt}");
    assert!(client.command("DATA").await.starts_with("354"));
    client.write(MESSAGE).await;
    client.write(b".\r\n").await;
    let id = queue_id(&client.reply().await);
    assert!(client.command("QUIT").await.starts_with("221"));

    let queued = relay.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].recipients[0].address, "\"a b\"@example.net");

    // The delivery engine takes it from the same queue to the sandbox.
    let text = relay.sandbox.account_toml(
        ACCOUNT,
        "client_credentials",
        &format!("file:{}", secret_file(&relay).display()),
    );
    let config = Config::parse(&text, &relay.dir.path().join("engine.toml")).expect("account");
    let account = Account::from_config(&config.accounts[0]).expect("account");
    let broker = Arc::new(Broker::new(
        relay.store.clone(),
        Arc::new(MasterKey::from_bytes([7; 32])),
        vec![account],
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let engine = Engine::start(
        relay.store.clone(),
        broker,
        EngineConfig {
            workers: 1,
            reporting_mta: "relay.test".into(),
            ..EngineConfig::default()
        },
        relay.work_arrived.clone(),
        stopped,
    );
    relay.work_arrived.notify_one();
    let entries = relay
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(1, WAIT)
        .await
        .expect("delivered upstream");
    assert_eq!(entries[0].rcpt_to, ["\"a b\"@example.net"]);
    assert_eq!(entries[0].mail_from, SCANNER_FROM);
    let upstream = relay
        .sandbox
        .smtp
        .inbox()
        .read(&entries[0].id)
        .expect("read");
    assert!(upstream.ends_with(MESSAGE));
    engine
        .wait_until(|stats| stats.messages_delivered == 1, WAIT)
        .await
        .expect("the delivery is recorded");
    let message = relay
        .queued()
        .await
        .into_iter()
        .find(|m| m.id.0 == id)
        .expect("the message");
    assert_eq!(message.state, MessageState::Delivered);
    assert_eq!(message.recipients[0].state, RecipientState::Delivered);
    let _ = stop.send(true);
    engine.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn nul_bytes_and_long_lines_are_refused_and_nothing_is_queued() {
    let relay = Relay::start().await;
    let mut client = scanner(&relay).await;
    let long = format!(
        "From: {SCANNER_FROM}\r\nX-Long: {}\r\n\r\nbody\r\n",
        "h".repeat(1 << 20)
    );
    let cases: [(&[u8], &str); 2] = [
        (
            b"From: scanner@contoso.test\r\nSubject: nul\r\n\r\nbefore \0 after\r\n",
            "550 5.6.0 Message refused: line 4 holds a NUL byte",
        ),
        (
            long.as_bytes(),
            "550 5.6.0 Message refused: line 2 is longer than 998 octets",
        ),
    ];
    for (message, expected) in cases {
        let reply = client.send(SCANNER_FROM, "bob@example.com", message).await;
        assert!(reply.starts_with(expected), "{reply}");
    }
    assert!(relay.queued().await.is_empty());
    // The session is still usable, and a clean message goes through.
    let reply = client
        .send(
            SCANNER_FROM,
            "bob@example.com",
            b"Subject: ok\r\n\r\nfine\r\n",
        )
        .await;
    queue_id(&reply);
    assert_eq!(relay.queued().await.len(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn bare_cr_in_a_command_is_refused_and_bare_lf_closes() {
    let relay = Relay::start().await;
    let mut client = scanner_transaction(&relay).await;
    let reply = client.command("RCPT TO:<a\rRSET\r@example.net>").await;
    assert!(reply.starts_with("500 5.5.2 Bare CR"), "{reply}");
    // The transaction is still open (RSET did not run) and has no recipient.
    let data = client.command("DATA").await;
    assert!(data.starts_with("503 5.5.1 Send RCPT TO first"), "{data}");
    client
        .write(b"RCPT TO:<a\nRCPT TO:<victim@example.net>\r\n")
        .await;
    let closing = client.closed().await;
    assert!(closing.starts_with("500 5.5.2 Bare LF"), "{closing}");
    assert!(!closing.contains("250"), "{closing}");
    assert!(relay.queued().await.is_empty());
    relay.shutdown().await;
}

#[tokio::test]
async fn an_over_long_line_is_answered_without_waiting_for_its_end() {
    let relay = Relay::start().await;
    let mut client = scanner(&relay).await;
    // 16 KB and no line end: the reply must come now.
    client
        .write(format!("NOOP {}", "a".repeat(16 * 1024)).as_bytes())
        .await;
    assert_eq!(client.reply().await, "500 5.5.6 Line too long\r\n");
    // The rest of the line is skipped unanswered, up to its CRLF.
    client.write(&[b'b'; 64 * 1024]).await;
    client.write(b"\r\n").await;
    assert_eq!(client.command("NOOP").await, "250 2.0.0 OK\r\n");
    relay.shutdown().await;
}

#[tokio::test]
async fn postmaster_goes_to_the_listeners_address_or_is_refused() {
    let relay = Relay::start().await;
    // The shared relay's listeners have no postmaster.
    let mut client = scanner_transaction(&relay).await;
    let reply = client.command("RCPT TO:<postmaster>").await;
    assert!(
        reply.starts_with("550 5.1.1 <postmaster> has no address configured"),
        "{reply}"
    );

    relay.shutdown().await;

    // A relay with one more listener, which has `postmaster` set.
    let relay = Relay::start_with_config(
        "\n[[listener]]\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nallow_ips = [\"127.0.0.1/32\"]\npostmaster = \"admin@contoso.test\"\n",
    )
    .await;
    let mut client = Client::connect(relay.addr(IMPLICIT_SECOND_LOOPBACK + 1)).await;
    assert!(client.reply().await.starts_with("220 "));
    assert!(client.command("EHLO client.test").await.starts_with("250"));
    assert!(
        client
            .auth_plain(SCANNER, SCANNER_PASSWORD)
            .await
            .starts_with("235 ")
    );
    let id = queue_id(
        &client
            .send(SCANNER_FROM, "PostMaster", b"Subject: hello\r\n\r\nhi\r\n")
            .await,
    );
    let queued = relay.queued().await;
    let message = queued.iter().find(|m| m.id.0 == id).expect("queued");
    assert_eq!(message.recipients[0].address, "admin@contoso.test");
    relay.shutdown().await;
}

#[test]
fn a_postmaster_that_is_not_an_address_is_a_config_error_naming_the_line() {
    let text = "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nallow_ips = [\"127.0.0.1/32\"]\npostmaster = \"admin\"\n";
    let error = Config::parse(text, std::path::Path::new("oxirelay.toml"))
        .expect_err("refused")
        .to_string();
    assert!(error.contains("postmaster"), "{error}");
    assert!(error.contains("has no @domain"), "{error}");
    assert!(error.contains("line 5"), "{error}");
}
