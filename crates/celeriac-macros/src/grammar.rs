//! Compile-time copies of `celeriac_core::limits::parse_duration` and
//! `RateLimit::parse`, so a bad literal is a spanned compile error instead of a
//! runtime surprise. The grammars must stay identical to the core's; the facade's
//! `task_macro` tests compare the generated values with the core parsers.

use std::time::Duration;

/// Parses a human duration: `"30m"`, `"10s"`, `"1h"`, `"500ms"`, `"2d"`, `"1.5"`
/// (seconds). Same grammar as `celeriac_core::limits::parse_duration`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. \"30s\", \"5m\", \"1h\""))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" | "hour" | "hours" => value * 3600.0,
        "d" | "day" | "days" => value * 86400.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m, h or d (e.g. \"30s\", \"5m\", \"1h\")"
            ))
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("invalid duration {text:?}"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration {text:?} is too large"))
}

/// A parsed rate limit: `count` tasks per `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    pub(crate) count: f64,
    pub(crate) per_secs: u64,
}

/// Parses `"100/m"`, `"10/s"`, `"1000/h"`, `"5"` (per second). Same grammar as
/// `celeriac_core::limits::RateLimit::parse`.
pub(crate) fn parse_rate_limit(text: &str) -> Result<Rate, String> {
    let text = text.trim();
    let (count, unit) = match text.split_once('/') {
        Some((count, unit)) => (count.trim(), unit.trim()),
        None => (text, "s"),
    };
    let count: f64 = count
        .parse()
        .map_err(|_| format!("invalid rate limit {text:?}: expected e.g. \"100/m\""))?;
    if !(count.is_finite() && count > 0.0) {
        return Err(format!(
            "invalid rate limit {text:?}: the count must be positive"
        ));
    }
    let per_secs = match unit {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        other => return Err(format!("invalid rate limit unit {other:?}: use s, m or h")),
    };
    Ok(Rate { count, per_secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_the_core_grammar() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration(" 10 s "), Ok(Duration::from_secs(10)));
        assert!(parse_duration("30 parsecs").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("99999999999999999999999999999d").is_err());
    }

    #[test]
    fn rate_limits_follow_the_core_grammar() {
        assert_eq!(
            parse_rate_limit("100/m"),
            Ok(Rate {
                count: 100.0,
                per_secs: 60
            })
        );
        assert_eq!(
            parse_rate_limit("2.5"),
            Ok(Rate {
                count: 2.5,
                per_secs: 1
            })
        );
        assert!(parse_rate_limit("fast").is_err());
        assert!(parse_rate_limit("10/week").is_err());
        assert!(parse_rate_limit("0/s").is_err());
    }
}
