//! `oxirelay send`: compose (or read) one message and send it now through
//! an account, reporting what happened to each recipient; or, with
//! `--via URL`, hand it to a running relay's send API (`POST /v1/messages`
//! or `/v1/messages/raw`), which queues it and answers with its id.

use super::Context;
use crate::delivery::upstream::send_now;
use crate::message::{Composition, OutgoingMessage, check_address, from_file_bytes};
use crate::smtp::client::RecipientOutcome;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SendArgs {
    /// The account to send through (with --via: optional, the key's first account by default).
    #[arg(long, required_unless_present = "via")]
    pub account: Option<String>,
    /// The sender (MAIL FROM and From); must be the account's mailbox or one of its send_as addresses.
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub to: Vec<String>,
    #[arg(long)]
    pub cc: Vec<String>,
    /// Envelope-only recipients (not shown in the headers).
    #[arg(long)]
    pub bcc: Vec<String>,
    #[arg(long, default_value = "")]
    pub subject: String,
    /// The text body.
    #[arg(long, conflicts_with = "file")]
    pub body: Option<String>,
    /// Send this RFC 5322 file as it is (headers included); --to/--cc/--bcc give the envelope.
    #[arg(long, value_name = "message.eml")]
    pub file: Option<PathBuf>,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// Queue the message through a running relay's HTTP API instead of sending it from here
    /// (http://127.0.0.1:PORT on loopback, else https://...).
    #[arg(long, value_name = "URL")]
    pub via: Option<String>,
    /// With --via: a file holding the API key (else $OXIRELAY_API_KEY; never a flag, which `ps` would show).
    #[arg(long, value_name = "PATH", requires = "via")]
    pub api_key_file: Option<PathBuf>,
    /// With --via: tag the message (repeat for more), for `GET /v1/messages?tag=`.
    #[arg(long, requires = "via")]
    pub tag: Vec<String>,
    /// With --via: an Idempotency-Key, so that running the command again does not send twice.
    #[arg(long, requires = "via")]
    pub idempotency_key: Option<String>,
}

pub async fn run(config: Option<PathBuf>, args: SendArgs) -> anyhow::Result<ExitCode> {
    if let Some(via) = &args.via {
        return send_via(via, &args).await;
    }
    let context = Context::load(config).await?;
    let name = args.account.clone().unwrap_or_default();
    let account = context
        .broker
        .account(&name)
        .ok_or_else(|| anyhow::anyhow!("no account named {name:?} in the config"))?
        .clone();
    anyhow::ensure!(
        account.user.eq_ignore_ascii_case(&args.from)
            || account
                .send_as
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&args.from)),
        "account {} may send as {} only (add {} to its send_as to allow it)",
        account.name,
        std::iter::once(account.user.as_str())
            .chain(account.send_as.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", "),
        args.from
    );
    let message = match &args.file {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            check_address("from", &args.from)?;
            let rcpt_to: Vec<String> = args
                .to
                .iter()
                .chain(&args.cc)
                .chain(&args.bcc)
                .cloned()
                .collect();
            anyhow::ensure!(
                !rcpt_to.is_empty(),
                "give the recipients with --to, --cc or --bcc"
            );
            for address in &rcpt_to {
                check_address("to", address)?;
            }
            OutgoingMessage {
                envelope: crate::message::Envelope {
                    mail_from: args.from.clone(),
                    rcpt_to,
                },
                bytes: from_file_bytes(&bytes)?,
            }
        }
        None => Composition {
            from: args.from.clone(),
            to: args.to.clone(),
            cc: args.cc.clone(),
            bcc: args.bcc.clone(),
            subject: args.subject.clone(),
            body: args.body.clone().unwrap_or_default(),
        }
        .build()?,
    };
    let report = send_now(&context.broker, &account, &message).await?;
    let mut accepted = 0;
    let mut rows = Vec::new();
    for (address, outcome) in report.outcomes() {
        let (ok, reply) = match outcome {
            RecipientOutcome::Accepted(reply) => (true, reply.to_string()),
            RecipientOutcome::Refused { reply, .. } => (false, reply.to_string()),
        };
        accepted += usize::from(ok);
        rows.push(serde_json::json!({"recipient": address, "delivered": ok, "reply": reply}));
        if !args.json {
            println!(
                "{} {address}: {reply}",
                if ok { "sent   " } else { "REFUSED" }
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(if accepted == rows.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The API key for `--via`: from `--api-key-file` or `OXIRELAY_API_KEY`.
fn api_key(args: &SendArgs) -> anyhow::Result<crate::secret::Secret> {
    let key = match &args.api_key_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API key file {}", path.display()))?,
        None => std::env::var("OXIRELAY_API_KEY").map_err(|_| {
            anyhow::anyhow!(
                "--via needs an API key: put it in a file and pass --api-key-file PATH, or set OXIRELAY_API_KEY (make one with `oxirelay apikey create`)"
            )
        })?,
    };
    let key = key.trim();
    anyhow::ensure!(!key.is_empty(), "the API key is empty");
    Ok(crate::secret::Secret::new(key))
}

/// `--via URL`: the message as the API takes it, queued by the relay there.
async fn send_via(via: &str, args: &SendArgs) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    let via = url::Url::parse(via).with_context(|| {
        format!("--via {via} is not a URL; write http://127.0.0.1:PORT or https://HOST")
    })?;
    let via = &via;
    let loopback = via.host_str().is_some_and(|h| {
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || h == "[::1]"
    });
    anyhow::ensure!(
        via.scheme() == "https" || (via.scheme() == "http" && loopback),
        "--via {via}: the API key would cross the network unencrypted; use https:// (plain http:// only to a loopback address)"
    );
    let key = api_key(args)?;
    let (path, body) = match &args.file {
        Some(file) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            let rcpt_to: Vec<&String> = args.to.iter().chain(&args.cc).chain(&args.bcc).collect();
            anyhow::ensure!(
                !rcpt_to.is_empty(),
                "give the recipients with --to, --cc or --bcc"
            );
            (
                "v1/messages/raw",
                serde_json::json!({
                    "mail_from": args.from,
                    "rcpt_to": rcpt_to,
                    "message_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
                    "tags": args.tag,
                    "account": args.account,
                }),
            )
        }
        None => (
            "v1/messages",
            serde_json::json!({
                "from": args.from,
                "to": args.to,
                "cc": args.cc,
                "bcc": args.bcc,
                "subject": args.subject,
                "text": args.body.clone().unwrap_or_default(),
                "tags": args.tag,
                "account": args.account,
            }),
        ),
    };
    let url = via
        .join(path)
        .with_context(|| format!("--via {via} is not a base URL"))?;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut request = client
        .post(url.clone())
        .bearer_auth(key.expose())
        .json(&body);
    if let Some(idempotency_key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", idempotency_key);
    }
    let response = request.send().await.with_context(|| {
        format!("cannot reach the relay's API at {via}; is `oxirelay serve` running with [http]?")
    })?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.with_context(|| {
        format!("{url} answered {status} with something that is not the API's JSON")
    })?;
    if status.as_u16() == 202 {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            println!("queued as {}", answer["id"].as_str().unwrap_or("?"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    anyhow::bail!(
        "the relay refused the message ({status}, {}): {}",
        answer["error"]["code"].as_str().unwrap_or("unknown"),
        answer["error"]["message"]
            .as_str()
            .unwrap_or("no reason given")
    )
}
