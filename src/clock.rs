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

/// A period as the config and the CLI write it: whole numbers with a unit
/// (`s`, `m`, `h`, `d`, `w`), one or several (`"90d"`, `"1d12h"`, `"30m"`).
/// One parser for every period, so `[store] keep_delivered`, `[audit] keep`
/// and `serve --lease` read alike. A bare number is refused: in a config
/// file `keep = "90"` means 90 days as often as 90 seconds.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "{text:?} is not a period: write a whole number and a unit (s, m, h, d, w), e.g. \"20s\", \"5m\", \"1d12h\""
        )
    };
    let mut seconds: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or_else(invalid)?,
            );
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(invalid()),
        };
        let n = number.take().ok_or_else(invalid)?;
        seconds = n
            .checked_mul(unit)
            .and_then(|s| seconds.checked_add(s))
            .ok_or_else(invalid)?;
    }
    if number.is_some() || text.is_empty() {
        return Err(invalid());
    }
    Ok(Duration::from_secs(seconds))
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

#[cfg(test)]
mod period_tests {
    use super::*;

    #[test]
    fn periods_with_units_and_bare_seconds() {
        for (text, seconds) in [
            ("20s", 20),
            ("5m", 300),
            ("1h", 3_600),
            ("7d", 7 * 86_400),
            ("1w", 7 * 86_400),
            ("1d12h", 36 * 3_600),
            (" 90d ", 90 * 86_400),
            ("0s", 0),
        ] {
            assert_eq!(
                parse_period(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        for bad in [
            "",
            "20",
            "d",
            "7 days",
            "-1d",
            "1d12",
            "5x",
            "99999999999999999999d",
        ] {
            let error = parse_period(bad).expect_err(bad);
            assert!(error.contains("is not a period"), "{error}");
        }
    }
}
