//! Rate limits, human durations and retry backoff.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A rate limit per task type, written as Celery does: `"100/m"`, `"10/s"`, `"1000/h"`,
/// or a plain number meaning tasks per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Tasks allowed per `per`.
    pub count: f64,
    /// The window.
    pub per: Duration,
}

impl RateLimit {
    /// Parses `"100/m"`, `"10/s"`, `"1000/h"`, `"5"` (per second).
    pub fn parse(text: &str) -> Result<RateLimit, String> {
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
        let per = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("invalid rate limit unit {other:?}: use s, m or h")),
        };
        Ok(RateLimit { count, per })
    }

    /// The steady interval between two tasks.
    pub fn interval(&self) -> Duration {
        self.per.div_f64(self.count)
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RateLimit::parse(s)
    }
}

/// Parses a human duration: `"30m"`, `"10s"`, `"1h"`, `"500ms"`, `"1.5"` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
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
        other => return Err(format!("invalid duration unit {other:?} in {text:?}")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("invalid duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Exponential retry backoff as Celery's `retry_backoff`: `base * 2^retries`, capped at
/// `max`, optionally with full jitter (a random delay between 0 and that value).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// Delay of the first retry.
    pub base: Duration,
    /// Upper bound of any delay (Celery's `retry_backoff_max`, 600 s).
    pub max: Duration,
    /// Randomize the delay (Celery's `retry_jitter`, on by default).
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
            jitter: true,
        }
    }
}

impl Backoff {
    /// The delay before retry number `retries + 1`.
    pub fn delay(&self, retries: u32) -> Duration {
        let factor = 2f64.powi(retries.min(62) as i32);
        let capped = self.base.as_secs_f64() * factor;
        let capped = capped.min(self.max.as_secs_f64());
        if self.jitter {
            Duration::from_secs_f64(rand::random::<f64>() * capped)
        } else {
            Duration::from_secs_f64(capped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_like_celery() {
        assert_eq!(
            RateLimit::parse("100/m").expect("ok").interval(),
            Duration::from_millis(600)
        );
        assert_eq!(
            RateLimit::parse("10/s").expect("ok").interval(),
            Duration::from_millis(100)
        );
        assert_eq!(
            RateLimit::parse("2").expect("ok").interval(),
            Duration::from_millis(500)
        );
        assert!(RateLimit::parse("fast").is_err());
        assert!(RateLimit::parse("10/week").is_err());
        assert!(RateLimit::parse("0/s").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(10),
            jitter: false,
        };
        assert_eq!(b.delay(0), Duration::from_secs(2));
        assert_eq!(b.delay(1), Duration::from_secs(4));
        assert_eq!(b.delay(5), Duration::from_secs(10));
        let j = Backoff { jitter: true, ..b };
        for retries in 0..10 {
            assert!(j.delay(retries) <= Duration::from_secs(10));
        }
    }
}
