//! The audit log: every OAuth event and message outcome as one JSON line,
//! append-only, never a token (only fingerprints). Tampering is evident:
//! each line carries a sequence number and the SHA-256 of the previous
//! line, so an edited, inserted or deleted line breaks the chain, and
//! `oxirelay audit verify` names the first broken line.
//!
//! Several processes append to one log (`serve` and every CLI command), so
//! each append takes an exclusive lock on the file and reads the chain's
//! end from the file itself, not from memory.
//!
//! Within a process, appends that arrive together share one write and one
//! `fdatasync` (group commit, as the queue does): each returns once its line
//! is on disk, but a relay delivering hundreds of messages a second does
//! not pay a disk flush per outcome, one after another (bench/peers.sh
//! measured that as the cap on delivery: about 4 ms per flush, about 210
//! messages/s). [`AuditLog::append_async`] waits on tokio's blocking pool,
//! so the flush never holds up a runtime thread.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The hash a chain starts from.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the audit log {path}: {source}")]
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

#[derive(Debug, Serialize, Deserialize)]
struct AuditLine {
    seq: u64,
    at: String,
    #[serde(flatten)]
    entry: AuditEntry,
    prev: String,
    hash: String,
}

fn line_hash(seq: u64, at: &str, entry: &AuditEntry, prev: &str) -> String {
    // The hash covers the line as written minus its own hash field:
    // serialise the same fields in a fixed order.
    #[derive(Serialize)]
    struct Unsealed<'a> {
        seq: u64,
        at: &'a str,
        #[serde(flatten)]
        entry: &'a AuditEntry,
        prev: &'a str,
    }
    let bytes = serde_json::to_vec(&Unsealed {
        seq,
        at,
        entry,
        prev,
    })
    .expect("an audit line of strings serialises");
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An open audit log. Appends are serialised (across processes too) and
/// flushed to disk.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
    queue: Mutex<AppendQueue>,
    /// Signalled when a batch is on disk (or failed).
    written: Condvar,
}

/// Entries waiting for the next group write, and the outcomes of written
/// ones not yet collected by their appenders.
#[derive(Default)]
struct AppendQueue {
    next_ticket: u64,
    pending: Vec<(u64, AuditEntry)>,
    /// An appender is writing a batch now; the others wait for it.
    writing: bool,
    outcomes: HashMap<u64, Result<(), (std::io::ErrorKind, String)>>,
}

/// Longest line the tail reader expects; an entry is a few hundred bytes.
const MAX_LINE: u64 = 64 * 1024;

/// The sequence number and hash of the last line, read from the file.
fn read_tail(file: &mut File) -> std::io::Result<(u64, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((0, GENESIS.to_string()));
    }
    let start = len.saturating_sub(MAX_LINE);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let last = text
        .trim_end_matches('\n')
        .rsplit('\n')
        .next()
        .unwrap_or_default();
    let line: AuditLine = serde_json::from_str(last).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the last line is not an audit line: {e}"),
        )
    })?;
    Ok((line.seq, line.hash))
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log and finds the end of its chain.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        if path.exists() {
            verify(path)?;
        }
        let mut options = OpenOptions::new();
        options.create(true).append(true).read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            queue: Mutex::new(AppendQueue::default()),
            written: Condvar::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and returns once it is on disk. Appenders that
    /// arrive while a write is in progress are written together next, with
    /// one flush; one of them writes, the others wait for it.
    pub fn append(&self, entry: AuditEntry) -> Result<(), AuditError> {
        let mut queue = self.queue();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.pending.push((ticket, entry));
        loop {
            if let Some(outcome) = queue.outcomes.remove(&ticket) {
                return outcome.map_err(|(kind, message)| AuditError::Write {
                    path: self.path.clone(),
                    source: std::io::Error::new(kind, message),
                });
            }
            if queue.writing {
                queue = self.written.wait(queue).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            queue.writing = true;
            let batch = std::mem::take(&mut queue.pending);
            drop(queue);
            let outcome = self
                .write_lines(batch.iter().map(|(_, entry)| entry))
                .map_err(|e| (e.kind(), e.to_string()));
            queue = self.queue();
            queue.writing = false;
            for (written, _) in &batch {
                queue.outcomes.insert(*written, outcome.clone());
            }
            self.written.notify_all();
        }
    }

    /// [`AuditLog::append`] on tokio's blocking pool: for async callers,
    /// whose runtime threads must not wait for the disk.
    pub async fn append_async(self: &Arc<Self>, entry: AuditEntry) -> Result<(), AuditError> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.append(entry))
            .await
            .map_err(|e| AuditError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    fn queue(&self) -> MutexGuard<'_, AppendQueue> {
        // Consistent even if a holder panicked: recover it.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `entries` after the chain's end under the file lock, then
    /// flushes once.
    fn write_lines<'a>(
        &self,
        entries: impl Iterator<Item = &'a AuditEntry>,
    ) -> std::io::Result<()> {
        // A poisoned lock means a writer panicked mid-append; the file is
        // still a valid prefix, and the tail is read from it anyway.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.lock()?;
        let result = (|| {
            let (mut seq, mut prev) = read_tail(&mut file)?;
            let mut bytes = Vec::new();
            for entry in entries {
                seq += 1;
                let at = chrono::Utc::now()
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string();
                let hash = line_hash(seq, &at, entry, &prev);
                let line = AuditLine {
                    seq,
                    at,
                    entry: entry.clone(),
                    prev,
                    hash: hash.clone(),
                };
                serde_json::to_writer(&mut bytes, &line)
                    .expect("an audit line of strings serialises");
                bytes.push(b'\n');
                prev = hash;
            }
            file.write_all(&bytes)?;
            file.sync_data()
        })();
        let unlocked = file.unlock();
        result?;
        unlocked
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub lines: usize,
    pub last_hash: String,
}

/// Checks the whole chain; the error names the first line that breaks it.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let broken = |line: usize, reason: String| AuditError::Broken {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut prev = GENESIS.to_string();
    let mut count = 0;
    for (index, text) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let text = text.map_err(|e| broken(number, format!("unreadable: {e}")))?;
        let line: AuditLine = serde_json::from_str(&text)
            .map_err(|e| broken(number, format!("not an audit line: {e}")))?;
        if line.seq != number as u64 {
            return Err(broken(
                number,
                format!(
                    "sequence number {} where {number} was expected: a line was deleted or inserted",
                    line.seq
                ),
            ));
        }
        if line.prev != prev {
            return Err(broken(
                number,
                "does not follow the line before it: a line was deleted, inserted or edited"
                    .to_string(),
            ));
        }
        if line_hash(line.seq, &line.at, &line.entry, &line.prev) != line.hash {
            return Err(broken(
                number,
                "its content does not match its hash: the line was edited".to_string(),
            ));
        }
        prev = line.hash;
        count = number;
    }
    Ok(VerifyReport {
        lines: count,
        last_hash: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            actor: "relay".into(),
            action: action.into(),
            account: Some("office".into()),
            token_fingerprint: Some("fp:0123456789ab".into()),
            message_id: None,
            detail: String::new(),
        }
    }

    fn write_log(dir: &Path) -> PathBuf {
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(&path).expect("open");
        for action in ["token.issued", "message.delivered", "account.revoked"] {
            log.append(entry(action)).expect("append");
        }
        path
    }

    #[test]
    fn concurrent_appends_share_flushes_and_keep_one_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::open(&path).expect("open"));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for n in 0..25 {
                        log.append(entry(&format!("message.delivered.{t}.{n}")))
                            .expect("append");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("join");
        }
        // Every append returned after its line was written: all 200 are
        // there, in one unbroken chain, each exactly once.
        assert_eq!(verify(&path).expect("intact").lines, 200);
        let text = std::fs::read_to_string(&path).expect("read");
        for t in 0..8 {
            for n in 0..25 {
                let action = format!("\"message.delivered.{t}.{n}\"");
                assert_eq!(text.matches(&action).count(), 1, "{action}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_appends_wait_for_the_disk_off_the_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::open(&path).expect("open"));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..50 {
            let log = log.clone();
            tasks.spawn(async move { log.append_async(entry(&format!("a{n}"))).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("join").expect("append");
        }
        assert_eq!(verify(&path).expect("intact").lines, 50);
    }

    #[test]
    fn intact_chain_verifies_and_reopening_continues_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_log(dir.path());
        assert_eq!(verify(&path).expect("intact").lines, 3);
        AuditLog::open(&path)
            .expect("reopen")
            .append(entry("lockdown"))
            .expect("append");
        assert_eq!(verify(&path).expect("intact").lines, 4);
    }

    #[test]
    fn two_writers_on_one_file_keep_one_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let (a, b) = (
            AuditLog::open(&path).expect("a"),
            AuditLog::open(&path).expect("b"),
        );
        for i in 0..10 {
            let log = if i % 3 == 0 { &a } else { &b };
            log.append(entry("interleaved")).expect("append");
        }
        assert_eq!(verify(&path).expect("one intact chain").lines, 10);
    }

    #[test]
    fn edited_line_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_log(dir.path());
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("message.delivered", "message.bounced")).expect("write");
        let err = verify(&path).expect_err("edited");
        assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
    }

    #[test]
    fn deleted_line_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_log(dir.path());
        let text = std::fs::read_to_string(&path).expect("read");
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(&path, kept.join("\n") + "\n").expect("write");
        let err = verify(&path).expect_err("deleted");
        assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
    }
}
