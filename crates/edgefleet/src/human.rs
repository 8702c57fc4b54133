//! Humanised numbers for tables and descriptions: ages (`3s`, `5m`, `2h`, `4d`), byte sizes
//! (`1.5 GiB`) and timestamps.
//!
//! Everything takes `now` as an argument so the output is deterministic under test.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A duration in whole seconds as one unit, rounded down: `0s`..`59s`, `1m`..`59m`,
/// `1h`..`23h`, then days. Negative durations (clock skew between server and client) are `0s`.
pub fn duration_secs(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// How long ago `then` was, or `-` when it never happened.
pub fn age(then: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match then {
        Some(then) => duration_secs((now - then).whole_seconds()),
        None => "-".to_owned(),
    }
}

/// How long until `deadline`: `6d`, or `expired` once it has passed; `-` when unknown.
pub fn remaining(deadline: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match deadline {
        Some(deadline) if deadline <= now => "expired".to_owned(),
        Some(deadline) => duration_secs((deadline - now).whole_seconds()),
        None => "-".to_owned(),
    }
}

/// A byte count in binary units with one decimal: `512 B`, `1.5 KiB`, `7.8 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // f64 loses precision above 2^53 bytes, far below what one decimal can show anyway.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An RFC 3339 timestamp in UTC, to the second: `2025-01-02T03:04:05Z`.
pub fn timestamp(at: OffsetDateTime) -> String {
    let at = at
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// A timestamp followed by its age: `2025-01-02T03:04:05Z (3m ago)`.
pub fn timestamp_with_age(at: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match at {
        Some(at) => format!("{} ({} ago)", timestamp(at), age(Some(at), now)),
        None => "never".to_owned(),
    }
}

/// A deadline with how long is left: `2025-01-09T03:04:05Z (in 6d)` or `(expired)`.
pub fn deadline(at: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match at {
        Some(at) if at <= now => format!("{} (expired)", timestamp(at)),
        Some(at) => format!("{} (in {})", timestamp(at), remaining(Some(at), now)),
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn durations_use_one_unit_rounded_down() {
        for (seconds, expected) in [
            (-5, "0s"),
            (0, "0s"),
            (3, "3s"),
            (59, "59s"),
            (60, "1m"),
            (299, "4m"),
            (3_599, "59m"),
            (3_600, "1h"),
            (7_300, "2h"),
            (86_399, "23h"),
            (86_400, "1d"),
            (30 * 86_400, "30d"),
        ] {
            assert_eq!(duration_secs(seconds), expected, "{seconds}s");
        }
    }

    #[test]
    fn ages_and_deadlines() {
        let now = datetime!(2025-01-02 03:04:05 UTC);
        assert_eq!(age(Some(datetime!(2025-01-02 03:03:05 UTC)), now), "1m");
        assert_eq!(age(None, now), "-");
        assert_eq!(
            remaining(Some(datetime!(2025-01-09 03:04:05 UTC)), now),
            "7d"
        );
        assert_eq!(
            remaining(Some(datetime!(2025-01-01 00:00:00 UTC)), now),
            "expired"
        );
        assert_eq!(remaining(None, now), "-");
        assert_eq!(
            timestamp_with_age(Some(datetime!(2025-01-02 03:00:05.5 UTC)), now),
            "2025-01-02T03:00:05Z (3m ago)"
        );
        assert_eq!(
            deadline(Some(datetime!(2025-01-02 05:04:05 +01:00)), now),
            "2025-01-02T04:04:05Z (in 1h)"
        );
        assert_eq!(
            deadline(Some(datetime!(2025-01-02 03:04:05 UTC)), now),
            "2025-01-02T03:04:05Z (expired)"
        );
    }

    #[test]
    fn sizes_use_binary_units() {
        for (bytes, expected) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (8 * 1024 * 1024 * 1024 - 200 * 1024 * 1024, "7.8 GiB"),
            (3 * 1024_u64.pow(4), "3.0 TiB"),
            (u64::MAX, "16.0 EiB"),
        ] {
            assert_eq!(size(bytes), expected, "{bytes}");
        }
    }
}
