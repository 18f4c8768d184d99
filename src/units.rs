//! Units the settings are written in: durations (`30s`), sizes (`2GiB`), rates
//! (`5/s:20`), and shell-style argument lists. A leaf: it imports nothing of ours.

use std::time::Duration;

/// Splits flags as a shell would (quotes and backslashes), without expansions.
pub fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut any = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                any = true;
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d`, or a bare number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = number_and_unit(s)
        .ok_or_else(|| format!("{s:?} is not a duration (try 500ms, 30s, 5m, 2h)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?} (use ms, s, m, h or d)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `1.5GiB` → (1.5, "GiB"): the leading number and what follows it.
pub fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit))
}

/// Parses a rate: `5/s`, `300/m`, `1000/h`, with an optional burst after a colon
/// (`5/s:20`; default: one second's worth, at least 1).
pub fn parse_rate(s: &str) -> Result<(f64, u32), String> {
    let bad = || format!("{s:?} is not a rate (try 5/s, 300/m or 5/s:20)");
    let (rate, burst) = match s.trim().split_once(':') {
        Some((r, b)) => (r, Some(b.trim().parse::<u32>().map_err(|_| bad())?)),
        None => (s.trim(), None),
    };
    let (n, per) = rate.split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let secs = match per.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(bad()),
    };
    let per_sec = n / secs;
    if !(per_sec.is_finite() && per_sec > 0.0) || burst == Some(0) {
        return Err(bad());
    }
    Ok((
        per_sec,
        burst.unwrap_or_else(|| per_sec.ceil().max(1.0) as u32),
    ))
}

/// Parses a size in bytes: `2GiB`, `500MiB`, `64KiB`, `1.5GB`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = number_and_unit(s.trim())
        .ok_or_else(|| format!("{s:?} is not a size (try 2GiB, 500MiB, 64KiB or bytes)"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown unit {u:?} in {s:?} (use KiB, MiB, GiB)")),
    };
    let bytes = n * factor;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("5/s").unwrap(), (5.0, 5));
        assert_eq!(parse_rate("300/m").unwrap(), (5.0, 5));
        assert_eq!(parse_rate("1/h").unwrap().1, 1);
        assert_eq!(parse_rate("5/s:20").unwrap(), (5.0, 20));
        for bad in ["5", "5/y", "0/s", "x/s", "5/s:0", "5/s:x"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("0").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn launch_flags_are_split_like_a_shell() {
        assert_eq!(
            split_args(
                r#"--lowvram  --extra-model-paths-config "/models/my paths.yaml" 'a b' c\ d"#
            ),
            [
                "--lowvram",
                "--extra-model-paths-config",
                "/models/my paths.yaml",
                "a b",
                "c d"
            ]
        );
        assert!(split_args("   ").is_empty());
        assert_eq!(split_args("''"), [""]);
    }
}
