//! `oxirelay token` as the token source of third-party SMTP clients, the
//! way its documentation offers it: msmtp (`passwordeval "oxirelay -c
//! CONFIG token ACCOUNT"`, `auth xoauth2`) and curl
//! (`--oauth2-bearer "$(oxirelay token ACCOUNT)"`), submitting to Dovecot's
//! submission service, which checks each token by introspection at the
//! sandbox authorization server; the mail arrives at Dovecot's sink.
//!
//! Needs dovecot-core, dovecot-submissiond, msmtp and curl
//! (`scripts/install-test-tools`); without them a test prints SKIPPED.

mod interop_common;

use interop_common::dovecot::Dovecot;
use interop_common::relay::RelayConfig;
use interop_common::tools::{describe, have, run, run_with_input, write_private};
use interop_common::{Checks, RECIPIENT, USER, Upstream, assert_intact, message};
use tokio::process::Command;

/// The relay account whose token the clients borrow.
const ACCOUNT: &str = "dovecot";

fn relay_config(upstream: &Upstream) -> RelayConfig {
    upstream.relay_config(&[upstream.account(ACCOUNT, "oauthbearer", "starttls")], "")
}

/// An msmtp config for Dovecot's STARTTLS or implicit-TLS port, with the
/// password (the token) from `oxirelay token`.
fn msmtp_config(
    upstream: &Upstream,
    relay: &RelayConfig,
    auth: &str,
    implicit: bool,
) -> std::path::PathBuf {
    let port = if implicit {
        upstream.dovecot.implicit.port()
    } else {
        upstream.dovecot.starttls.port()
    };
    let text = format!(
        "defaults\n\
         tls on\n\
         tls_starttls {starttls}\n\
         tls_trust_file {ca}\n\
         \n\
         account dovecot\n\
         host 127.0.0.1\n\
         port {port}\n\
         from {USER}\n\
         auth {auth}\n\
         user {USER}\n\
         passwordeval \"{command}\"\n",
        starttls = if implicit { "off" } else { "on" },
        ca = upstream.dovecot.ca_file.display(),
        command = relay.token_command(ACCOUNT),
    );
    let path = relay.dir.path().join(format!("msmtprc-{auth}-{port}"));
    // msmtp refuses a config others may read.
    write_private(&path, text.as_bytes());
    path
}

#[tokio::test]
async fn msmtp_takes_its_token_from_oxirelay_token_over_starttls_and_implicit_tls() {
    if !Dovecot::installed() || !have("msmtp") {
        return;
    }
    let upstream = Upstream::start(Checks::ByIntrospection).await;
    let relay = relay_config(&upstream);
    // Not `auth oauthbearer`: msmtp 1.8.23 puts the OAUTHBEARER response
    // on the AUTH line whatever its length, and an RS256 token makes that
    // line longer than Dovecot's 1,030 octets (`500 5.5.2 Line too long`).
    // Its XOAUTH2 waits for the 334 as RFC 4954 asks; README's example uses it.
    let cases = [("xoauth2", false, "XOAUTH2"), ("xoauth2", true, "XOAUTH2")];
    for (n, (auth, implicit, mechanism)) in cases.into_iter().enumerate() {
        let config = msmtp_config(&upstream, &relay, auth, implicit);
        let subject = format!(
            "msmtp auth {auth} {}",
            if implicit { "implicit TLS" } else { "STARTTLS" }
        );
        let sent = message(&subject);
        let output = run_with_input(
            Command::new("msmtp")
                .arg("-C")
                .arg(&config)
                .args(["-a", "dovecot", RECIPIENT]),
            &sent,
        )
        .await;
        assert!(
            output.status.success(),
            "msmtp auth {auth}: {}\n{}",
            describe(&output),
            upstream.dovecot.diagnostics()
        );
        let (entry, arrived) = upstream.sink.find(n + 1, &subject).await;
        assert_eq!(entry.mail_from, USER);
        assert_intact(&arrived, &sent);
        upstream
            .dovecot
            .wait_for_log(&format!("Login: user=<{USER}>, method={mechanism}"))
            .await;
    }
    assert_eq!(
        upstream.provider.auth.stats().token_requests,
        1,
        "both clients got the token the relay holds"
    );
}

/// `curl smtp(s)://...` with the token from `oxirelay token`, as a shell
/// user writes it: `--oauth2-bearer "$(oxirelay -c CONFIG token ACCOUNT)"`.
async fn curl_with_oxirelay_token(
    upstream: &Upstream,
    relay: &RelayConfig,
    url: &str,
    mechanism: &str,
    sent: &[u8],
) -> std::process::Output {
    let file = relay
        .dir
        .path()
        .join(format!("curl-{}.eml", rand::random::<u32>()));
    std::fs::write(&file, sent).expect("write message");
    let script = format!(
        "exec curl --silent --show-error --url '{url}' --ssl-reqd --cacert '{ca}' \
         --mail-from '{USER}' --mail-rcpt '{RECIPIENT}' --user '{USER}:' \
         --oauth2-bearer \"$({token})\" --login-options 'AUTH={mechanism}' \
         --upload-file '{file}'",
        ca = upstream.dovecot.ca_file.display(),
        token = relay.token_command(ACCOUNT),
        file = file.display(),
    );
    run(Command::new("sh").args(["-c", &script])).await
}

#[tokio::test]
async fn curl_takes_its_token_from_oxirelay_token_for_oauthbearer() {
    if !Dovecot::installed() || !have("curl") {
        return;
    }
    let upstream = Upstream::start(Checks::ByIntrospection).await;
    let relay = relay_config(&upstream);
    let urls = [
        format!("smtp://127.0.0.1:{}", upstream.dovecot.starttls.port()),
        format!("smtps://127.0.0.1:{}", upstream.dovecot.implicit.port()),
    ];
    for (n, url) in urls.iter().enumerate() {
        let subject = format!("curl OAUTHBEARER {}", url.split(':').next().unwrap_or(""));
        let sent = message(&subject);
        let output = curl_with_oxirelay_token(&upstream, &relay, url, "OAUTHBEARER", &sent).await;
        assert!(
            output.status.success(),
            "curl {url}: {}\n{}",
            describe(&output),
            upstream.dovecot.diagnostics()
        );
        let (_, arrived) = upstream.sink.find(n + 1, &subject).await;
        assert_intact(&arrived, &sent);
    }
    assert_eq!(
        upstream
            .dovecot
            .count_in_log(&format!("Login: user=<{USER}>, method=OAUTHBEARER")),
        2
    );
    assert_eq!(upstream.provider.auth.stats().token_requests, 1);
}

#[tokio::test]
async fn curl_takes_its_token_from_oxirelay_token_for_xoauth2() {
    if !Dovecot::installed() || !have("curl") {
        return;
    }
    // curl up to at least 8.x picks OAUTHBEARER whenever the server offers
    // it, whatever --login-options says (curl issue 10259), so XOAUTH2 is
    // tested against a server that offers nothing else.
    let upstream =
        Upstream::start_with(Checks::ByIntrospection, &["xoauth2"], None, Vec::new()).await;
    let relay = relay_config(&upstream);
    let subject = "curl XOAUTH2";
    let sent = message(subject);
    let url = format!("smtp://127.0.0.1:{}", upstream.dovecot.starttls.port());
    let output = curl_with_oxirelay_token(&upstream, &relay, &url, "XOAUTH2", &sent).await;
    assert!(
        output.status.success(),
        "curl: {}\n{}",
        describe(&output),
        upstream.dovecot.diagnostics()
    );
    let (_, arrived) = upstream.sink.find(1, subject).await;
    assert_intact(&arrived, &sent);
    upstream
        .dovecot
        .wait_for_log(&format!("Login: user=<{USER}>, method=XOAUTH2"))
        .await;
}

#[tokio::test]
async fn long_tokens_from_oxirelay_token_work_with_msmtp_xoauth2_and_curl() {
    if !Dovecot::installed() || !have("msmtp") || !have("curl") {
        return;
    }
    // Tokens over 2,000 characters, as real providers issue. Both clients
    // send them after Dovecot's "334" (its AUTH line holds 1,030 octets at
    // most). msmtp 1.8.23's OAUTHBEARER does not: it puts the initial
    // response on the AUTH line and gets "500 5.5.2 Line too long", so
    // `auth xoauth2` (what README.md shows) is the msmtp setting that works
    // with long tokens.
    let upstream = Upstream::start_with(
        Checks::ByIntrospection,
        &["xoauth2", "oauthbearer"],
        Some(format!(
            "urn:oxirelay:interop:{}",
            "long-token-".repeat(110)
        )),
        Vec::new(),
    )
    .await;
    let relay = relay_config(&upstream);
    assert!(relay.token(ACCOUNT).await.len() >= 2000, "a long token");

    let config = msmtp_config(&upstream, &relay, "xoauth2", false);
    let sent = message("msmtp long token");
    let output = run_with_input(
        Command::new("msmtp")
            .arg("-C")
            .arg(&config)
            .args(["-a", "dovecot", RECIPIENT]),
        &sent,
    )
    .await;
    assert!(output.status.success(), "msmtp: {}", describe(&output));
    let (_, arrived) = upstream.sink.find(1, "msmtp long token").await;
    assert_intact(&arrived, &sent);

    let url = format!("smtp://127.0.0.1:{}", upstream.dovecot.starttls.port());
    let sent = message("curl long token");
    let output = curl_with_oxirelay_token(&upstream, &relay, &url, "OAUTHBEARER", &sent).await;
    assert!(output.status.success(), "curl: {}", describe(&output));
    let (_, arrived) = upstream.sink.find(2, "curl long token").await;
    assert_intact(&arrived, &sent);
    assert_eq!(upstream.provider.auth.stats().token_requests, 1);
}
