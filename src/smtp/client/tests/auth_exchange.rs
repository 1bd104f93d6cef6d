//! RFC 4954 section 4 on the wire: when the initial response fits on a
//! 512-octet AUTH line and when it must follow an empty challenge, in both
//! mechanisms, with the RFC 7628 error exchange in the two-step form, and
//! replies to AUTH that do not judge the token.

use super::peer::{Peer, Step, TestPki, expect, send};
use super::*;

/// The base64 SASL response for `token`, as the client sends it.
fn response(mechanism: Mechanism, token: &str, port: u16) -> String {
    auth_line(mechanism, token, port)
        .split_once(' ')
        .and_then(|(_, rest)| rest.split_once(' '))
        .map(|(_, response)| response.to_string())
        .expect("AUTH MECH RESPONSE")
}

/// A token that makes the inline AUTH line (CRLF included) `octets` long,
/// or the shortest one longer than that.
fn token_for_inline_length(mechanism: Mechanism, port: u16, at_least: usize) -> String {
    (1..4000)
        .map(|length| "t".repeat(length))
        .find(|token| auth_line(mechanism, token, port).len() + 2 >= at_least)
        .expect("some length reaches it")
}

/// The script for one AUTH exchange, which needs the peer's port (the
/// OAUTHBEARER message names it) before the peer runs.
async fn run_auth(
    mechanism: Mechanism,
    token: &str,
    exchange: impl FnOnce(u16) -> Vec<Step>,
) -> (Result<(), ClientError>, Result<peer::Transcript, String>) {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let mut script = starttls_opening("250-mx.test\r\n250 AUTH XOAUTH2 OAUTHBEARER\r\n");
    script.extend(exchange(port));
    script.extend(closing());
    let running = peer.run(script);
    let mut session = Session::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
        .await
        .expect("session");
    let result = session.authenticate(mechanism, &credentials(token)).await;
    assert!(session.is_usable(), "the session survives: {result:?}");
    session.quit().await.expect("quit");
    (result, running.finish().await)
}

async fn long_token_follows_an_empty_challenge(mechanism: Mechanism) {
    let token = "j".repeat(2000);
    let (result, transcript) = run_auth(mechanism, &token, |port| {
        vec![
            expect(&format!("AUTH {mechanism}")),
            send("334 \r\n"),
            Step::Expect(response(mechanism, &token, port)),
            send("235 2.7.0 Accepted\r\n"),
        ]
    })
    .await;
    result.expect("authenticated");
    let transcript = transcript.expect("script followed");
    // No line the client wrote is longer than 512 octets but the response.
    let longest_command = transcript
        .encrypted
        .split(|b| *b == b'\n')
        .filter(|line| line.starts_with(b"AUTH") || line.starts_with(b"EHLO"))
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    assert!(longest_command < 512, "{longest_command}");
}

#[tokio::test]
async fn a_long_xoauth2_token_follows_an_empty_challenge() {
    long_token_follows_an_empty_challenge(Mechanism::XOAuth2).await;
}

#[tokio::test]
async fn a_long_oauthbearer_token_follows_an_empty_challenge() {
    long_token_follows_an_empty_challenge(Mechanism::OAuthBearer).await;
}

#[tokio::test]
async fn the_512_octet_boundary_is_exact() {
    // Port 0 in the OAUTHBEARER message is replaced by the peer's; XOAUTH2
    // does not name the port, so its boundary can be computed up front.
    let mechanism = Mechanism::XOAuth2;
    let longest_inline = {
        let over = token_for_inline_length(mechanism, 0, 513);
        (1..over.len())
            .rev()
            .map(|length| "t".repeat(length))
            .find(|token| auth_line(mechanism, token, 0).len() + 2 <= 512)
            .expect("a shorter token fits")
    };
    let (result, transcript) = run_auth(mechanism, &longest_inline, |port| {
        vec![
            Step::Expect(auth_line(mechanism, &longest_inline, port)),
            send("235 2.7.0 Accepted\r\n"),
        ]
    })
    .await;
    result.expect("inline at <= 512 octets");
    transcript.expect("script followed");

    let just_over = token_for_inline_length(mechanism, 0, 513);
    let (result, transcript) = run_auth(mechanism, &just_over, |port| {
        vec![
            expect("AUTH XOAUTH2"),
            send("334 \r\n"),
            Step::Expect(response(mechanism, &just_over, port)),
            send("235 2.7.0 Accepted\r\n"),
        ]
    })
    .await;
    result.expect("two steps above 512 octets");
    transcript.expect("script followed");
}

async fn error_exchange_in_two_steps(mechanism: Mechanism, ack: &str) {
    let token = "e".repeat(1800);
    let status = OAuthErrorStatus {
        status: "invalid_token".into(),
        schemes: Some("bearer".into()),
        scope: Some("smtp.send".into()),
        openid_configuration: None,
    };
    let challenge = format!("334 {}\r\n", status.to_base64());
    let (result, transcript) = run_auth(mechanism, &token, |port| {
        vec![
            expect(&format!("AUTH {mechanism}")),
            send("334 \r\n"),
            Step::Expect(response(mechanism, &token, port)),
            Step::Send(challenge),
            expect(ack),
            send("535 5.7.8 Authentication credentials invalid\r\n"),
        ]
    })
    .await;
    transcript.expect("script followed");
    let error = result.expect_err("refused");
    let ClientError::AuthRejected {
        status: Some(decoded),
        reply,
        ..
    } = &error
    else {
        panic!("expected a refusal with the RFC 7628 status, got {error:?}");
    };
    assert_eq!(**decoded, status);
    assert_eq!(reply.code, 535);
    assert!(error.is_auth_rejected());
}

#[tokio::test]
async fn oauthbearer_error_exchange_without_an_initial_response() {
    error_exchange_in_two_steps(Mechanism::OAuthBearer, "AQ==").await;
}

#[tokio::test]
async fn xoauth2_error_exchange_without_an_initial_response() {
    error_exchange_in_two_steps(Mechanism::XOAuth2, "").await;
}

#[tokio::test]
async fn a_line_too_long_reply_is_not_a_verdict_on_the_token() {
    // A server that refuses even the short AUTH line (or one that counts
    // differently): the token was never judged.
    let token = "l".repeat(2000);
    for (reply, transient) in [
        ("500 5.5.2 Line too long\r\n", false),
        ("555 5.5.2 Syntax error, command line too long\r\n", false),
        (
            "454 4.7.0 Too many login attempts, please try again later\r\n",
            true,
        ),
    ] {
        let (result, transcript) = run_auth(Mechanism::XOAuth2, &token, |_| {
            vec![expect("AUTH XOAUTH2"), send(reply)]
        })
        .await;
        transcript.expect("script followed");
        let error = result.expect_err("refused");
        assert!(
            matches!(error, ClientError::AuthNotJudged { .. }),
            "{reply}: {error:?}"
        );
        assert!(!error.is_auth_rejected());
        assert_eq!(error.is_transient(), transient, "{reply}");
        assert!(error.to_string().contains("the token"), "{error}");
    }
}

#[tokio::test]
async fn a_connection_dropped_during_auth_is_not_a_refusal() {
    let pki = TestPki::for_names(&["localhost"]);
    let peer = Peer::bind(Some(pki.server_config.clone())).await;
    let port = peer.port();
    let mut script = starttls_opening("250-mx.test\r\n250 AUTH XOAUTH2\r\n");
    // The peer reads the AUTH line and hangs up: the script ends there.
    script.push(expect("AUTH XOAUTH2"));
    let running = peer.run(script);
    let mut session = Session::connect(&target(port, TlsMode::Starttls, pki.client_config.clone()))
        .await
        .expect("session");
    let error = session
        .authenticate(Mechanism::XOAuth2, &credentials(&"d".repeat(2000)))
        .await
        .expect_err("the connection is gone");
    assert!(!error.is_auth_rejected(), "{error:?}");
    assert!(error.is_transient(), "{error:?}");
    assert!(
        matches!(
            error,
            ClientError::Closed {
                stage: Stage::Auth,
                ..
            } | ClientError::Io {
                stage: Stage::Auth,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!session.is_usable());
    running.finish().await.expect("script followed");
}
