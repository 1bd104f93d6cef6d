//! The failed-login throttle over the real listener: guesses sent in
//! parallel all count, a burst of correct logins from one address all go
//! through, and guesses from elsewhere cannot lock a device out of its
//! usual address.

mod submit_common;

use std::net::IpAddr;
use submit_common::*;

async fn login_from(relay: &Relay, source: [u8; 4], password: &str) -> String {
    let mut client = Client::connect_from(relay.addr(STARTTLS), IpAddr::from(source), WAIT).await;
    client.greet_with_starttls(&relay.ca_file).await;
    client.auth_plain(SCANNER, password).await
}

/// Ten sessions (the per-address cap) from 127.0.0.1, past STARTTLS, each
/// sending AUTH PLAIN as `SCANNER` with `password` at the same moment; the
/// replies in the order they came.
async fn logins_at_once(relay: &Relay, password: &'static str) -> Vec<String> {
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut client = Client::connect(relay.addr(STARTTLS)).await;
        client.greet_with_starttls(&relay.ca_file).await;
        clients.push(client);
    }
    let mut logins = tokio::task::JoinSet::new();
    for mut client in clients {
        logins.spawn(async move { client.auth_plain(SCANNER, password).await });
    }
    let mut replies = Vec::new();
    while let Some(reply) = logins.join_next().await {
        replies.push(reply.expect("task"));
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_are_all_counted() {
    let relay = Relay::start().await;
    // Ten sessions (the per-address cap) guess at the same moment.
    let mut judged = 0;
    let mut throttled = 0;
    for reply in logins_at_once(&relay, "wrong-guess").await {
        if reply.starts_with("535 ") {
            judged += 1;
        } else if reply.starts_with("454 ") {
            throttled += 1;
        } else {
            panic!("unexpected reply {reply}");
        }
    }
    assert_eq!(
        (judged, throttled),
        (5, 5),
        "five checked, the rest throttled"
    );
    relay.shutdown().await;
}

/// Ten sessions of one device pool log in with the right password at the
/// same moment: every one gets 235. (The throttle once counted each
/// attempt as a failure until it succeeded, so the sixth of a burst met a
/// lockout the first five "earned" and got 454.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_correct_logins_from_one_address_all_succeed() {
    let relay = Relay::start().await;
    let replies = logins_at_once(&relay, SCANNER_PASSWORD).await;
    assert!(
        replies.iter().all(|r| r.starts_with("235 ")),
        "every correct login accepted: {replies:?}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn guesses_from_elsewhere_do_not_lock_a_device_out() {
    let relay = Relay::start().await;
    let device = [127, 0, 0, 1];
    assert!(
        login_from(&relay, device, SCANNER_PASSWORD)
            .await
            .starts_with("235 ")
    );
    // Someone at another address guesses the device's password.
    for _ in 0..5 {
        let reply = login_from(&relay, [127, 0, 0, 2], "guess").await;
        assert!(reply.starts_with("535 "), "{reply}");
    }
    // The guesser, and anyone else, now meets the user's lockout...
    let reply = login_from(&relay, [127, 0, 0, 3], SCANNER_PASSWORD).await;
    assert!(reply.starts_with("454 "), "{reply}");
    // ...the device at its usual address does not.
    assert!(
        login_from(&relay, device, SCANNER_PASSWORD)
            .await
            .starts_with("235 ")
    );
    relay.shutdown().await;
}
