//! The bytes that follow `354`: the message with CRLF line endings,
//! dot-stuffed (RFC 5321 section 4.5.2), ending in `CRLF.CRLF`. Pure.
//!
//! A bare LF or a bare CR in the message becomes CRLF. RFC 5322 forbids them
//! anyway, and sending them on would let an upstream that reads line ends
//! differently from us see an end of data we did not mean (SMTP smuggling):
//! after this function, the only `CRLF.CRLF` in the output is the last one.

/// Encodes `message` for the DATA phase, terminator included.
pub fn encode_data(message: &[u8]) -> Vec<u8> {
    // Every line may grow by a dot and a CR; a few percent is typical.
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 8);
    let mut at_line_start = true;
    let mut bytes = message.iter().copied().peekable();
    while let Some(byte) = bytes.next() {
        match byte {
            b'\r' => {
                if bytes.peek() == Some(&b'\n') {
                    bytes.next();
                }
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                if at_line_start && byte == b'.' {
                    out.push(b'.');
                }
                out.push(byte);
                at_line_start = false;
            }
        }
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Whether the message has bytes above 127 (asks for `BODY=8BITMIME`).
pub fn has_eight_bit(bytes: &[u8]) -> bool {
    !bytes.is_ascii()
}

/// The header section: everything before the first empty line.
pub fn header_section(message: &[u8]) -> &[u8] {
    let mut line_start = 0;
    for (index, &byte) in message.iter().enumerate() {
        if byte == b'\n' {
            let line = &message[line_start..index];
            if line.is_empty() || line == b"\r" {
                return &message[..line_start];
            }
            line_start = index + 1;
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_starting_with_a_dot_are_stuffed() {
        assert_eq!(
            encode_data(b".hidden\r\nmid.dle\r\n.\r\n..two\r\n"),
            b"..hidden\r\nmid.dle\r\n..\r\n...two\r\n.\r\n"
        );
    }

    #[test]
    fn a_message_not_ending_in_crlf_gets_one() {
        assert_eq!(
            encode_data(b"Subject: x\r\n\r\nbody"),
            b"Subject: x\r\n\r\nbody\r\n.\r\n"
        );
        assert_eq!(encode_data(b"body\r\n"), b"body\r\n.\r\n");
        assert_eq!(encode_data(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(encode_data(b"."), b"..\r\n.\r\n");
        assert_eq!(encode_data(b""), b".\r\n");
    }

    #[test]
    fn bare_line_ends_become_crlf_so_no_early_terminator_survives() {
        assert_eq!(encode_data(b"a\n.\nb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(encode_data(b"a\r.\rb\r"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(encode_data(b"a\r\n.\n\r\nb"), b"a\r\n..\r\n\r\nb\r\n.\r\n");
        for input in [&b"x\n.\r\ny"[..], b"x\r.\r\ny", b"x\r\n.\ny", b"\n.\n"] {
            let out = encode_data(input);
            let terminators = out.windows(5).filter(|w| w == b"\r\n.\r\n").count()
                + usize::from(out.starts_with(b".\r\n"));
            assert_eq!(terminators, 1, "{input:?} -> {out:?}");
        }
    }

    #[test]
    fn eight_bit_bytes_pass_unchanged() {
        let message = "Subject: caf\u{e9}\r\n\r\n\u{1F4E7}\r\n".as_bytes();
        let mut expected = message.to_vec();
        expected.extend_from_slice(b".\r\n");
        assert_eq!(encode_data(message), expected);
        assert!(has_eight_bit(message));
        assert!(!has_eight_bit(b"plain"));
    }

    #[test]
    fn header_section_ends_at_the_first_empty_line() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1\n\nbody\n\nmore"), b"A: 1\n");
        assert_eq!(header_section(b"A: 1"), b"A: 1");
    }
}
