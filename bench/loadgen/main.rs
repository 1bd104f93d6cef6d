//! oxirelay-loadgen: the project's own SMTP load generator (issue 3, item
//! 5). It opens N concurrent sessions to a target (the relay's submission
//! listener with AUTH PLAIN, or without AUTH and TLS where the listener maps
//! the client's network to an identity; or the sandbox SMTP server with
//! XOAUTH2 as the baseline), STARTTLS with a given CA when it
//! authenticates, and submits M messages of a given size in total, reusing
//! each session for many messages or one message per session. It prints
//! one JSON report: messages sent, duration, messages/s, submission latency
//! (end of DATA to the 250) percentiles, and errors.
//!
//! `--idle D` instead opens the N sessions (EHLO, nothing more), says so on
//! standard error once all are open, holds them for D and quits them: what
//! an idle session costs the server.
//!
//! `--source A,B,...` spreads the sessions over several local addresses
//! (127.0.0.2, ...: other "hosts" on loopback).
//!
//! The run is bounded: M messages at most, and `--timeout`, after which the
//! workers stop and the report is printed with `"timed_out": true`.
//!
//! It is an `[[example]]`, not a `[[bin]]`: it is a development tool that
//! `cargo install oxirelay` should not install, and `cargo clippy
//! --all-targets` and `cargo test` still compile it, so it cannot rot.
//! Run it with `cargo run --release --example oxirelay-loadgen -- --help`.

mod wire;

use clap::Parser;
use oxirelay::secret::Secret;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wire::{Credentials, Session, Target, WireError};

/// Distinct error texts kept for the report; the count covers all.
const MAX_ERROR_KINDS: usize = 20;
/// A worker whose session cannot be opened this many times in a row gives
/// up: the target is down or refuses us, and retrying faster helps nothing.
const MAX_CONSECUTIVE_OPEN_FAILURES: u32 = 3;
/// After the deadline, workers get this long to notice before they are
/// abandoned and the report is printed anyway.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "oxirelay-loadgen",
    about = "Submit M messages over N concurrent STARTTLS+AUTH SMTP sessions and report JSON.",
    after_help = "Examples:\n  oxirelay-loadgen --target 127.0.0.1:2587 --ca-file sb/sandbox-ca.pem --auth xoauth2 --user alice@sandbox.test --token-file token.txt --sessions 10 --messages 1000\n  LOADGEN_PASSWORD=... oxirelay-loadgen --target 127.0.0.1:1587 --ca-file relay-ca.pem --auth plain --user scanner --from scanner@contoso.com --sessions 50 --messages 5000"
)]
struct Args {
    /// host:port of the SMTP server (loopback for benchmarks).
    #[arg(long)]
    target: String,
    /// The name in the server's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// The CA to trust for STARTTLS (needed with AUTH).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// none: no TLS, no AUTH (a listener that knows the client's network).
    #[arg(long, value_enum)]
    auth: AuthKind,
    /// SASL user (PLAIN: the submission user; XOAUTH2: the mailbox).
    #[arg(long, default_value = "")]
    user: String,
    /// PLAIN password; from the environment so it stays out of `ps`.
    #[arg(long, env = "LOADGEN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A file holding the XOAUTH2 bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// MAIL FROM and From [default: --user].
    #[arg(long)]
    from: Option<String>,
    #[arg(long, default_value = "sink@example.net")]
    to: String,
    /// Concurrent sessions (N).
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Messages in total (M).
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Message size in bytes, headers included.
    #[arg(long, default_value_t = 5 * 1024)]
    size: usize,
    /// One message per session (connect, TLS and AUTH every time) instead of reusing sessions.
    #[arg(long)]
    one_per_session: bool,
    /// Local addresses to connect from, comma-separated; session i uses the
    /// (i mod count)-th.
    #[arg(long, value_delimiter = ',')]
    source: Vec<IpAddr>,
    /// Open the N sessions, hold them idle this long, quit; send nothing.
    #[arg(long, value_parser = oxirelay::cli::parse_duration)]
    idle: Option<Duration>,
    /// Stop after this long and report what was done.
    #[arg(long, default_value = "120s", value_parser = oxirelay::cli::parse_duration)]
    timeout: Duration,
    /// A label copied into the report (e.g. "baseline" or "relay").
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AuthKind {
    Plain,
    Xoauth2,
    None,
}

#[derive(Default)]
struct WorkerStats {
    sent: usize,
    latencies: Vec<Duration>,
    errors: BTreeMap<String, usize>,
    error_count: usize,
    sessions_opened: usize,
    timed_out: bool,
}

impl WorkerStats {
    fn error(&mut self, error: &WireError) {
        self.error_count += 1;
        if matches!(error, WireError::Timeout) {
            self.timed_out = true;
        }
        let text = error.to_string();
        if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&text) {
            *self.errors.entry(text).or_default() += 1;
        }
    }

    fn merge(&mut self, other: WorkerStats) {
        self.sent += other.sent;
        self.latencies.extend(other.latencies);
        for (text, count) in other.errors {
            if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&text) {
                *self.errors.entry(text).or_default() += count;
            }
        }
        self.error_count += other.error_count;
        self.sessions_opened += other.sessions_opened;
        self.timed_out |= other.timed_out;
    }
}

struct Plan {
    target: Target,
    from: String,
    to: String,
    data: Vec<u8>,
    messages: usize,
    one_per_session: bool,
    deadline: Instant,
    next: AtomicUsize,
    /// Idle sessions open so far (`--idle`).
    opened: AtomicUsize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("oxirelay-loadgen: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    if args.sessions == 0 || args.messages == 0 {
        return Err("--sessions and --messages must be at least 1".into());
    }
    let credentials = match args.auth {
        AuthKind::Plain => Credentials::Plain {
            user: args.user.clone(),
            password: Secret::new(
                args.password
                    .clone()
                    .ok_or("--auth plain needs the password in LOADGEN_PASSWORD")?,
            ),
        },
        AuthKind::Xoauth2 => {
            let path = args
                .token_file
                .as_ref()
                .ok_or("--auth xoauth2 needs --token-file (e.g. from `oxirelay token ACCOUNT`)")?;
            let token = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
            Credentials::XOAuth2 {
                user: args.user.clone(),
                token: Secret::new(token.trim()),
            }
        }
        AuthKind::None => Credentials::None,
    };
    let tls = match (&args.ca_file, args.auth) {
        (_, AuthKind::None) => None,
        (Some(ca_file), _) => Some(
            oxirelay::tls::client_config(Some(ca_file))
                .map_err(|e| format!("cannot use the CA file {}: {e}", ca_file.display()))?,
        ),
        (None, _) => return Err("AUTH needs --ca-file for STARTTLS".into()),
    };
    let server_name = rustls_pki_types::ServerName::try_from(args.server_name.clone())
        .map_err(|_| format!("{:?} is not a valid server name", args.server_name))?;
    let from = args.from.clone().unwrap_or_else(|| args.user.clone());
    let started = Instant::now();
    let deadline = started + args.timeout;
    let plan = Arc::new(Plan {
        target: Target {
            addr: args.target.clone(),
            server_name,
            tls,
            credentials,
        },
        data: message(&from, &args.to, args.size),
        from,
        to: args.to.clone(),
        messages: args.messages,
        one_per_session: args.one_per_session,
        deadline,
        next: AtomicUsize::new(0),
        opened: AtomicUsize::new(0),
    });

    let mut workers = tokio::task::JoinSet::new();
    for i in 0..args.sessions {
        let source = (!args.source.is_empty()).then(|| args.source[i % args.source.len()]);
        match args.idle {
            Some(hold) => workers.spawn(hold_idle(plan.clone(), source, hold, args.sessions)),
            None => workers.spawn(worker(plan.clone(), source)),
        };
    }
    let mut total = WorkerStats::default();
    let hard_stop = tokio::time::Instant::from_std(deadline + GRACE);
    loop {
        match tokio::time::timeout_at(hard_stop, workers.join_next()).await {
            Ok(Some(Ok(stats))) => total.merge(stats),
            Ok(Some(Err(e))) => {
                total.error_count += 1;
                total.errors.insert(format!("worker failed: {e}"), 1);
            }
            Ok(None) => break,
            Err(_) => {
                total.timed_out = true;
                workers.abort_all();
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    total.timed_out |= Instant::now() >= deadline;
    println!("{}", report(&args, &total, elapsed));
    let complete = match args.idle {
        Some(_) => total.sessions_opened == args.sessions,
        None => total.sent == args.messages,
    };
    Ok(if total.error_count == 0 && complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--idle`: one session opened and held for `hold` (within the deadline),
/// then quit. The last to open tells standard error that all `of` are open.
async fn hold_idle(
    plan: Arc<Plan>,
    source: Option<IpAddr>,
    hold: Duration,
    of: usize,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    match Session::open(&plan.target, source, plan.deadline).await {
        Ok(session) => {
            stats.sessions_opened = 1;
            if plan.opened.fetch_add(1, Ordering::Relaxed) + 1 == of {
                eprintln!("oxirelay-loadgen: all {of} idle sessions are open");
            }
            let until = (Instant::now() + hold).min(plan.deadline);
            tokio::time::sleep_until(until.into()).await;
            session.quit().await;
        }
        Err(e) => stats.error(&e),
    }
    stats
}

async fn worker(plan: Arc<Plan>, source: Option<IpAddr>) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut open_failures = 0;
    let claim = || plan.next.fetch_add(1, Ordering::Relaxed) < plan.messages;
    // Bounded: each pass claims a message first (there are `messages`), so
    // no session is opened for nothing; and the deadline stops it.
    while Instant::now() < plan.deadline && claim() {
        let mut session = match Session::open(&plan.target, source, plan.deadline).await {
            Ok(session) => session,
            Err(e) => {
                // The claimed message could not be submitted: an error.
                stats.error(&e);
                open_failures += 1;
                if open_failures >= MAX_CONSECUTIVE_OPEN_FAILURES {
                    break;
                }
                continue;
            }
        };
        open_failures = 0;
        stats.sessions_opened += 1;
        let mut healthy = true;
        loop {
            match session.submit(&plan.from, &plan.to, &plan.data).await {
                Ok(latency) => {
                    stats.sent += 1;
                    stats.latencies.push(latency);
                }
                Err(e) => {
                    stats.error(&e);
                    // A refusal leaves the session usable after RSET; a
                    // network error or timeout does not.
                    healthy =
                        matches!(e, WireError::Refused { .. }) && session.reset().await.is_ok();
                    if !healthy {
                        break;
                    }
                }
            }
            if plan.one_per_session || !claim() {
                break;
            }
        }
        if healthy {
            session.quit().await;
        }
    }
    stats
}

/// A text message of `size` bytes (at least its headers), dot-stuffing
/// unneeded (no line starts with "."), ending with CRLF.CRLF.
fn message(from: &str, to: &str, size: usize) -> Vec<u8> {
    let mut data = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: oxirelay loadgen\r\nDate: {}\r\nMessage-ID: <loadgen.{}@localhost>\r\n\r\n",
        chrono::Utc::now().to_rfc2822(),
        std::process::id()
    )
    .into_bytes();
    const LINE: &[u8] =
        b"The quick brown fox jumps over the lazy dog, for the benchmark's sake.\r\n";
    while data.len() + LINE.len() <= size {
        data.extend_from_slice(LINE);
    }
    if data.len() + 2 < size {
        data.resize(size - 2, b'x');
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    data
}

fn percentile(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[index].as_secs_f64() * 1000.0)
}

fn report(args: &Args, total: &WorkerStats, elapsed: Duration) -> String {
    let mut latencies = total.latencies.clone();
    latencies.sort();
    let seconds = elapsed.as_secs_f64();
    let round = |x: Option<f64>| x.map(|v| (v * 100.0).round() / 100.0);
    let value = serde_json::json!({
        "label": args.label,
        "target": args.target,
        "auth": match args.auth { AuthKind::Plain => "plain", AuthKind::Xoauth2 => "xoauth2", AuthKind::None => "none" },
        "idle_s": args.idle.map(|d| d.as_secs_f64()),
        "sessions": args.sessions,
        "one_per_session": args.one_per_session,
        "message_bytes": args.size,
        "messages_requested": args.messages,
        "messages_sent": total.sent,
        "sessions_opened": total.sessions_opened,
        "duration_s": round(Some(seconds)),
        "messages_per_s": round(Some(if seconds > 0.0 { total.sent as f64 / seconds } else { 0.0 })),
        "latency_ms": {
            "p50": round(percentile(&latencies, 50.0)),
            "p90": round(percentile(&latencies, 90.0)),
            "p99": round(percentile(&latencies, 99.0)),
            "max": round(latencies.last().map(|d| d.as_secs_f64() * 1000.0)),
        },
        "errors": total.error_count,
        "error_kinds": total.errors,
        "timed_out": total.timed_out,
    });
    serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
