//! Real-size bearer tokens through a server that holds every command line
//! to RFC 5321's 512 octets (the sandbox's default `strict` profile, as
//! Dovecot and many servers do): the relay sends `AUTH MECH`, waits for
//! the `334`, then the response on its own line, with XOAUTH2 and with
//! OAUTHBEARER; and the RFC 7628 failure exchange in that form, for a token
//! revoked elsewhere, ends in one refresh and the message delivered.

mod engine_common;

use engine_common::*;
use oxirelay::delivery::upstream::send_now;
use oxirelay::message::OutgoingMessage;
use oxirelay::smtp::client::Envelope;
use oxirelay::smtp::sasl::{self, BearerCredentials, Mechanism, ServerName};

fn message(n: usize) -> OutgoingMessage {
    OutgoingMessage {
        envelope: Envelope {
            mail_from: oxirelay::sandbox::USER.into(),
            rcpt_to: vec![format!("long{n}@example.net")],
        },
        bytes: format!(
            "From: {}\r\nTo: long{n}@example.net\r\nSubject: long token {n}\r\n\r\nbody {n}\r\n",
            oxirelay::sandbox::USER
        )
        .into_bytes(),
    }
}

/// Which line limit the upstream holds AUTH to.
#[derive(Clone, Copy)]
enum Server {
    /// RFC 5321's 512 octets (the strict profile's own).
    Strict,
    /// Gmail's: 1,024 octets, then `555 5.5.2 Syntax error, command line too long`.
    Gmail,
    /// Dovecot's: `500 5.5.2 Line too long` beyond its 1,030-octet AUTH line.
    Dovecot,
}

async fn long_token_then_revoked(mechanism: Mechanism, sasl_name: &str, server: Server) {
    let h = harness_custom(
        move |options| {
            use oxirelay::sandbox::ProfileName;
            use oxirelay::smtp::server::{LineLimit, Reply};
            match server {
                Server::Strict => {}
                Server::Gmail => {
                    // Gmail's SMTP behaviour, with the strict profile's long JWTs.
                    options.smtp = Some(ProfileName::Google.smtp());
                }
                Server::Dovecot => {
                    let mut smtp = ProfileName::Strict.smtp();
                    smtp.line_limit = LineLimit {
                        command: 1032,
                        auth_command: 1032,
                        sasl_response: 8194,
                        reply: Reply::new(500, "5.5.2 Line too long"),
                    };
                    options.smtp = Some(smtp);
                }
            }
        },
        |toml| toml.replace("sasl = \"oauthbearer\"", &format!("sasl = \"{sasl_name}\"")),
    )
    .await;
    let account = h.broker.account(ACCOUNT).expect("account").clone();
    assert_eq!(account.sasl, mechanism);
    let token = h.broker.access_token(ACCOUNT).await.expect("token");
    assert!(
        token.secret.expose().len() >= 2000,
        "the strict profile issues 2,000-character tokens: {}",
        token.secret.expose().len()
    );
    let credentials = BearerCredentials {
        user: account.user.clone(),
        token: token.secret.clone(),
    };
    let encoded = match mechanism {
        Mechanism::XOAuth2 => sasl::encode_xoauth2(&credentials),
        _ => sasl::encode_oauthbearer(
            &credentials,
            &ServerName {
                host: &account.smtp.host,
                port: account.smtp.port,
            },
        ),
    };
    let inline = format!(
        "AUTH {mechanism} {}\r\n",
        sasl::encode_base64(encoded.expose().as_bytes())
    );
    assert!(
        inline.len() > 512,
        "the token must be too long for the AUTH line: {} octets",
        inline.len()
    );

    let report = send_now(&h.broker, &account, &message(1))
        .await
        .expect("delivered with a long token");
    assert!(report.accepted(), "{report:?}");
    let stats = h.sandbox.smtp.stats();
    assert_eq!(stats.auth_successes, 1, "{stats:?}");
    assert_eq!(stats.auth_failures, 0, "{stats:?}");

    // Revoked elsewhere: the server refuses it with the error challenge
    // (after the empty 334), the relay refreshes once and delivers.
    h.revoke_access_token(&token.secret).await;
    let report = send_now(&h.broker, &account, &message(2))
        .await
        .expect("delivered after one refresh");
    assert!(report.accepted(), "{report:?}");
    let stats = h.sandbox.smtp.stats();
    assert_eq!(stats.auth_failures, 1, "{stats:?}");
    assert_eq!(stats.auth_successes, 2, "{stats:?}");
    assert_eq!(h.sandbox.auth.stats().tokens_issued, 2);
    h.sandbox
        .smtp
        .inbox()
        .wait_for_count(2, WAIT)
        .await
        .expect("both in the inbox");
}

#[tokio::test]
async fn xoauth2_with_a_long_token_and_a_512_octet_server() {
    long_token_then_revoked(Mechanism::XOAuth2, "xoauth2", Server::Strict).await;
}

#[tokio::test]
async fn oauthbearer_with_a_long_token_and_a_512_octet_server() {
    long_token_then_revoked(Mechanism::OAuthBearer, "oauthbearer", Server::Strict).await;
}

#[tokio::test]
async fn long_tokens_through_gmails_and_dovecots_line_limits() {
    for server in [Server::Gmail, Server::Dovecot] {
        long_token_then_revoked(Mechanism::XOAuth2, "xoauth2", server).await;
        long_token_then_revoked(Mechanism::OAuthBearer, "oauthbearer", server).await;
    }
}
