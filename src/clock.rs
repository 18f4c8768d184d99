//! Wall-clock time in the two forms job records carry: integer milliseconds for
//! ordering and leases, and ISO 8601 text for people and for the prototype's fields.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    now_micros() / 1000
}

/// ISO 8601 with microseconds and an explicit UTC offset, e.g.
/// `2026-11-28T16:56:37.123456+00:00`.
///
/// The prototype wrote Python's `datetime.isoformat()`; this is the same shape with
/// the offset added, which `datetime.fromisoformat` (3.7+) and JavaScript's `Date`
/// both parse.
pub fn iso8601(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}+00:00",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// An HTTP date (RFC 9110 IMF-fixdate), e.g. `Sat, 28 Nov 2026 16:56:37 GMT`.
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days.rem_euclid(7)) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// Howard Hinnant's `civil_from_days`, exact for every date we will meet.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_formats_a_known_instant() {
        // 1795884997139 ms is a server timestamp from the a1 transcript.
        assert_eq!(
            iso8601(1_795_884_997_139_000),
            "2026-11-28T16:56:37.139000+00:00"
        );
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            iso8601(951_782_400_000_001),
            "2000-02-29T00:00:00.000001+00:00"
        );
    }

    #[test]
    fn http_date_matches_the_transcript_date_header() {
        // "Date: Sat, 28 Nov 2026 16:56:37 GMT" in a1_simple_success.
        assert_eq!(http_date(1_795_884_997), "Sat, 28 Nov 2026 16:56:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
