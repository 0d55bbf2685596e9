//! Celery's date-time dialect.
//!
//! Python emits `datetime.isoformat()` of an aware UTC date-time
//! (`2026-11-26T17:01:44.120318+00:00`, microseconds omitted when zero) and parses
//! with `dateutil.isoparse`, which also accepts `Z` and naive values (taken as UTC).

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Timelike, Utc};

/// Parses an ISO-8601 date-time as Celery peers write it: `+HH:MM`, `Z`, with or
/// without fractional seconds, or naive (interpreted as UTC).
pub fn parse_iso(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(dt) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%:z") {
        return Some(dt.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Some(naive.and_utc());
        }
    }
    None
}

/// Formats a date-time the way Python's `isoformat()` does for UTC:
/// `YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`.
pub fn format_iso(at: DateTime<Utc>) -> String {
    let format = if at.nanosecond() / 1000 == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Micros
    };
    at.to_rfc3339_opts(format, false)
}

/// The current time as a Unix timestamp in seconds (the unit of Celery events).
pub fn unix_now() -> f64 {
    let now = Utc::now();
    now.timestamp() as f64 + f64::from(now.timestamp_subsec_micros()) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_form_python_peers_send() {
        let reference = parse_iso("2026-11-26T17:01:44.120318+00:00").expect("offset form");
        assert_eq!(parse_iso("2026-11-26T17:01:44.120318Z"), Some(reference));
        assert_eq!(parse_iso("2026-11-26T17:01:44.120318"), Some(reference));
        assert_eq!(
            parse_iso("2026-11-26T19:01:44.120318+02:00"),
            Some(reference)
        );
        assert!(parse_iso("2026-11-26T17:01:44").is_some());
        assert!(parse_iso("not a date").is_none());
    }

    #[test]
    fn formats_like_python_isoformat() {
        let at = parse_iso("2026-11-26T17:01:44.120318+00:00").expect("parse");
        assert_eq!(format_iso(at), "2026-11-26T17:01:44.120318+00:00");
        let whole = parse_iso("2026-11-26T17:01:44Z").expect("parse");
        assert_eq!(format_iso(whole), "2026-11-26T17:01:44+00:00");
    }
}
