//! The relay against an OAuth2-enforcing SMTP submission server nobody here
//! wrote: Dovecot's submission service with its `oauth2` passdb, checking
//! the sandbox authorization server's tokens locally (JWKS signature) or by
//! RFC 7662 introspection, over STARTTLS and implicit TLS, with XOAUTH2 and
//! OAUTHBEARER; accepted mail is relayed to a sink the test reads. The
//! relay is the built binary: `oxirelay send` (one-shot) and `oxirelay
//! serve` behind a submission client.
//!
//! Needs `dovecot-core` and `dovecot-submissiond` (`scripts/install-test-tools`);
//! without them each test prints SKIPPED and returns.

mod interop_common;

use interop_common::dovecot::Dovecot;
use interop_common::tools::describe;
use interop_common::{Checks, RECIPIENT, USER, Upstream, assert_intact, message};

/// `oxirelay send` through `account`; asserts success and that the message
/// arrived at the sink intact, as the `n`th message there.
async fn send_and_check(
    upstream: &Upstream,
    config: &interop_common::relay::RelayConfig,
    account: &str,
    n: usize,
) {
    let subject = format!("{account} message {n}");
    let sent = message(&subject);
    let output = config.send(account, &sent).await;
    assert!(
        output.status.success(),
        "oxirelay send through {account} failed: {}\n{}",
        describe(&output),
        upstream.dovecot.diagnostics()
    );
    let (entry, arrived) = upstream.sink.find(n, &subject).await;
    assert_eq!(entry.mail_from, USER);
    assert_eq!(entry.rcpt_to, vec![RECIPIENT.to_string()]);
    assert_intact(&arrived, &sent);
    assert!(
        String::from_utf8_lossy(&arrived).contains("by dovecot.test with ESMTPSA"),
        "Dovecot's trace header says it authenticated the relay"
    );
}

#[tokio::test]
async fn relay_delivers_through_dovecot_introspection_on_both_tls_modes_with_both_mechanisms() {
    if !Dovecot::installed() {
        return;
    }
    let upstream = Upstream::start(Checks::ByIntrospection).await;
    let accounts = [
        ("starttls-xoauth2", "xoauth2", "starttls"),
        ("starttls-oauthbearer", "oauthbearer", "starttls"),
        ("implicit-xoauth2", "xoauth2", "implicit"),
        ("implicit-oauthbearer", "oauthbearer", "implicit"),
    ];
    let config = upstream.relay_config(
        &accounts.map(|(name, sasl, tls)| upstream.account(name, sasl, tls)),
        "",
    );
    for (n, (name, _, _)) in accounts.iter().enumerate() {
        send_and_check(&upstream, &config, name, n + 1).await;
    }
    let log = upstream.dovecot.log();
    for mechanism in ["XOAUTH2", "OAUTHBEARER"] {
        assert_eq!(
            log.matches(&format!("Login: user=<{USER}>, method={mechanism}"))
                .count(),
            2,
            "two logins with {mechanism}:\n{log}"
        );
    }
    let stats = upstream.provider.auth.stats();
    assert!(
        stats.introspections >= 4,
        "Dovecot introspected every token"
    );
    assert_eq!(stats.token_requests, 4, "one token per account, no refresh");
}

/// The `typ` in a JWT's header.
fn jwt_typ(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok().and_then(|h| h.typ)
}

#[tokio::test]
async fn dovecot_local_validation_checks_signatures_with_keys_from_the_jwks() {
    if !Dovecot::installed() {
        return;
    }
    let upstream = Upstream::start_with(
        Checks::Locally,
        &["xoauth2", "oauthbearer"],
        None,
        Vec::new(),
    )
    .await;
    let config = upstream.relay_config(
        &[
            upstream.account("starttls-oauthbearer", "oauthbearer", "starttls"),
            upstream.account("implicit-xoauth2", "xoauth2", "implicit"),
        ],
        "",
    );
    // Dovecot 2.3's local validation accepts only `typ: JWT` (2.4 dropped
    // the check); the provider writes it as most identity servers do.
    let typ = jwt_typ(&config.token("starttls-oauthbearer").await);
    assert_eq!(typ.as_deref(), Some("JWT"));
    let before = upstream.sink.count();
    send_and_check(&upstream, &config, "starttls-oauthbearer", before + 1).await;
    send_and_check(&upstream, &config, "implicit-xoauth2", before + 2).await;
    // Dovecot checked the signatures with the keys from the JWKS alone.
    assert_eq!(upstream.provider.auth.stats().introspections, 0);
}

/// A scope long enough that every token carrying it is over 2,000
/// characters, as real providers' are (the `strict` sandbox profile pads
/// its own tokens to that length).
fn long_scope() -> String {
    format!("urn:oxirelay:interop:{}", "long-token-".repeat(110))
}

#[tokio::test]
async fn long_tokens_reach_dovecot_with_the_initial_response_on_its_own_line() {
    if !Dovecot::installed() {
        return;
    }
    let upstream = Upstream::start_with(
        Checks::ByIntrospection,
        &["xoauth2", "oauthbearer"],
        Some(long_scope()),
        Vec::new(),
    )
    .await;
    let config = upstream.relay_config(
        &[
            upstream.account("long-xoauth2", "xoauth2", "starttls"),
            upstream.account("long-oauthbearer", "oauthbearer", "implicit"),
        ],
        "",
    );
    let token = config.token("long-xoauth2").await;
    assert!(
        token.len() >= 2000,
        "the token is long ({} characters)",
        token.len()
    );
    // Dovecot 2.3 reads at most 1,030 octets of AUTH command line ("500
    // 5.5.2 Line too long"), but 8,192 octets of SASL response after "334":
    // the relay must send the initial response on its own line (RFC 4954
    // section 4; DESIGN.md contract 5).
    send_and_check(&upstream, &config, "long-xoauth2", 1).await;
    send_and_check(&upstream, &config, "long-oauthbearer", 2).await;
    assert_eq!(
        upstream.provider.auth.stats().token_requests,
        2,
        "one token per account: nothing refused, nothing refreshed"
    );
}

#[tokio::test]
async fn a_token_revoked_out_of_band_is_refreshed_once_and_the_mail_delivered() {
    if !Dovecot::installed() {
        return;
    }
    let upstream = Upstream::start(Checks::ByIntrospection).await;
    let accounts = [
        ("revoked-xoauth2", "xoauth2"),
        ("revoked-oauthbearer", "oauthbearer"),
    ];
    let config = upstream.relay_config(
        &accounts.map(|(name, sasl)| upstream.account(name, sasl, "starttls")),
        "",
    );
    let mut n = 0;
    for (name, _) in accounts {
        n += 1;
        send_and_check(&upstream, &config, name, n).await;
        let requests = upstream.provider.auth.stats().token_requests;
        // The relay holds the token (sealed in its store, valid for an
        // hour); the provider revokes it behind the relay's back.
        let held = config.token(name).await;
        assert_eq!(
            upstream.provider.auth.stats().token_requests,
            requests,
            "`oxirelay token` returns the held token"
        );
        upstream.provider.revoke(&held).await;

        // Dovecot's introspection now says inactive; the relay drops the
        // token, gets one new token, retries once in the same session, and
        // the mail goes through (contract 4).
        n += 1;
        send_and_check(&upstream, &config, name, n).await;
        assert_eq!(
            upstream.provider.auth.stats().token_requests,
            requests + 1,
            "exactly one refresh"
        );
        assert_ne!(config.token(name).await, held, "a new token is held");
    }
    assert_eq!(
        upstream
            .dovecot
            .count_in_log("Introspection failed: Provided token is not valid"),
        2,
        "Dovecot refused each revoked token once:\n{}",
        upstream.dovecot.log()
    );
}

#[tokio::test]
async fn swaks_submits_to_oxirelay_serve_which_delivers_through_dovecot() {
    if !Dovecot::installed() || !interop_common::tools::have_swaks() {
        return;
    }
    let upstream = Upstream::start(Checks::ByIntrospection).await;
    let ca = oxirelay::sandbox::certs::SandboxCa::generate().expect("CA");
    let password = oxirelay::users::generate_app_password();
    let hash = oxirelay::users::hash_password(&password).expect("hash");
    let listener_dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, ca_file) = (
        listener_dir.path().join("cert.pem"),
        listener_dir.path().join("key.pem"),
        listener_dir.path().join("ca.pem"),
    );
    ca.write_leaf(&cert, &key).expect("leaf");
    ca.write_ca(&ca_file).expect("CA file");
    let config = upstream.relay_config(
        &[upstream.account("dovecot", "oauthbearer", "starttls")],
        &format!(
            r#"
[[listener]]
addr = "127.0.0.1:0"
tls = "starttls"
cert = "{cert}"
key = "{key}"

[[user]]
name = "printer"
password_hash = "{hash}"
allowed_from = ["{USER}"]
account = "dovecot"
"#,
            cert = cert.display(),
            key = key.display(),
        ),
    );
    let relay = interop_common::relay::ServedRelay::start(&config).await;
    // Three in a row, each sent once the one before has arrived: the relay
    // checks its session back in as soon as Dovecot answers the final dot,
    // well before the next swaks has connected, logged in (the app
    // password's Argon2 check alone takes tens of milliseconds) and sent,
    // so the second and third go on the same upstream session, straight to
    // MAIL after the completed transaction (no RSET within 2 s idle).
    for n in 1..=3 {
        let subject = format!("swaks through oxirelay serve, message {n}");
        let sent = message(&subject);
        let data = listener_dir.path().join("message.eml");
        // swaks ends DATA with CRLF "." CRLF after the text it is given, so
        // the text it is given lacks the message's last CRLF.
        std::fs::write(&data, sent.strip_suffix(b"\r\n").expect("CRLF")).expect("write message");
        let output = interop_common::run(tokio::process::Command::new("swaks").args([
            "--server",
            &relay.listeners[0].to_string(),
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            ca_file.to_str().expect("UTF-8"),
            "--auth",
            "PLAIN",
            "--auth-user",
            "printer",
            "--auth-password",
            password.expose(),
            "--from",
            USER,
            "--to",
            RECIPIENT,
            "--data",
            &format!("@{}", data.display()),
        ]))
        .await;
        assert!(
            output.status.success(),
            "swaks failed: {}",
            describe(&output)
        );
        let (_, arrived) = upstream.sink.find(n, &subject).await;
        // Two trace headers in front: the relay's and Dovecot's.
        assert_intact(&arrived, &sent);
        let text = String::from_utf8_lossy(&arrived);
        assert!(text.contains("by dovecot.test with ESMTPSA"), "{text}");
        assert_eq!(text.matches("Received:").count(), 2, "{text}");
    }
    let log = upstream.dovecot.log();
    assert_eq!(
        log.matches(&format!("Login: user=<{USER}>, method=OAUTHBEARER"))
            .count(),
        1,
        "one upstream session carried all three:\n{log}"
    );
    relay.stop().await;
}
