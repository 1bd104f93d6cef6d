//! Third-party clients that do not authenticate, submitting to the real
//! `oxirelay serve` through a `[[network]]` (issue 8, item 5): swaks,
//! curl, Python's smtplib and Postfix's smtp-source, each without AUTH and
//! without TLS from the network's address, each message followed to the
//! sandbox inbox intact; and the same clients from addresses outside it,
//! refused with 554 at connect (outside the listener's allow_ips) or 530 at
//! MAIL (inside allow_ips, outside the network), with nothing queued.
//!
//! The clients that can bind a source address connect from 127.0.0.2 and
//! 127.0.0.3 ("other hosts": all of 127.0.0.0/8 is loopback on Linux);
//! smtp-source cannot, so it meets listeners whose network or allow_ips
//! exclude 127.0.0.1 (see `interop_common::networks`).
//!
//! Needs the clients (`scripts/install-test-tools`); a test whose client is
//! missing prints SKIPPED and returns.

mod interop_common;

use interop_common::networks::{
    Client, DEVICE_IP, Listener, NetworkRelay, OTHER_HOST_IP, OUTSIDE_IP, submit,
};
use interop_common::tools::describe;
use interop_common::{assert_intact, message};

/// The name each client says in HELO/EHLO, as the Received header shows it.
fn helo_name(client: Client) -> &'static str {
    match client {
        Client::Swaks => "swaks.test",
        Client::Curl => "curl.test",
        Client::Smtplib => "python.test",
        Client::SmtpSource => "smtp-source.test",
    }
}

/// The refusal as the client reports it, from its output.
fn assert_refused(client: Client, output: &std::process::Output, reply: &str) {
    let text = describe(output);
    assert!(
        !output.status.success(),
        "{client:?} reported success where the relay should refuse ({reply}): {text}"
    );
    assert!(
        text.contains(reply),
        "{client:?} was not refused with {reply:?}: {text}"
    );
}

async fn submits_without_auth_from_the_network_and_is_refused_outside_it(client: Client) {
    if !client.installed() {
        return;
    }
    let relay = NetworkRelay::start().await;
    let subject = format!("{client:?} without AUTH");
    let sent = message(&subject);
    let output = submit(
        &relay,
        client,
        DEVICE_IP,
        relay.port(Listener::Devices),
        &sent,
    )
    .await;
    assert!(output.status.success(), "{client:?}: {}", describe(&output));
    let arrived = relay.arrived(1, &subject).await;
    if client == Client::SmtpSource {
        // smtp-source sends an empty line after the file's last line (its
        // own doing: smtp-sink records the same); the rest is intact.
        assert_intact(&arrived, &[sent.as_slice(), b"\r\n"].concat());
    } else {
        assert_intact(&arrived, &sent);
    }
    let text = String::from_utf8_lossy(&arrived);
    // No TLS, no AUTH: plain ESMTP in the trace header.
    assert!(
        text.starts_with(&format!(
            "Received: from {} ([127.0.0.1])\r\n\tby ",
            helo_name(client)
        )) && text.contains(" with ESMTP\r\n"),
        "{text}"
    );

    let refusals: [(&str, u16, &str); 2] = if client.binds_source() {
        [
            // In allow_ips, not in the network: AUTH required at MAIL.
            (
                OTHER_HOST_IP,
                relay.port(Listener::Devices),
                "530 5.7.0 Authentication required",
            ),
            // Not in allow_ips: refused at connect.
            (
                OUTSIDE_IP,
                relay.port(Listener::Devices),
                "554 5.7.1 127.0.0.3 may not use this listener",
            ),
        ]
    } else {
        [
            (
                DEVICE_IP,
                relay.port(Listener::PrintersOnly),
                "530 5.7.0 Authentication required",
            ),
            (
                DEVICE_IP,
                relay.port(Listener::Elsewhere),
                "554 5.7.1 127.0.0.1 may not use this listener",
            ),
        ]
    };
    for (source, port, reply) in refusals {
        let refused = message(&format!("{client:?} from {source} to {port}"));
        let output = submit(&relay, client, source, port, &refused).await;
        assert_refused(client, &output, reply);
    }
    // Only the network's message was queued, under the network's name, and
    // only it reached the sandbox.
    assert_eq!(relay.queued_by().await, vec!["network:devices".to_string()]);
    assert_eq!(relay.sandbox.smtp.inbox().count(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn swaks_submits_without_auth_from_a_network_and_is_refused_outside_it() {
    submits_without_auth_from_the_network_and_is_refused_outside_it(Client::Swaks).await;
}

#[tokio::test]
async fn curl_submits_without_auth_from_a_network_and_is_refused_outside_it() {
    submits_without_auth_from_the_network_and_is_refused_outside_it(Client::Curl).await;
}

#[tokio::test]
async fn python_smtplib_submits_without_auth_from_a_network_and_is_refused_outside_it() {
    submits_without_auth_from_the_network_and_is_refused_outside_it(Client::Smtplib).await;
}

#[tokio::test]
async fn smtp_source_submits_without_auth_from_a_network_and_is_refused_outside_it() {
    submits_without_auth_from_the_network_and_is_refused_outside_it(Client::SmtpSource).await;
}
