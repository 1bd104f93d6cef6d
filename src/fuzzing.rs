//! What the property-based fuzz targets share (the `fuzz_*` tests, each in
//! the module it tests; FUZZING.md lists them and their long runs): how many
//! cases to run, and the byte alphabet of SMTP that makes random input reach
//! deep into a session instead of failing at its first command.
//!
//! `cargo test` runs each target's small default number of cases (seconds
//! for all of them); `OXIRELAY_FUZZ_CASES=N cargo test --lib fuzz_` runs
//! every target N cases, as long as wanted. A failure is shrunk to a small
//! input and saved under `proptest-regressions/`, which later runs replay
//! first: commit that file with the fix.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// The environment variable that sets the number of cases of every target.
pub const CASES_ENV: &str = "OXIRELAY_FUZZ_CASES";

/// The cases to run: `OXIRELAY_FUZZ_CASES` if set, else `default_cases`
/// (chosen per target so that `cargo test` stays fast).
pub fn cases(default_cases: u32) -> u32 {
    match std::env::var(CASES_ENV) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{CASES_ENV}={value:?} is not a number of cases")),
        Err(_) => default_cases,
    }
}

/// A proptest config with [`cases`], for `#![proptest_config(...)]`.
pub fn config(default_cases: u32) -> Config {
    Config {
        cases: cases(default_cases),
        // Shrinking a long SMTP script can take a while; a failure found in
        // a long run is worth minutes of shrinking, not hours.
        max_shrink_iters: 4096,
        ..Config::default()
    }
}

/// Input is fed in chunks of these sizes, cycling: how a socket might cut it.
pub fn splits() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..48usize, 1..16)
}

/// `bytes` cut into chunks of the sizes in `splits`, repeated as needed.
pub fn chunks<'a>(bytes: &'a [u8], splits: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = splits.iter().copied().filter(|n| *n > 0).cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        out.push(chunk);
        rest = tail;
    }
    out
}

/// The pieces of a message after `354`: line ends right and wrong, dots
/// where they stuff and where they end, NUL, 8-bit bytes, a line near the
/// 998-octet limit, and now and then any bytes at all.
pub fn data_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::sample::select(vec![
            &b"\r\n"[..], b".", b"..", b"\r", b"\n", b".\r\n", b"\r\n.\r\n", b"\n.\n",
            b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"Subject: x\r\n", b"text", b" ", b"\0",
            b"\xc3\xa9", b"\xff",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => (990..1002usize).prop_map(|n| vec![b'x'; n]),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

/// Bytes of DATA made of [`data_piece`]s.
pub fn data_bytes(max_pieces: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(data_piece(), 0..max_pieces).prop_map(|pieces| pieces.concat())
}
