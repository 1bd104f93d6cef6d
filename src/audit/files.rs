//! The files of one chain: the log itself and its rotated files, the
//! chain's end as the file says it (read backward, whatever a line's
//! length), and setting a damaged end aside.
//!
//! Rotated files are the log's name with a suffix (`oxirelay-audit.jsonl.1`,
//! `.20250102T030405Z`, whatever `logrotate` or oxirelay chose): the order
//! is taken from the sequence numbers inside, not from the names, so any
//! naming scheme keeps the chain in order. Compressed ones are listed as
//! skipped. Names with `.torn-` or `.damaged-` are bytes set aside, not part
//! of the chain.

use super::line::{self, Line};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// How much is read per step when looking backward for a newline: a few
/// lines' worth, since lines are short.
const CHUNK: u64 = 8 * 1024;

/// A damaged end longer than this is not set aside byte by byte: the file
/// is more likely not an audit log at all, and is moved aside whole.
pub(crate) const MAX_SET_ASIDE: u64 = 1024 * 1024;

const SET_ASIDE_MARKERS: [&str; 2] = [".torn-", ".damaged-"];
const COMPRESSED: [&str; 5] = [".gz", ".xz", ".zst", ".bz2", ".lz4"];

/// The chain's files in order.
#[derive(Debug, Default)]
pub(crate) struct ChainFiles {
    /// Oldest first; the log itself last.
    pub files: Vec<PathBuf>,
    /// Files beside the log that look rotated but cannot be read as part of
    /// the chain, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

fn file_name(path: &Path) -> io::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))
}

pub(crate) fn directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes renames and removals in the log's directory durable: without it a
/// crash can bring back a rotated name, or lose the new one, after the
/// lines written into the new file were already reported on disk.
pub(crate) fn sync_directory(log: &Path) {
    #[cfg(unix)]
    if let Err(e) = std::fs::File::open(directory(log)).and_then(|d| d.sync_all()) {
        tracing::warn!(log = %log.display(), error = %e, "cannot flush the audit log's directory after a rename or removal");
    }
}

/// The rotated files of the log at `path` (oldest first) and then `path`
/// itself, if it exists.
pub(crate) fn chain_files(path: &Path) -> io::Result<ChainFiles> {
    let name = file_name(path)?;
    let prefix = format!("{name}.");
    let mut rotated = Vec::new();
    let mut chain = ChainFiles::default();
    for dirent in std::fs::read_dir(directory(path))? {
        let dirent = dirent?;
        let Some(other) = dirent.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(suffix) = other.strip_prefix(&prefix) else {
            continue;
        };
        let dotted = format!(".{suffix}");
        if SET_ASIDE_MARKERS.iter().any(|m| dotted.starts_with(m)) || !dirent.path().is_file() {
            continue;
        }
        if COMPRESSED.iter().any(|c| dotted.ends_with(c)) {
            chain.skipped.push((
                dirent.path(),
                "compressed: decompress it beside the log to verify it".into(),
            ));
            continue;
        }
        match first_line(&dirent.path()) {
            Ok(Some(line)) => rotated.push((line.seq, dirent.path())),
            Ok(None) => {}
            Err(reason) => chain.skipped.push((dirent.path(), reason)),
        }
    }
    rotated.sort();
    chain.files = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        chain.files.push(path.to_path_buf());
    }
    Ok(chain)
}

/// The first line of a file; `None` for an empty file.
pub(crate) fn first_line(path: &Path) -> Result<Option<Line>, String> {
    use std::io::BufRead;
    let file = File::open(path).map_err(|e| format!("unreadable: {e}"))?;
    let mut bytes = Vec::new();
    io::BufReader::new(file.take(MAX_SET_ASIDE))
        .read_until(b'\n', &mut bytes)
        .map_err(|e| format!("unreadable: {e}"))?;
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.pop() != Some(b'\n') {
        return Err("its first line is not a whole line".into());
    }
    line::parse(&bytes)
        .map(Some)
        .map_err(|e| format!("its first line is {e}"))
}

/// The position of the last `\n` before `end`.
fn last_newline_before(file: &mut File, end: u64) -> io::Result<Option<u64>> {
    let mut high = end;
    let mut buffer = vec![0u8; CHUNK as usize];
    while high > 0 {
        let low = high.saturating_sub(CHUNK);
        let chunk = &mut buffer[..(high - low) as usize];
        file.seek(SeekFrom::Start(low))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(low + i as u64));
        }
        high = low;
    }
    Ok(None)
}

fn read_range(file: &mut File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; (end - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Reads the whole lines of a file from the last one back.
pub(crate) struct Backward<'a> {
    file: &'a mut File,
    /// Just past the newline of the next line to return.
    end: u64,
}

impl<'a> Backward<'a> {
    /// Starts at the last whole line: bytes after the last newline (a torn
    /// write) are not a line.
    pub fn new(file: &'a mut File) -> io::Result<Self> {
        let len = file.seek(SeekFrom::End(0))?;
        let end = last_newline_before(file, len)?.map_or(0, |p| p + 1);
        Ok(Backward { file, end })
    }

    /// Where the lines end: the length of the file's whole lines.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The previous line's start and bytes (without the newline).
    pub fn next_line(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        if self.end == 0 {
            return Ok(None);
        }
        let newline = self.end - 1;
        let start = last_newline_before(self.file, newline)?.map_or(0, |p| p + 1);
        let bytes = read_range(self.file, start, newline)?;
        self.end = start;
        Ok(Some((start, bytes)))
    }
}

/// What the end of a file holds.
pub(crate) enum Tail {
    /// Whole audit lines only (the last one, if any).
    Clean(Option<Line>),
    /// After the last audit line (if any) come bytes that are not one: a
    /// write cut by a crash or a full disk, or something else appended.
    Damaged { last: Option<Line>, good_end: u64 },
    /// No audit line in the last [`MAX_SET_ASIDE`] bytes.
    NotALog,
}

pub(crate) fn scan_tail(file: &mut File) -> io::Result<Tail> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut lines = Backward::new(file)?;
    loop {
        let good_end = lines.end();
        if len - good_end > MAX_SET_ASIDE {
            return Ok(Tail::NotALog);
        }
        match lines.next_line()? {
            Some((_, bytes)) => {
                if let Ok(line) = line::parse(&bytes) {
                    return Ok(if good_end == len {
                        Tail::Clean(Some(line))
                    } else {
                        Tail::Damaged {
                            last: Some(line),
                            good_end,
                        }
                    });
                }
            }
            None if len == 0 => return Ok(Tail::Clean(None)),
            None => {
                return Ok(Tail::Damaged {
                    last: None,
                    good_end: 0,
                });
            }
        }
    }
}

/// The last audit line of a file (read-only; a damaged end is skipped).
pub(crate) fn last_line(path: &Path) -> io::Result<Option<Line>> {
    let mut file = File::open(path)?;
    let mut lines = Backward::new(&mut file)?;
    let mut read = 0u64;
    while let Some((_, bytes)) = lines.next_line()? {
        if let Ok(line) = line::parse(&bytes) {
            return Ok(Some(line));
        }
        read += bytes.len() as u64 + 1;
        if read > MAX_SET_ASIDE {
            break;
        }
    }
    Ok(None)
}

/// The last line of the newest rotated file: where the chain goes on when
/// the log itself is empty (it was just rotated).
pub(crate) fn last_rotated_line(path: &Path) -> io::Result<Option<Line>> {
    let chain = chain_files(path)?;
    for file in chain.files.iter().rev().filter(|f| f.as_path() != path) {
        if let Some(line) = last_line(file)? {
            return Ok(Some(line));
        }
    }
    Ok(None)
}

/// Where the chain's files put the line with a given sequence number.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineLookup {
    /// Found, with this hash.
    Hash(String),
    /// Within the files' range, but not there: deleted.
    Missing,
    /// Older than every file here: before the chain's first kept line
    /// (removed by retention, or deleted; `audit verify` tells which).
    BeforeStart,
}

/// The hash of the line with sequence number `seq`, looked for from the
/// end of the chain back. The log itself is read first, and rotated files
/// are listed only if the line is older than it.
pub(crate) fn find_line_hash(path: &Path, seq: u64) -> io::Result<LineLookup> {
    enum Found {
        Hash(String),
        Absent,
        Older,
    }
    fn in_file(path: &Path, seq: u64) -> io::Result<Found> {
        let mut file = File::open(path)?;
        let mut lines = Backward::new(&mut file)?;
        while let Some((_, bytes)) = lines.next_line()? {
            let Ok(line) = line::parse(&bytes) else {
                continue;
            };
            if line.seq == seq {
                return Ok(Found::Hash(line.hash));
            }
            if line.seq < seq {
                return Ok(Found::Absent);
            }
        }
        Ok(Found::Older)
    }
    // An empty log (just rotated) says nothing about where lines are.
    let mut seen_lines = false;
    match in_file(path, seq)? {
        Found::Hash(hash) => return Ok(LineLookup::Hash(hash)),
        Found::Absent => return Ok(LineLookup::Missing),
        Found::Older => seen_lines |= last_line(path)?.is_some(),
    }
    let chain = chain_files(path)?;
    for file in chain.files.iter().rev().filter(|f| f.as_path() != path) {
        match in_file(file, seq)? {
            Found::Hash(hash) => return Ok(LineLookup::Hash(hash)),
            Found::Absent => return Ok(LineLookup::Missing),
            Found::Older => seen_lines |= last_line(file)?.is_some(),
        }
    }
    Ok(if seen_lines {
        LineLookup::BeforeStart
    } else {
        LineLookup::Missing
    })
}

/// A new file beside the log for bytes set aside or a rotated log:
/// `<log>.<marker><UTC time>`, with `-2`, `-3`... should that exist.
pub(crate) fn sibling_name(
    path: &Path,
    marker: &str,
    now: std::time::SystemTime,
) -> io::Result<PathBuf> {
    let name = file_name(path)?;
    let stamp = chrono::DateTime::<chrono::Utc>::from(now).format("%Y%m%dT%H%M%SZ");
    let base = directory(path).join(format!("{name}.{marker}{stamp}"));
    let mut candidate = base.clone();
    let mut n = 1;
    while candidate.exists() {
        n += 1;
        candidate = PathBuf::from(format!("{}-{n}", base.display()));
    }
    Ok(candidate)
}

/// Opens (creating, mode 0600) a file for appending.
pub(crate) fn open_for_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true).read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Moves the bytes of `file` from `good_end` on into a new file beside the
/// log and cuts them off the log. Returns that file, how many bytes, and
/// their SHA-256, for the line that records it.
pub(crate) fn set_aside_tail(
    path: &Path,
    file: &mut File,
    good_end: u64,
    now: std::time::SystemTime,
) -> io::Result<(PathBuf, u64, String)> {
    let len = file.seek(SeekFrom::End(0))?;
    let bytes = read_range(file, good_end, len)?;
    let aside = sibling_name(path, "torn-", now)?;
    let mut copy = OpenOptions::new();
    copy.create_new(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        copy.mode(0o600);
    }
    let mut copy = copy.open(&aside)?;
    copy.write_all(&bytes)?;
    copy.sync_all()?;
    // Only once the copy is on disk is the original cut.
    file.set_len(good_end)?;
    file.sync_all()?;
    Ok((aside, bytes.len() as u64, line::sha256_hex(&bytes)))
}
