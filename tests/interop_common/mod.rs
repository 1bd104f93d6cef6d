//! What the interop tests share: they run the relay against software nobody
//! here wrote, installed by `scripts/install-test-tools` (Dovecot's
//! submission service as an OAuth2-enforcing upstream; swaks, msmtp, curl,
//! Python's smtplib and Postfix's smtp-source as clients), over real TCP
//! and TLS on loopback.
//!
//! - [`tools`]: finding the programs (a test without its program says
//!   SKIPPED and returns), running them with a deadline, free ports,
//!   waiting for a port, and keeping tokens out of test output.
//! - [`provider`]: the sandbox authorization server with the clients these
//!   tests register (the relay, Dovecot's introspection client).
//! - [`dovecot`]: a Dovecot submission server from a config written into a
//!   temp dir, validating tokens locally (JWKS keys as PEM in a key dict)
//!   or by RFC 7662 introspection.
//! - [`sink`]: the plain SMTP server Dovecot relays accepted mail to: the
//!   project's own `smtp::server` session storing into a Maildir.
//! - [`relay`]: an oxirelay config on disk, the built binary run as a user
//!   runs it (`send`, `token`, `serve`).
//! - [`submission`]: `oxirelay serve` with listeners and users in front of
//!   the full sandbox, and each third-party client's way of submitting.
//! - [`networks`]: `oxirelay serve` with AUTH-less listeners for
//!   `[[network]]`s, and the clients' ways of submitting from a chosen
//!   loopback address without AUTH (swaks, curl, smtplib, smtp-source).

#![allow(dead_code)]

pub mod dovecot;
pub mod networks;
pub mod provider;
pub mod relay;
pub mod sink;
pub mod submission;
pub mod tools;

// Not every test crate uses every re-export.
#[allow(unused_imports)]
pub use tools::{WAIT, have, run};

/// The mailbox every test sends as (the sandbox's user).
pub const USER: &str = oxirelay::sandbox::USER;
/// Where the test messages go.
pub const RECIPIENT: &str = "bob@example.net";

/// A message as a client submits it: CRLF lines, lines that begin with dots
/// (so dot-stuffing is exercised both ways), and the Date and Message-ID
/// headers present, so that no client adds its own and the bytes that
/// arrive can be compared with the bytes sent.
pub fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: {USER}\r\n\
         To: {RECIPIENT}\r\n\
         Subject: {subject}\r\n\
         Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\
         Message-ID: <{id}@interop.test>\r\n\
         \r\n\
         hello from {subject}\r\n\
         .leading dot line\r\n\
         ..two leading dots\r\n\
         .\r\n\
         last line\r\n",
        id = subject.replace(' ', "-"),
    )
    .into_bytes()
}

/// Asserts that `arrived` is `sent` with trace headers (`Received:`) put in
/// front and nothing else changed.
pub fn assert_intact(arrived: &[u8], sent: &[u8]) {
    let arrived_text = String::from_utf8_lossy(arrived);
    assert!(
        arrived.ends_with(sent),
        "the message did not arrive intact:\n--- sent\n{}\n--- arrived\n{arrived_text}",
        String::from_utf8_lossy(sent)
    );
    let prefix = String::from_utf8_lossy(&arrived[..arrived.len() - sent.len()]);
    for line in prefix.split("\r\n").filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("Received:") || line.starts_with(' ') || line.starts_with('\t'),
            "only trace headers may be added in front, found {line:?} in\n{arrived_text}"
        );
    }
}

/// How the upstream Dovecot checks tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// The signature, with the authorization server's JWKS keys as PEM.
    Locally,
    /// RFC 7662 introspection at the authorization server.
    ByIntrospection,
}

/// A third-party upstream: the sandbox authorization server issuing tokens,
/// Dovecot's submission service enforcing them, and the sink it relays to.
pub struct Upstream {
    pub provider: provider::Provider,
    pub dovecot: dovecot::Dovecot,
    pub sink: sink::Sink,
}

impl Upstream {
    pub async fn start(checks: Checks) -> Upstream {
        Self::start_with(checks, &["xoauth2", "oauthbearer"], None, Vec::new()).await
    }

    /// `mechanisms` in Dovecot's names; `extra_scope` makes tokens longer
    /// (see [`provider::Provider::start_with`]); `extra_keys` are added to
    /// the local-validation key dict.
    pub async fn start_with(
        checks: Checks,
        mechanisms: &[&'static str],
        extra_scope: Option<String>,
        extra_keys: Vec<dovecot::DictKey>,
    ) -> Upstream {
        let provider = provider::Provider::start_with(extra_scope).await;
        let sink = sink::Sink::start().await;
        let validation = match checks {
            Checks::Locally => {
                let mut keys =
                    dovecot::keys_from_jwks(&provider.jwks().await, &[provider::RELAY_CLIENT]);
                keys.extend(extra_keys);
                dovecot::Validation::Local {
                    keys,
                    issuer: provider.issuer().to_string(),
                }
            }
            Checks::ByIntrospection => dovecot::Validation::Introspection {
                url: provider.auth.introspection_url().to_string(),
                client_id: provider::DOVECOT_CLIENT.into(),
                client_secret: provider.dovecot_secret.expose().to_string(),
            },
        };
        let dovecot = dovecot::Dovecot::start(dovecot::DovecotOptions {
            validation,
            mechanisms: mechanisms.to_vec(),
            scope: provider::SCOPE.into(),
            relay_to: sink.addr,
        })
        .await;
        Upstream {
            provider,
            dovecot,
            sink,
        }
    }

    /// An `[[account]]` of the relay against this Dovecot: `sasl` is
    /// `xoauth2` or `oauthbearer`, `tls` `starttls` or `implicit`.
    pub fn account<'a>(
        &'a self,
        name: &'a str,
        sasl: &'a str,
        tls: &'a str,
    ) -> relay::UpstreamAccount<'a> {
        relay::UpstreamAccount {
            name,
            sasl,
            tls,
            smtp: match tls {
                "implicit" => self.dovecot.implicit,
                _ => self.dovecot.starttls,
            },
            ca_file: &self.dovecot.ca_file,
            issuer: self.provider.issuer(),
            client_id: provider::RELAY_CLIENT,
            scopes: self.provider.scopes(),
        }
    }

    /// A relay config with these accounts (and `extra` TOML after them).
    pub fn relay_config(
        &self,
        accounts: &[relay::UpstreamAccount<'_>],
        extra: &str,
    ) -> relay::RelayConfig {
        relay::RelayConfig::write(self.provider.relay_secret.expose(), |secret| {
            let mut text: String = accounts.iter().map(|a| a.toml(secret)).collect();
            text.push_str(extra);
            text
        })
    }
}
