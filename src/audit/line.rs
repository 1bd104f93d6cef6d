//! One audit line: its two formats, the bytes its MAC covers, and the
//! bounds that keep every line short.
//!
//! A keyed line is `{"seq":N,"at":..,<entry>,"prev":H,"key":K,"mac":M}`:
//! `prev` is the SHA-256 of the previous line's bytes exactly as written
//! (not of a re-serialisation, so a field a later version adds cannot
//! change it), `key` names the master key the MAC key was derived from, and
//! `mac` is the HMAC of the line's own bytes up to `,"mac":` with a `}`
//! after them. The MAC is always the last field, at a fixed distance from
//! the end, so the covered bytes are found without re-serialising anything.
//!
//! A legacy line (written before the chain was keyed) has `"hash"` instead
//! of `key` and `mac`: the SHA-256 of its fields re-serialised in a fixed
//! order, and `prev` is the previous line's `hash`. Anyone can recompute
//! such a chain, so it shows damage but not a careful rewrite; legacy lines
//! are accepted only at the start of a log, where the first keyed line's
//! `prev` then pins them.

use super::AuditEntry;
use super::key::AuditKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev` of a chain's first line.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The longest line this version writes. Lines used to grow with long
/// upstream replies until one passed the 64 KiB the tail reader could see
/// and every later append failed; now each field is cut to a budget (below)
/// that keeps the worst case, every character escaped, under this.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Budget of a short field (actor, action, account, fingerprint, message
/// id), in bytes as escaped in JSON: names and ids are far shorter.
const FIELD_MAX: usize = 256;

/// Budget of `detail`, in bytes as escaped in JSON: enough for a whole SMTP
/// reply of a few lines, which is what an operator needs from it.
const DETAIL_MAX: usize = 8 * 1024;

const MAC_FIELD: &[u8] = b",\"mac\":\"";
const MAC_HEX_LEN: usize = 64;
/// `,"mac":"` + 64 hex digits + `"}`: the fixed end of a keyed line.
const MAC_TAIL_LEN: usize = MAC_FIELD.len() + MAC_HEX_LEN + 2;

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// How a line is sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seal {
    /// Written before the chain was keyed: `hash` over the fields.
    Legacy { hash: String },
    /// HMAC-SHA256 under the audit key of master key `key_id`.
    Keyed { key_id: u32 },
}

/// A line as read back.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub seq: u64,
    pub at: String,
    pub entry: AuditEntry,
    pub prev: String,
    pub seal: Seal,
    /// SHA-256 of the line's bytes: what the next keyed line's `prev` and
    /// the store's anchor name it by.
    pub hash: String,
    /// The MAC as written (keyed lines), for the record of a removal.
    pub mac: Option<String>,
}

#[derive(Serialize)]
struct KeyedFields<'a> {
    seq: u64,
    at: &'a str,
    #[serde(flatten)]
    entry: &'a AuditEntry,
    prev: &'a str,
    key: String,
}

#[derive(Deserialize)]
struct ReadFields {
    seq: u64,
    at: String,
    #[serde(flatten)]
    entry: AuditEntry,
    prev: String,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    mac: Option<String>,
}

/// The bytes of a keyed line (without its newline).
pub(crate) fn keyed_line(
    seq: u64,
    at: &str,
    entry: &AuditEntry,
    prev: &str,
    key: &AuditKey,
) -> Vec<u8> {
    let fields = KeyedFields {
        seq,
        at,
        entry,
        prev,
        key: format!("{:08x}", key.id()),
    };
    // Strings and integers only: serialising cannot fail.
    let mut bytes = serde_json::to_vec(&fields).expect("an audit line of strings serialises");
    let mac = key.mac_hex(&bytes);
    // The MAC goes inside the object, as its last field.
    bytes.pop();
    bytes.extend_from_slice(MAC_FIELD);
    bytes.extend_from_slice(mac.as_bytes());
    bytes.extend_from_slice(b"\"}");
    bytes
}

/// The bytes a keyed line's MAC covers, and the MAC as written; `None` if
/// the line does not end with a MAC field in the place this format puts it.
pub(crate) fn mac_parts(bytes: &[u8]) -> Option<(Vec<u8>, &str)> {
    let split = bytes.len().checked_sub(MAC_TAIL_LEN)?;
    let (body, tail) = bytes.split_at(split);
    let mac = tail.strip_prefix(MAC_FIELD)?.strip_suffix(b"\"}")?;
    let mac = std::str::from_utf8(mac).ok()?;
    if !mac.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut covered = body.to_vec();
    covered.push(b'}');
    Some((covered, mac))
}

/// The hash a legacy line carries: its fields re-serialised in the order
/// the legacy writer used.
pub(crate) fn legacy_hash(line: &Line) -> String {
    #[derive(Serialize)]
    struct Unsealed<'a> {
        seq: u64,
        at: &'a str,
        #[serde(flatten)]
        entry: &'a AuditEntry,
        prev: &'a str,
    }
    let bytes = serde_json::to_vec(&Unsealed {
        seq: line.seq,
        at: &line.at,
        entry: &line.entry,
        prev: &line.prev,
    })
    .expect("an audit line of strings serialises");
    sha256_hex(&bytes)
}

/// When a line was written, from its `at`; `None` if that is not the
/// RFC 3339 time this writer puts there.
pub(crate) fn written_at(line: &Line) -> Option<std::time::SystemTime> {
    chrono::DateTime::parse_from_rfc3339(&line.at)
        .ok()
        .map(std::time::SystemTime::from)
}

/// The `at` of a line written at `time`: UTC to the millisecond.
pub(crate) fn format_at(time: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Reads one line (without its newline). The error says why it is not an
/// audit line; the MAC itself is checked by the verifier, which has the key.
pub(crate) fn parse(bytes: &[u8]) -> Result<Line, String> {
    let fields: ReadFields =
        serde_json::from_slice(bytes).map_err(|e| format!("not an audit line: {e}"))?;
    let mac = fields.mac.clone();
    let seal = match (fields.hash, fields.key, fields.mac) {
        (Some(hash), None, None) => Seal::Legacy { hash },
        (None, Some(key), Some(_)) => {
            let key_id = u32::from_str_radix(&key, 16)
                .ok()
                .filter(|_| key.len() == 8)
                .ok_or_else(|| format!("key {key:?} is not a key id (8 hex digits)"))?;
            if mac_parts(bytes).is_none() {
                return Err("its MAC is not the last field, where oxirelay writes it".into());
            }
            Seal::Keyed { key_id }
        }
        _ => {
            return Err(
                "neither a keyed line (key and mac) nor a legacy line (hash): not an audit line"
                    .into(),
            );
        }
    };
    Ok(Line {
        seq: fields.seq,
        at: fields.at,
        entry: fields.entry,
        prev: fields.prev,
        seal,
        hash: sha256_hex(bytes),
        mac,
    })
}

/// The entry with every field cut to its budget, with a marker saying so.
pub(crate) fn bounded(entry: AuditEntry) -> AuditEntry {
    AuditEntry {
        actor: cut(entry.actor, FIELD_MAX),
        action: cut(entry.action, FIELD_MAX),
        account: entry.account.map(|s| cut(s, FIELD_MAX)),
        token_fingerprint: entry.token_fingerprint.map(|s| cut(s, FIELD_MAX)),
        message_id: entry.message_id.map(|s| cut(s, FIELD_MAX)),
        detail: cut(entry.detail, DETAIL_MAX),
    }
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn cut(text: String, max: usize) -> String {
    if text.chars().map(escaped_len).sum::<usize>() <= max {
        return text;
    }
    let marker = format!(" [cut: {} bytes in all]", text.len());
    let budget = max.saturating_sub(marker.len());
    let mut used = 0;
    let mut end = 0;
    for (index, c) in text.char_indices() {
        used += escaped_len(c);
        if used > budget {
            break;
        }
        end = index + c.len_utf8();
    }
    format!("{}{marker}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::MasterKey;

    fn key() -> AuditKey {
        AuditKey::derive(&MasterKey::from_bytes([7; 32]))
    }

    fn entry(detail: &str) -> AuditEntry {
        AuditEntry {
            actor: "relay".into(),
            action: "message.deferred".into(),
            account: Some("office".into()),
            token_fingerprint: None,
            message_id: Some("m1".into()),
            detail: detail.into(),
        }
    }

    #[test]
    fn a_keyed_line_parses_and_its_mac_covers_everything_before_it() {
        let bytes = keyed_line(3, "2025-01-01T00:00:00.000Z", &entry("x"), GENESIS, &key());
        let line = parse(&bytes).expect("parses");
        assert_eq!(line.seq, 3);
        assert_eq!(line.seal, Seal::Keyed { key_id: key().id() });
        let (covered, mac) = mac_parts(&bytes).expect("mac at the end");
        assert!(key().verify(&covered, mac));
        let text = String::from_utf8(covered).expect("utf-8");
        assert!(
            text.starts_with("{\"seq\":3,")
                && text.ends_with(&format!("\"key\":\"{:08x}\"}}", key().id()))
        );
    }

    #[test]
    fn a_line_that_moves_the_mac_is_refused() {
        let bytes = keyed_line(1, "t", &entry("x"), GENESIS, &key());
        let text = String::from_utf8(bytes).expect("utf-8");
        let moved = text
            .replacen("{\"seq\":1,", "{", 1)
            .replace("}", ",\"seq\":1}");
        assert!(parse(moved.as_bytes()).is_err());
    }

    #[test]
    fn the_worst_entry_still_fits_one_line() {
        let huge = "\u{1}\"".repeat(100_000);
        let worst = AuditEntry {
            actor: huge.clone(),
            action: huge.clone(),
            account: Some(huge.clone()),
            token_fingerprint: Some(huge.clone()),
            message_id: Some(huge.clone()),
            detail: huge,
        };
        let bytes = keyed_line(
            u64::MAX,
            "2025-01-01T00:00:00.000Z",
            &bounded(worst),
            GENESIS,
            &key(),
        );
        assert!(bytes.len() <= MAX_LINE_BYTES, "{} bytes", bytes.len());
        let line = parse(&bytes).expect("parses");
        assert!(
            line.entry.detail.ends_with("[cut: 200000 bytes in all]"),
            "{}",
            &line.entry.detail[line.entry.detail.len() - 40..]
        );
    }

    #[test]
    fn cutting_keeps_whole_characters() {
        let text = "é".repeat(10_000);
        let cut = cut(text, 1000);
        assert!(cut.len() <= 1000);
        assert!(cut.starts_with("éé") && cut.ends_with("[cut: 20000 bytes in all]"));
        assert_eq!(super::cut("short".into(), 1000), "short");
    }
}
