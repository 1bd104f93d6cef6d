//! `oxirelay queue list|show|retry|delete|hold|release`.
//!
//! The listing streams: it pages through the store (`Store::list_messages`,
//! newest first, by cursor) and prints each page as it comes, so memory
//! stays flat however large the queue. The bulk operations, modelled on
//! Postfix's `postqueue -f` and `postsuper -d/-h/-H`, work through the
//! store one batch (one transaction, one audit line) at a time.

use super::Context;
use super::context::actor;
use crate::audit::AuditEntry;
use crate::clock::format_unix;
use crate::store::{
    AffectedMessage, ListCursor, MessageId, MessageState, QueueAction, QueueFilter, QueueSelection,
    QueuedMessage, Store,
};
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Messages read from the store per query when listing. Each page holds its
/// messages' recipients too (up to 500 each, Microsoft's limit), so a page
/// is kept well below what would make a listing's memory noticeable.
const LIST_PAGE: u32 = 500;

/// Messages per transaction (and per audit line) in a bulk operation: a
/// batch holds the store's write lock, which `serve`'s acceptance waits
/// for, so it stays small (milliseconds); and its ids, about 17 bytes
/// each, fit in one audit line's 8 KB detail.
const BATCH: u32 = 256;

/// A non-terminal gets a progress line every this many batches (a
/// terminal gets one updated in place after every batch).
const PROGRESS_EVERY: u64 = 20;

const LIST_HELP: &str = "\
Examples:
  oxirelay queue list                                  # the newest 100
  oxirelay queue list --state deferred --account office
  oxirelay queue list --after 3F2A9C0D11E4B7A8         # the next page
  oxirelay queue list --all --json | jq -r 'select(.attempts > 3) | .id'

Order: newest first (by submission time, then id). A page goes on after
the message --after names, so mail that arrives meanwhile never shifts it:
every message appears once across pages. When more remain, the command
that lists the next page is printed on standard error.

--json prints one JSON object per message and per line (NDJSON), as the
store is read: nothing is held back, so `--all --json` works at any size.
Fields: id, account, mail_from, recipients [{address, state, reply}],
size, submitted_by, state, attempts, created_at, next_attempt_at (Unix
seconds), last_error.";

const BULK_HELP: &str = "\
Select messages by id, or by --state, --account and --older-than (all that
are given must match), or every message with --all. --dry-run lists
exactly what would be changed and changes nothing (it writes no audit
line either). Large selections go in batches of 256, each one transaction
and one audit line (action queue.retry, queue.delete, queue.hold or
queue.release, naming the ids), with progress on standard error.

--json prints one JSON object per line (NDJSON): one per message changed
(or, with --dry-run, that would be), with action, dry_run, id, account,
state (before) and created_at; then a summary with \"done\": true,
affected, skipped (counts by state) and missing (ids not found).

A message in flight is being delivered right now and is never touched: it
is skipped (and counted), and the command can be run again once the
attempt has ended.";

#[derive(clap::Subcommand)]
pub enum QueueCommand {
    /// Messages in the queue, newest first, a page at a time.
    #[command(after_help = LIST_HELP)]
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Start after this message (the last id of the previous page).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
        /// At most this many messages [default: 100].
        #[arg(long, conflicts_with = "all", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Every message that matches (paged internally, streamed).
        #[arg(long)]
        all: bool,
        /// One JSON object per line (NDJSON).
        #[arg(long)]
        json: bool,
    },
    /// One message with its recipients and its event history (and with --body, its content).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        body: bool,
    },
    /// Make mail due now: deferred (and queued) mail, like `postqueue -f`.
    ///
    /// Without --state, a selection retries deferred and queued mail only;
    /// bounced or expired mail is retried when named by id or with
    /// --state bounced|expired (its refused recipients get another chance;
    /// delivered recipients are never sent to twice).
    #[command(after_help = format!("Examples:\n  oxirelay queue retry 3F2A9C0D11E4B7A8\n  oxirelay queue retry --all                    # flush: every deferred message\n  oxirelay queue retry --account office --dry-run\n  oxirelay queue retry --state bounced --older-than 1h\n\n{BULK_HELP}"))]
    Retry {
        /// Message ids, as `queue list` shows them.
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        bulk: BulkArgs,
    },
    /// Remove messages from the queue, like `postsuper -d`.
    #[command(after_help = format!("Examples:\n  oxirelay queue delete 3F2A9C0D11E4B7A8\n  oxirelay queue delete --state bounced --older-than 7d --dry-run\n  oxirelay queue delete --account lab --state deferred\n\nWithout --state every state matches (held, delivered ... ); deleted mail is gone for good.\n\n{BULK_HELP}"))]
    Delete {
        /// Message ids, as `queue list` shows them.
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        bulk: BulkArgs,
    },
    /// Put queued or deferred mail on hold, like `postsuper -h`: held mail is never delivered (nor expired) until released.
    #[command(after_help = format!("Examples:\n  oxirelay queue hold 3F2A9C0D11E4B7A8\n  oxirelay queue hold --account office          # e.g. while its mailbox is fixed\n  oxirelay queue list --state held\n\n{BULK_HELP}"))]
    Hold {
        /// Message ids, as `queue list` shows them.
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        bulk: BulkArgs,
    },
    /// Release held mail, like `postsuper -H`: due now, as it was before the hold.
    ///
    /// A message keeps its submission time while held: released after its
    /// maximum age, it expires at the next sweep (`queue retry ID` first
    /// gives an expired message a new lifetime).
    #[command(after_help = format!("Examples:\n  oxirelay queue release 3F2A9C0D11E4B7A8\n  oxirelay queue release --account office\n  oxirelay queue release --all --dry-run\n\n{BULK_HELP}"))]
    Release {
        /// Message ids, as `queue list` shows them.
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        bulk: BulkArgs,
    },
}

#[derive(clap::Args, Default)]
pub struct FilterArgs {
    /// Only messages in this state: queued, in_flight, deferred, held, delivered, bounced, expired.
    #[arg(long, value_parser = parse_state)]
    state: Option<MessageState>,
    /// Only messages of this account.
    #[arg(long)]
    account: Option<String>,
    /// Only messages submitted longer ago than this (30m, 12h, 7d).
    #[arg(long, value_name = "AGE", value_parser = super::parse_duration)]
    older_than: Option<Duration>,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.state.is_none() && self.account.is_none() && self.older_than.is_none()
    }

    fn to_filter(&self, now: i64) -> QueueFilter {
        QueueFilter {
            state: self.state,
            account: self.account.clone(),
            created_before: self
                .older_than
                .map(|age| now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX))),
        }
    }
}

#[derive(clap::Args)]
pub struct BulkArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Every message the action applies to (required when no id and no filter is given).
    #[arg(long)]
    all: bool,
    /// Say exactly what would be changed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object per line (NDJSON).
    #[arg(long)]
    json: bool,
}

fn parse_state(text: &str) -> Result<MessageState, String> {
    MessageState::parse(text).ok_or_else(|| {
        format!(
            "unknown state {text:?}; use queued, in_flight, deferred, held, delivered, bounced or expired"
        )
    })
}

pub async fn run(config: Option<PathBuf>, command: QueueCommand) -> anyhow::Result<ExitCode> {
    let context = Context::load(config).await?;
    let store = &context.store;
    match command {
        QueueCommand::List {
            filter,
            after,
            limit,
            all,
            json,
        } => {
            let limit = if all {
                None
            } else {
                Some(limit.unwrap_or(100))
            };
            list(store.as_ref(), &filter, after, limit, json).await
        }
        QueueCommand::Show { id, json, body } => show(store.as_ref(), id, json, body).await,
        QueueCommand::Retry { ids, bulk } => {
            bulk_run(&context, QueueAction::Retry, ids, bulk).await
        }
        QueueCommand::Delete { ids, bulk } => {
            bulk_run(&context, QueueAction::Delete, ids, bulk).await
        }
        QueueCommand::Hold { ids, bulk } => bulk_run(&context, QueueAction::Hold, ids, bulk).await,
        QueueCommand::Release { ids, bulk } => {
            bulk_run(&context, QueueAction::Release, ids, bulk).await
        }
    }
}

/// Standard output, buffered, flushed after each page. A reader that goes
/// away (`| head`) ends the listing quietly instead of with a panic.
struct Output(std::io::BufWriter<std::io::Stdout>);

impl Output {
    fn new() -> Self {
        Output(std::io::BufWriter::new(std::io::stdout()))
    }

    /// False once the reader has gone.
    fn line(&mut self, text: &str) -> anyhow::Result<bool> {
        match writeln!(self.0, "{text}") {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("cannot write to standard output"),
        }
    }

    fn flush(&mut self) -> anyhow::Result<bool> {
        match self.0.flush() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("cannot write to standard output"),
        }
    }
}

fn cursor_of(message: &QueuedMessage) -> ListCursor {
    ListCursor {
        created_at: message.created_at,
        id: message.id.clone(),
    }
}

async fn list(
    store: &dyn Store,
    filter_args: &FilterArgs,
    after: Option<String>,
    limit: Option<u32>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let filter = filter_args.to_filter(crate::clock::now_unix());
    let mut cursor = match &after {
        Some(id) => Some(store.list_cursor(&MessageId(id.clone())).await?.ok_or_else(|| {
            anyhow::anyhow!(
                "no message {id} in the queue to list after (deleted since the last page?); \
                 start again without --after, or give the id of a message still listed"
            )
        })?),
        None => None,
    };
    let mut out = Output::new();
    let mut printed: u64 = 0;
    let mut more = false;
    // Bounded: each turn moves the cursor past at least one message, and
    // ends at the first short page.
    loop {
        let wanted = match limit {
            // One beyond the limit, to tell whether another page exists.
            Some(limit) => (u64::from(limit) + 1 - printed).min(u64::from(LIST_PAGE)) as u32,
            None => LIST_PAGE,
        };
        let page = store
            .list_messages(&filter, cursor.as_ref(), wanted)
            .await?;
        let full = page.len() == wanted as usize;
        for message in &page {
            if limit.is_some_and(|limit| printed == u64::from(limit)) {
                more = true;
                break;
            }
            if !json && printed == 0 {
                out.line(&format!(
                    "{:<25} {:<10} {:<12} {:<20} {:>8} {:>4} {:<20} {:<24} FROM → TO",
                    "ID", "STATE", "ACCOUNT", "CREATED", "SIZE", "TRY", "NEXT", "LEASED BY"
                ))?;
            }
            let shown = if json {
                out.line(&serde_json::to_string(message)?)?
            } else {
                print_row(&mut out, message)?
            };
            if !shown {
                return Ok(ExitCode::SUCCESS);
            }
            printed += 1;
            cursor = Some(cursor_of(message));
        }
        if !out.flush()? {
            return Ok(ExitCode::SUCCESS);
        }
        if more || !full {
            break;
        }
    }
    if printed == 0 && !json {
        eprintln!(
            "{}",
            if after.is_none() && filter == QueueFilter::default() {
                "the queue is empty".to_string()
            } else {
                format!(
                    "no message matches ({filter}{})",
                    after.map(|id| format!(", after {id}")).unwrap_or_default()
                )
            }
        );
    }
    if more && let Some(last) = &cursor {
        eprintln!(
            "more messages: oxirelay queue list{} --after {}",
            rerun_flags(filter_args, limit, json),
            last.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The flags that list the next page the same way.
fn rerun_flags(filter: &FilterArgs, limit: Option<u32>, json: bool) -> String {
    let mut flags = String::new();
    if let Some(state) = filter.state {
        flags.push_str(&format!(" --state {state}"));
    }
    if let Some(account) = &filter.account {
        flags.push_str(&format!(" --account {account}"));
    }
    if let Some(age) = filter.older_than {
        flags.push_str(&format!(" --older-than {}s", age.as_secs()));
    }
    if let Some(limit) = limit.filter(|l| *l != 100) {
        flags.push_str(&format!(" --limit {limit}"));
    }
    if json {
        flags.push_str(" --json");
    }
    flags
}

fn print_row(out: &mut Output, m: &QueuedMessage) -> anyhow::Result<bool> {
    let to: Vec<&str> = m.recipients.iter().map(|r| r.address.as_str()).collect();
    let next = if m.state.is_final() {
        "-".to_string()
    } else if m.state == MessageState::Held {
        "(held)".to_string()
    } else {
        format_unix(m.next_attempt_at)
    };
    // Which relay instance is delivering it, with several on one store.
    let leased_by = m.lease_instance.as_deref().unwrap_or("-");
    let mut shown = out.line(&format!(
        "{:<25} {:<10} {:<12} {:<20} {:>8} {:>4} {:<20} {:<24} {} → {}",
        m.id,
        m.state,
        m.account,
        format_unix(m.created_at),
        m.size,
        m.attempts,
        next,
        leased_by,
        m.mail_from,
        to.join(", ")
    ))?;
    if let Some(error) = &m.last_error
        && !m.state.is_final()
        && shown
    {
        shown = out.line(&format!("  └ {error}"))?;
    }
    Ok(shown)
}

async fn show(store: &dyn Store, id: String, json: bool, body: bool) -> anyhow::Result<ExitCode> {
    let (message, content) = store
        .message(&MessageId(id.clone()))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no message {id} in the queue"))?;
    // Its history (issue 12, CLI parity with `GET /v1/messages/{id}`).
    let events = store.message_events(&message.id).await?;
    if json {
        let mut value = serde_json::to_value(&message)?;
        value["events"] = serde_json::to_value(&events)?;
        if body {
            value["body"] = String::from_utf8_lossy(&content).into_owned().into();
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("id:         {}", message.id);
        println!("state:      {}", message.state);
        println!("account:    {}", message.account);
        println!("from:       {}", message.mail_from);
        println!(
            "submitted:  {} by {}",
            format_unix(message.created_at),
            message.submitted_by
        );
        println!("attempts:   {}", message.attempts);
        if let (Some(instance), Some(until)) = (&message.lease_instance, message.lease_expires_at) {
            println!("leased by:  {instance} until {}", format_unix(until));
        }
        if let Some(error) = &message.last_error {
            println!("last error: {error}");
        }
        for r in &message.recipients {
            println!(
                "  {:<40} {:<10} {}",
                r.address,
                r.state.as_str(),
                r.reply.as_deref().unwrap_or("")
            );
        }
        println!("history:");
        println!("  {}  queued", format_unix(message.created_at));
        for stored in &events {
            println!(
                "  {}  {}  {}",
                format_unix(stored.event.at),
                stored.event.kind,
                stored.event.detail
            );
        }
        if body {
            println!("\n{}", String::from_utf8_lossy(&content));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "retried", "deleted", "held", "released".
fn past(action: QueueAction) -> &'static str {
    match action {
        QueueAction::Retry => "retried",
        QueueAction::Delete => "deleted",
        QueueAction::Hold => "held",
        QueueAction::Release => "released",
    }
}

/// The passes a selection by filter makes: one per state the action is
/// about, so that each pass is a range of one index (a flush of deferred
/// mail does not read every delivered message on the way).
fn passes(action: QueueAction, filter: &QueueFilter) -> anyhow::Result<Vec<QueueFilter>> {
    let with = |state| QueueFilter {
        state,
        ..filter.clone()
    };
    if let Some(state) = filter.state {
        let applies = action.applies_to();
        anyhow::ensure!(
            applies.contains(&state),
            "queue {action} does not apply to {state} messages; it applies to {}{}",
            applies
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            match state {
                MessageState::InFlight =>
                    " (a message in flight is being delivered now: wait for the attempt to end)",
                MessageState::Delivered => " (delivered mail is never sent twice)",
                _ => "",
            }
        );
        return Ok(vec![filter.clone()]);
    }
    Ok(match action {
        QueueAction::Retry => vec![
            with(Some(MessageState::Deferred)),
            with(Some(MessageState::Queued)),
        ],
        QueueAction::Hold => vec![
            with(Some(MessageState::Queued)),
            with(Some(MessageState::Deferred)),
        ],
        QueueAction::Release => vec![with(Some(MessageState::Held))],
        QueueAction::Delete => vec![filter.clone()],
    })
}

/// What a whole bulk operation did, for its summary.
#[derive(Default)]
struct Tally {
    affected: u64,
    skipped: BTreeMap<&'static str, u64>,
    missing: Vec<MessageId>,
    /// The first few ids named that could not be changed, for the error.
    refused: Vec<(MessageId, MessageState)>,
}

struct Progress {
    total: u64,
    batches: u64,
    terminal: bool,
    shown: bool,
}

impl Progress {
    fn step(&mut self, action: QueueAction, done: u64, dry_run: bool) {
        self.batches += 1;
        // Only worth showing when it takes more than one batch.
        if self.total <= u64::from(BATCH) {
            return;
        }
        let verb = if dry_run { "checked" } else { past(action) };
        if self.terminal {
            eprint!("\r{action}: {done} of about {} {verb}", self.total);
            self.shown = true;
        } else if self.batches.is_multiple_of(PROGRESS_EVERY) {
            eprintln!("{action}: {done} of about {} {verb}", self.total);
        }
    }

    fn end(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

async fn bulk_run(
    context: &Context,
    action: QueueAction,
    ids: Vec<String>,
    args: BulkArgs,
) -> anyhow::Result<ExitCode> {
    let store = context.store.as_ref();
    let now = crate::clock::now_unix();
    let by_id = !ids.is_empty();
    anyhow::ensure!(
        !(by_id && (args.all || !args.filter.is_empty())),
        "give either message ids or a selection (--state, --account, --older-than, --all), not both"
    );
    anyhow::ensure!(
        by_id || args.all || !args.filter.is_empty(),
        "name the messages to {action}: by id, by --state, --account or --older-than, or --all for every message it applies to (try --dry-run first)"
    );
    let filter = args.filter.to_filter(now);
    let mut out = Output::new();
    let mut tally = Tally::default();
    let mut progress = Progress {
        total: 0,
        batches: 0,
        terminal: std::io::stderr().is_terminal(),
        shown: false,
    };
    let report = |out: &mut Output,
                  tally: &mut Tally,
                  outcome: crate::store::BatchOutcome,
                  scope: &str|
     -> anyhow::Result<()> {
        for message in &outcome.affected {
            print_affected(out, action, message, args.dry_run, args.json)?;
        }
        for message in &outcome.skipped {
            let why = if message.body_kept {
                message.state.as_str()
            } else {
                "body removed by retention"
            };
            *tally.skipped.entry(why).or_default() += 1;
            if by_id && tally.refused.len() < 10 {
                tally.refused.push((message.id.clone(), message.state));
            }
        }
        tally.affected += outcome.affected.len() as u64;
        tally.missing.extend(outcome.missing);
        if !args.dry_run && !outcome.affected.is_empty() {
            audit_batch(context, action, &outcome.affected, scope);
        }
        out.flush()?;
        Ok(())
    };
    if by_id {
        let ids: Vec<MessageId> = ids.into_iter().map(MessageId).collect();
        progress.total = ids.len() as u64;
        for chunk in ids.chunks(BATCH as usize) {
            let selection = QueueSelection::Ids(chunk.to_vec());
            let outcome = store
                .queue_batch(action, &selection, None, BATCH, now, args.dry_run)
                .await
                .with_context(|| stopped(action, &tally, args.dry_run))?;
            report(&mut out, &mut tally, outcome, "by id")?;
            progress.step(action, tally.affected, args.dry_run);
        }
    } else {
        let passes = passes(action, &filter)?;
        for pass in &passes {
            progress.total += store.count_messages(pass).await?;
        }
        for pass in passes {
            let selection = QueueSelection::Matching(pass.clone());
            let scope = pass.to_string();
            let mut after: Option<ListCursor> = None;
            // Bounded: each batch moves the cursor past the messages it
            // read, and the pass ends at the first short batch.
            loop {
                let outcome = store
                    .queue_batch(action, &selection, after.as_ref(), BATCH, now, args.dry_run)
                    .await
                    .with_context(|| stopped(action, &tally, args.dry_run))?;
                let next = outcome.next.clone();
                report(&mut out, &mut tally, outcome, &scope)?;
                progress.step(action, tally.affected, args.dry_run);
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
    }
    progress.end();
    summarize(&mut out, action, &filter, by_id, &args, &tally)?;
    out.flush()?;
    if by_id && (!tally.missing.is_empty() || !tally.refused.is_empty()) {
        let mut problems: Vec<String> = tally
            .missing
            .iter()
            .take(10)
            .map(|id| format!("no message {id} in the queue"))
            .collect();
        problems.extend(tally.refused.iter().map(|(id, state)| {
            let hint = match (action, state) {
                (_, MessageState::InFlight) => {
                    ": it is being delivered now; run again once the attempt has ended"
                }
                (QueueAction::Release, _) => ": only held messages are released",
                (_, MessageState::Held) => ": it is held; `oxirelay queue release` it first",
                (QueueAction::Retry, MessageState::Delivered) => {
                    ": delivered mail is never sent twice"
                }
                _ => "",
            };
            format!("message {id} is {state}, which {action} does not apply to{hint}")
        }));
        anyhow::bail!("{}", problems.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

/// What an operation that failed half way had done: each batch before
/// was committed (and audited) on its own, and running the same command
/// again picks up what is left, since what was done no longer matches.
fn stopped(action: QueueAction, tally: &Tally, dry_run: bool) -> String {
    if dry_run {
        format!(
            "queue {action} --dry-run stopped after {} messages",
            tally.affected
        )
    } else {
        format!(
            "queue {action} stopped after {} messages {} (those stay {}; run the same command again to go on)",
            tally.affected,
            past(action),
            past(action)
        )
    }
}

fn print_affected(
    out: &mut Output,
    action: QueueAction,
    message: &AffectedMessage,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let line = serde_json::json!({
            "action": action,
            "dry_run": dry_run,
            "id": message.id,
            "account": message.account,
            "state": message.state,
            "created_at": message.created_at,
        });
        out.line(&line.to_string())?;
    } else if dry_run {
        out.line(&format!(
            "would {action:<7} {:<25} {:<10} {:<12} {}",
            message.id,
            message.state,
            message.account,
            format_unix(message.created_at)
        ))?;
    }
    Ok(())
}

fn summarize(
    out: &mut Output,
    action: QueueAction,
    filter: &QueueFilter,
    by_id: bool,
    args: &BulkArgs,
    tally: &Tally,
) -> anyhow::Result<()> {
    if args.json {
        let line = serde_json::json!({
            "action": action,
            "dry_run": args.dry_run,
            "done": true,
            "selection": if by_id { "by id".to_string() } else { filter.to_string() },
            "affected": tally.affected,
            "skipped": tally.skipped,
            "missing": tally.missing,
        });
        out.line(&line.to_string())?;
        return Ok(());
    }
    let skipped: u64 = tally.skipped.values().sum();
    let skipped = if skipped == 0 {
        String::new()
    } else {
        format!(
            "; {skipped} skipped ({})",
            tally
                .skipped
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let scope = if by_id {
        String::new()
    } else {
        format!(" ({filter})")
    };
    let verb = if args.dry_run {
        format!("would be {}", past(action))
    } else {
        past(action).to_string()
    };
    eprintln!(
        "{} message{} {verb}{scope}{skipped}",
        tally.affected,
        if tally.affected == 1 { "" } else { "s" }
    );
    if args.dry_run && tally.affected > 0 {
        eprintln!("nothing was changed (dry run); run again without --dry-run to {action} them");
    }
    Ok(())
}

/// One audit line per batch: what was done, to which messages, on whose
/// say. A line that cannot be written does not undo the batch (the log
/// says so loudly and records the gap in its next line).
fn audit_batch(context: &Context, action: QueueAction, affected: &[AffectedMessage], scope: &str) {
    let accounts: std::collections::BTreeSet<&str> =
        affected.iter().map(|m| m.account.as_str()).collect();
    let ids: Vec<&str> = affected.iter().map(|m| m.id.0.as_str()).collect();
    let _ = context.audit.append(AuditEntry {
        actor: actor(),
        action: format!("queue.{action}"),
        account: (accounts.len() == 1)
            .then(|| accounts.first().map(|a| a.to_string()))
            .flatten(),
        token_fingerprint: None,
        message_id: (affected.len() == 1).then(|| affected[0].id.0.clone()),
        detail: format!(
            "{} message{} {} ({scope}): {}",
            affected.len(),
            if affected.len() == 1 { "" } else { "s" },
            past(action),
            ids.join(" ")
        ),
    });
}
