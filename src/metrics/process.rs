//! The process basics a scrape shows: resident memory and start time.
//!
//! Read by hand from `/proc/self/status` (one line of text) rather than
//! through a crate such as `procfs`: the one number needed does not justify
//! a dependency that parses all of `/proc`. On a system without `/proc`
//! the series is left out, not made up.

use std::time::{SystemTime, UNIX_EPOCH};

/// The resident set size in bytes (`VmRSS`), if `/proc` says.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss_bytes(&status)
}

/// `VmRSS:   12345 kB` → 12,641,280. The kernel writes this field in kB
/// (1024 bytes) whatever the page size.
pub fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// Seconds since the Unix epoch, with the fraction.
pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kilobytes() {
        let status = "Name:\toxirelay\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_bytes(status), Some(12345 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
        assert_eq!(vm_rss_bytes("VmRSS:\tlots kB\n"), None);
        assert_eq!(vm_rss_bytes("VmRSS:\t12 MB\n"), None, "an unknown unit");
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let rss = resident_memory_bytes().expect("Linux has /proc/self/status");
        assert!(rss > 1024 * 1024, "{rss}");
    }
}
