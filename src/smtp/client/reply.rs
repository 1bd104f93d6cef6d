//! SMTP replies (RFC 5321 section 4.2) and the pure reader that cuts them out
//! of the bytes a server sends: bytes in, whole replies out, no socket.
//!
//! Written by hand rather than on `smtp_proto::response::parser::ResponseReceiver`:
//! that parser joins the lines of a multi-line reply into one string (EHLO
//! needs them apart) and keeps the enhanced status in `u8`s, while RFC 3463
//! allows a three-digit subject and detail (Exchange sends `5.5.127`-style
//! codes close to that limit). The reader is ~100 lines and bounded.

use std::fmt;

/// One complete reply: the code, the RFC 3463 enhanced status when the
/// server sent one, and the text of each line (without code and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `(class, subject, detail)`, e.g. `(5, 7, 3)` for `5.7.3`.
    pub enhanced: Option<(u8, u16, u16)>,
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx: the server waits for more (334 during AUTH, 354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not retry as is.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The text of all lines joined by a space, for messages and logs.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The text of the first line: where a 334 challenge carries its base64
    /// payload.
    pub fn first_line_payload(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or_default()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        for line in &self.lines {
            // Replies come from a remote server: show control characters
            // escaped so they cannot forge lines in a log.
            write!(f, " {}", line.escape_debug())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the reply line {line:?} does not start with a three-digit code")]
    NoCode { line: String },
    #[error("a multi-line reply changed its code from {first} to {then}")]
    CodeChanged { first: u16, then: u16 },
    #[error("a reply line is longer than {MAX_LINE_LENGTH} bytes")]
    LineTooLong,
    #[error("a reply has more than {MAX_LINES} lines")]
    TooManyLines,
}

/// RFC 5321 caps a reply line at 512 octets; servers exceed it in EHLO and
/// error texts, so allow generous room while still bounding memory.
pub const MAX_LINE_LENGTH: usize = 4096;
/// EHLO replies have a few dozen lines at most.
pub const MAX_LINES: usize = 128;

/// Accumulates bytes and hands out complete replies in order.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buffer: Vec<u8>,
    /// How much of `buffer` is known to hold no LF: a server that sends a
    /// long line a byte at a time costs one pass over it, not one a byte.
    scanned: usize,
    pending: Vec<String>,
    pending_code: Option<u16>,
}

impl ReplyReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a complete reply.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Forgets everything buffered: STARTTLS must not carry plaintext bytes
    /// into the TLS session (the CVE-2011-0411 class of injection).
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.scanned = 0;
        self.pending.clear();
        self.pending_code = None;
    }

    /// The next complete reply, `Ok(None)` when more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        // Bounded by the number of complete lines buffered.
        while let Some(end) = self.buffer[self.scanned..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|offset| self.scanned + offset)
        {
            self.scanned = 0;
            let raw: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = raw
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(&raw);
            if line.len() > MAX_LINE_LENGTH {
                return Err(ReplyError::LineTooLong);
            }
            let (code, is_last, text) = split_line(line)?;
            match self.pending_code {
                Some(first) if first != code => {
                    return Err(ReplyError::CodeChanged { first, then: code });
                }
                _ => self.pending_code = Some(code),
            }
            if self.pending.len() >= MAX_LINES {
                return Err(ReplyError::TooManyLines);
            }
            self.pending.push(text);
            if is_last {
                let lines = std::mem::take(&mut self.pending);
                self.pending_code = None;
                let enhanced = lines.first().and_then(|l| parse_enhanced(l, code));
                return Ok(Some(Reply {
                    code,
                    enhanced,
                    lines,
                }));
            }
        }
        self.scanned = self.buffer.len();
        // The longest line may still be followed by its CR before the LF
        // arrives: only a line that is already too long without it is.
        let pending = self.buffer.strip_suffix(b"\r").unwrap_or(&self.buffer);
        if pending.len() > MAX_LINE_LENGTH {
            return Err(ReplyError::LineTooLong);
        }
        Ok(None)
    }
}

/// `250-text`, `250 text` or a bare `250`.
fn split_line(line: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    let no_code = || ReplyError::NoCode {
        line: String::from_utf8_lossy(line).into_owned(),
    };
    let digits = line.get(..3).ok_or_else(no_code)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(no_code());
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    let (is_last, text) = match line.get(3) {
        None => (true, &b""[..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(no_code()),
    };
    Ok((code, is_last, String::from_utf8_lossy(text).into_owned()))
}

/// RFC 3463 `class.subject.detail` at the start of the text; the class must
/// agree with the reply code's first digit or it is ordinary text.
fn parse_enhanced(text: &str, code: u16) -> Option<(u8, u16, u16)> {
    let word = text.split(' ').next()?;
    let mut parts = word.split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || class.len() != 1 || subject.len() > 3 || detail.len() > 3 {
        return None;
    }
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(all_digits(class) && all_digits(subject) && all_digits(detail)) {
        return None;
    }
    let class: u8 = class.parse().ok()?;
    (u16::from(class) == code / 100).then_some(())?;
    Some((class, subject.parse().ok()?, detail.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(bytes: &[u8]) -> Vec<Reply> {
        let mut reader = ReplyReader::new();
        reader.feed(bytes);
        let mut replies = Vec::new();
        while let Some(reply) = reader.next_reply().expect("valid replies") {
            replies.push(reply);
        }
        replies
    }

    #[test]
    fn single_and_multi_line_replies() {
        let replies = read_all(
            b"220 mx.example.com ESMTP ready\r\n250-mx.example.com\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
        );
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].code, 220);
        assert_eq!(replies[0].lines, ["mx.example.com ESMTP ready"]);
        assert_eq!(
            replies[1].lines,
            ["mx.example.com", "PIPELINING", "SIZE 1000"]
        );
    }

    #[test]
    fn enhanced_status_codes() {
        let replies = read_all(
            b"550 5.1.1 <nobody@example.com>: user unknown\r\n535 5.7.139 Authentication unsuccessful\r\n250 2.0.0\r\n451 5.0.0 class mismatch is text\r\n250 ok\r\n",
        );
        assert_eq!(replies[0].enhanced, Some((5, 1, 1)));
        assert!(replies[0].is_permanent());
        assert_eq!(replies[1].enhanced, Some((5, 7, 139)));
        assert_eq!(replies[2].enhanced, Some((2, 0, 0)));
        assert_eq!(replies[3].enhanced, None);
        assert!(replies[3].is_transient());
        assert_eq!(replies[4].enhanced, None);
    }

    #[test]
    fn bytes_may_arrive_in_any_split() {
        let wire = b"250-first\r\n250 second\r\n354 go ahead\r\n";
        for split in 0..wire.len() {
            let mut reader = ReplyReader::new();
            reader.feed(&wire[..split]);
            let mut replies = Vec::new();
            while let Some(r) = reader.next_reply().expect("valid") {
                replies.push(r);
            }
            reader.feed(&wire[split..]);
            while let Some(r) = reader.next_reply().expect("valid") {
                replies.push(r);
            }
            assert_eq!(replies.len(), 2, "split at {split}");
            assert_eq!(replies[0].lines, ["first", "second"]);
            assert_eq!(replies[1].code, 354);
        }
    }

    #[test]
    fn bare_code_and_bare_lf_are_accepted() {
        let replies = read_all(b"250\n334 \r\n");
        assert_eq!(replies[0].code, 250);
        assert_eq!(replies[0].lines, [""]);
        assert_eq!(replies[1].code, 334);
        assert_eq!(replies[1].first_line_payload(), "");
    }

    #[test]
    fn malformed_replies_are_errors() {
        for (bytes, expected) in [
            (&b"hello\r\n"[..], "does not start"),
            (b"25\r\n", "does not start"),
            (b"250x\r\n", "does not start"),
            (b"250-a\r\n251 b\r\n", "changed its code"),
        ] {
            let mut reader = ReplyReader::new();
            reader.feed(bytes);
            let error = reader.next_reply().expect_err("malformed");
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn size_is_bounded() {
        let mut reader = ReplyReader::new();
        reader.feed(&vec![b'2'; MAX_LINE_LENGTH + 1]);
        assert_eq!(reader.next_reply(), Err(ReplyError::LineTooLong));

        let mut reader = ReplyReader::new();
        reader.feed(&b"250-x\r\n".repeat(MAX_LINES + 1));
        assert_eq!(reader.next_reply(), Err(ReplyError::TooManyLines));
    }

    /// Everything `bytes` yields when fed in `chunks`, reading after each
    /// chunk: the replies, then the first error if one came.
    fn read_in(chunks: &[&[u8]]) -> Vec<Result<Reply, ReplyError>> {
        let mut reader = ReplyReader::new();
        let mut out = Vec::new();
        for chunk in chunks {
            reader.feed(chunk);
            loop {
                match reader.next_reply() {
                    Ok(Some(reply)) => out.push(Ok(reply)),
                    Ok(None) => break,
                    Err(error) => {
                        out.push(Err(error));
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Server bytes: codes, separators, enhanced codes, line ends right and
    /// wrong, lines close to the length limit, now and then any bytes.
    fn server_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            6 => prop::sample::select(vec![
                &b"250"[..], b"220", b"334", b"354", b"421", b"535", b"25", b"2500", b"-", b" ",
                b"\r\n", b"\n", b"\r", b"2.0.0 ", b"5.7.139 ", b"4.7.0", b"5.5.1234", b"9.9.9 ",
                b"ok", b"PIPELINING", b"\x1b[31m", b"\xff", b"\xc3\xa9",
            ])
            .prop_map(<[u8]>::to_vec),
            1 => (MAX_LINE_LENGTH - 6..MAX_LINE_LENGTH + 3).prop_map(|n| vec![b'x'; n]),
            1 => prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    /// One reply as a server writes it.
    fn reply_strategy() -> impl Strategy<Value = (u16, Vec<String>)> {
        (200u16..600, prop::collection::vec("[ -~]{0,60}", 1..6))
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config(1024))]

        /// No input makes the reader panic, and how the bytes are cut never
        /// changes what it reads: the same replies, the same first error.
        #[test]
        fn fuzz_reply_reader_does_not_depend_on_the_split(
            bytes in server_bytes(),
            splits in crate::fuzzing::splits(),
        ) {
            let whole = read_in(&[&bytes]);
            prop_assert_eq!(&whole, &read_in(&crate::fuzzing::chunks(&bytes, &splits)));
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            prop_assert_eq!(&whole, &read_in(&bytewise));
            for reply in whole.iter().flatten() {
                prop_assert!((0..1000).contains(&reply.code));
                prop_assert!(!reply.lines.is_empty() && reply.lines.len() <= MAX_LINES);
                if let Some((class, _, _)) = reply.enhanced {
                    prop_assert_eq!(u16::from(class), reply.code / 100);
                }
            }
        }

        /// Replies as servers write them are read back line for line,
        /// with CRLF or with bare LF.
        #[test]
        fn fuzz_reply_written_replies_are_read_back(
            replies in prop::collection::vec(reply_strategy(), 1..6),
            bare_lf in any::<bool>(),
            splits in crate::fuzzing::splits(),
        ) {
            let end = if bare_lf { "\n" } else { "\r\n" };
            let mut wire = String::new();
            for (code, lines) in &replies {
                for (index, line) in lines.iter().enumerate() {
                    let separator = if index + 1 == lines.len() { ' ' } else { '-' };
                    wire.push_str(&format!("{code}{separator}{line}{end}"));
                }
            }
            let read = read_in(&crate::fuzzing::chunks(wire.as_bytes(), &splits));
            prop_assert_eq!(read.len(), replies.len());
            for (got, (code, lines)) in read.into_iter().zip(&replies) {
                let got = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(got.code, *code);
                prop_assert_eq!(&got.lines, lines);
            }
        }
    }

    #[test]
    fn the_longest_line_is_not_too_long_while_its_lf_is_still_to_come() {
        // Found by fuzz_reply_reader_does_not_depend_on_the_split: with its
        // CR read and its LF not yet, a line of the limit was refused.
        let mut line = b"250 ".to_vec();
        line.resize(MAX_LINE_LENGTH, b'x');
        line.push(b'\r');
        let mut reader = ReplyReader::new();
        reader.feed(&line);
        assert_eq!(reader.next_reply(), Ok(None));
        reader.feed(b"\n");
        assert_eq!(
            reader.next_reply().expect("a reply").map(|r| r.code),
            Some(250)
        );
        let mut reader = ReplyReader::new();
        line.insert(0, b'x');
        reader.feed(&line);
        assert_eq!(reader.next_reply(), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn display_escapes_control_characters() {
        let reply = read_all(b"550 bad\x1b[31m\r\n").remove(0);
        assert_eq!(reply.to_string(), "550 bad\\u{1b}[31m");
    }
}
