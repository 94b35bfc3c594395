//! UTC calendar arithmetic on unix milliseconds (no time-zone database needed: every
//! period the gateway keeps is in UTC).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DAY_MS: i64 = 86_400_000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (the inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-03-01T12:00:00Z`.
pub fn format_rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let rest = ms.rem_euclid(DAY_MS) / 1000;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Parses `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM[:SS]Z` into unix ms.
pub fn parse_utc(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (
            d,
            Some(t.strip_suffix('Z').or_else(|| t.strip_suffix("+00:00"))?),
        ),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    if civil_from_days(days) != (y, m, d) {
        return None; // 2026-02-30
    }
    let mut secs = 0i64;
    if let Some(t) = time {
        let mut hms = t.split(':');
        let h: i64 = hms.next()?.parse().ok()?;
        let mi: i64 = hms.next()?.parse().ok()?;
        let sec: i64 = match hms.next() {
            Some(x) => x.split('.').next()?.parse().ok()?,
            None => 0,
        };
        if hms.next().is_some() || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        secs = h * 3600 + mi * 60 + sec;
    }
    Some(days * DAY_MS + secs * 1000)
}

/// Parses `retry-after` seconds (`"7"`, `"1.5"`) and OpenAI's reset durations
/// (`"1s"`, `"6m0s"`, `"20ms"`, `"1h2m3.5s"`). HTTP dates are not accepted (callers
/// fall back to their own backoff), and neither is what no provider sends and a
/// `Duration` cannot hold: exponents, signs, `inf`/`NaN`, other scripts' digits, and
/// values beyond `Duration::MAX`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if is_decimal(text) {
        return seconds(text.parse::<f64>().ok()?);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let (number, tail) = rest.split_at_checked(number_len)?;
        if !is_decimal(number) {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at_checked(unit_len)?;
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    seconds(total)
}

/// ASCII digits with at most one `.` and at least one digit: the only number shape
/// providers write, which `f64::from_str` accepts among many others.
fn is_decimal(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1
        && text.bytes().any(|b| b.is_ascii_digit())
}

/// `secs` as a `Duration`, or `None` when it is negative, not finite or too large
/// (`Duration::from_secs_f64` panics on those).
fn seconds(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for days in [-800_000, -1, 0, 1, 19_000, 20_513, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(parse_utc("1970-01-01"), Some(0));
        assert_eq!(parse_utc("2026-11-26"), Some(1_795_651_200_000));
        assert_eq!(
            parse_utc("2026-11-26T01:02:03Z"),
            Some(1_795_651_200_000 + 3_723_000)
        );
        assert_eq!(
            format_rfc3339(1_795_651_200_000 + 3_723_000),
            "2026-11-26T01:02:03Z"
        );
        assert_eq!(parse_utc("2026-02-30"), None);
        assert_eq!(parse_utc("2026-01-01T10:00:00+02:00"), None);
        assert_eq!(parse_utc("soon"), None);
    }

    #[test]
    fn durations_in_provider_formats() {
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(parse_duration("-3"), None);
        assert_eq!(parse_duration(""), None);
    }

    /// Untrusted header values that once panicked `Duration::from_secs_f64`, or that
    /// are not numbers a provider writes, are refused rather than trusted.
    #[test]
    fn durations_out_of_range_or_odd_are_refused() {
        for odd in [
            "1e300",
            "1e3",
            "99999999999999999999",
            "18446744073709551616",
            "1e300s",
            "99999999999999999999h",
            "9999999999999999999999999999999999999999m",
            "inf",
            "NaN",
            "+5",
            "-0.5",
            "1.2.3",
            "..",
            ".s",
            "٣",
            "٣s",
            "1٣s",
            "5µ",
        ] {
            assert_eq!(parse_duration(odd), None, "{odd}");
        }
        // Large values that fit are kept: the caller decides what is too long.
        assert_eq!(parse_duration("86400"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration(".5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("3µs"), Some(Duration::from_micros(3)));
    }
}
