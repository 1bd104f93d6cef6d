//! Wall-clock time as the store keeps it: whole seconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_unix() -> i64 {
    to_unix(SystemTime::now())
}

pub fn to_unix(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

pub fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// RFC 3339 in UTC, for people and JSON.
pub fn format_unix(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// "in 14m 3s" / "3m 2s ago", for status lines.
pub fn describe_from_now(secs: i64) -> String {
    let delta = secs - now_unix();
    let magnitude = delta.unsigned_abs();
    let text = if magnitude >= 3600 {
        format!("{}h {}m", magnitude / 3600, magnitude % 3600 / 60)
    } else if magnitude >= 60 {
        format!("{}m {}s", magnitude / 60, magnitude % 60)
    } else {
        format!("{magnitude}s")
    };
    if delta >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}
