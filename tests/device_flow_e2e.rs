//! The device authorization grant (RFC 8628) of the relay's client against
//! the sandbox: pending, then slow_down, then success, with the polls
//! counted and their spacing measured.

mod common;

use common::{ACCOUNT, Harness, WAIT};
use oxirelay::oauth::device::{self, PollOutcome};
use oxirelay::oauth::grant::GrantRequest;
use oxirelay::sandbox::USER;
use oxirelay::sandbox::authz::GrantKind;
use std::time::{Duration, Instant};

async fn next(
    observed: &mut tokio::sync::mpsc::UnboundedReceiver<(Duration, PollOutcome)>,
) -> (Duration, PollOutcome) {
    tokio::time::timeout(WAIT, observed.recv())
        .await
        .expect("a poll in time")
        .expect("the poller runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_then_slow_down_then_success() {
    let harness = Harness::start("device_code", "xoauth2", Duration::from_secs(3600)).await;
    let broker = harness.context.broker.clone();
    let endpoints = broker.endpoints(ACCOUNT).await.expect("endpoints");
    let endpoint = broker
        .token_endpoint(ACCOUNT)
        .await
        .expect("token endpoint");
    let http = broker.http(ACCOUNT).expect("http");
    let authorization = device::start(
        &http,
        endpoints.device.as_ref().expect("a device endpoint"),
        &endpoint,
        &harness.account().scopes,
    )
    .await
    .expect("device authorization");
    assert_eq!(authorization.interval, Duration::from_secs(1));
    let device_code = authorization.device_code.clone();
    let user_code = authorization.user_code.clone();

    let (polls, mut observed) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let poller = {
        let (http, endpoint) = (http.clone(), endpoint.clone());
        tokio::spawn(async move {
            device::poll(&http, &endpoint, &authorization, |outcome| {
                let _ = polls.send((started.elapsed(), outcome));
            })
            .await
        })
    };

    let (first_at, first) = next(&mut observed).await;
    assert_eq!(first, PollOutcome::Pending, "nobody approved yet");
    assert!(
        first_at >= Duration::from_secs(1),
        "the first poll waits one interval ({first_at:?})"
    );

    // The scenario: a second poller on the same code, which makes the
    // client's next poll too early for the server. Ordered by events, not
    // by a pause: it starts once the client's first poll is answered and
    // polls until the client's second one is, so the client's second poll
    // always comes less than an interval after one of its polls, however
    // slow the machine (one poll's round trip is all that separates them).
    let mut interloper_polls = 0u64;
    let (second_at, second) = loop {
        if let Ok(polled) = observed.try_recv() {
            break polled;
        }
        endpoint
            .request(
                &http,
                &GrantRequest::DeviceCode {
                    device_code: &device_code,
                },
            )
            .await
            .expect_err("not approved");
        interloper_polls += 1;
        assert!(
            started.elapsed() < first_at + WAIT,
            "the client's second poll did not come"
        );
    };
    assert!(interloper_polls >= 1);
    assert_eq!(
        second,
        PollOutcome::SlowDown {
            new_interval: Duration::from_secs(6)
        },
        "RFC 8628: add 5 seconds"
    );
    assert!(
        second_at - first_at >= Duration::from_millis(990),
        "spacing {:?}",
        second_at - first_at
    );

    // The person approves; the next poll, six seconds later, gets the tokens.
    harness
        .sandbox
        .auth
        .approve_device(&user_code, USER)
        .expect("approve");
    let response = tokio::time::timeout(WAIT, poller)
        .await
        .expect("in time")
        .expect("join")
        .expect("tokens");
    let done_at = started.elapsed();
    assert!(
        done_at - second_at >= Duration::from_secs(6),
        "the slower interval was honoured: {:?}",
        done_at - second_at
    );
    assert!(
        response.refresh_token.is_some(),
        "offline_access gives a refresh token"
    );
    assert_eq!(
        harness
            .sandbox
            .auth
            .stats()
            .token_requests_by_grant
            .get(GrantKind::DeviceCode),
        3 + interloper_polls,
        "three polls by the client and those of the second poller"
    );

    // The tokens are the account's now, and deliver mail.
    broker
        .store_consent(ACCOUNT, response)
        .await
        .expect("stored");
    harness.send(1).await.expect("sent");
}
