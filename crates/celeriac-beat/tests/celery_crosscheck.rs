//! Cross-check with Python Celery: for a table of crontab specs, zones and instants,
//! celeriac's next run equals `celery.schedules.crontab`'s; for a table of solar
//! events, places and instants it is within seconds of `celery.schedules.solar`'s
//! (PyEphem). Python runs in the interop venv, `.venv` at the repository root, made by
//! `scripts/python-env.sh`.
//!
//! The table avoids the two DST days, where celeriac's documented policy differs on
//! purpose (a time in the spring-forward gap runs at the end of the gap, Celery runs
//! it an hour late); `schedule::tests` covers those days.
//!
//! Without the venv the test prints why and passes, unless `CELERIAC_REQUIRE_PYTHON=1`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use celeriac_beat::{Crontab, Solar, SolarEvent};
use chrono::{DateTime, Utc};

/// `(spec, zone, after)`.
const CASES: &[(&str, &str, &str)] = &[
    ("* * * * *", "UTC", "2026-01-01T10:05:00Z"),
    ("* * * * *", "UTC", "2026-01-01T10:05:30Z"),
    ("*/5 * * * *", "UTC", "2026-01-01T10:05:00Z"),
    ("*/5 * * * *", "UTC", "2026-01-01T23:58:00Z"),
    ("1-30/5 * * * *", "UTC", "2026-01-01T10:26:00Z"),
    ("1,13,30-45,50-59/2 * * * *", "UTC", "2026-01-01T10:45:00Z"),
    ("5 * * * *", "UTC", "2026-01-01T10:05:30Z"),
    ("0 0,8-17/2 * * *", "UTC", "2026-01-01T09:00:00Z"),
    ("0 0 * * 0", "UTC", "2026-01-01T00:00:00Z"),
    ("0 0 * * sun", "UTC", "2026-01-04T00:00:00Z"),
    ("0 9 * * mon-fri", "UTC", "2026-01-02T09:00:00Z"),
    ("0 9 * * mon-fri", "UTC", "2026-01-03T12:00:00Z"),
    ("0 0 * * sat-sun", "UTC", "2026-01-05T00:00:00Z"),
    ("0 0 * * fri-mon", "UTC", "2026-01-06T00:00:00Z"),
    ("0 0 1-7 * mon", "UTC", "2026-01-06T00:00:00Z"),
    ("0 0 1-7,15-21 * 1", "UTC", "2026-01-06T00:00:00Z"),
    ("0 12 * jan,jul sun", "UTC", "2026-01-25T12:00:00Z"),
    ("0 22-2/2 * * *", "UTC", "2026-01-01T22:00:00Z"),
    ("0 22-2/2 * * *", "UTC", "2026-01-02T02:00:00Z"),
    ("0 0 31 * *", "UTC", "2026-04-01T00:00:00Z"),
    ("0 0 31 * *", "UTC", "2026-01-31T00:00:00Z"),
    ("0 0 29 2 *", "UTC", "2026-03-01T00:00:00Z"),
    ("0 0 29 2 mon", "UTC", "2026-01-01T00:00:00Z"),
    ("59 23 31 12 *", "UTC", "2026-12-31T23:59:00Z"),
    ("0 0 1 */3 *", "UTC", "2026-02-15T00:00:00Z"),
    ("30 4 2-30/2 2-12/2 *", "UTC", "2026-02-28T05:00:00Z"),
    ("0 9 * * *", "Asia/Seoul", "2026-01-01T00:00:00Z"),
    ("0 9 * * *", "Asia/Seoul", "2025-12-31T23:59:00Z"),
    ("0 0 1 * *", "Asia/Seoul", "2026-01-31T14:59:00Z"),
    (
        "*/10 9-18 * * mon-fri",
        "Asia/Seoul",
        "2026-06-05T09:55:00Z",
    ),
    ("30 2 * * *", "Europe/Berlin", "2026-06-01T12:00:00Z"),
    ("0 9 * * 1", "Europe/Berlin", "2026-12-31T23:30:00Z"),
    ("*/15 * * * *", "America/New_York", "2026-07-04T03:50:00Z"),
    ("0 17 * * fri", "America/New_York", "2026-02-27T22:00:00Z"),
];

fn python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    let ok = python.exists()
        && Command::new(&python)
            .args(["-c", "import celery"])
            .status()
            .is_ok_and(|s| s.success());
    ok.then_some(python)
}

/// The venv's python, or `None` (with the reason printed) when the test is skipped;
/// fails instead when `CELERIAC_REQUIRE_PYTHON=1`.
fn python_or_skip() -> Option<PathBuf> {
    let found = python();
    if found.is_none() {
        let required = std::env::var("CELERIAC_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "CELERIAC_REQUIRE_PYTHON=1 but .venv has no celery (run scripts/python-env.sh)"
        );
        eprintln!("skipped: no .venv with celery (run scripts/python-env.sh)");
    }
    found
}

/// Runs `tests/python/<script>` with `input` as JSON on stdin; its JSON list of
/// instants.
fn run_python(python: &PathBuf, script: &str, input: &serde_json::Value) -> Vec<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write cases");
    let output = child.wait_with_output().expect("python finishes");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python prints JSON")
}

#[test]
fn next_runs_match_python_celery() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let input: serde_json::Value = CASES
        .iter()
        .map(|(spec, tz, after)| serde_json::json!({"spec": spec, "tz": tz, "after": after}))
        .collect();
    let celery = run_python(&python, "crontab_next.py", &input);
    assert_eq!(celery.len(), CASES.len());
    let mut differences = Vec::new();
    for ((spec, tz, after), expected) in CASES.iter().zip(&celery) {
        let after: DateTime<Utc> = after.parse().expect("after");
        let expected: DateTime<Utc> = DateTime::parse_from_rfc3339(expected)
            .expect("python's instant")
            .with_timezone(&Utc);
        let ours = Crontab::parse(spec)
            .and_then(|c| c.in_timezone(tz))
            .expect("spec parses")
            .next_after(after);
        if ours != Some(expected) {
            differences.push(format!(
                "{spec:?} in {tz} after {after}: celery {expected}, celeriac {ours:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// `(event, latitude, longitude, after, allowed difference in seconds)`.
const SOLAR_CASES: &[(&str, f64, f64, &str, i64)] = &[
    ("sunrise", 37.5665, 126.978, "2026-01-01T00:00:00Z", 10),
    ("sunset", 37.5665, 126.978, "2026-06-21T00:00:00Z", 10),
    ("solar_noon", 37.5665, 126.978, "2026-03-20T12:00:00Z", 10),
    ("dawn_civil", 52.52, 13.405, "2026-03-29T00:00:00Z", 10),
    ("dusk_civil", 52.52, 13.405, "2026-10-25T12:00:00Z", 10),
    (
        "dawn_nautical",
        40.7128,
        -74.006,
        "2026-11-01T00:00:00Z",
        10,
    ),
    (
        "dusk_nautical",
        40.7128,
        -74.006,
        "2026-07-04T18:00:00Z",
        10,
    ),
    (
        "dawn_astronomical",
        -33.8688,
        151.2093,
        "2026-12-21T00:00:00Z",
        10,
    ),
    (
        "dusk_astronomical",
        -33.8688,
        151.2093,
        "2026-06-21T00:00:00Z",
        10,
    ),
    ("sunrise", -0.1807, -78.4678, "2026-09-23T00:00:00Z", 10),
    ("sunset", 0.0, 0.0, "2026-01-01T00:00:00Z", 10),
    ("solar_noon", -45.0, 179.9, "2026-02-10T05:00:00Z", 10),
    ("sunrise", 64.1466, -21.9426, "2026-12-21T00:00:00Z", 10),
    // Near the polar circles the Sun skims the horizon: the least precise cases.
    ("sunset", 69.6492, 18.9553, "2026-06-15T00:00:00Z", 60),
    ("sunrise", 69.6492, 18.9553, "2026-12-15T00:00:00Z", 60),
    (
        "dusk_astronomical",
        78.22,
        15.65,
        "2026-06-15T00:00:00Z",
        60,
    ),
];

#[test]
fn solar_events_match_python_celery() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let input: serde_json::Value = SOLAR_CASES
        .iter()
        .map(|(event, lat, lon, after, _)| {
            serde_json::json!({"event": event, "lat": lat, "lon": lon, "after": after})
        })
        .collect();
    let celery = run_python(&python, "solar_next.py", &input);
    assert_eq!(celery.len(), SOLAR_CASES.len());
    let mut differences = Vec::new();
    for ((event, lat, lon, after, allowed), expected) in SOLAR_CASES.iter().zip(&celery) {
        let after: DateTime<Utc> = after.parse().expect("after");
        let expected: DateTime<Utc> = DateTime::parse_from_rfc3339(expected)
            .expect("python's instant")
            .with_timezone(&Utc);
        let event: SolarEvent = event.parse().expect("a solar event");
        let ours = Solar::new(event, *lat, *lon)
            .expect("a valid place")
            .next_after(after);
        let off = ours.map(|ours| (ours - expected).num_seconds().abs());
        if off.is_none_or(|off| off > *allowed) {
            differences.push(format!(
                "{event} at ({lat}, {lon}) after {after}: celery {expected}, celeriac {ours:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}
