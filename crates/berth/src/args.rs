//! Parsers for flag values: durations (`30s`, `10m`, `90`), sizes (`2g`)
//! and `--since` (a duration ago or an RFC 3339 time).

use chrono::{DateTime, Utc};
use std::time::Duration;

/// `30`, `30s`, `500ms`, `10m`, `2h`, `1d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("invalid duration {s:?}: expected e.g. 30s, 10m, 2h, 1d");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "" | "s" | "sec" | "secs" => n.checked_mul(1000),
        "ms" => Some(n),
        "m" | "min" | "mins" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

/// `2g`, `512m`, `1024k`, `1073741824`; binary units, case-insensitive,
/// an optional trailing `b` (`2gb`, `512MiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("ib").map(|x| x.to_string()).unwrap_or(t);
    let t = t.strip_suffix('b').unwrap_or(&t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("invalid size {s:?}: expected e.g. 512m, 2g");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// `--since`: an RFC 3339 time, or a duration before `now`.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = parse_duration(s)
        .map_err(|_| format!("invalid --since {s:?}: expected e.g. 10m, 2h or an RFC 3339 time"))?;
    let d = chrono::Duration::from_std(d).map_err(|e| e.to_string())?;
    now.checked_sub_signed(d)
        .ok_or_else(|| format!("invalid --since {s:?}: too far back"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "s", "10x", "-5s", "1.5s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        for bad in ["", "g", "2x", "-1g", "99999999999t"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn since() {
        let now = Utc.with_ymd_and_hms(2026, 4, 24, 12, 0, 0).unwrap();
        assert_eq!(
            parse_since("10m", now),
            Ok(Utc.with_ymd_and_hms(2026, 4, 24, 11, 50, 0).unwrap())
        );
        assert_eq!(
            parse_since("2026-04-24T10:01:00+02:00", now),
            Ok(Utc.with_ymd_and_hms(2026, 4, 24, 8, 1, 0).unwrap())
        );
        assert!(parse_since("yesterday", now).is_err());
    }
}
