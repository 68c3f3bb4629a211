//! Wall-clock helpers: microseconds since the Unix epoch, and their RFC 3339 text.
//!
//! Invariants: every timestamp binlake stores or compares (commit times, `_binlake_synced_at`,
//! checkpoint times, schedule times) is UTC microseconds since 1970-01-01 as an `i64`; this
//! module imports nothing of binlake but the calendar arithmetic of `decode`.

/// µs since the Unix epoch now (0 if the clock is before 1970).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `2026-11-21T05:06:01.489452Z` from µs since the epoch.
pub fn format_us(us: i64) -> String {
    let days = us.div_euclid(86_400_000_000);
    let rem = us.rem_euclid(86_400_000_000);
    let (y, m, d) = crate::decode::rows::civil_from_days(days as i32);
    let s = rem / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        rem % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_microseconds_as_rfc3339_utc() {
        assert_eq!(super::format_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            super::format_us(1_763_701_561_489_452),
            "2025-11-21T05:06:01.489452Z"
        );
        assert_eq!(super::format_us(-1), "1969-12-31T23:59:59.999999Z");
    }
}
