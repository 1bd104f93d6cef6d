//! oxirelay-apigen: the send API's load generator (issue 12, Benchmark).
//! N concurrent clients, each with its own keep-alive connection, post M
//! messages in total to `POST /v1/messages` (structured JSON, a text body
//! padded to about `--size` bytes) and time each 202. It prints one JSON
//! report in the shape of oxirelay-loadgen's (messages/s, latency
//! percentiles of the 202, errors), so bench/api.sh can set the two side
//! by side.
//!
//! Each client opens its connection (a `GET /healthz`) before the clock
//! starts, and all start together: the SMTP load generator's latency runs
//! from the end of DATA on a session already open, so a 202's latency here
//! must not include a TCP connect either (at 50 clients and 2,000 messages
//! the 50 first requests are 2.5 % of the samples, enough to be the p99).
//!
//! Each client is one HTTP/1.1 connection driven through hyper's own
//! connection API, not a pooling client such as reqwest: the load shares
//! the relay's two cores, and reqwest cost about four times the CPU per
//! message of the SMTP load generator (0.11-0.14 against 0.03 ms at 50
//! clients, BENCHMARKS.md), which the API side then paid for. Plain HTTP
//! only: the benchmark runs on loopback.
//!
//! Bounded: M messages at most, and `--timeout`, after which the workers
//! stop and the report says `"timed_out": true`. An `[[example]]`, like
//! the SMTP load generator: compiled and linted with everything else,
//! never installed.

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, header};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const MAX_ERROR_KINDS: usize = 20;

#[derive(Parser)]
#[command(
    name = "oxirelay-apigen",
    about = "Post M messages to oxirelay's /v1/messages from N keep-alive clients and report JSON.",
    after_help = "Example:\n  oxirelay-apigen --url http://127.0.0.1:8025 --key-file bench.key --from alice@sandbox.test --clients 10 --messages 2000"
)]
struct Args {
    /// The relay's HTTP base URL.
    #[arg(long)]
    url: String,
    /// A file holding the API key (kept out of `ps`).
    #[arg(long)]
    key_file: PathBuf,
    #[arg(long)]
    from: String,
    #[arg(long, default_value = "sink@example.net")]
    to: String,
    /// Concurrent clients (N), each one keep-alive connection.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Messages in total (M).
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// About this many bytes of text body per message.
    #[arg(long, default_value_t = 5120)]
    size: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    #[arg(long, default_value = "api")]
    label: String,
}

#[derive(Default)]
struct Stats {
    sent: usize,
    latencies: Vec<Duration>,
    errors: BTreeMap<String, usize>,
    error_count: usize,
}

/// A body of about `len` bytes in lines of ordinary length, as
/// oxirelay-loadgen's SMTP messages have, so that both sides of the
/// benchmark carry the same kind of text (one 4 KB line would make the
/// relay quoted-printable-encode it, which no real client's mail needs).
fn text_of(len: usize) -> String {
    const LINE: &str = "The quick brown fox jumps over the lazy dog, for the benchmark's sake.\n";
    let mut text = LINE.repeat(len / LINE.len());
    text.push_str(&LINE[..len % LINE.len()]);
    text
}

/// One keep-alive HTTP/1.1 connection to `authority` (host:port).
async fn connect(
    authority: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends `request` and reads the whole answer: its status, or what failed.
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<u16, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let key = match std::fs::read_to_string(&args.key_file) {
        Ok(key) => key.trim().to_string(),
        Err(e) => {
            eprintln!("cannot read {}: {e}", args.key_file.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(authority) = args
        .url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/').to_string())
    else {
        eprintln!(
            "--url must be http://HOST:PORT (plain HTTP on loopback), not {}",
            args.url
        );
        return ExitCode::FAILURE;
    };
    let body = Bytes::from(
        serde_json::json!({
            "from": args.from,
            "to": [args.to],
            "subject": "oxirelay-apigen",
            "text": text_of(args.size.saturating_sub(400).max(1)),
        })
        .to_string(),
    );
    let url = format!("{}/v1/messages", args.url.trim_end_matches('/'));
    let bearer = format!("Bearer {key}");
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let clients = args.clients.max(1);
    // The workers and this task: the clock starts once every connection is open.
    let ready = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (authority, bearer, body, next) = (
            authority.clone(),
            bearer.clone(),
            body.clone(),
            next.clone(),
        );
        let ready = ready.clone();
        let total = args.messages;
        workers.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let request = |method: Method, path: &str, body: Bytes| {
                Request::builder()
                    .method(method)
                    .uri(path)
                    .header(header::HOST, authority.as_str())
                    .header(header::AUTHORIZATION, bearer.as_str())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body))
                    .map_err(|e| e.to_string())
            };
            // Open the connection, and one request on it, before the clock.
            let opened = match connect(&authority).await {
                Ok(mut sender) => match request(Method::GET, "/healthz", Bytes::new()) {
                    Ok(health) => exchange(&mut sender, health).await.map(|_| sender),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            ready.wait().await;
            let mut sender = match opened {
                Ok(sender) => sender,
                Err(e) => {
                    stats.error_count += 1;
                    stats.errors.insert(e, 1);
                    return stats;
                }
            };
            while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                let begun = Instant::now();
                let outcome = match request(Method::POST, "/v1/messages", body.clone()) {
                    Ok(post) => {
                        match tokio::time::timeout(
                            Duration::from_secs(30),
                            exchange(&mut sender, post),
                        )
                        .await
                        {
                            // The 202's body (the id) was read whole.
                            Ok(Ok(202)) => Ok(()),
                            Ok(Ok(status)) => Err(format!("HTTP {status}")),
                            Ok(Err(e)) => Err(e),
                            Err(_) => Err("no answer within 30 s".to_string()),
                        }
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => {
                        stats.sent += 1;
                        stats.latencies.push(begun.elapsed());
                    }
                    Err(kind) => {
                        stats.error_count += 1;
                        if stats.errors.len() < MAX_ERROR_KINDS || stats.errors.contains_key(&kind)
                        {
                            *stats.errors.entry(kind).or_default() += 1;
                        }
                    }
                }
            }
            stats
        }));
    }
    ready.wait().await;
    let started = Instant::now();
    let mut total = Stats::default();
    for worker in workers {
        if let Ok(stats) = worker.await {
            total.sent += stats.sent;
            total.latencies.extend(stats.latencies);
            total.error_count += stats.error_count;
            for (kind, n) in stats.errors {
                *total.errors.entry(kind).or_default() += n;
            }
        }
    }
    let elapsed = started.elapsed();
    total.latencies.sort();
    let seconds = elapsed.as_secs_f64();
    let round = |x: Option<f64>| x.map(|v| (v * 100.0).round() / 100.0);
    let percentile = |p: f64| {
        let sorted = &total.latencies;
        (!sorted.is_empty()).then(|| {
            let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
        })
    };
    let report = serde_json::json!({
        "label": args.label,
        "target": url,
        "sessions": args.clients,
        "message_bytes": args.size,
        "messages_requested": args.messages,
        "messages_sent": total.sent,
        "duration_s": round(Some(seconds)),
        "messages_per_s": round(Some(if seconds > 0.0 { total.sent as f64 / seconds } else { 0.0 })),
        "latency_ms": {
            "p50": round(percentile(50.0)),
            "p90": round(percentile(90.0)),
            "p99": round(percentile(99.0)),
            "max": round(total.latencies.last().map(|d| d.as_secs_f64() * 1000.0)),
        },
        "errors": total.error_count,
        "error_kinds": total.errors,
        "timed_out": Instant::now() >= deadline,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if total.error_count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
