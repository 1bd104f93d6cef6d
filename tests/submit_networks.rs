//! Devices that cannot authenticate, through the real `oxirelay serve`: a
//! listener restricted by allow_ips that names a `[[network]]` takes mail
//! without AUTH from that network only, checks the sender against the
//! network's allowed_from, throttles refused senders, and delivers through
//! the mapped account. Everything else still needs AUTH or cannot connect.

mod common;
#[path = "line_client/mod.rs"]
mod line_client;

use common::*;
use line_client::Client;
use oxirelay::sandbox::USER;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

async fn connect(addr: SocketAddr, from: [u8; 4]) -> Client {
    Client::connect_from(addr, IpAddr::from(from), WAIT).await
}

/// The relay's two network listeners: (mapped, unmapped).
fn listeners(relay: &RelayProcess) -> (SocketAddr, SocketAddr) {
    let second = relay
        .wait_for_line("oxirelay: listening on ")
        .trim_start_matches("oxirelay: listening on ")
        .parse()
        .expect("an address");
    (relay.addr, second)
}

const MESSAGE: &[u8] =
    b"From: alice@sandbox.test\r\nTo: device-mail@example.net\r\nSubject: scan without auth\r\n\r\nscanned\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_network_submits_without_auth_and_the_mail_is_delivered() {
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    harness.add_network_relay();
    let relay = RelayProcess::start(&harness.config_path, &[]);
    let (mapped, _) = listeners(&relay);

    let mut device = connect(mapped, DEVICE_IP).await;
    assert!(device.reply().await.starts_with("220 "));
    device.command("EHLO scanner.lan").await;
    let reply = device.send(USER, "device-mail@example.net", MESSAGE).await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    assert!(device.command("QUIT").await.starts_with("221"));

    let inbox = harness.sandbox.smtp.inbox();
    inbox
        .wait_for_count(1, WAIT)
        .await
        .expect("delivered upstream");
    let entry = &inbox.list().expect("inbox")[0];
    assert_eq!(entry.subject.as_deref(), Some("scan without auth"));
    let body = String::from_utf8(inbox.read(&entry.id).expect("read")).expect("utf8");
    // No AUTH, no TLS: plain ESMTP in the trace header, as for any such client.
    assert!(
        body.starts_with("Received: from scanner.lan ([127.0.0.1])\r\n\tby ")
            && body.contains(" with ESMTP\r\n"),
        "{body}"
    );

    // The queue and the audit log name the network as the submitter.
    let store = oxirelay::store::open(&format!("sqlite://{}", harness.db_path().display()))
        .await
        .expect("store");
    let queued = store.messages(None, 10).await.expect("messages");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].submitted_by, "network:devices");
    assert_eq!(queued[0].account, ACCOUNT);
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
    // Read once serve has stopped: the audit line follows the delivery.
    let audit = std::fs::read_to_string(harness.config_path.with_file_name("oxirelay-audit.jsonl"))
        .expect("audit log");
    assert!(
        audit
            .lines()
            .any(|line| line.contains("message.delivered") && line.contains("network:devices")),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_outside_the_mapping_is_refused() {
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    harness.add_network_relay();
    let relay = RelayProcess::start(&harness.config_path, &[]);
    let (mapped, unmapped) = listeners(&relay);

    // Not in allow_ips: refused at connect.
    let mut stranger = connect(mapped, OUTSIDE_IP).await;
    let reply = stranger.reply().await;
    assert!(
        reply.starts_with("554 5.7.1 127.0.0.3 may not use this listener"),
        "{reply}"
    );

    // Allowed to connect but not in the network: AUTH is required.
    let mut other = connect(mapped, OTHER_HOST_IP).await;
    assert!(other.reply().await.starts_with("220 "));
    other.command("EHLO other.lan").await;
    let reply = other.command(&format!("MAIL FROM:<{USER}>")).await;
    assert!(
        reply.starts_with("530 5.7.0 Authentication required"),
        "{reply}"
    );

    // A listener that names no network requires AUTH even from a device
    // of the network.
    let mut device = connect(unmapped, DEVICE_IP).await;
    assert!(device.reply().await.starts_with("220 "));
    device.command("EHLO scanner.lan").await;
    let reply = device.command(&format!("MAIL FROM:<{USER}>")).await;
    assert!(
        reply.starts_with("530 5.7.0 Authentication required"),
        "{reply}"
    );

    // The network's device, with a sender outside its allowed_from.
    let mut device = connect(mapped, DEVICE_IP).await;
    assert!(device.reply().await.starts_with("220 "));
    device.command("EHLO scanner.lan").await;
    let reply = device.command("MAIL FROM:<ceo@contoso.test>").await;
    assert!(
        reply.starts_with("550 5.7.1 Sender not allowed for network:devices"),
        "{reply}"
    );
    // Probing for an allowed sender is throttled like guessing passwords:
    // after five refusals the address is locked out, even for a good sender.
    for n in 0..4 {
        let reply = device
            .command(&format!("MAIL FROM:<probe{n}@contoso.test>"))
            .await;
        assert!(reply.starts_with("550 "), "{reply}");
    }
    let reply = device.command(&format!("MAIL FROM:<{USER}>")).await;
    assert!(
        reply.starts_with("450 4.7.1 Too many refused senders"),
        "{reply}"
    );

    let store = oxirelay::store::open(&format!("sqlite://{}", harness.db_path().display()))
        .await
        .expect("store");
    assert!(
        store.messages(None, 10).await.expect("messages").is_empty(),
        "nothing queued"
    );
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
}
