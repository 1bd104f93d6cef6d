//! The audit log: every OAuth event, operator action and message outcome as
//! one JSON line, append-only, never a token (only fingerprints).
//!
//! Tampering is evident, and the log never stops mail:
//!
//! - **Keyed chain.** Each line carries its sequence number, the SHA-256 of
//!   the line before it, and an HMAC under a key derived from the master
//!   key ([`key`]): an edited line fails its MAC even when whoever edited it
//!   recomputed every hash after it. The hash chain still links every byte,
//!   so lines keyed with a master key since rotated away and destroyed stay
//!   covered by the first later line whose key is at hand. The format is in
//!   [`line`].
//! - **Anchored.** The newest line's sequence number and hash are also kept
//!   in the store ([`anchor`]), so lines deleted from the end (which leaves a
//!   valid, shorter chain) are evident too.
//! - **Bounded.** Every field is cut to a budget, with a marker, so no line
//!   exceeds [`MAX_LINE_BYTES`] whatever an upstream server replied.
//! - **Self-repairing end.** A write cut short (a crash, a full disk) leaves
//!   a torn last line: the next writer sets those bytes aside in a file of
//!   their own, records that in the chain, and goes on from the last whole
//!   line. A failed append is logged loudly, never stops the caller's work,
//!   and the next line that can be written records how many were lost.
//! - **Rotation.** The chain goes on across rotated files ([`files`]);
//!   `rotate_bytes` and `rotate_every` in `[audit]` make the writer rotate
//!   by size and by age (the age of the file's first line, checked at each
//!   append and on start).
//! - **Retention.** `keep` in `[audit]` removes the oldest rotated files
//!   once their every line is older than it, and records each removal in
//!   the chain first ([`retention`]), so `audit verify` tells a start
//!   removed by retention from one deleted by hand.
//!
//! Several processes append to one log (`serve` and every CLI command), so
//! each append takes an exclusive lock on the file and reads the chain's
//! end from the file itself, not from memory; it opens the file by name
//! each time, so a rotation by another process (or by logrotate) is seen.
//!
//! Within a process, appends that arrive together share one write and one
//! `fdatasync` (group commit, as the queue does): each returns once its
//! line is on disk, but a relay delivering hundreds of messages a second
//! does not pay a disk flush per outcome, one after another (bench/peers.sh
//! measured that as the cap on delivery: about 4 ms per flush, about 210
//! messages/s). [`AuditLog::append_async`] waits on tokio's blocking pool,
//! so the flush never holds up a runtime thread.

mod anchor;
mod files;
mod key;
mod line;
mod read;
mod retention;
mod verify;

pub use key::AuditKey;
pub use line::MAX_LINE_BYTES;
pub use read::{AuditRecord, AuditSearch, search};
pub use retention::RemovedFile;
pub use verify::{AnchorCheck, CheckedFile, RetentionStart, VerifyReport, verify};

use crate::secret::MasterKey;
use crate::store::{AuditAnchor, Store};
use files::Tail;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

/// Who the log names as the author of the lines it writes about itself.
const NOTE_ACTOR: &str = "oxirelay";

/// How long dropping the log waits for the store to take the last anchor:
/// a SQLite commit takes milliseconds, a busy store up to its 10 s busy
/// timeout; a command should not hang on exit longer than this.
const ANCHOR_FLUSH: Duration = Duration::from_secs(5);

/// How often an append reopens the log when another process rotated or
/// replaced it between the open and the lock.
const MAX_REOPENS: usize = 8;

/// How often a long-running writer looks for rotated files past their
/// retention, besides on open and right after it rotates: a look lists the
/// directory and reads both ends of every rotated file, too much for every
/// append, and retention is counted in days.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "cannot open the audit log {path}: {source}; check [audit] path and the directory's permissions"
    )]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write the audit log {path}: {source}; the event is counted and the next line written records the gap"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Broken {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// The lines are whole, but their MACs cannot be checked with the keys
    /// at hand.
    #[error("{0}")]
    Unverifiable(String),
    /// The log does not reach, or does not contain, the line the store's
    /// anchor names.
    #[error("{0}")]
    Anchor(String),
}

/// What happened, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Who caused it: "relay", "cli:<user>", "user:<name>", "api:<key>".
    pub actor: String,
    /// e.g. "token.issued", "account.revoked", "message.delivered".
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

fn note(action: &str, detail: String) -> AuditEntry {
    AuditEntry {
        actor: NOTE_ACTOR.into(),
        action: action.into(),
        account: None,
        token_fingerprint: None,
        message_id: None,
        detail,
    }
}

/// The wall clock the log stamps its lines with and judges ages by. Tests
/// drive it by hand; the relay uses the system's.
#[derive(Clone)]
pub struct AuditClock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl AuditClock {
    pub fn system() -> AuditClock {
        AuditClock(Arc::new(SystemTime::now))
    }

    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> AuditClock {
        AuditClock(Arc::new(now))
    }

    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for AuditClock {
    fn default() -> Self {
        AuditClock::system()
    }
}

impl std::fmt::Debug for AuditClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditClock")
    }
}

/// How the log is written, from `[audit]`.
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    /// Rotate the log once it has reached this many bytes; never if `None`.
    pub rotate_bytes: Option<u64>,
    /// Rotate the log once its first line is this old; never if `None`.
    pub rotate_every: Option<Duration>,
    /// Remove rotated files whose every line is older than this; never
    /// (keep them forever) if `None`.
    pub keep: Option<Duration>,
    pub clock: AuditClock,
}

impl From<&crate::config::AuditConfig> for AuditOptions {
    fn from(config: &crate::config::AuditConfig) -> Self {
        AuditOptions {
            rotate_bytes: config.rotate_bytes.filter(|&bytes| bytes > 0),
            rotate_every: config.rotate_every.filter(|d| !d.is_zero()),
            keep: config.keep.filter(|d| !d.is_zero()),
            clock: AuditClock::system(),
        }
    }
}

/// What waits to be written, and what could not be written yet.
#[derive(Default)]
struct Pending {
    /// Lines about the log itself, written before the next entry.
    notes: Vec<AuditEntry>,
    /// Entries lost since the last line that was written.
    failed: u64,
    last_error: Option<String>,
    /// Entries for the next group write, by the ticket of their appender.
    queue: Vec<(u64, AuditEntry)>,
    next_ticket: u64,
    /// An appender is writing a batch now; the others wait for it.
    writing: bool,
    /// Outcomes of written batches not yet collected by their appenders.
    outcomes: HashMap<u64, Result<(), (std::io::ErrorKind, String)>>,
}

/// An open audit log. Appends are serialised (across processes too) and
/// flushed to disk.
pub struct AuditLog {
    path: PathBuf,
    key: AuditKey,
    options: AuditOptions,
    pending: Mutex<Pending>,
    /// Signalled when a group write is done (on disk, or failed).
    written: Condvar,
    anchor: Option<anchor::AnchorWriter>,
    /// When this writer last looked for files past their retention.
    retention_checked: Mutex<Option<SystemTime>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The log file, opened by name and locked exclusively; unlocked on drop.
fn open_locked(path: &Path) -> std::io::Result<std::fs::File> {
    for _ in 0..MAX_REOPENS {
        let file = files::open_for_append(path)?;
        file.lock()?;
        if same_file(&file, path)? {
            return Ok(file);
        }
        // Rotated or replaced between our open and our lock: the lines go
        // to the file that now has the name.
    }
    Err(std::io::Error::other(
        "the log kept being replaced while it was being opened",
    ))
}

#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    Ok(match std::fs::metadata(path) {
        Ok(named) => open.dev() == named.dev() && open.ino() == named.ino(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    })
}

#[cfg(not(unix))]
fn same_file(_file: &std::fs::File, _path: &Path) -> std::io::Result<bool> {
    Ok(true)
}

/// The name of the chain whose log is at `path`, under which the store
/// keeps its anchor: this host's name and the log's absolute path
/// (`mail1:/var/log/oxirelay/audit.jsonl`). Processes on one host appending
/// to one file share a chain; instances on other hosts, or with another
/// `[audit] path`, each have their own.
pub fn chain_id(path: &Path) -> String {
    let absolute = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf());
    format!("{}:{}", crate::instance::host_name(), absolute.display())
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log. Fails only if the file cannot
    /// be opened at all; a damaged end is set aside and recorded, and
    /// nothing in the file's content keeps the relay from starting.
    pub fn open(
        path: &Path,
        key: &MasterKey,
        options: AuditOptions,
    ) -> Result<AuditLog, AuditError> {
        files::open_for_append(path).map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let log = AuditLog {
            path: path.to_path_buf(),
            key: AuditKey::derive(key),
            options,
            pending: Mutex::new(Pending::default()),
            written: Condvar::new(),
            anchor: None,
            retention_checked: Mutex::new(None),
        };
        // Writes nothing unless the end needed repair, the file is past its
        // age or rotated files past their retention (then their lines).
        let mut notes = Vec::new();
        if let Err(e) = log.write_at(&mut notes, true) {
            tracing::error!(log = %path.display(), error = %e, "cannot repair the end of the audit log; appends will try again");
            log.lock_pending().notes = notes;
        }
        Ok(log)
    }

    /// Keeps the chain's anchor in `store` as well (see [`anchor`]).
    pub fn with_anchor(mut self, store: Arc<dyn Store>) -> Self {
        match anchor::AnchorWriter::start(store, self.path.clone(), chain_id(&self.path)) {
            Ok(writer) => {
                // Lines written by `open` (retention's records, a repair
                // note) came before the writer: hand it the end now, so a
                // command that appends nothing still anchors them.
                match files::last_line(&self.path) {
                    Ok(Some(last)) => writer.want(AuditAnchor {
                        seq: last.seq,
                        hash: last.hash,
                    }),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(log = %self.path.display(), error = %e, "cannot read the audit log's end for its anchor; the next append hands it over")
                    }
                }
                self.anchor = Some(writer);
            }
            Err(e) => tracing::error!(
                error = %e,
                "cannot start the audit anchor's thread; the log is written, but not anchored in the store"
            ),
        }
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of the master key whose audit key MACs new lines.
    pub fn key_id(&self) -> u32 {
        self.key.id()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic mid-append leaves counters and notes, still usable.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one entry (cut to size) and returns once it is on disk.
    /// Appenders that arrive while a write is in progress are written
    /// together next, with one flush: one of them writes, the others wait.
    /// On failure the error is logged here, the entry is counted, and the
    /// next line written says how many were lost: callers may go on with
    /// their work whatever this returns.
    pub fn append(&self, entry: AuditEntry) -> Result<(), AuditError> {
        self.append_all(vec![entry])
    }

    /// [`AuditLog::append`] for several entries, in order, written in one
    /// batch (they join the same write and flush); returns once all are on
    /// disk, with the first error if any could not be written.
    pub fn append_all(&self, entries: Vec<AuditEntry>) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pending = self.lock_pending();
        let first = pending.next_ticket;
        for entry in entries {
            let ticket = pending.next_ticket;
            pending.next_ticket += 1;
            pending.queue.push((ticket, entry));
        }
        let mine = first..pending.next_ticket;
        loop {
            // All were queued under one lock, so one write takes them all.
            if mine.clone().all(|t| pending.outcomes.contains_key(&t)) {
                let mut first_error = Ok(());
                for ticket in mine {
                    if let Some(Err((kind, message))) = pending.outcomes.remove(&ticket)
                        && first_error.is_ok()
                    {
                        first_error = Err(AuditError::Write {
                            path: self.path.clone(),
                            source: std::io::Error::new(kind, message),
                        });
                    }
                }
                return first_error;
            }
            if pending.writing {
                pending = self
                    .written
                    .wait(pending)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            pending.writing = true;
            let tickets: Vec<u64> = pending.queue.iter().map(|(t, _)| *t).collect();
            let mut batch = std::mem::take(&mut pending.notes);
            if let Some(anchor) = &self.anchor {
                batch.extend(anchor.take_notes());
            }
            if pending.failed > 0 {
                batch.push(note(
                    "audit.gap",
                    format!(
                        "{} audit events could not be written before this line (last error: {}); they are missing from the log",
                        pending.failed,
                        pending.last_error.as_deref().unwrap_or("unknown")
                    ),
                ));
            }
            batch.extend(
                std::mem::take(&mut pending.queue)
                    .into_iter()
                    .map(|(_, e)| e),
            );
            drop(pending);
            let result = self.write(&mut batch);
            pending = self.lock_pending();
            pending.writing = false;
            let outcome = match result {
                Ok(()) => {
                    pending.failed = 0;
                    pending.last_error = None;
                    Ok(())
                }
                Err(source) => {
                    // The entries themselves are lost (and counted); the
                    // notes about the log wait for the next line. A gap
                    // note is made anew.
                    batch.truncate(batch.len() - tickets.len());
                    batch.retain(|e| e.action != "audit.gap");
                    pending.notes = batch;
                    pending.failed += tickets.len() as u64;
                    pending.last_error = Some(source.to_string());
                    tracing::error!(
                        log = %self.path.display(),
                        error = %source,
                        lost = pending.failed,
                        "CANNOT WRITE THE AUDIT LOG; mail goes on, and the next line written records the gap"
                    );
                    Err((source.kind(), source.to_string()))
                }
            };
            for written in tickets {
                pending.outcomes.insert(written, outcome.clone());
            }
            self.written.notify_all();
        }
    }

    /// [`AuditLog::append`] on tokio's blocking pool, for async callers,
    /// whose runtime threads must not wait for the disk.
    pub async fn append_async(self: &Arc<Self>, entry: AuditEntry) -> Result<(), AuditError> {
        self.append_all_async(vec![entry]).await
    }

    /// [`AuditLog::append_all`] on tokio's blocking pool.
    pub async fn append_all_async(
        self: &Arc<Self>,
        entries: Vec<AuditEntry>,
    ) -> Result<(), AuditError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.append_all(entries))
            .await
            .map_err(|e| AuditError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// Waits (at most `timeout`) until the store's anchor names the newest
    /// line, writing any note the anchor writer found on the way (a
    /// mismatch). True when done; true at once without a store.
    pub fn sync_anchor(&self, timeout: Duration) -> bool {
        let Some(anchor) = &self.anchor else {
            return true;
        };
        if !anchor.flush(timeout) {
            return false;
        }
        let notes = anchor.take_notes();
        if notes.is_empty() {
            return true;
        }
        let mut notes = notes;
        if let Err(e) = self.write(&mut notes) {
            tracing::error!(error = %e, "cannot write the audit log's note about its anchor");
            self.lock_pending().notes.extend(notes);
            return false;
        }
        anchor.flush(timeout)
    }

    /// Writes `entries` as lines at the chain's end, repairing the end
    /// first (which may put a note in front of them), rotating if the file
    /// is full or old. Nothing is written if `entries` ends up empty.
    fn write(&self, entries: &mut Vec<AuditEntry>) -> std::io::Result<()> {
        self.write_at(entries, false)
    }

    /// [`AuditLog::write`]; `opening` also rotates an old file and applies
    /// retention when there is nothing else to write.
    fn write_at(&self, entries: &mut Vec<AuditEntry>, opening: bool) -> std::io::Result<()> {
        let now = self.options.clock.now();
        let mut rotated = false;
        for _ in 0..MAX_REOPENS {
            let mut file = open_locked(&self.path)?;
            let last = match files::scan_tail(&mut file)? {
                Tail::Clean(last) => last,
                Tail::Damaged { last, good_end } => {
                    let (aside, bytes, sha) =
                        files::set_aside_tail(&self.path, &mut file, good_end, now)?;
                    let after = last
                        .as_ref()
                        .map_or_else(|| "the start".to_string(), |l| format!("line {}", l.seq));
                    tracing::warn!(
                        log = %self.path.display(),
                        kept_in = %aside.display(),
                        bytes,
                        "the audit log ended in a torn line (a crash or a full disk cut a write); set it aside and going on from {after}"
                    );
                    entries.insert(
                        0,
                        note(
                            "audit.tail_set_aside",
                            format!(
                                "{bytes} bytes after {after} were not a whole audit line (a write cut short by a crash or a full disk); kept in {} (sha256 {sha}); the chain goes on from {after}",
                                aside.display()
                            ),
                        ),
                    );
                    last
                }
                Tail::NotALog => {
                    let aside = files::sibling_name(&self.path, "damaged-", now)?;
                    std::fs::rename(&self.path, &aside)?;
                    files::sync_directory(&self.path);
                    tracing::error!(
                        log = %self.path.display(),
                        moved_to = %aside.display(),
                        "the audit log's last {} bytes hold no audit line; moved the file aside whole and starting a new one",
                        files::MAX_SET_ASIDE
                    );
                    entries.insert(
                        0,
                        note(
                            "audit.log_set_aside",
                            format!(
                                "{} held no audit line in its last {} bytes and was moved to {}; the chain goes on from the newest rotated file, if any",
                                self.path.display(),
                                files::MAX_SET_ASIDE,
                                aside.display()
                            ),
                        ),
                    );
                    continue;
                }
            };
            if entries.is_empty() && !opening {
                return Ok(());
            }
            let len = file.seek(SeekFrom::End(0))?;
            if len > 0 && self.rotation_due(len, now) {
                let name = files::sibling_name(&self.path, "", now)?;
                std::fs::rename(&self.path, &name)?;
                files::sync_directory(&self.path);
                tracing::info!(log = %self.path.display(), rotated = %name.display(), "rotated the audit log");
                rotated = true;
                continue;
            }
            // Files past their retention go after their records are
            // written below, into this file: so even the newest rotated
            // file, whose last line an empty log goes on from, may go.
            let removals = self.retention_plan(now, rotated || opening);
            if entries.is_empty() && removals.is_empty() {
                return Ok(());
            }
            // An empty log goes on from the newest rotated file, if any.
            let last = match last {
                Some(line) => Some(line),
                None => files::last_rotated_line(&self.path)?,
            };
            let (mut seq, mut prev) = match last {
                Some(line) => (line.seq, line.hash),
                None => (0, line::GENESIS.to_string()),
            };
            let at = line::format_at(now);
            let removal_notes: Vec<AuditEntry> = removals
                .iter()
                .map(|r| note(retention::ACTION, r.record.detail()))
                .collect();
            let mut bytes = Vec::new();
            for entry in entries.iter().chain(&removal_notes) {
                seq += 1;
                let line =
                    line::keyed_line(seq, &at, &line::bounded(entry.clone()), &prev, &self.key);
                prev = line::sha256_hex(&line);
                bytes.extend_from_slice(&line);
                bytes.push(b'\n');
            }
            if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
                // Leave no torn line behind if the file can still be cut;
                // if not, the next writer sets it aside.
                let _ = file.set_len(len);
                return Err(e);
            }
            // The records are on disk, and the lock still keeps other
            // writers out: now the files may go.
            retention::remove(&self.path, &removals);
            if let Some(anchor) = &self.anchor {
                anchor.want(AuditAnchor { seq, hash: prev });
            }
            return Ok(());
        }
        Err(std::io::Error::other(
            "the log kept being rotated or replaced while it was being written",
        ))
    }

    /// Whether the log (of `len` bytes, open and locked) is to be rotated
    /// before the next line: it is full, or its first line is too old.
    fn rotation_due(&self, len: u64, now: SystemTime) -> bool {
        if self.options.rotate_bytes.is_some_and(|limit| len >= limit) {
            return true;
        }
        let Some(every) = self.options.rotate_every else {
            return false;
        };
        // The first line's own time, not the file's mtime: a rename or a
        // copy keeps the lines, and the lines are what is kept and judged.
        match files::first_line(&self.path) {
            Ok(Some(first)) => line::written_at(&first)
                .and_then(|at| now.duration_since(at).ok())
                .is_some_and(|age| age >= every),
            _ => false,
        }
    }

    /// The rotated files to remove now, if retention is on and due (on
    /// open, right after a rotation, then every [`RETENTION_INTERVAL`]).
    fn retention_plan(&self, now: SystemTime, force: bool) -> Vec<retention::Removal> {
        let Some(keep) = self.options.keep else {
            return Vec::new();
        };
        {
            let mut checked = self
                .retention_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = force
                || checked.is_none_or(|at| {
                    now.duration_since(at)
                        .map_or(true, |since| since >= RETENTION_INTERVAL)
                });
            if !due {
                return Vec::new();
            }
            *checked = Some(now);
        }
        match retention::plan(&self.path, now, keep) {
            Ok(removals) => removals,
            Err(e) => {
                tracing::error!(
                    log = %self.path.display(),
                    error = %e,
                    "cannot look for rotated audit files past their retention; none removed, the next pass tries again"
                );
                Vec::new()
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if !self.sync_anchor(ANCHOR_FLUSH) {
            tracing::warn!(
                log = %self.path.display(),
                "the store did not take the audit log's newest anchor in time; the next writer moves it on"
            );
        }
    }
}

#[cfg(test)]
mod tests;
