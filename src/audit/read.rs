//! Reading the log back for people: the newest lines first, across the
//! log and its rotated files (in the chain's order, as `audit verify`
//! finds them), optionally only those that contain a search text. Reading
//! is bounded in lines, so a search of a large log costs a known amount.
//! Checking the chain is `audit verify`'s business, not this one's: a line
//! that is not an audit line is skipped here.

use super::files::{Backward, chain_files};
use super::{AuditEntry, AuditError, line};
use std::path::Path;

/// One line as a person reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// RFC 3339, UTC, as written.
    pub at: String,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

impl AuditRecord {
    /// Whether `needle` (lower case) is in any of its fields, ignoring case.
    fn contains(&self, needle: &str) -> bool {
        let entry = &self.entry;
        [
            Some(entry.actor.as_str()),
            Some(entry.action.as_str()),
            entry.account.as_deref(),
            entry.message_id.as_deref(),
            entry.token_fingerprint.as_deref(),
            Some(entry.detail.as_str()),
            Some(self.at.as_str()),
        ]
        .into_iter()
        .flatten()
        .any(|field| field.to_lowercase().contains(needle))
    }
}

/// What a search found, newest first.
#[derive(Debug, Default)]
pub struct AuditSearch {
    pub records: Vec<AuditRecord>,
    /// More lines would have matched (or the scan stopped at `max_scanned`
    /// before the log's start).
    pub truncated: bool,
}

/// The newest `limit` lines of the log at `path` (and its rotated files)
/// whose fields contain `query` (ignoring case; every line for an empty
/// query), reading at most `max_scanned` lines.
pub fn search(
    path: &Path,
    query: &str,
    limit: usize,
    max_scanned: usize,
) -> Result<AuditSearch, AuditError> {
    let open_error = |source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    };
    let needle = query.trim().to_lowercase();
    let mut found = AuditSearch::default();
    let mut scanned = 0usize;
    let files = match chain_files(path) {
        Ok(chain) => chain.files,
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(source) => return Err(open_error(source)),
    };
    for file_path in files.iter().rev() {
        let mut file = match std::fs::File::open(file_path) {
            Ok(file) => file,
            // Rotated away (or removed by retention) since it was listed.
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(open_error(source)),
        };
        let mut lines = Backward::new(&mut file).map_err(open_error)?;
        while let Some((_, bytes)) = lines.next_line().map_err(open_error)? {
            if scanned == max_scanned {
                found.truncated = true;
                return Ok(found);
            }
            scanned += 1;
            let Ok(parsed) = line::parse(&bytes) else {
                continue;
            };
            let record = AuditRecord {
                seq: parsed.seq,
                at: parsed.at,
                entry: parsed.entry,
            };
            if needle.is_empty() || record.contains(&needle) {
                if found.records.len() == limit {
                    found.truncated = true;
                    return Ok(found);
                }
                found.records.push(record);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, AuditOptions};
    use crate::secret::MasterKey;

    fn entry(action: &str, detail: &str) -> AuditEntry {
        AuditEntry {
            actor: "relay".into(),
            action: action.into(),
            account: Some("office".into()),
            token_fingerprint: None,
            message_id: None,
            detail: detail.into(),
        }
    }

    #[test]
    fn newest_first_across_rotated_files_with_a_search_and_bounds() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.jsonl");
        let options = AuditOptions {
            rotate_bytes: Some(1),
            ..AuditOptions::default()
        };
        let log = AuditLog::open(&path, &MasterKey::from_bytes([7; 32]), options).expect("open");
        for n in 0..6 {
            let action = if n % 2 == 0 {
                "token.issued"
            } else {
                "console.login"
            };
            log.append(entry(action, &format!("line {n}")))
                .expect("append");
        }
        drop(log);
        // Every append after the first rotated: the lines are in several files.
        assert!(std::fs::read_dir(dir.path()).expect("list").count() > 2);
        let all = search(&path, "", 100, 1000).expect("search");
        let details: Vec<&str> = all
            .records
            .iter()
            .map(|r| r.entry.detail.as_str())
            .collect();
        assert_eq!(
            details,
            ["line 5", "line 4", "line 3", "line 2", "line 1", "line 0"]
        );
        assert!(!all.truncated);
        let logins = search(&path, "CONSOLE.LOGIN", 100, 1000).expect("search");
        assert_eq!(logins.records.len(), 3, "case is ignored");
        let newest = search(&path, "", 2, 1000).expect("search");
        assert_eq!(newest.records.len(), 2);
        assert!(newest.truncated);
        let scanned = search(&path, "", 100, 3).expect("search");
        assert_eq!(scanned.records.len(), 3);
        assert!(scanned.truncated);
        let missing = search(&dir.path().join("none.jsonl"), "", 10, 10).expect("no log yet");
        assert!(missing.records.is_empty());
    }
}
