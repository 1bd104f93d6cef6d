//! Session tests as RFC transcripts: the client's bytes in, the server's
//! bytes out, no sockets. A small synchronous policy answers the session's
//! questions (tokens `good-token` for alice@example.com, password `hunter2`
//! for scanner).

use super::policy::{
    AuthRefusal, Channel, Credentials, DataPlan, Envelope, Identity, LineLimit, Refusal,
    SessionRules,
};
use super::reply::Reply;
use super::session::{Answer, Question, Session, SessionConfig, Step};
use crate::secret::Secret;
use crate::smtp::sasl::{
    self, BearerCredentials, Mechanism, OAuthErrorStatus, PasswordCredentials, ServerName,
};
use proptest::prelude::*;

struct Harness {
    session: Session,
    accepted: Vec<(Envelope, Vec<u8>)>,
    started_tls: bool,
    closed: bool,
}

fn rules() -> SessionRules {
    SessionRules {
        mechanisms: vec![
            Mechanism::OAuthBearer,
            Mechanism::XOAuth2,
            Mechanism::Plain,
            Mechanism::Login,
        ],
        max_message_size: 1000,
        max_recipients: 3,
        ..SessionRules::default()
    }
}

impl Harness {
    fn with(channel: Channel, rules: SessionRules) -> Self {
        let mut harness = Harness {
            session: Session::new(SessionConfig {
                hostname: "mx.test".into(),
                peer: "127.0.0.1:40000".parse().expect("address"),
                channel,
                starttls_available: true,
                rules,
            }),
            accepted: Vec::new(),
            started_tls: false,
            closed: false,
        };
        let greeting = harness.send("");
        assert_eq!(greeting, "220 mx.test ESMTP oxirelay ready\r\n");
        harness
    }

    /// A session already in TLS (implicit TLS), greeted with EHLO.
    fn tls() -> Self {
        let mut harness = Harness::with(Channel::Tls, rules());
        harness.exchange("EHLO client.test", "250-mx.test greets client.test");
        harness
    }

    fn tls_authenticated() -> Self {
        Harness::authenticated_with(rules())
    }

    /// Implicit TLS, EHLO and AUTH done, with these rules.
    fn authenticated_with(rules: SessionRules) -> Self {
        let mut harness = Harness::with(Channel::Tls, rules);
        harness.exchange("EHLO client.test", "250-mx.test greets client.test");
        harness.exchange(
            &format!("AUTH PLAIN {}", plain("scanner", "hunter2")),
            "235 2.7.0",
        );
        harness
    }

    /// Feeds raw bytes and returns everything the server writes until it
    /// needs more input (or closes, or starts TLS).
    fn send(&mut self, bytes: &str) -> String {
        self.send_bytes(bytes.as_bytes())
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> String {
        self.session.feed(bytes);
        let mut out = Vec::new();
        let mut settled = false;
        for _ in 0..100_000 {
            match self.session.poll() {
                Step::Reply(reply) => out.extend_from_slice(&reply.to_bytes()),
                Step::Observe(_) => {}
                Step::Decide(question) => {
                    let answer = self.answer(question);
                    self.session
                        .resolve(answer)
                        .expect("answer matches question");
                }
                Step::StartTls => {
                    self.started_tls = true;
                    settled = true;
                    break;
                }
                Step::Close => {
                    self.closed = true;
                    settled = true;
                    break;
                }
                Step::NeedInput => {
                    settled = true;
                    break;
                }
                Step::Blocked => panic!("session blocked"),
            }
        }
        assert!(settled, "the session did not settle in 100000 polls");
        String::from_utf8(out).expect("replies are UTF-8")
    }

    /// One command line; asserts the reply starts with `expected`.
    fn exchange(&mut self, command: &str, expected: &str) -> String {
        let reply = self.send(&format!("{command}\r\n"));
        assert!(
            reply.starts_with(expected),
            "C: {command}\nexpected S: {expected}...\ngot S: {reply}"
        );
        reply
    }

    fn answer(&mut self, question: Question) -> Answer {
        match question {
            Question::Hello => Answer::Hello(Ok(())),
            Question::Authenticate(Credentials::Bearer { user, token, .. }) => {
                Answer::Authenticate(match token.expose() {
                    "good-token" if user == "alice@example.com" => Ok(Identity {
                        user,
                        subject: Some("alice@example.com".into()),
                    }),
                    "unreachable" => Err(AuthRefusal::Temporary),
                    "disabled" => Err(AuthRefusal::Reply {
                        challenge: None,
                        reply: Reply::new(
                            535,
                            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox",
                        ),
                    }),
                    "google-expired" => Err(AuthRefusal::Reply {
                        challenge: Some(Box::new(OAuthErrorStatus {
                            status: "401".into(),
                            schemes: Some("bearer".into()),
                            scope: Some("https://mail.google.com/".into()),
                            openid_configuration: None,
                        })),
                        reply: Reply::new(535, "5.7.8 Username and Password not accepted"),
                    }),
                    _ => Err(AuthRefusal::Token(expired_status())),
                })
            }
            Question::Authenticate(Credentials::Password { user, password, .. }) => {
                Answer::Authenticate(if user == "scanner" && password.expose() == "hunter2" {
                    Ok(Identity {
                        user,
                        subject: None,
                    })
                } else {
                    Err(AuthRefusal::Credentials)
                })
            }
            Question::Sender { mail_from } => Answer::Sender(if mail_from.starts_with("spoof") {
                Err(Refusal::Reply(Reply::new(
                    550,
                    "5.7.1 You may not send as this address",
                )))
            } else {
                Ok(())
            }),
            Question::Recipient { rcpt_to, .. } => Answer::Recipient(if rcpt_to == "gone@x" {
                Err(Refusal::Reply(Reply::new(550, "5.1.1 No such user")))
            } else {
                Ok(())
            }),
            Question::Data { .. } => Answer::Data(Ok(DataPlan::Receive)),
            Question::Message { envelope, message } => {
                self.accepted.push((envelope, message));
                Answer::Message(Ok(format!("MSG{}", self.accepted.len())))
            }
        }
    }
}

fn expired_status() -> OAuthErrorStatus {
    OAuthErrorStatus {
        status: "invalid_token".into(),
        schemes: Some("bearer".into()),
        scope: Some("smtp.send".into()),
        openid_configuration: None,
    }
}

fn plain(user: &str, password: &str) -> String {
    let raw = sasl::encode_plain(&PasswordCredentials {
        authzid: None,
        user: user.into(),
        password: Secret::new(password),
    });
    sasl::encode_base64(raw.expose().as_bytes())
}

fn xoauth2(user: &str, token: &str) -> String {
    let raw = sasl::encode_xoauth2(&BearerCredentials {
        user: user.into(),
        token: Secret::new(token),
    });
    sasl::encode_base64(raw.expose().as_bytes())
}

fn oauthbearer(user: &str, token: &str) -> String {
    let raw = sasl::encode_oauthbearer(
        &BearerCredentials {
            user: user.into(),
            token: Secret::new(token),
        },
        &ServerName {
            host: "mx.test",
            port: 587,
        },
    );
    sasl::encode_base64(raw.expose().as_bytes())
}

#[test]
fn ehlo_before_tls_offers_starttls_and_no_auth() {
    let mut smtp = Harness::with(Channel::Plaintext, rules());
    let ehlo = smtp.exchange("EHLO client.test", "250-mx.test greets client.test");
    assert_eq!(
        ehlo,
        "250-mx.test greets client.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
         250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
    );
    assert!(!ehlo.contains("AUTH"));
}

#[test]
fn auth_and_mail_before_tls_are_refused() {
    let mut smtp = Harness::with(Channel::Plaintext, rules());
    smtp.exchange("EHLO client.test", "250-");
    smtp.exchange(
        &format!("AUTH PLAIN {}", plain("scanner", "hunter2")),
        "530 5.7.0 Must issue a STARTTLS command first\r\n",
    );
    smtp.exchange(
        &format!(
            "AUTH XOAUTH2 {}",
            xoauth2("alice@example.com", "good-token")
        ),
        "530 5.7.0 Must issue a STARTTLS command first\r\n",
    );
    smtp.exchange("MAIL FROM:<a@x>", "530 5.7.0");
}

#[test]
fn starttls_discards_pipelined_commands_and_requires_ehlo_again() {
    let mut smtp = Harness::with(Channel::Plaintext, rules());
    smtp.exchange("EHLO client.test", "250-");
    // An attacker's injected plaintext after STARTTLS (CVE-2011-0411 family).
    let out = smtp.send("STARTTLS\r\nRSET\r\nMAIL FROM:<injected@x>\r\n");
    assert_eq!(out, "220 2.0.0 Ready to start TLS\r\n");
    assert!(smtp.started_tls);
    smtp.session.tls_established().expect("after StartTls");
    // Nothing pipelined ran, and EHLO is required again.
    assert_eq!(smtp.send(""), "");
    smtp.exchange("MAIL FROM:<a@x>", "503 5.5.1 Send EHLO first");
    let ehlo = smtp.exchange("EHLO client.test", "250-");
    assert!(
        ehlo.contains("250 AUTH OAUTHBEARER XOAUTH2 PLAIN LOGIN\r\n"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    smtp.exchange("STARTTLS", "503 5.5.1 TLS is already active");
}

#[test]
fn mail_before_auth_after_tls_needs_authentication() {
    let mut smtp = Harness::tls();
    smtp.exchange("MAIL FROM:<a@x>", "530 5.7.0 Authentication required\r\n");
}

#[test]
fn plaintext_allow_listed_listener_offers_auth() {
    let mut smtp = Harness::with(
        Channel::Plaintext,
        SessionRules {
            plaintext_auth_allowed: true,
            ..rules()
        },
    );
    let ehlo = smtp.exchange("EHLO printer", "250-");
    assert!(ehlo.contains("AUTH "), "{ehlo}");
    smtp.exchange(
        &format!("AUTH PLAIN {}", plain("scanner", "hunter2")),
        "235 2.7.0",
    );
}

#[test]
fn auth_plain_with_and_without_initial_response() {
    let mut smtp = Harness::tls();
    smtp.exchange("AUTH PLAIN", "334 \r\n");
    smtp.exchange(
        &plain("scanner", "hunter2"),
        "235 2.7.0 Authentication successful\r\n",
    );
    smtp.exchange("AUTH PLAIN", "503 5.5.1 Already authenticated");

    let mut smtp = Harness::tls();
    smtp.exchange(
        &format!("AUTH PLAIN {}", plain("scanner", "wrong")),
        "535 5.7.8 Authentication credentials invalid\r\n",
    );
}

#[test]
fn auth_login_two_prompts() {
    let mut smtp = Harness::tls();
    smtp.exchange("AUTH LOGIN", "334 VXNlcm5hbWU6\r\n");
    smtp.exchange(&sasl::encode_base64(b"scanner"), "334 UGFzc3dvcmQ6\r\n");
    smtp.exchange(&sasl::encode_base64(b"hunter2"), "235 2.7.0");
}

#[test]
fn xoauth2_and_oauthbearer_succeed_inline_and_after_continuation() {
    let mut smtp = Harness::tls();
    smtp.exchange(
        &format!(
            "AUTH XOAUTH2 {}",
            xoauth2("alice@example.com", "good-token")
        ),
        "235 2.7.0",
    );
    let mut smtp = Harness::tls();
    smtp.exchange("AUTH OAUTHBEARER", "334 \r\n");
    smtp.exchange(&oauthbearer("alice@example.com", "good-token"), "235 2.7.0");
}

#[test]
fn rfc7628_failure_sequence_oauthbearer_byte_for_byte() {
    let mut smtp = Harness::tls();
    let challenge = smtp.send(&format!(
        "AUTH OAUTHBEARER {}\r\n",
        oauthbearer("alice@example.com", "expired-token")
    ));
    assert_eq!(
        challenge,
        format!("334 {}\r\n", expired_status().to_base64())
    );
    assert_eq!(
        challenge,
        "334 eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NoZW1lcyI6ImJlYXJlciIsInNjb3BlIjoic210cC5zZW5kIn0=\r\n"
    );
    assert_eq!(
        smtp.send("AQ==\r\n"),
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    // The session goes on: the client may try again.
    smtp.exchange("NOOP", "250 2.0.0");
}

#[test]
fn rfc7628_failure_sequence_xoauth2_byte_for_byte() {
    let mut smtp = Harness::tls();
    smtp.exchange("AUTH XOAUTH2", "334 \r\n");
    let challenge = smtp.send(&format!("{}\r\n", xoauth2("alice@example.com", "nope")));
    assert_eq!(
        challenge,
        format!("334 {}\r\n", expired_status().to_base64())
    );
    assert_eq!(
        smtp.send("\r\n"),
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
}

#[test]
fn wrong_user_for_a_good_token_is_an_oauth_failure() {
    let mut smtp = Harness::tls();
    let out = smtp.send(&format!(
        "AUTH XOAUTH2 {}\r\n",
        xoauth2("mallory@example.com", "good-token")
    ));
    let status = OAuthErrorStatus::from_base64(
        out.strip_prefix("334 ")
            .and_then(|s| s.strip_suffix("\r\n"))
            .expect("error challenge")
            .as_bytes(),
    )
    .expect("JSON status");
    assert_eq!(status.status, "invalid_token");
}

#[test]
fn temporary_validation_failure_is_454() {
    let mut smtp = Harness::tls();
    smtp.exchange(
        &format!(
            "AUTH XOAUTH2 {}",
            xoauth2("alice@example.com", "unreachable")
        ),
        "454 4.7.0",
    );
}

#[test]
fn cancel_unknown_mechanism_and_bad_base64() {
    let mut smtp = Harness::tls();
    smtp.exchange("AUTH XOAUTH2", "334 ");
    smtp.exchange("*", "501 5.0.0 Authentication cancelled");
    smtp.exchange("AUTH CRAM-MD5", "504 5.5.4");
    smtp.exchange("AUTH PLAIN !!!notbase64", "501 5.5.2");
    smtp.exchange("AUTH XOAUTH2 eA==", "501 5.5.2");
}

#[test]
fn too_many_auth_failures_close_the_session() {
    let mut smtp = Harness::tls();
    for _ in 0..2 {
        smtp.exchange(
            &format!("AUTH PLAIN {}", plain("scanner", "x")),
            "535 5.7.8",
        );
    }
    smtp.exchange(
        &format!("AUTH PLAIN {}", plain("scanner", "x")),
        "535 5.7.8 Authentication credentials invalid\r\n421 4.7.0",
    );
    assert!(smtp.closed);
}

#[test]
fn command_order_is_enforced() {
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange("RCPT TO:<b@x>", "503 5.5.1 Send MAIL FROM first");
    smtp.exchange("DATA", "503 5.5.1 Send MAIL FROM first");
    smtp.exchange("MAIL FROM:<a@x>", "250 2.1.0");
    smtp.exchange("MAIL FROM:<a@x>", "503 5.5.1");
    smtp.exchange("DATA", "503 5.5.1 Send RCPT TO first");
    smtp.exchange("AUTH PLAIN", "503 5.5.1");
    smtp.exchange("RSET", "250 2.0.0");
    smtp.exchange("RCPT TO:<b@x>", "503 5.5.1");
}

#[test]
fn message_is_stored_byte_exact_with_dots_unstuffed() {
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange("MAIL FROM:<alice@example.com> BODY=8BITMIME", "250 2.1.0");
    smtp.exchange("RCPT TO:<bob@example.net>", "250 2.1.5");
    smtp.exchange("DATA", "354 ");
    let out = smtp.send("Subject: dots\r\n\r\n..one\r\n...two\r\n.\r\n");
    assert_eq!(out, "250 2.0.0 Ok: queued as MSG1\r\n");
    let (envelope, message) = &smtp.accepted[0];
    assert_eq!(message, b"Subject: dots\r\n\r\n.one\r\n..two\r\n");
    assert_eq!(envelope.mail_from, "alice@example.com");
    assert_eq!(envelope.rcpt_to, ["bob@example.net"]);
    assert!(envelope.eight_bit);
    // The session is ready for the next transaction.
    smtp.exchange("MAIL FROM:<alice@example.com>", "250 2.1.0");
}

#[test]
fn pipelined_transaction_gets_all_replies_in_order() {
    let mut smtp = Harness::tls_authenticated();
    let out = smtp
        .send("MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<gone@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n");
    assert_eq!(
        out,
        "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n550 5.1.1 No such user\r\n\
         250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n"
    );
    let out = smtp.send("hi\r\n.\r\nQUIT\r\n");
    assert_eq!(
        out,
        "250 2.0.0 Ok: queued as MSG1\r\n221 2.0.0 mx.test closing connection\r\n"
    );
    assert!(smtp.closed);
    assert_eq!(smtp.accepted[0].0.rcpt_to, ["b@x", "c@x"]);
}

#[test]
fn smuggled_second_message_is_never_accepted() {
    for smuggle in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r", "\r.\r\n"] {
        let mut smtp = Harness::tls_authenticated();
        smtp.exchange("MAIL FROM:<a@x>", "250");
        smtp.exchange("RCPT TO:<b@x>", "250");
        smtp.exchange("DATA", "354");
        let out = smtp.send(&format!(
            "Subject: legit\r\n\r\nhello{smuggle}MAIL FROM:<spoofed@x>\r\nRCPT TO:<victim@x>\r\n\
             DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\nNOOP\r\n"
        ));
        assert_eq!(
            out,
            "550 5.6.0 Message refused: bare CR or LF in the data (SMTP smuggling protection); \
             end every line with CRLF\r\n250 2.0.0 OK\r\n",
            "{smuggle:?}"
        );
        assert!(smtp.accepted.is_empty(), "{smuggle:?}");
    }
}

#[test]
fn size_is_advertised_and_enforced() {
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange("MAIL FROM:<a@x> SIZE=5000", "552 5.3.4");
    smtp.exchange("MAIL FROM:<a@x> SIZE=500", "250");
    smtp.exchange("RCPT TO:<b@x>", "250");
    smtp.exchange("DATA", "354");
    let big = "x".repeat(998);
    let out = smtp.send(&format!("{big}\r\n{big}\r\n.\r\nNOOP\r\n"));
    assert_eq!(
        out,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.0.0 OK\r\n"
    );
    assert!(smtp.accepted.is_empty());
}

#[test]
fn recipient_limit_is_452() {
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange("MAIL FROM:<a@x>", "250");
    for n in 0..3 {
        smtp.exchange(&format!("RCPT TO:<r{n}@x>"), "250");
    }
    smtp.exchange("RCPT TO:<r4@x>", "452 4.5.3");
}

#[test]
fn over_long_lines_are_refused_and_skipped() {
    let mut smtp = Harness::tls();
    smtp.exchange(
        &format!("NOOP {}", "a".repeat(2000)),
        "500 5.5.6 Line too long\r\n",
    );
    let out = smtp.send(&format!("{}\r\nNOOP\r\n", "b".repeat(20_000)));
    assert_eq!(out, "500 5.5.6 Line too long\r\n250 2.0.0 OK\r\n");
}

/// A server that holds AUTH to RFC 5321's 512 octets, as the sandbox's
/// strict profile and Dovecot do, with SASL responses allowed `response`.
fn strict_lines(response: usize) -> Harness {
    let mut harness = Harness::with(
        Channel::Tls,
        SessionRules {
            line_limit: LineLimit {
                command: 512,
                auth_command: 512,
                sasl_response: response,
                reply: Reply::new(500, "5.5.2 Line too long"),
            },
            ..rules()
        },
    );
    harness.exchange("EHLO client.test", "250-mx.test greets client.test");
    harness
}

#[test]
fn a_512_octet_limit_refuses_a_long_inline_token_and_takes_it_after_334() {
    let token = "good-token";
    let long_user = format!("{}@example.com", "a".repeat(400));
    let inline = format!("AUTH XOAUTH2 {}", xoauth2(&long_user, token));
    assert!(inline.len() + 2 > 512);
    let mut smtp = strict_lines(12288);
    smtp.exchange(&inline, "500 5.5.2 Line too long\r\n");
    // The same credentials in two steps reach the policy (which refuses
    // this user; the point is that the line was read).
    smtp.exchange("AUTH XOAUTH2", "334 \r\n");
    smtp.exchange(&xoauth2(&long_user, token), "334 ");
    smtp.exchange("", "535 5.7.8");
    // A command line of exactly 512 octets with its CRLF is accepted.
    let noop = format!("NOOP {}", "n".repeat(512 - 2 - 5));
    smtp.exchange(&noop, "250 2.0.0 OK");
    smtp.exchange(&format!("{noop}n"), "500 5.5.2 Line too long");
    smtp.exchange("AUTH XOAUTH2", "334 \r\n");
    smtp.exchange(&xoauth2("alice@example.com", "good-token"), "235 2.7.0");
}

#[test]
fn a_sasl_response_beyond_the_limit_ends_the_exchange_with_the_limit_reply() {
    let mut smtp = strict_lines(1024);
    smtp.exchange("AUTH OAUTHBEARER", "334 \r\n");
    smtp.exchange(&"A".repeat(1500), "500 5.5.2 Line too long\r\n");
    // The exchange is over: the next line is a command again.
    smtp.exchange("NOOP", "250 2.0.0 OK");
}

#[test]
fn a_policy_can_word_the_refusal_as_its_provider_does() {
    let mut smtp = Harness::tls();
    // No challenge: the provider's final reply at once.
    smtp.exchange(
        &format!("AUTH XOAUTH2 {}", xoauth2("alice@example.com", "disabled")),
        "535 5.7.139 Authentication unsuccessful",
    );
    // Google's challenge, then its own final reply after the ack.
    let reply = smtp.exchange(
        &format!(
            "AUTH XOAUTH2 {}",
            xoauth2("alice@example.com", "google-expired")
        ),
        "334 ",
    );
    let status = OAuthErrorStatus::from_base64(&reply.trim_end().as_bytes()[4..]).expect("status");
    assert_eq!(status.status, "401");
    smtp.exchange("", "535 5.7.8 Username and Password not accepted\r\n");
}

#[test]
fn sender_policy_and_smtputf8_rules() {
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange(
        "MAIL FROM:<spoof@x>",
        "550 5.7.1 You may not send as this address",
    );
    smtp.exchange("MAIL FROM:<j\u{f6}rg@x>", "553 5.6.7");
    smtp.exchange("MAIL FROM:<j\u{f6}rg@x> SMTPUTF8", "250 2.1.0");
    smtp.exchange("RCPT TO:<m\u{fc}ller@x>", "250 2.1.5");
}

#[test]
fn unknown_commands_and_quit() {
    let mut smtp = Harness::tls();
    smtp.exchange("FROB", "500 5.5.1");
    smtp.exchange("VRFY bob", "252 2.5.0");
    smtp.exchange("QUIT", "221 2.0.0");
    assert!(smtp.closed);
}

#[test]
fn too_many_errors_close_the_session() {
    let mut smtp = Harness::tls();
    let out = smtp.send(&"FROB\r\n".repeat(30));
    assert!(out.ends_with("421 4.7.0 mx.test Too many errors, closing connection\r\n"));
    assert_eq!(out.matches("500 5.5.1").count(), 20);
    assert!(smtp.closed);
}

#[test]
fn bytes_split_anywhere_give_the_same_transcript() {
    let script = format!(
        "EHLO c\r\nAUTH PLAIN {}\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n\
         Subject: s\r\n\r\n..x\r\n.\r\nQUIT\r\n",
        plain("scanner", "hunter2")
    );
    let whole = {
        let mut smtp = Harness::with(Channel::Tls, rules());
        smtp.send(&script)
    };
    for chunk in [1, 2, 3, 7, 64] {
        let mut smtp = Harness::with(Channel::Tls, rules());
        let mut out = String::new();
        for piece in script.as_bytes().chunks(chunk) {
            out.push_str(&smtp.send_bytes(piece));
        }
        assert_eq!(out, whole, "chunk size {chunk}");
        assert_eq!(smtp.accepted[0].1, b"Subject: s\r\n\r\n.x\r\n");
    }
}

#[test]
fn debug_output_shows_no_token_and_no_message_content() {
    let mut smtp = Harness::tls();
    // An AUTH line buffered but not yet complete.
    smtp.session.feed(
        format!(
            "AUTH XOAUTH2 {}",
            xoauth2("alice@example.com", "good-token")
        )
        .as_bytes(),
    );
    let shown = format!("{:?}", smtp.session);
    assert!(
        !shown.contains(&xoauth2("alice@example.com", "good-token")),
        "{shown}"
    );
    let question = Question::Message {
        envelope: Envelope::default(),
        message: b"secret body".to_vec(),
    };
    assert!(!format!("{question:?}").contains("secret body"));
}

#[test]
fn mail_auth_parameter_is_accepted_and_dsn_is_refused() {
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange("MAIL FROM:<a@x> AUTH=<>", "250 2.1.0");
    smtp.exchange("RCPT TO:<b@x> NOTIFY=NEVER", "555 5.5.4");
}

#[test]
fn a_bare_cr_in_a_command_is_refused_never_stripped() {
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange("MAIL FROM:<a@x>", "250 2.1.0");
    // The attack of issue 8: smtp-proto dropped the CRs and took the line as
    // RCPT TO:<aRSET@example.net>. Refused whole; RSET did not run either.
    let out = smtp.send("RCPT TO:<a\rRSET\r@example.net>\r\n");
    assert_eq!(
        out,
        "500 5.5.2 Bare CR in a command line is not allowed; end every command with \
         CRLF and nothing else\r\n"
    );
    smtp.exchange("RCPT TO:<b@example.net>", "250 2.1.5");
    smtp.exchange("DATA", "354");
    smtp.exchange("hi\r\n.", "250 2.0.0 Ok: queued as MSG1");
    assert_eq!(smtp.accepted[0].0.rcpt_to, ["b@example.net"]);
    // Any command, and a CR just before the CRLF.
    smtp.exchange("NOOP\r", "500 5.5.2 Bare CR");
    smtp.exchange("EH\rLO x", "500 5.5.2 Bare CR");
    assert!(!smtp.closed);
}

#[test]
fn a_bare_cr_in_a_sasl_response_ends_the_exchange() {
    let mut smtp = Harness::tls();
    smtp.exchange("AUTH PLAIN", "334 ");
    smtp.exchange(
        &format!("{}\r", plain("scanner", "hunter2")),
        "500 5.5.2 Bare CR",
    );
    // The exchange is over: the next line is a command again.
    smtp.exchange("NOOP", "250 2.0.0 OK");
}

#[test]
fn a_bare_lf_ends_the_session_before_anything_after_it_runs() {
    // An application that filters CRLF but not LF from a form field: the
    // recipient it writes carries a second command.
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange("MAIL FROM:<a@x>", "250 2.1.0");
    let out = smtp.send("RCPT TO:<a\nRCPT TO:<victim@x>\r\nDATA\r\n");
    assert_eq!(
        out,
        "500 5.5.2 Bare LF in a command line is not allowed; end every command with \
         CRLF. Closing the connection\r\n"
    );
    assert!(smtp.closed);
    assert!(smtp.accepted.is_empty());

    for script in ["EHLO client.test\n", "\n", "QUIT\n"] {
        let mut smtp = Harness::with(Channel::Tls, rules());
        assert!(
            smtp.send(script).starts_with("500 5.5.2 Bare LF"),
            "{script:?}"
        );
        assert!(smtp.closed, "{script:?}");
    }
}

#[test]
fn quoted_local_parts_and_escapes_are_kept_exactly() {
    let mut smtp = Harness::authenticated_with(SessionRules {
        max_recipients: 10,
        ..rules()
    });
    smtp.exchange("MAIL FROM:<\"Scan Desk\"@example.com>", "250 2.1.0");
    smtp.exchange("RCPT TO:<\"a b\"@example.net>", "250 2.1.5");
    smtp.exchange("RCPT TO:<\"quote\\\"and>\"@example.net>", "250 2.1.5");
    smtp.exchange("RCPT TO:<Mixed.Case+tag@Example.NET>", "250 2.1.5");
    // A source route is dropped (RFC 5321 appendix C), the mailbox kept.
    smtp.exchange("RCPT TO:<@relay.example:c@example.org>", "250 2.1.5");
    smtp.exchange(
        "RCPT TO:<a b@example.net>",
        "501 5.1.3 Bad recipient address syntax",
    );
    smtp.exchange("DATA", "354");
    smtp.exchange("hi\r\n.", "250 2.0.0");
    let (envelope, _) = &smtp.accepted[0];
    assert_eq!(envelope.mail_from, "\"Scan Desk\"@example.com");
    assert_eq!(
        envelope.rcpt_to,
        [
            "\"a b\"@example.net",
            "\"quote\\\"and>\"@example.net",
            "Mixed.Case+tag@Example.NET",
            "c@example.org"
        ]
    );
}

#[test]
fn malformed_paths_get_a_reason() {
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange(
        "MAIL FROM:<postmaster>",
        "501 5.1.7 Bad sender address syntax: the address has no @domain",
    );
    smtp.exchange(
        "MAIL FROM:<a@x",
        "501 5.1.7 Bad sender address syntax: the address has no closing '>'",
    );
    smtp.exchange("MAIL FROM:<>", "250 2.1.0");
    for (rcpt, expected) in [
        (
            "RCPT TO:<>",
            "501 5.1.3 Bad recipient address syntax: RCPT TO:<> names no recipient",
        ),
        (
            "RCPT TO:<bob>",
            "501 5.1.3 Bad recipient address syntax: the address has no @domain",
        ),
        (
            "RCPT TO:<a..b@x>",
            "501 5.1.3 Bad recipient address syntax: the address has a dot",
        ),
        (
            "RCPT TO:<\"open@x>",
            "501 5.1.3 Bad recipient address syntax: the address opens a double quote",
        ),
        (
            "RCPT TO:<a@exa_mple.com>",
            "501 5.1.3 Bad recipient address syntax: the address has '_' in its domain",
        ),
        (
            "RCPT TO:b@x",
            "501 5.5.4 Syntax error; expected: RCPT TO:<forward-path>",
        ),
        ("RCPT TO:<b@x>x", "501 5.5.4 Syntax error"),
    ] {
        smtp.exchange(rcpt, expected);
    }
    smtp.exchange("RCPT TO:<a@[192.0.2.1]>", "250 2.1.5");
}

#[test]
fn postmaster_goes_to_the_configured_address_in_any_case() {
    let mut smtp = Harness::authenticated_with(SessionRules {
        postmaster: Some("admin@contoso.com".into()),
        ..rules()
    });
    smtp.exchange("MAIL FROM:<a@x>", "250 2.1.0");
    smtp.exchange("RCPT TO:<postmaster>", "250 2.1.5");
    smtp.exchange("RCPT TO:<PostMaster>", "250 2.1.5");
    // postmaster@domain is an ordinary address, kept as written.
    smtp.exchange("RCPT TO:<Postmaster@example.net>", "250 2.1.5");
    smtp.exchange("DATA", "354");
    smtp.exchange("hi\r\n.", "250 2.0.0");
    assert_eq!(
        smtp.accepted[0].0.rcpt_to,
        [
            "admin@contoso.com",
            "admin@contoso.com",
            "Postmaster@example.net"
        ]
    );
}

#[test]
fn postmaster_without_a_configured_address_is_refused_clearly() {
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange("MAIL FROM:<a@x>", "250 2.1.0");
    smtp.exchange(
        "RCPT TO:<postmaster>",
        "550 5.1.1 <postmaster> has no address configured on this server",
    );
    // The transaction goes on; nothing empty was added to the envelope.
    smtp.exchange("DATA", "503 5.5.1 Send RCPT TO first");
    smtp.exchange("RCPT TO:<b@x>", "250 2.1.5");
    smtp.exchange("DATA", "354");
    smtp.exchange("hi\r\n.", "250 2.0.0");
    assert_eq!(smtp.accepted[0].0.rcpt_to, ["b@x"]);
}

#[test]
fn a_nul_byte_in_the_message_is_refused_with_its_line() {
    let mut smtp = Harness::tls_authenticated();
    smtp.exchange("MAIL FROM:<a@x>", "250");
    smtp.exchange("RCPT TO:<b@x>", "250");
    smtp.exchange("DATA", "354");
    let out = smtp.send("Subject: nul\r\n\r\nbefore \0 after\r\n.\r\nNOOP\r\n");
    assert_eq!(
        out,
        "550 5.6.0 Message refused: line 3 holds a NUL byte, which mail cannot carry \
         (RFC 5322 section 3.5); remove it, or attach the content base64-encoded\r\n\
         250 2.0.0 OK\r\n"
    );
    assert!(smtp.accepted.is_empty());
    // The session is ready for the corrected message.
    smtp.exchange("MAIL FROM:<a@x>", "250");
}

#[test]
fn a_megabyte_header_line_is_refused_without_being_kept() {
    let mut smtp = Harness::authenticated_with(SessionRules {
        max_message_size: 2 << 20,
        ..rules()
    });
    smtp.exchange("MAIL FROM:<a@x>", "250");
    smtp.exchange("RCPT TO:<b@x>", "250");
    smtp.exchange("DATA", "354");
    let header = format!("X-Big: {}\r\n", "h".repeat(1 << 20));
    for chunk in header.as_bytes().chunks(16 * 1024) {
        assert_eq!(
            smtp.send_bytes(chunk),
            "",
            "decided only at the end of DATA"
        );
    }
    let out = smtp.send("Subject: x\r\n\r\nbody\r\n.\r\n");
    assert_eq!(
        out,
        "550 5.6.0 Message refused: line 1 is longer than 998 octets (RFC 5322 section \
         2.1.1); wrap it, or encode the part quoted-printable or base64\r\n"
    );
    assert!(smtp.accepted.is_empty());
    // 998 octets is the longest line that passes.
    smtp.exchange("MAIL FROM:<a@x>", "250");
    smtp.exchange("RCPT TO:<b@x>", "250");
    smtp.exchange("DATA", "354");
    smtp.exchange(&format!("{}\r\n.", "x".repeat(998)), "250 2.0.0");
}

#[test]
fn an_over_long_command_is_answered_before_its_line_ends() {
    let mut smtp = Harness::tls();
    // 16 KB without a line end: the reply comes now, not with the next line.
    let out = smtp.send(&format!("NOOP {}", "a".repeat(16 * 1024)));
    assert_eq!(out, "500 5.5.6 Line too long\r\n");
    // The rest of the line is skipped, whatever its length, unanswered.
    for _ in 0..64 {
        assert_eq!(smtp.send(&"b".repeat(16 * 1024)), "");
    }
    assert_eq!(smtp.send("tail\r\nNOOP\r\n"), "250 2.0.0 OK\r\n");
    assert!(!smtp.closed);
}

#[test]
fn the_limit_is_crossed_at_the_octet_that_leaves_no_room_for_the_line_end() {
    let mut smtp = strict_lines(1024);
    // 511 octets: a line end may still come within the 512.
    assert_eq!(smtp.send(&"N".repeat(511)), "");
    // The 512th octet leaves no room for even an LF.
    assert_eq!(smtp.send("N"), "500 5.5.2 Line too long\r\n");
    assert_eq!(smtp.send("\r\nNOOP\r\n"), "250 2.0.0 OK\r\n");
    // An AUTH line and a SASL response have their own, longer limits.
    let mut smtp = strict_lines(1024);
    smtp.exchange("AUTH XOAUTH2", "334 ");
    assert_eq!(smtp.send(&"A".repeat(1023)), "");
    assert_eq!(smtp.send("A"), "500 5.5.2 Line too long\r\n");
    assert_eq!(smtp.send("AAAA\r\nNOOP\r\n"), "250 2.0.0 OK\r\n");
    let mut smtp = Harness::tls();
    assert_eq!(smtp.send(&format!("AUTH PLAIN {}", "A".repeat(4000))), "");
    assert_eq!(smtp.send(&"A".repeat(12288)), "500 5.5.6 Line too long\r\n");
}

#[test]
fn a_skipped_line_that_ends_in_a_bare_lf_ends_the_session() {
    let mut smtp = Harness::tls();
    assert_eq!(smtp.send(&"x".repeat(2000)), "500 5.5.6 Line too long\r\n");
    let out = smtp.send("x\nNOOP\r\n");
    assert!(out.starts_with("500 5.5.2 Bare LF"), "{out}");
    assert!(smtp.closed);
    // A CR at the end of one chunk and the LF in the next is a CRLF.
    let mut smtp = Harness::tls();
    assert_eq!(smtp.send(&"x".repeat(2000)), "500 5.5.6 Line too long\r\n");
    assert_eq!(smtp.send("x\r"), "");
    assert_eq!(smtp.send("\nNOOP\r\n"), "250 2.0.0 OK\r\n");
}

#[test]
fn an_over_long_line_ending_in_a_bare_lf_ends_the_session_however_it_arrives() {
    // Found by fuzz_session_replies_do_not_depend_on_how_input_is_split:
    // read whole, such a line was only "too long" and what followed ran.
    let script = format!("{}\nRSET\r\n", "x".repeat(2000));
    for chunks in [
        vec![script.as_str()],
        vec![&script[..1000], &script[1000..]],
    ] {
        let mut smtp = Harness::tls();
        let out: String = chunks.iter().map(|chunk| smtp.send(chunk)).collect();
        assert!(
            out.starts_with("500 5.5.6 Line too long\r\n500 5.5.2 Bare LF"),
            "{out}"
        );
        assert!(!out.contains("250 2.0.0"), "RSET did not run: {out}");
        assert!(smtp.closed);
    }
}

/// The words of random scripts: SMTP's alphabet (commands, CRLF, bare CR
/// and LF, dots, NUL, quoted and hostile addresses, long lines). Command
/// 0 to 7 open a session, 8 to 11 are the recipients a transaction uses.
fn script_words() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let auth = format!("AUTH PLAIN {}\r\n", plain("scanner", "hunter2"));
    let long_line = vec![b'x'; 1100];
    let commands: Vec<Vec<u8>> = [
        &b"EHLO c\r\n"[..],
        auth.as_bytes(),
        b"AUTH XOAUTH2\r\n",
        b"AQ==\r\n",
        b"*\r\n",
        b"MAIL FROM:<a@x>\r\n",
        b"MAIL FROM:<>\r\n",
        b"MAIL FROM:<postmaster>\r\n",
        b"RCPT TO:<b@x>\r\n",
        b"RCPT TO:<\"a b\"@x>\r\n",
        b"RCPT TO:<postmaster>\r\n",
        b"RCPT TO:<>\r\n",
        b"RCPT TO:<a\rRSET\r@x>\r\n",
        b"RCPT TO:<a\nRSET\r\n",
        b"RCPT TO:<\"open@x>\r\n",
        b"RCPT TO:<a\x00b@x>\r\n",
        b"DATA\r\n",
        b"STARTTLS\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"BDAT 10\r\n",
        b"HELP\r\n",
        &long_line,
    ]
    .into_iter()
    .map(<[u8]>::to_vec)
    .collect();
    let body: Vec<Vec<u8>> = [
        &b"Subject: x\r\n"[..],
        b"\r\n",
        b".",
        b"..",
        b"\n",
        b"\r",
        b".\r\n",
        b"\r\n.\r\n",
        b"\n.\n",
        b"body text \xc3\xa9",
        b"\x00\xff",
        b"\x00",
        &long_line,
        b"\"",
        b"<",
    ]
    .into_iter()
    .map(<[u8]>::to_vec)
    .collect();
    (commands, body)
}

/// Random scripts of [`script_words`]; with `starttls` false, none holds
/// STARTTLS (whose discarding of pipelined input depends, rightly, on
/// what arrived in the same read).
fn scripts(starttls: bool) -> impl Strategy<Value = Vec<u8>> {
    let (commands, body) = script_words();
    let auth = commands[1].clone();
    let commands: Vec<Vec<u8>> = commands
        .into_iter()
        .filter(|c| starttls || c != b"STARTTLS\r\n")
        .collect();
    let recipients = commands[8..12].to_vec();
    // A whole transaction with a random body, so scripts get past the
    // envelope often enough to test DATA.
    let transaction = (
        prop::collection::vec(prop::sample::select(recipients), 1..4),
        prop::collection::vec(prop::sample::select(body.clone()), 0..8),
    )
        .prop_map(move |(rcpts, body)| {
            let mut bytes = b"EHLO c\r\n".to_vec();
            bytes.extend_from_slice(&auth);
            bytes.extend_from_slice(b"MAIL FROM:<a@x>\r\n");
            bytes.extend(rcpts.concat());
            bytes.extend_from_slice(b"DATA\r\n");
            bytes.extend(body.concat());
            bytes.extend_from_slice(b"\r\n.\r\n");
            bytes
        });
    // STARTTLS that the session takes: after EHLO, outside a transaction.
    let starttls_words = if starttls {
        vec![b"RSET\r\nEHLO c\r\nSTARTTLS\r\n".to_vec()]
    } else {
        vec![b"NOOP\r\n".to_vec()]
    };
    let piece = prop_oneof![
        3 => transaction,
        3 => prop::sample::select(commands),
        1 => prop::sample::select(starttls_words),
        2 => prop::sample::select(body),
        1 => prop::collection::vec(any::<u8>(), 0..6),
    ];
    prop::collection::vec(piece, 1..40).prop_map(|pieces| pieces.concat())
}

/// The listener's rules for one random session: implicit TLS, or a
/// plaintext listener that allows AUTH; a postmaster address or none.
fn random_session(tls: bool, postmaster: bool) -> Harness {
    let base = SessionRules {
        max_message_size: 64 * 1024,
        max_recipients: 10,
        postmaster: postmaster.then(|| "admin@contoso.com".to_string()),
        ..rules()
    };
    if tls {
        Harness::with(Channel::Tls, base)
    } else {
        let rules = SessionRules {
            plaintext_auth_allowed: true,
            ..base
        };
        Harness::with(Channel::Plaintext, rules)
    }
}

/// Feeds `chunks` until the session closes: every reply, in order.
fn run_script(smtp: &mut Harness, chunks: &[&[u8]]) -> (String, usize) {
    let mut replies = String::new();
    let mut tls_started = 0;
    for chunk in chunks {
        if smtp.closed {
            break;
        }
        replies.push_str(&smtp.send_bytes(chunk));
        if smtp.started_tls {
            smtp.started_tls = false;
            tls_started += 1;
            smtp.session.tls_established().expect("after StartTls");
        }
    }
    (replies, tls_started)
}

/// Random scripts over SMTP's alphabet, cut into random chunks: the
/// session never panics, always settles, and never accepts a message
/// holding a bare CR or LF, a NUL or a line over 998 octets, nor an
/// envelope address that is not an RFC 5321 mailbox. The scripts must
/// reach deep enough to matter (messages accepted, TLS started, quoted and
/// postmaster recipients), which the counts at the end check.
#[test]
fn fuzz_session_random_scripts_never_panic_or_accept_bare_line_endings() {
    use crate::message::mailbox::check_mailbox;
    use proptest::test_runner::{TestCaseError, TestRunner};
    use std::cell::Cell;
    let config = proptest::test_runner::Config {
        source_file: Some(file!()),
        ..crate::fuzzing::config(300)
    };
    let cases = config.cases as usize;
    let mut runner = TestRunner::new(config);
    let (accepted, tls_started, quoted, postmaster) =
        (Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0));
    let strategy = (
        scripts(true),
        crate::fuzzing::splits(),
        any::<bool>(),
        prop::bool::weighted(0.67),
    );
    let result = runner.run(&strategy, |(script, splits, tls, with_postmaster)| {
        let mut smtp = random_session(tls, with_postmaster);
        let (_, started) = run_script(&mut smtp, &crate::fuzzing::chunks(&script, &splits));
        tls_started.set(tls_started.get() + started);
        accepted.set(accepted.get() + smtp.accepted.len());
        for (envelope, message) in &smtp.accepted {
            for (index, byte) in message.iter().enumerate() {
                match byte {
                    b'\r' => prop_assert_eq!(message.get(index + 1), Some(&b'\n'), "{:?}", message),
                    b'\n' => {
                        prop_assert!(index > 0 && message[index - 1] == b'\r', "{:?}", message)
                    }
                    0 => return Err(TestCaseError::fail(format!("NUL accepted: {message:?}"))),
                    _ => {}
                }
            }
            for line in message.split(|b| *b == b'\n') {
                prop_assert!(line.len() <= 999, "a line of {} octets", line.len());
            }
            prop_assert!(
                envelope.mail_from.is_empty() || check_mailbox(&envelope.mail_from).is_ok(),
                "{:?}",
                envelope
            );
            prop_assert!(!envelope.rcpt_to.is_empty());
            for rcpt in &envelope.rcpt_to {
                prop_assert_eq!(check_mailbox(rcpt), Ok(()), "{:?}", envelope);
                quoted.set(quoted.get() + usize::from(rcpt == "\"a b\"@x"));
                postmaster.set(postmaster.get() + usize::from(rcpt == "admin@contoso.com"));
            }
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    // The scripts reach deep enough to matter: per 100 cases, dozens of
    // messages accepted, TLS started, quoted and postmaster recipients.
    let (accepted, tls_started, quoted, postmaster) = (
        accepted.get(),
        tls_started.get(),
        quoted.get(),
        postmaster.get(),
    );
    assert!(
        accepted * 3 > cases
            && tls_started * 20 > cases
            && quoted * 10 > cases
            && postmaster * 10 > cases,
        "{cases} cases: {accepted} accepted, TLS {tls_started}, quoted {quoted}, postmaster {postmaster}"
    );
}

proptest::proptest! {
    #![proptest_config(crate::fuzzing::config(200))]

    /// How the client's bytes arrive (at once, in random chunks, one byte
    /// at a time) never changes what the session answers, what it accepts
    /// or whether it closes: framing, line limits, DATA and SASL keep their
    /// state across reads.
    #[test]
    fn fuzz_session_replies_do_not_depend_on_how_input_is_split(
        script in scripts(false),
        splits in crate::fuzzing::splits(),
        tls in any::<bool>(),
        with_postmaster in any::<bool>(),
    ) {
        let transcript = |chunks: &[&[u8]]| {
            let mut smtp = random_session(tls, with_postmaster);
            let (replies, _) = run_script(&mut smtp, chunks);
            (replies, format!("{:?}", smtp.accepted), smtp.closed)
        };
        let whole = transcript(&[&script]);
        let bytewise: Vec<&[u8]> = script.chunks(1).collect();
        prop_assert_eq!(&whole, &transcript(&crate::fuzzing::chunks(&script, &splits)));
        prop_assert_eq!(&whole, &transcript(&bytewise));
    }
}
