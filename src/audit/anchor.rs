//! The anchor: the newest line's sequence number and hash, kept in the
//! store as well, so that deleting lines from the end of the log (which
//! leaves a perfectly valid, shorter chain) is evident. Each log has its
//! own, under its chain id ([`super::chain_id`]): instances sharing a
//! store (PostgreSQL, several hosts) each write their own log.
//!
//! An append must never wait for the store (a busy SQLite file can take
//! seconds, and mail waits behind the audit line), so the anchor is moved by
//! a thread of its own: appends hand it their newest line, it keeps only the
//! latest (coalescing bursts into one write) and writes it. The thread has
//! its own single-threaded runtime so that it runs whatever the caller's
//! runtime is doing, including when the log is dropped at the end of a
//! command, where [`AnchorWriter::flush`] waits for the last anchor.
//!
//! Before moving the anchor on, the writer checks that the line the store
//! names is still in the log. If it is not, lines were deleted or rewritten
//! since: the writer keeps the anchor where it is and hands back a note,
//! which the log writes as an `audit.anchor_mismatch` line, so the loss is
//! recorded in the keyed chain itself rather than papered over.

use super::AuditEntry;
use super::files::{self, LineLookup};
use crate::store::{AuditAnchor, Store};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the writer tries when other processes keep moving the anchor
/// between its read and its write.
const MAX_RACES: usize = 16;

/// The least time between two anchor writes, unless a flush asks for one:
/// a busy relay appends a line per delivery, and an anchor write per line
/// would be a second writer on the SQLite file competing with the queue's
/// commits. Lines of the last fraction of a second before a crash may then
/// be unanchored, which `audit verify` reports as such.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Default)]
struct State {
    /// The newest line handed over by an append.
    wanted: Option<AuditAnchor>,
    /// The highest sequence number dealt with (written, or found already
    /// passed by another process, or given up on with an error logged).
    settled: u64,
    stop: bool,
    /// Notes for the log to write (anchor mismatches).
    notes: Vec<AuditEntry>,
    /// The stored anchor already reported as missing from the log, so that
    /// it is reported once and the anchor then moves on.
    reported: Option<AuditAnchor>,
}

struct Shared {
    state: Mutex<State>,
    settled: Condvar,
    wake: tokio::sync::Notify,
    /// A flush is waiting: write now, not after [`MIN_INTERVAL`].
    urgent: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct AnchorWriter {
    shared: Arc<Shared>,
}

impl AnchorWriter {
    pub fn start(
        store: Arc<dyn Store>,
        log: PathBuf,
        chain: String,
    ) -> std::io::Result<AnchorWriter> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            urgent: tokio::sync::Notify::new(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("oxirelay-audit-anchor".into())
            .spawn(move || runtime.block_on(run(thread_shared, store, log, chain)))?;
        Ok(AnchorWriter { shared })
    }

    /// Asks for the anchor to be moved to `anchor` (or further).
    pub fn want(&self, anchor: AuditAnchor) {
        let mut state = self.shared.lock();
        if state.wanted.as_ref().is_none_or(|w| w.seq < anchor.seq) {
            state.wanted = Some(anchor);
        }
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Waits until the newest anchor asked for is dealt with, at most
    /// `timeout`; false if that did not happen in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.shared.urgent.notify_one();
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            let wanted = state.wanted.as_ref().map_or(0, |w| w.seq);
            if state.settled >= wanted {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .settled
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn take_notes(&self) -> Vec<AuditEntry> {
        std::mem::take(&mut self.shared.lock().notes)
    }
}

impl Drop for AnchorWriter {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        self.shared.urgent.notify_one();
    }
}

async fn run(shared: Arc<Shared>, store: Arc<dyn Store>, log: PathBuf, chain: String) {
    loop {
        let (next, reported) = {
            let state = shared.lock();
            let next = state.wanted.clone().filter(|w| w.seq > state.settled);
            if next.is_none() && state.stop {
                return;
            }
            (next, state.reported.clone())
        };
        let Some(wanted) = next else {
            // notify_one keeps a permit when nobody waits, so a want()
            // between the check above and this await is not lost.
            shared.wake.notified().await;
            continue;
        };
        let outcome = advance(&*store, &log, &chain, &wanted, reported.as_ref()).await;
        settle(&shared, &wanted, outcome);
        tokio::select! {
            () = tokio::time::sleep(MIN_INTERVAL) => {}
            () = shared.urgent.notified() => {}
        }
    }
}

/// Records what became of `wanted` and wakes whoever waits in `flush`.
fn settle(shared: &Shared, wanted: &AuditAnchor, outcome: Result<Advance, String>) {
    let mut state = shared.lock();
    match outcome {
        Ok(Advance::Done) => {}
        Ok(Advance::Mismatch { stored, note }) => {
            tracing::error!(detail = %note.detail, "the audit log lost lines since the store's anchor was written");
            state.reported = Some(stored);
            state.notes.push(note);
        }
        Err(reason) => tracing::error!(
            error = %reason,
            "cannot move the audit log's anchor in the store; the log itself is written, and the next line tries again"
        ),
    }
    state.settled = state.settled.max(wanted.seq);
    drop(state);
    shared.settled.notify_all();
}

enum Advance {
    Done,
    Mismatch {
        stored: AuditAnchor,
        note: AuditEntry,
    },
}

async fn advance(
    store: &dyn Store,
    log: &std::path::Path,
    chain: &str,
    wanted: &AuditAnchor,
    reported: Option<&AuditAnchor>,
) -> Result<Advance, String> {
    for _ in 0..MAX_RACES {
        let stored = store.audit_anchor(chain).await.map_err(|e| e.to_string())?;
        if let Some(stored) = &stored
            && reported != Some(stored)
        {
            // Reading a few lines back from the end: the writer's own
            // thread, so blocking file reads are fine here. Checked even
            // when the store is ahead: a process that wrote a later line
            // wrote it to the log first, so it is there unless deleted.
            let found = files::find_line_hash(log, stored.seq)
                .map_err(|e| format!("cannot read {}: {e}", log.display()))?;
            let what = match found {
                LineLookup::Hash(hash) if hash == stored.hash => None,
                LineLookup::Hash(_) => {
                    Some("has another line in its place: the log was rewritten from there")
                }
                LineLookup::Missing => Some("is not in the log: lines were deleted"),
                // Older than the oldest file kept: its file went by
                // retention (an anchor the store lagged on for that long)
                // or by hand. Which one is `audit verify`'s to tell, from
                // the retention lines; the anchor guards the end, and
                // moving it on keeps it guarding.
                LineLookup::BeforeStart => None,
            };
            if let Some(what) = what {
                let note = AuditEntry {
                    actor: super::NOTE_ACTOR.into(),
                    action: "audit.anchor_mismatch".into(),
                    account: None,
                    token_fingerprint: None,
                    message_id: None,
                    detail: format!(
                        "the store's anchor names line {} (hash {}), which {what}; the chain goes on from the log's last line",
                        stored.seq, stored.hash
                    ),
                };
                return Ok(Advance::Mismatch {
                    stored: stored.clone(),
                    note,
                });
            }
            if stored.seq >= wanted.seq {
                // Another process wrote a later line and its anchor.
                return Ok(Advance::Done);
            }
        }
        // An anchor already reported as lost is replaced whatever its
        // number: the chain on record goes on from the log's real end.
        if store
            .advance_audit_anchor(chain, stored.as_ref(), wanted)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(Advance::Done);
        }
    }
    Err("other processes kept moving the anchor".into())
}
