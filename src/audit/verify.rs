//! `audit verify`: checks every file of the chain in order, every link,
//! every MAC it has a key for, and the store's anchor; the error names the
//! first line that breaks the chain and what that means.

use super::AuditError;
use super::files::{self, ChainFiles};
use super::key::KeyRing;
use super::line::{self, GENESIS, Line, Seal};
use super::retention::{self, RemovedFile};
use crate::secret::MasterKey;
use crate::store::AuditAnchor;
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Longest line the verifier reads. Lines this version writes are far
/// shorter ([`super::MAX_LINE_BYTES`]); legacy writers did write long ones,
/// so the limit only stops a crafted file from exhausting memory.
const MAX_READ_LINE: u64 = 16 * 1024 * 1024;

/// What the verifier knows of the store's anchor.
#[derive(Debug, Clone)]
pub enum AnchorCheck {
    /// The store was not consulted: lines deleted from the end go unnoticed.
    NotChecked,
    /// What the store holds (nothing, or an anchor).
    Stored(Option<AuditAnchor>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The chain's files, oldest first.
    pub files: Vec<PathBuf>,
    pub lines: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// SHA-256 of the last line.
    pub last_hash: String,
    /// Unkeyed lines from before the chain was keyed, at its start.
    pub legacy_lines: usize,
    pub keyed_lines: usize,
    /// Keyed lines whose MAC was checked.
    pub macs_checked: usize,
    /// The master keys (ids) the keyed lines name.
    pub key_ids: Vec<String>,
    /// The line the store's anchor names, found in the log.
    pub anchored_at: Option<u64>,
    /// Each file checked, oldest first, with the lines it holds.
    pub checked: Vec<CheckedFile>,
    /// When the chain does not start at line 1: the retention lines that
    /// account for its start (files removed by `[audit] keep`).
    pub removed_by_retention: Option<RetentionStart>,
    /// What an operator should know though nothing is broken.
    pub notices: Vec<String>,
}

/// One file of the chain as checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckedFile {
    pub path: PathBuf,
    pub lines: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

/// The start of a chain removed by retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionStart {
    /// Lines 1..=`through_seq` were removed; the chain is checked from the
    /// line after, which follows the recorded last line's hash.
    pub through_seq: u64,
    /// The line that records the removal of the file ending at
    /// `through_seq`.
    pub recorded_at: u64,
    /// The removed files the kept lines record, oldest first.
    pub files: Vec<RemovedFile>,
}

/// Checks the chain of the log at `path` and its rotated files. Without
/// `keys` only the unkeyed links are checked, which a careful rewrite
/// passes; with them every MAC whose key is at hand, and the last line must
/// be one of those.
pub fn verify(
    path: &Path,
    keys: Option<&MasterKey>,
    anchor: AnchorCheck,
) -> Result<VerifyReport, AuditError> {
    let open_error = |source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        return Err(open_error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        )));
    }
    let ChainFiles { files, skipped } = files::chain_files(path).map_err(open_error)?;
    let mut check = Checker {
        ring: keys.map(KeyRing::new),
        anchor_seq: match &anchor {
            AnchorCheck::Stored(Some(a)) => Some(a.seq),
            _ => None,
        },
        ..Checker::default()
    };
    check.skipped = skipped
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    for (path, reason) in skipped {
        check
            .report
            .notices
            .push(format!("{} skipped: {reason}", path.display()));
    }
    let count = files.len();
    for (index, file) in files.iter().enumerate() {
        check.file_first = None;
        let before = check.report.lines;
        check.file(file, index + 1 == count)?;
        let lines = check.report.lines - before;
        check.report.checked.push(CheckedFile {
            path: file.clone(),
            lines,
            first_seq: check.file_first,
            last_seq: if lines > 0 {
                check.report.last_seq
            } else {
                None
            },
        });
    }
    check.report.files = files;
    check.finish(anchor)
}

#[derive(Default)]
struct Checker<'a> {
    ring: Option<KeyRing<'a>>,
    report: VerifyReport,
    previous: Option<Line>,
    /// The last line whose MAC was checked.
    authenticated: Option<u64>,
    /// Keys named by keyed lines after `authenticated` that the ring lacks.
    missing_keys: BTreeSet<u32>,
    key_ids: BTreeSet<u32>,
    anchor_seq: Option<u64>,
    /// The hash of the line with seq `anchor_seq`, when met.
    anchor_line: Option<String>,
    /// Lines that record lost lines (`audit.anchor_mismatch`).
    incidents: Vec<AuditError>,
    /// The chain's first line here, and the file it is in.
    start: Option<(Line, PathBuf)>,
    /// The first sequence number of the file being read.
    file_first: Option<u64>,
    /// Retention's records of removed files, with the line of each.
    removals: Vec<(u64, RemovedFile)>,
    /// Files beside the log that look rotated but were not read.
    skipped: Vec<String>,
}

impl Default for VerifyReport {
    fn default() -> Self {
        VerifyReport {
            files: Vec::new(),
            lines: 0,
            first_seq: None,
            last_seq: None,
            last_hash: GENESIS.to_string(),
            legacy_lines: 0,
            keyed_lines: 0,
            macs_checked: 0,
            key_ids: Vec::new(),
            anchored_at: None,
            checked: Vec::new(),
            removed_by_retention: None,
            notices: Vec::new(),
        }
    }
}

impl Checker<'_> {
    fn file(&mut self, path: &Path, newest: bool) -> Result<(), AuditError> {
        let broken = |line: usize, reason: String| AuditError::Broken {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let file = std::fs::File::open(path).map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let mut number = 0;
        loop {
            let mut bytes = Vec::new();
            let read = (&mut reader)
                .take(MAX_READ_LINE + 1)
                .read_until(b'\n', &mut bytes)
                .map_err(|e| broken(number + 1, format!("unreadable: {e}")))?;
            if read == 0 {
                return Ok(());
            }
            number += 1;
            if bytes.last() != Some(&b'\n') {
                if bytes.len() as u64 > MAX_READ_LINE {
                    return Err(broken(
                        number,
                        format!("longer than {MAX_READ_LINE} bytes: not an audit line"),
                    ));
                }
                let at_end = reader.fill_buf().map(|b| b.is_empty()).unwrap_or(false);
                if newest && at_end {
                    self.report.notices.push(format!(
                        "{} ends in a torn line ({} bytes after the last whole line: a write cut short by a crash or a full disk); the next append sets it aside",
                        path.display(),
                        bytes.len()
                    ));
                    return Ok(());
                }
                return Err(broken(number, "not a whole line".into()));
            }
            bytes.pop();
            let line = line::parse(&bytes).map_err(|reason| broken(number, reason))?;
            if self.start.is_none() {
                self.start = Some((line.clone(), path.to_path_buf()));
            }
            self.line(line, &bytes)
                .map_err(|reason| broken(number, reason))?;
            self.remark(path, number);
        }
    }

    /// Lines the log wrote about itself: a loss it found is an incident
    /// (the log is not whole), a torn line set aside or a gap a notice.
    fn remark(&mut self, path: &Path, number: usize) {
        let Some(line) = self.previous.as_ref() else {
            return;
        };
        let detail = &line.entry.detail;
        match line.entry.action.as_str() {
            "audit.anchor_mismatch" => self.incidents.push(AuditError::Broken {
                path: path.to_path_buf(),
                line: number,
                reason: format!("records that lines were lost before it was written: {detail}"),
            }),
            retention::ACTION => match RemovedFile::parse(detail) {
                Some(record) => self.removals.push((line.seq, record)),
                None => self.report.notices.push(format!(
                    "{} line {number} is a retention line this version cannot read: {detail}",
                    path.display()
                )),
            },
            "audit.tail_set_aside" | "audit.log_set_aside" | "audit.gap" => self
                .report
                .notices
                .push(format!("{} line {number}: {detail}", path.display())),
            _ => {}
        }
    }

    fn line(&mut self, line: Line, bytes: &[u8]) -> Result<(), String> {
        match &self.previous {
            None if line.seq == 1 && line.prev != GENESIS => {
                return Err("the first line does not start the chain (its prev is not zero): lines before it were removed".into());
            }
            // Line 1 with a zero prev starts the chain. A later start is
            // judged at the end, against the retention lines that may
            // come after it.
            None => {}
            Some(previous) => {
                if line.seq != previous.seq + 1 {
                    return Err(format!(
                        "sequence number {} where {} was expected: a line was deleted or inserted",
                        line.seq,
                        previous.seq + 1
                    ));
                }
                let expected = match (&line.seal, &previous.seal) {
                    (Seal::Legacy { .. }, Seal::Legacy { hash }) => hash,
                    (Seal::Legacy { .. }, Seal::Keyed { .. }) => {
                        return Err("an unkeyed (legacy) line after keyed ones: the chain was rewritten by someone without the key".into());
                    }
                    (Seal::Keyed { .. }, _) => &previous.hash,
                };
                if &line.prev != expected {
                    return Err(
                        "does not follow the line before it: a line was deleted, inserted or edited"
                            .into(),
                    );
                }
            }
        }
        match &line.seal {
            Seal::Legacy { hash } => {
                if line::legacy_hash(&line) != *hash {
                    return Err("its content does not match its hash: the line was edited".into());
                }
                self.report.legacy_lines += 1;
            }
            Seal::Keyed { key_id } => {
                self.report.keyed_lines += 1;
                self.key_ids.insert(*key_id);
                if let Some(ring) = &mut self.ring {
                    match ring.get(*key_id) {
                        Some(key) => {
                            let (covered, mac) =
                                line::mac_parts(bytes).ok_or("its MAC is not where it belongs")?;
                            if !key.verify(&covered, mac) {
                                return Err(format!(
                                    "its MAC does not match (key {key_id:08x}): the line was edited, or written by someone without the key"
                                ));
                            }
                            self.report.macs_checked += 1;
                            self.authenticated = Some(line.seq);
                            self.missing_keys.clear();
                        }
                        None => {
                            self.missing_keys.insert(*key_id);
                        }
                    }
                }
            }
        }
        if Some(line.seq) == self.anchor_seq {
            self.anchor_line = Some(line.hash.clone());
        }
        let report = &mut self.report;
        report.lines += 1;
        report.first_seq.get_or_insert(line.seq);
        self.file_first.get_or_insert(line.seq);
        report.last_seq = Some(line.seq);
        report.last_hash = line.hash.clone();
        self.previous = Some(line);
        Ok(())
    }

    /// A chain that does not start at line 1 is whole only if a retention
    /// line records the removal of the file that ended just before it, and
    /// its first line follows that file's last.
    fn check_start(&mut self) -> Result<(), AuditError> {
        let Some((start, file)) = &self.start else {
            return Ok(());
        };
        let kept_from = start.seq;
        for (at, record) in &self.removals {
            if record.last_seq >= kept_from {
                self.report.notices.push(format!(
                    "line {at} records {} (lines {}..{}) as removed by retention, but those lines are still here (a crash between the record and the removal, or a restored copy); the next retention pass removes it",
                    record.file, record.first_seq, record.last_seq
                ));
            }
        }
        if kept_from == 1 {
            return Ok(());
        }
        let Some((recorded_at, through)) = self
            .removals
            .iter()
            .find(|(_, record)| record.is_followed_by(start))
        else {
            if !self.skipped.is_empty() {
                // Most likely logrotate's `compress`: the lines are there,
                // just not readable here.
                return Err(AuditError::Unverifiable(format!(
                    "the chain starts at line {kept_from} in {}, and lines 1..{} are not in any file read: they may be in {}, which were skipped (decompress compressed ones beside the log) and are needed to verify the chain's start",
                    file.display(),
                    kept_from - 1,
                    self.skipped.join(", ")
                )));
            }
            return Err(AuditError::Broken {
                path: file.clone(),
                line: 1,
                reason: format!(
                    "the chain starts at line {kept_from}, and no retention line records the removal of line {}: lines 1..{} were deleted by hand or by an attacker, or lost, not removed by [audit] keep (restore the missing rotated files from a backup to verify; in future let [audit] keep remove old files, or the chain cannot prove its start)",
                    kept_from - 1,
                    kept_from - 1
                ),
            });
        };
        let mut files: Vec<RemovedFile> = Vec::new();
        for (_, record) in &self.removals {
            if record.last_seq < kept_from && !files.contains(record) {
                files.push(record.clone());
            }
        }
        files.sort_by_key(|r| r.first_seq);
        if self.ring.is_none() {
            self.report.notices.push(
                "the retention lines that account for the chain's start were not authenticated (no master key): anyone could have written them".into(),
            );
        }
        self.report.removed_by_retention = Some(RetentionStart {
            through_seq: through.last_seq,
            recorded_at: *recorded_at,
            files,
        });
        Ok(())
    }

    fn finish(mut self, anchor: AnchorCheck) -> Result<VerifyReport, AuditError> {
        let ids = |set: &BTreeSet<u32>| {
            set.iter()
                .map(|id| format!("{id:08x}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.report.key_ids = self.key_ids.iter().map(|id| format!("{id:08x}")).collect();
        let last_seq = self.report.last_seq.unwrap_or(0);
        self.check_start()?;
        match &self.ring {
            Some(ring) if self.report.keyed_lines > 0 => {
                let have = ring
                    .ids()
                    .iter()
                    .map(|id| format!("{id:08x}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                match self.authenticated {
                    None => {
                        return Err(AuditError::Unverifiable(format!(
                            "no line of the log is keyed with a master key this config has (the log names {}, the config has {have}): verify with the config of the relay that wrote it, or add its old key to previous_master_keys",
                            ids(&self.key_ids)
                        )));
                    }
                    Some(authenticated) if authenticated < last_seq => {
                        return Err(AuditError::Unverifiable(format!(
                            "lines {}..{last_seq} are keyed with master key {} which this config does not have (it has {have}), so nothing after line {authenticated} is authenticated: verify with the config of the relay that wrote them",
                            authenticated + 1,
                            ids(&self.missing_keys)
                        )));
                    }
                    Some(_) => {}
                }
                let covered_only: BTreeSet<u32> = self
                    .key_ids
                    .iter()
                    .copied()
                    .filter(|id| !ring.ids().contains(id))
                    .collect();
                if !covered_only.is_empty() {
                    self.report.notices.push(format!(
                        "lines keyed with master key {} (no longer in the config) are covered by the chain up to the later lines keyed with {have}",
                        ids(&covered_only)
                    ));
                }
            }
            Some(_) => {}
            None => self.report.notices.push(
                "MACs not checked (no master key): a rewrite with recomputed hashes would go unnoticed".into(),
            ),
        }
        if self.report.legacy_lines > 0 {
            self.report.notices.push(if self.report.keyed_lines > 0 {
                format!(
                    "the first {} lines are an unkeyed legacy chain (written before the chain was keyed); the keyed line after them pins them",
                    self.report.legacy_lines
                )
            } else {
                format!(
                    "the whole log is an unkeyed legacy chain of {} lines: a rewrite with recomputed hashes cannot be detected; the next line written will be keyed",
                    self.report.legacy_lines
                )
            });
        }
        match anchor {
            AnchorCheck::NotChecked => self.report.notices.push(
                "the store's anchor was not checked: lines deleted from the end would go unnoticed"
                    .into(),
            ),
            AnchorCheck::Stored(None) if self.report.keyed_lines > 0 => {
                return Err(AuditError::Anchor(
                    "the store holds no anchor, though the log has keyed lines: the anchor was removed, or this is not the relay's store (check [store] url)".into(),
                ));
            }
            AnchorCheck::Stored(None) => self
                .report
                .notices
                .push("the store holds no anchor yet: the first keyed line sets it".into()),
            AnchorCheck::Stored(Some(anchor)) => {
                if anchor.seq > last_seq {
                    return Err(AuditError::Anchor(format!(
                        "TRUNCATED: the store's anchor says line {} was written, but the log ends at line {last_seq}: lines were deleted from its end",
                        anchor.seq
                    )));
                }
                match self.anchor_line {
                    Some(hash) if hash == anchor.hash => {
                        self.report.anchored_at = Some(anchor.seq);
                    }
                    Some(_) => {
                        return Err(AuditError::Anchor(format!(
                            "line {} is not the line the store anchored: the log was rewritten from that line or an earlier one",
                            anchor.seq
                        )));
                    }
                    None => self.report.notices.push(format!(
                        "the store's anchor names line {}, in a file that is not here; it could not be checked",
                        anchor.seq
                    )),
                }
                if anchor.seq < last_seq {
                    self.report.notices.push(format!(
                        "lines after {} are not anchored yet (a writer has not updated the store, or is doing so now)",
                        anchor.seq
                    ));
                }
            }
        }
        if let Some(incident) = self.incidents.into_iter().next() {
            return Err(incident);
        }
        Ok(self.report)
    }
}
