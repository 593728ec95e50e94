//! Durations and sizes as people write them: one rule each, used by
//! `berth.toml`, the CLI's flags and the API's query parameters, so a value
//! accepted in one place is accepted in every other.
//!
//! - A duration ([`parse_duration`]) is a whole number followed by one unit,
//!   `ms`, `s`, `m`, `h` or `d` (`500ms`, `15s`, `10m`, `2h`, `1d`), with no
//!   space between them; `0` alone is zero. A bare number such as `30` is
//!   refused: it could be seconds or minutes.
//! - A size ([`parse_size`]) is a number, with an optional decimal part,
//!   followed by an optional unit `k`, `m`, `g` or `t` (binary: 1k = 1024
//!   bytes), case-insensitive, which may end in `b`, `i` or `ib` (`512m`,
//!   `1.5g`, `256MB`, `1Gi`, `2GiB`); without a unit it counts bytes.
//!   A fractional number of bytes is rounded down.
//! - A point in time given relatively ([`parse_since`]) is an RFC 3339 time
//!   or a duration before a given `now`.
//!
//! Errors are one line, quote the value and say what was expected.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// A duration, size or time that does not follow the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{value:?} has no unit (write e.g. \"{value}s\"; units: ms, s, m, h, d)")]
    NoUnit { value: String },
    #[error("{value:?} is not a duration such as \"500ms\", \"15s\", \"10m\", \"2h\" or \"1d\"")]
    NotADuration { value: String },
    #[error("{value:?} has an unknown unit {unit:?} (units: {units})")]
    UnknownUnit {
        value: String,
        unit: String,
        units: &'static str,
    },
    #[error("{value:?} is not a size such as \"512m\", \"1.5g\" or a number of bytes")]
    NotASize { value: String },
    #[error("{value:?} is too large")]
    TooLarge { value: String },
    #[error("{value:?} is neither an RFC 3339 time nor a duration such as \"10m\" or \"1d\"")]
    NotATime { value: String },
}

const DURATION_UNITS: &str = "ms, s, m, h, d";
const SIZE_UNITS: &str = "k, m, g, t";

/// Parses a duration: `<whole number><unit>` with the unit `ms`, `s`, `m`,
/// `h` or `d`, or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let t = s.trim();
    let value = || t.to_string();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(UnitError::NotADuration { value: value() });
    }
    let n: u64 = num
        .parse()
        .map_err(|_| UnitError::TooLarge { value: value() })?;
    let ms_per_unit: u64 = match unit {
        "" if n == 0 => 1,
        "" => return Err(UnitError::NoUnit { value: value() }),
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u if u.starts_with(|c: char| c.is_ascii_alphabetic()) => {
            return Err(UnitError::UnknownUnit {
                value: value(),
                unit: u.to_string(),
                units: DURATION_UNITS,
            })
        }
        _ => return Err(UnitError::NotADuration { value: value() }),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or(UnitError::TooLarge { value: value() })
}

/// Parses a size in bytes: `<number>[.<digits>][k|m|g|t][i][b]`,
/// case-insensitive, binary units.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let value = || t.to_string();
    let lower = t.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let (whole, frac) = match num.split_once('.') {
        Some((w, f)) => (w, f),
        None => (num, ""),
    };
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits_ok(whole)
        || !digits_ok(frac)
        || (num.contains('.') && frac.is_empty())
    {
        return Err(UnitError::NotASize { value: value() });
    }
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        u if u.starts_with(|c: char| c.is_ascii_alphabetic()) => {
            return Err(UnitError::UnknownUnit {
                value: value(),
                unit: t[split..].to_string(),
                units: SIZE_UNITS,
            })
        }
        _ => return Err(UnitError::NotASize { value: value() }),
    };
    let too_large = || UnitError::TooLarge { value: value() };
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_shl(shift).ok_or_else(too_large)?;
    if !frac.is_empty() {
        // Exact: frac / 10^len of a unit, rounded down; digits beyond the
        // 18th change the result by less than a byte even in terabytes.
        let frac = &frac[..frac.len().min(18)];
        let f: u128 = frac.parse().map_err(|_| too_large())?;
        bytes += (f << shift) / 10u128.pow(frac.len() as u32);
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses `since`: an RFC 3339 time, or a duration before `now`.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, UnitError> {
    let t = s.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    let not_a_time = || UnitError::NotATime {
        value: t.to_string(),
    };
    let d = match parse_duration(t) {
        Ok(d) => d,
        Err(UnitError::TooLarge { .. }) => {
            return Err(UnitError::TooLarge {
                value: t.to_string(),
            })
        }
        Err(_) => return Err(not_a_time()),
    };
    let d = chrono::Duration::from_std(d).map_err(|_| UnitError::TooLarge {
        value: t.to_string(),
    })?;
    now.checked_sub_signed(d).ok_or(UnitError::TooLarge {
        value: t.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn durations() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("0s", 0),
            ("500ms", 500),
            ("15s", 15_000),
            (" 15s ", 15_000),
            ("10m", 600_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("7d", 7 * 86_400_000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(*ms)), "{s:?}");
        }
        // (input, words the error must contain)
        let bad: &[(&str, &str)] = &[
            ("", "not a duration"),
            ("s", "not a duration"),
            ("-1s", "not a duration"),
            ("1.5s", "not a duration"),
            ("15 s", "not a duration"),
            ("30", "has no unit"),
            ("15sec", "unknown unit \"sec\""),
            ("5 parsecs", "not a duration"),
            ("2w", "unknown unit \"w\""),
            ("1D", "unknown unit \"D\""),
            ("99999999999999999999h", "too large"),
            ("999999999999999999d", "too large"),
        ];
        for (s, words) in bad {
            let e = parse_duration(s).expect_err(s).to_string();
            assert!(e.contains(words), "{s:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn sizes() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("1048576", 1 << 20),
            ("100b", 100),
            ("64k", 64 << 10),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("256mb", 256 << 20),
            ("512MiB", 512 << 20),
            ("1g", 1 << 30),
            ("1G", 1 << 30),
            ("1Gi", 1 << 30),
            ("2GB", 2 << 30),
            ("1.5g", 3 << 29),
            ("0.5k", 512),
            ("0.1k", 102),
            ("1.25t", 5 << 38),
            ("16777215.99999999999999t", u64::MAX),
        ];
        for (s, n) in ok {
            assert_eq!(parse_size(s), Ok(*n), "{s:?}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "not a size"),
            ("m", "not a size"),
            (".5g", "not a size"),
            ("1.g", "not a size"),
            ("1..5g", "not a size"),
            ("1.2.3g", "not a size"),
            ("-1g", "not a size"),
            ("1 g", "not a size"),
            ("lots", "not a size"),
            ("1x", "unknown unit \"x\""),
            ("2p", "unknown unit"),
            ("16777216t", "too large"),
            ("99999999999999999999999999999999999999999", "too large"),
        ];
        for (s, words) in bad {
            let e = parse_size(s).expect_err(s).to_string();
            assert!(e.contains(words), "{s:?}: {e}");
        }
    }

    #[test]
    fn since() {
        let now = Utc.with_ymd_and_hms(2026, 4, 24, 12, 0, 0).unwrap();
        let at = |h, m| Utc.with_ymd_and_hms(2026, 4, 24, h, m, 0).unwrap();
        assert_eq!(parse_since("10m", now), Ok(at(11, 50)));
        assert_eq!(
            parse_since("1d", now),
            Ok(Utc.with_ymd_and_hms(2026, 4, 23, 12, 0, 0).unwrap())
        );
        assert_eq!(parse_since("2026-04-24T10:01:00+02:00", now), Ok(at(8, 1)));
        assert_eq!(parse_since("2026-04-24T08:01:00Z", now), Ok(at(8, 1)));
        for bad in ["yesterday", "10", "2026-04-24", ""] {
            let e = parse_since(bad, now).expect_err(bad).to_string();
            assert!(e.contains("neither an RFC 3339 time nor a duration"), "{e}");
        }
        assert!(parse_since("999999999999999999d", now)
            .unwrap_err()
            .to_string()
            .contains("too large"));
        assert!(parse_since("99999999d", now)
            .unwrap_err()
            .to_string()
            .contains("too large"));
    }
}
