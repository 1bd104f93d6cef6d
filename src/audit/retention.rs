//! Retention: rotated files whose every line is older than `[audit] keep`
//! are removed, and each removal is itself a line of the chain.
//!
//! A chain whose start is missing looks the same whether an operator's
//! retention or an attacker removed it, unless the chain says which. So
//! before a file goes, a line `audit.retention_removed` names it, its
//! first and last sequence numbers and the hash and MAC of its last line;
//! the line is written and flushed first, the file removed after (a crash
//! in between leaves a file recorded as removed that is still there, which
//! the next pass removes). `audit verify` then accepts a chain that starts
//! at line N+1 only if a retention line (keyed, so nobody without the key
//! can forge one) records line N, and the first kept line's `prev` is that
//! line's hash.
//!
//! Only a prefix of the chain goes (oldest first, stopping at the first
//! file too young or unreadable), never the log being written. The records
//! go into the log being written, so the chain goes on there even when the
//! newest rotated file goes too (a relay idle for longer than `keep`).

use super::files;
use super::line::{self, Line, Seal};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The action of a removal's line.
pub(crate) const ACTION: &str = "audit.retention_removed";

/// What the `detail` of a removal's line starts with; the record follows
/// as JSON (`jq '.detail | ltrimstr("removed by retention: ") | fromjson'`).
const DETAIL_PREFIX: &str = "removed by retention: ";

/// The record of one removed file, as its line carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedFile {
    /// The file's name (it was beside the log).
    pub file: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// SHA-256 of its last line: the next line's `prev`.
    pub last_hash: String,
    /// The MAC of its last line (absent for an unkeyed legacy line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_mac: Option<String>,
    /// A legacy last line's own hash, which a legacy next line names as
    /// its `prev` instead of `last_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_legacy_hash: Option<String>,
    /// When its newest line was written.
    pub newest_at: String,
    /// `[audit] keep`, in seconds, when it was removed.
    pub keep_seconds: u64,
}

impl RemovedFile {
    pub(crate) fn detail(&self) -> String {
        // Strings and integers only: serialising cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{DETAIL_PREFIX}{json}")
    }

    /// The record in a removal line's detail; `None` if it is not one.
    pub(crate) fn parse(detail: &str) -> Option<RemovedFile> {
        serde_json::from_str(detail.strip_prefix(DETAIL_PREFIX)?).ok()
    }

    /// Whether `next` (the first line kept) is the line after this file's.
    pub(crate) fn is_followed_by(&self, next: &Line) -> bool {
        next.seq == self.last_seq + 1
            && (next.prev == self.last_hash
                || matches!(next.seal, Seal::Legacy { .. })
                    && self.last_legacy_hash.as_deref() == Some(next.prev.as_str()))
    }
}

/// A file retention will remove, once its record is on disk.
pub(crate) struct Removal {
    pub path: PathBuf,
    pub record: RemovedFile,
}

/// The rotated files of the log at `path` whose newest line is older than
/// `keep` at `now`: the oldest ones, in order, up to the first that is not.
pub(crate) fn plan(path: &Path, now: SystemTime, keep: Duration) -> std::io::Result<Vec<Removal>> {
    let Some(cutoff) = now.checked_sub(keep) else {
        return Ok(Vec::new());
    };
    let chain = files::chain_files(path)?;
    let mut removals = Vec::new();
    for file in chain.files.iter().filter(|f| f.as_path() != path) {
        let first = files::first_line(file).ok().flatten();
        let last = files::last_line(file)?;
        let (Some(first), Some(last)) = (first, last) else {
            // Unreadable or empty: not ours to judge; and what is after
            // it must stay, or the removed part would not be a prefix.
            break;
        };
        match line::written_at(&last) {
            Some(newest) if newest < cutoff => {}
            _ => break,
        }
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .unwrap_or_else(|| file.display().to_string());
        let last_legacy_hash = match &last.seal {
            Seal::Legacy { hash } => Some(hash.clone()),
            Seal::Keyed { .. } => None,
        };
        removals.push(Removal {
            path: file.clone(),
            record: RemovedFile {
                file: name,
                first_seq: first.seq,
                last_seq: last.seq,
                last_hash: last.hash,
                last_mac: last.mac,
                last_legacy_hash,
                newest_at: last.at,
                keep_seconds: keep.as_secs(),
            },
        });
    }
    Ok(removals)
}

/// Removes the planned files (their records are on disk by now) and makes
/// the removal durable. A file that cannot be removed is logged and stays;
/// the next pass records and removes it again.
pub(crate) fn remove(log: &Path, removals: &[Removal]) {
    for removal in removals {
        match std::fs::remove_file(&removal.path) {
            Ok(()) => tracing::info!(
                log = %log.display(),
                removed = %removal.path.display(),
                last_seq = removal.record.last_seq,
                "removed an audit file past its retention ([audit] keep)"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(
                log = %log.display(),
                file = %removal.path.display(),
                error = %e,
                "cannot remove an audit file past its retention; it is kept, and the next pass tries again"
            ),
        }
    }
    files::sync_directory(log);
}
