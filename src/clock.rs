//! Wall-clock time in the two forms job records carry: integer milliseconds for
//! ordering and leases, and ISO 8601 text for people and for the prototype's fields.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDateTime, Utc};

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
    // Written digit by digit: a general formatter cost a request more than the
    // rest of the time stamp's work.
    let secs = micros / 1_000_000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let mut out = String::with_capacity(32);
    let put = |out: &mut String, n: u64, width: u32| {
        for i in (0..width).rev() {
            out.push(char::from(b'0' + (n / 10u64.pow(i) % 10) as u8));
        }
    };
    put(&mut out, y.clamp(0, 9999) as u64, 4);
    out.push('-');
    put(&mut out, u64::from(m), 2);
    out.push('-');
    put(&mut out, u64::from(d), 2);
    out.push('T');
    put(&mut out, t / 3600, 2);
    out.push(':');
    put(&mut out, t / 60 % 60, 2);
    out.push(':');
    put(&mut out, t % 60, 2);
    out.push('.');
    put(&mut out, micros % 1_000_000, 6);
    out.push_str("+00:00");
    out
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// An HTTP date (RFC 9110 IMF-fixdate), e.g. `Sat, 28 Nov 2026 16:56:37 GMT`.
pub fn http_date(secs: u64) -> String {
    utc(secs as i64 * 1_000_000)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// Milliseconds since the epoch of an ISO 8601 time as job records and queue
/// entries carry it: with an offset (ours), or without one (Python's naive
/// `isoformat()`, taken as UTC). `None` if it is not such a time.
pub fn parse_iso8601_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let ms = match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.timestamp_millis(),
        Err(_) => NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()?
            .and_utc()
            .timestamp_millis(),
    };
    u64::try_from(ms).ok()
}

fn utc(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
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
    fn iso8601_matches_a_general_formatter() {
        // Leap days, century years, month ends, 2000-02-29 and 2100-03-01.
        let mut micros: u64 = 0;
        while micros < 4_200_000_000_000_000 {
            let general = utc(micros as i64)
                .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                .to_string();
            assert_eq!(iso8601(micros), general, "{micros}");
            micros += 7_777_777_777_777;
        }
        for day in [10_956u64, 11_016, 11_017, 47_541, 47_542] {
            let m = day * 86_400_000_000 + 86_399_999_999;
            let general = utc(m as i64)
                .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                .to_string();
            assert_eq!(iso8601(m), general);
        }
    }

    #[test]
    fn iso8601_parses_ours_and_pythons() {
        assert_eq!(
            parse_iso8601_ms("2026-11-28T16:56:37.139000+00:00"),
            Some(1_795_884_997_139)
        );
        assert_eq!(
            parse_iso8601_ms("2026-11-28T16:56:37.139"),
            Some(1_795_884_997_139)
        );
        assert_eq!(
            parse_iso8601_ms("2026-11-28T17:56:37+01:00"),
            Some(1_795_884_997_000)
        );
        assert_eq!(parse_iso8601_ms("yesterday"), None);
        assert_eq!(parse_iso8601_ms(""), None);
    }

    #[test]
    fn http_date_matches_the_transcript_date_header() {
        // "Date: Sat, 28 Nov 2026 16:56:37 GMT" in a1_simple_success.
        assert_eq!(http_date(1_795_884_997), "Sat, 28 Nov 2026 16:56:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
