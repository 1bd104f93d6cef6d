//! `oxirelay demo`: the whole path, end to end, on loopback, with no
//! provider account and no prompt. It starts the sandbox, makes an account
//! in a temporary directory, gets consent with the authorization code grant
//! (PKCE + state; the sandbox's auto-approve stands in for the person who
//! clicks Allow), sends messages over longer than one token lifetime so a
//! refresh (with refresh-token rotation) happens, and shows what arrived.

use super::Context;
use crate::config::Config;
use crate::delivery::upstream::send_now;
use crate::message::Composition;
use crate::oauth::broker::{BrokerEvent, BrokerEventKind};
use crate::sandbox::{Sandbox, SandboxOptions, USER};
use anyhow::Context as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// How many messages to send.
    #[arg(long, default_value_t = 4)]
    pub messages: u32,
    /// Access-token lifetime at the sandbox; the messages span longer than this.
    #[arg(long, default_value = "8s", value_parser = super::parse_duration)]
    pub token_ttl: Duration,
    /// Keep the temporary directory (config, store, inbox) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Which provider the sandbox plays (token shape, replies, limits).
    #[arg(long, value_enum, default_value_t = crate::sandbox::ProfileName::Strict)]
    pub profile: crate::sandbox::ProfileName,
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// Messages the demo submits through the relay path.
const RELAY_MESSAGES: usize = 2;

/// The relay path, as `oxirelay serve` runs it: an app submits over SMTP
/// (STARTTLS + AUTH PLAIN with an app password) to the relay's listener;
/// the message is committed to the queue before the 250; the delivery
/// engine sends it upstream through the account.
async fn relay_path(
    dir: &Path,
    config_text: &str,
    context: &Context,
    sandbox: &Sandbox,
    at: &impl Fn() -> String,
) -> anyhow::Result<()> {
    use crate::delivery::engine::{Engine, EngineConfig};
    use crate::smtp::client::{Session, Timeouts, UpstreamTarget};
    use crate::submit::{Listeners, SubmissionOptions, SubmissionPolicy};
    println!(
        "\n{} relay path: an app submits over SMTP to the relay; the queue delivers upstream",
        at()
    );
    let ca = crate::sandbox::certs::SandboxCa::generate()?;
    ca.write_leaf(&dir.join("relay-cert.pem"), &dir.join("relay-key.pem"))?;
    ca.write_ca(&dir.join("relay-ca.pem"))?;
    let password = crate::users::generate_app_password();
    let relay_text = format!(
        "{config_text}\n[[listener]]\naddr = \"127.0.0.1:0\"\ntls = \"starttls\"\ncert = \"relay-cert.pem\"\nkey = \"relay-key.pem\"\n\n\
         [[user]]\nname = \"printer\"\npassword_hash = \"{}\"\nallowed_from = [\"{USER}\"]\naccount = \"demo\"\n",
        crate::users::hash_password(&password)?
    );
    let config = Config::parse(&relay_text, &dir.join("oxirelay.toml"))?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let policy = SubmissionPolicy::new(
        &config,
        context.store.clone(),
        wake.clone(),
        SubmissionOptions::default(),
    );
    let (listeners_stop, listeners_signal) = crate::smtp::server::shutdown_channel();
    let listeners = Listeners::start(&config, &policy, listeners_signal).await?;
    let addr = *listeners.addrs().first().context("the relay listener")?;
    let (engine_stop, engine_signal) = tokio::sync::watch::channel(false);
    let engine = Engine::start(
        context.store.clone(),
        context.broker.clone(),
        EngineConfig {
            workers: 2,
            ..EngineConfig::default()
        },
        wake,
        engine_signal,
    );
    println!(
        "{} relay listening on {addr} (STARTTLS; AUTH only after TLS); user \"printer\" with an app password",
        at()
    );

    let target = UpstreamTarget {
        host: "127.0.0.1".into(),
        port: addr.port(),
        security: crate::config::TlsMode::Starttls,
        tls_config: crate::tls::client_config(Some(&dir.join("relay-ca.pem")))?,
        ehlo_name: "printer.demo".into(),
        timeouts: Timeouts::default(),
    };
    let mut session = Session::connect(&target).await?;
    session
        .authenticate_password(&crate::smtp::sasl::PasswordCredentials {
            authzid: None,
            user: "printer".into(),
            password,
        })
        .await?;
    let before = sandbox.smtp.inbox().count();
    for n in 1..=RELAY_MESSAGES {
        let message = Composition {
            from: USER.into(),
            to: vec![format!("relayed{n}@example.net")],
            subject: format!("oxirelay demo: relayed message {n} (submitted by a device)"),
            body: "Submitted over SMTP with a password, delivered upstream with OAuth2.\n".into(),
            ..Default::default()
        }
        .build()?;
        let report = session.send(&message.envelope, &message.bytes).await?;
        let reply = match &report.data {
            crate::smtp::client::DataOutcome::Final(reply) => reply.to_string(),
            other => format!("{other:?}"),
        };
        println!("{} device submitted message {n}: {reply}", at());
    }
    let _ = session.quit().await;
    sandbox
        .smtp
        .inbox()
        .wait_for_count(before + RELAY_MESSAGES, Duration::from_secs(30))
        .await?;
    println!(
        "{} the delivery engine delivered both from the queue to the sandbox",
        at()
    );
    listeners_stop.trigger();
    let _ = listeners.wait().await;
    let _ = engine_stop.send(true);
    engine.shutdown().await;
    Ok(())
}

/// How long the token is and how it goes on the wire (RFC 4954 section 4).
fn describe_token(
    account: &crate::oauth::account::Account,
    sandbox: &Sandbox,
    length: usize,
) -> String {
    use crate::smtp::sasl;
    let credentials = sasl::BearerCredentials {
        user: account.user.clone(),
        token: crate::secret::Secret::new("t".repeat(length)),
    };
    let message = match account.sasl {
        sasl::Mechanism::OAuthBearer => sasl::encode_oauthbearer(
            &credentials,
            &sasl::ServerName {
                host: &account.smtp.host,
                port: account.smtp.port,
            },
        ),
        _ => sasl::encode_xoauth2(&credentials),
    };
    let line = format!("AUTH {} ", account.sasl).len()
        + sasl::encode_base64(message.expose().as_bytes()).len()
        + 2;
    let how = if line > crate::smtp::client::MAX_COMMAND_LINE {
        format!(
            "the AUTH line with it would be {line} octets, over RFC 4954's 512, so `AUTH {}` goes alone and the token follows the 334",
            account.sasl
        )
    } else {
        "it fits on the AUTH line".to_string()
    };
    format!(
        "access token: {length} characters ({} profile); {how}",
        sandbox.profile
    )
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let at = move || format!("[{:>5.1}s]", started.elapsed().as_secs_f64());
    let temp = tempfile::Builder::new()
        .prefix("oxirelay-demo-")
        .tempdir()?;
    let dir = temp.path().to_path_buf();

    println!(
        "oxirelay demo: OAuth2 SMTP end to end, against the built-in sandbox (loopback only)\n"
    );
    let mut options = SandboxOptions::new(dir.join("sandbox"));
    options.token_ttl = args.token_ttl;
    options.auto_approve = true;
    options.profile = args.profile;
    let mut smtp = args.profile.smtp();
    // The demo's tokens live seconds so that a refresh shows; Exchange's
    // ten-minute margin would refuse every one of them.
    if smtp
        .near_expiry
        .as_ref()
        .is_some_and(|near| near.within >= args.token_ttl)
    {
        smtp.near_expiry = None;
    }
    options.smtp = Some(smtp);
    let sandbox = Sandbox::start(options).await?;
    println!(
        "{} sandbox authorization server  {}",
        at(),
        sandbox.auth.issuer()
    );
    println!(
        "{} sandbox SMTP server (STARTTLS, OAuth2 only)  127.0.0.1:{}",
        at(),
        sandbox.smtp.addr().port()
    );
    println!(
        "        access tokens live {}s; the sandbox rotates refresh tokens on every use",
        args.token_ttl.as_secs()
    );

    // The relay's side: a master key, a secret file, a config, a store.
    write_private(
        &dir.join("master.key"),
        &crate::secret::generate_master_key(),
    )?;
    write_private(&dir.join("client.secret"), sandbox.client_secret.expose())?;
    let config_text = format!(
        "[store]\nurl = \"sqlite://{store}\"\n\n[secrets]\nmaster_key = \"file:{key}\"\n\n{account}",
        store = dir.join("oxirelay.db").display(),
        key = dir.join("master.key").display(),
        account = sandbox.account_toml(
            "demo",
            "authorization_code",
            &format!("file:{}", dir.join("client.secret").display())
        ),
    );
    std::fs::write(dir.join("oxirelay.toml"), &config_text)?;
    let config = Config::parse(&config_text, &dir.join("oxirelay.toml"))?;
    let context = Context::from_config(config).await?;
    let sasl = context
        .broker
        .account("demo")
        .context("the demo account")?
        .sasl;
    println!(
        "{} account \"demo\": generic provider, authorization_code grant, SASL {sasl}, secrets sealed in {}",
        at(),
        dir.join("oxirelay.db").display()
    );

    let mut events = context.broker.subscribe();
    let print_events = tokio::spawn(async move {
        while let Ok(BrokerEvent {
            kind,
            token_fingerprint,
            detail,
            ..
        }) = events.recv().await
        {
            let fp = token_fingerprint.map(|f| f.to_string()).unwrap_or_default();
            let what = match kind {
                BrokerEventKind::Consented => format!("consent stored; access token {fp}"),
                BrokerEventKind::TokenIssued => format!(
                    "token refreshed ahead of expiry: new access token {fp}, rotated refresh token sealed and committed first ({detail})"
                ),
                BrokerEventKind::RefreshFailed => format!("refresh failed: {detail}"),
                BrokerEventKind::NeedsConsent => format!("needs consent: {detail}"),
                BrokerEventKind::TokenInvalidated => {
                    format!("upstream refused token {fp}; dropped")
                }
                BrokerEventKind::NeedsAdmin => format!("needs an administrator: {detail}"),
                BrokerEventKind::Revoked
                | BrokerEventKind::Reinstated
                | BrokerEventKind::AdminResolved => detail,
            };
            println!("{} broker: {what}", format_args!("{:>8}", "·"));
        }
    });

    // Consent: what `oxirelay account login` does, with the sandbox's
    // auto-approve standing in for the person at the browser.
    let account = context
        .broker
        .account("demo")
        .context("the demo account")?
        .clone();
    println!(
        "{} consent: authorization code + PKCE (S256) + state, scopes: {}",
        at(),
        account.scopes.join(" ")
    );
    let token = sandbox.grant_consent(&context.broker, "demo").await?;
    println!(
        "{} {}",
        at(),
        describe_token(&account, &sandbox, token.secret.expose().len())
    );

    let spacing =
        (args.token_ttl.mul_f64(1.5) / args.messages.max(1)).max(Duration::from_millis(500));
    for n in 1..=args.messages {
        let message = Composition {
            from: USER.into(),
            to: vec![format!("recipient{n}@example.net")],
            subject: format!("oxirelay demo message {n} of {}", args.messages),
            body: format!("Hello from the oxirelay demo.\n.This line starts with a dot and arrives intact.\nMessage {n}.\n"),
            ..Default::default()
        }
        .build()?;
        let report = send_now(&context.broker, &account, &message).await?;
        let ok = report.accepted();
        anyhow::ensure!(ok, "the sandbox refused message {n}: {report:?}");
        println!("{} sent message {n} to recipient{n}@example.net", at());
        if n < args.messages {
            tokio::time::sleep(spacing).await;
        }
    }

    relay_path(&dir, &config_text, &context, &sandbox, &at).await?;

    let entries = sandbox.smtp.inbox().list()?;
    println!(
        "\nWhat the sandbox SMTP server received ({} messages):",
        entries.len()
    );
    println!(
        "  {:<20} {:<22} {:<12} {:<16} SUBJECT",
        "FROM", "TO", "SASL", "TOKEN"
    );
    for entry in &entries {
        println!(
            "  {:<20} {:<22} {:<12} {:<16} {}",
            entry.mail_from,
            entry.rcpt_to.join(","),
            entry.mechanism.map(|m| m.to_string()).unwrap_or_default(),
            entry.token_fingerprint.as_deref().unwrap_or("-"),
            entry.subject.as_deref().unwrap_or(""),
        );
    }
    let stats = sandbox.auth.stats();
    println!(
        "\nToken endpoint: {} requests ({} authorization_code, {} refresh_token). Tokens in the store are sealed; logs show fingerprints only.",
        stats.token_requests,
        stats
            .token_requests_by_grant
            .get(crate::sandbox::authz::GrantKind::AuthorizationCode),
        stats
            .token_requests_by_grant
            .get(crate::sandbox::authz::GrantKind::RefreshToken),
    );
    print_events.abort();
    sandbox.shutdown().await;
    let expected = args.messages as usize + RELAY_MESSAGES;
    anyhow::ensure!(
        entries.len() == expected,
        "expected {expected} messages at the sandbox, found {}",
        entries.len()
    );
    if args.keep {
        let kept = temp.keep();
        println!(
            "Kept {} (config: oxirelay.toml, store: oxirelay.db, inbox: sandbox/inbox)",
            kept.display()
        );
    }
    println!(
        "\nDone. Next: see README.md for Microsoft 365 and Google, or run `oxirelay sandbox` to try your own setup."
    );
    Ok(ExitCode::SUCCESS)
}
