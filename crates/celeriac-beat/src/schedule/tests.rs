//! Table-driven tests of schedule evaluation: Celery's crontab grammar and day rule,
//! month ends, leap years, and the DST policy in Europe/Berlin, America/New_York and
//! Asia/Seoul.

use super::*;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad test time {text:?}: {e}"))
        .with_timezone(&Utc)
}

fn cron(expression: &str, tz: &str) -> Crontab {
    Crontab::parse(expression)
        .and_then(|c| c.in_timezone(tz))
        .unwrap_or_else(|e| panic!("{expression:?} parses: {e}"))
}

fn values(spec: &str, kind: FieldKind) -> Vec<u32> {
    Field::parse(spec, kind)
        .unwrap_or_else(|e| panic!("{spec:?} parses: {e}"))
        .values()
        .collect()
}

#[test]
fn fields_expand_as_celerys_parser_does() {
    let cases: &[(&str, FieldKind, &[u32])] = &[
        // The examples of celery.schedules.crontab_parser's docstring.
        ("*/15", MINUTE, &[0, 15, 30, 45]),
        ("*/4", HOUR, &[0, 4, 8, 12, 16, 20]),
        ("*", DAY_OF_WEEK, &[0, 1, 2, 3, 4, 5, 6]),
        (
            "*/3",
            DAY_OF_MONTH,
            &[1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
        ),
        ("*/2", MONTH_OF_YEAR, &[1, 3, 5, 7, 9, 11]),
        ("2-12/2", MONTH_OF_YEAR, &[2, 4, 6, 8, 10, 12]),
        // Lists, ranges with steps, the crontab docstring's examples.
        (
            "1,13,30-45,50-59/2",
            MINUTE,
            &[
                1, 13, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 50, 52, 54,
                56, 58,
            ],
        ),
        ("0,8-17/2", HOUR, &[0, 8, 10, 12, 14, 16]),
        ("1-30/5", MINUTE, &[1, 6, 11, 16, 21, 26]),
        (
            "2-30/2",
            DAY_OF_MONTH,
            &[2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30],
        ),
        (
            "1-7,15-21",
            DAY_OF_MONTH,
            &[1, 2, 3, 4, 5, 6, 7, 15, 16, 17, 18, 19, 20, 21],
        ),
        // Names: weekdays 0 = Sunday; months; three letters, any case, any field.
        ("mon-fri", DAY_OF_WEEK, &[1, 2, 3, 4, 5]),
        ("sun", DAY_OF_WEEK, &[0]),
        ("sat,sun", DAY_OF_WEEK, &[0, 6]),
        ("Sunday,MONDAY", DAY_OF_WEEK, &[0, 1]),
        ("jan,jul", MONTH_OF_YEAR, &[1, 7]),
        ("mar", DAY_OF_WEEK, &[3]),
        // Wrap-around ranges, with steps over the wrapped list.
        ("fri-mon", DAY_OF_WEEK, &[0, 1, 5, 6]),
        ("22-2", HOUR, &[0, 1, 2, 22, 23]),
        ("22-2/2", HOUR, &[0, 2, 22]),
        ("nov-feb", MONTH_OF_YEAR, &[1, 2, 11, 12]),
        ("7", MINUTE, &[7]),
        ("07", MINUTE, &[7]),
        ("*/100", MINUTE, &[0]),
    ];
    for (spec, kind, expected) in cases {
        assert_eq!(&values(spec, *kind), expected, "{} {spec:?}", kind.name);
    }
}

#[test]
fn bad_fields_are_refused_with_the_field_named() {
    let cases: &[(&str, FieldKind)] = &[
        ("7", DAY_OF_WEEK),
        ("0", DAY_OF_MONTH),
        ("32", DAY_OF_MONTH),
        ("13", MONTH_OF_YEAR),
        ("60", MINUTE),
        ("24", HOUR),
        ("*/0", MINUTE),
        ("*/", MINUTE),
        ("1-5/", MINUTE),
        ("", MINUTE),
        ("1,,2", MINUTE),
        ("-1", MINUTE),
        ("foo", DAY_OF_WEEK),
        ("mo", DAY_OF_WEEK),
        ("5/2", MINUTE),
        ("1-5-7", MINUTE),
        ("*/5/2", MINUTE),
        ("*/x", MINUTE),
        ("**", MINUTE),
        ("99999999999", MINUTE),
    ];
    for (spec, kind) in cases {
        match Field::parse(spec, *kind) {
            Err(ScheduleError::Crontab { field, .. }) => assert_eq!(field, kind.name, "{spec:?}"),
            other => panic!("{} {spec:?} must be refused, got {other:?}", kind.name),
        }
    }
    for bad in ["* * * *", "* * * * * *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"] {
        assert!(Crontab::parse(bad).is_err(), "{bad:?} is refused");
    }
    assert!(
        Crontab::parse("0 0 29 2 *").is_ok(),
        "Feb 29 exists in leap years"
    );
    assert!(matches!(
        Crontab::parse("* * * * *").and_then(|c| c.in_timezone("Mars/Olympus")),
        Err(ScheduleError::Timezone(_))
    ));
}

/// `(crontab, zone, after, expected next run)`, all instants in RFC 3339.
const NEXT_RUNS: &[(&str, &str, &str, &str)] = &[
    // Every minute, every five minutes; seconds are ignored, the answer is strictly later.
    (
        "* * * * *",
        "UTC",
        "2026-01-01T10:05:00Z",
        "2026-01-01T10:06:00Z",
    ),
    (
        "* * * * *",
        "UTC",
        "2026-01-01T10:05:30Z",
        "2026-01-01T10:06:00Z",
    ),
    (
        "*/5 * * * *",
        "UTC",
        "2026-01-01T10:05:00Z",
        "2026-01-01T10:10:00Z",
    ),
    (
        "*/5 * * * *",
        "UTC",
        "2026-01-01T23:58:00Z",
        "2026-01-02T00:00:00Z",
    ),
    (
        "1-30/5 * * * *",
        "UTC",
        "2026-01-01T10:26:00Z",
        "2026-01-01T11:01:00Z",
    ),
    (
        "5 * * * *",
        "UTC",
        "2026-01-01T10:05:30Z",
        "2026-01-01T11:05:00Z",
    ),
    // Day of week: 0 = Sunday (2026-01-04 is a Sunday), names, ranges.
    (
        "0 0 * * 0",
        "UTC",
        "2026-01-01T00:00:00Z",
        "2026-01-04T00:00:00Z",
    ),
    (
        "0 0 * * sun",
        "UTC",
        "2026-01-04T00:00:00Z",
        "2026-01-11T00:00:00Z",
    ),
    (
        "0 9 * * mon-fri",
        "UTC",
        "2026-01-02T09:00:00Z",
        "2026-01-05T09:00:00Z",
    ),
    (
        "0 0 * * sat-sun",
        "UTC",
        "2026-01-05T00:00:00Z",
        "2026-01-10T00:00:00Z",
    ),
    // Celery's day rule: day of month AND day of week (first Monday of the month).
    (
        "0 0 1-7 * mon",
        "UTC",
        "2026-01-06T00:00:00Z",
        "2026-02-02T00:00:00Z",
    ),
    (
        "0 12 * jan,jul sun",
        "UTC",
        "2026-01-25T12:00:00Z",
        "2026-07-05T12:00:00Z",
    ),
    // Wrapped hours 22, 0, 2.
    (
        "0 22-2/2 * * *",
        "UTC",
        "2026-01-01T22:00:00Z",
        "2026-01-02T00:00:00Z",
    ),
    (
        "0 22-2/2 * * *",
        "UTC",
        "2026-01-02T02:00:00Z",
        "2026-01-02T22:00:00Z",
    ),
    // Month ends and leap years.
    (
        "0 0 31 * *",
        "UTC",
        "2026-04-01T00:00:00Z",
        "2026-05-31T00:00:00Z",
    ),
    (
        "0 0 31 * *",
        "UTC",
        "2026-01-31T00:00:00Z",
        "2026-03-31T00:00:00Z",
    ),
    (
        "0 0 29 2 *",
        "UTC",
        "2026-03-01T00:00:00Z",
        "2028-02-29T00:00:00Z",
    ),
    (
        "0 0 29 2 mon",
        "UTC",
        "2026-01-01T00:00:00Z",
        "2044-02-29T00:00:00Z",
    ),
    (
        "0 0 28-31 2 *",
        "UTC",
        "2027-02-28T00:00:00Z",
        "2028-02-28T00:00:00Z",
    ),
    (
        "59 23 31 12 *",
        "UTC",
        "2026-12-31T23:59:00Z",
        "2027-12-31T23:59:00Z",
    ),
    // Asia/Seoul: +09:00 all year, no DST.
    (
        "0 9 * * *",
        "Asia/Seoul",
        "2026-01-01T00:00:00Z",
        "2026-01-02T00:00:00Z",
    ),
    (
        "0 9 * * *",
        "Asia/Seoul",
        "2025-12-31T23:59:00Z",
        "2026-01-01T00:00:00Z",
    ),
    (
        "0 0 1 * *",
        "Asia/Seoul",
        "2026-01-31T14:59:00Z",
        "2026-01-31T15:00:00Z",
    ),
    (
        "30 2 * * *",
        "Asia/Seoul",
        "2026-03-28T12:00:00Z",
        "2026-03-28T17:30:00Z",
    ),
    // Europe/Berlin, spring forward 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z):
    // 02:30 does not exist; it runs once, at 03:00 CEST.
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-28T12:00:00Z",
        "2026-03-29T01:00:00Z",
    ),
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-29T01:00:00Z",
        "2026-03-30T00:30:00Z",
    ),
    // */15 during the gap: 02:00..02:45 and 03:00 all run once, at 03:00 CEST.
    (
        "*/15 * * * *",
        "Europe/Berlin",
        "2026-03-29T00:50:00Z",
        "2026-03-29T01:00:00Z",
    ),
    (
        "*/15 * * * *",
        "Europe/Berlin",
        "2026-03-29T01:00:00Z",
        "2026-03-29T01:15:00Z",
    ),
    (
        "0 3 * * *",
        "Europe/Berlin",
        "2026-03-28T12:00:00Z",
        "2026-03-29T01:00:00Z",
    ),
    // Europe/Berlin, fall back 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z):
    // 02:30 occurs twice; it runs once, at the first occurrence (CEST).
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-24T12:00:00Z",
        "2026-10-25T00:30:00Z",
    ),
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-25T00:30:00Z",
        "2026-10-26T01:30:00Z",
    ),
    // The repeated hour's second pass runs nothing, also for frequent jobs.
    (
        "*/30 * * * *",
        "Europe/Berlin",
        "2026-10-25T00:45:00Z",
        "2026-10-25T02:00:00Z",
    ),
    (
        "*/30 * * * *",
        "Europe/Berlin",
        "2026-10-25T01:10:00Z",
        "2026-10-25T02:00:00Z",
    ),
    (
        "0 * * * *",
        "Europe/Berlin",
        "2026-10-25T00:00:00Z",
        "2026-10-25T02:00:00Z",
    ),
    (
        "0 4 * * *",
        "Europe/Berlin",
        "2026-10-24T12:00:00Z",
        "2026-10-25T03:00:00Z",
    ),
    // America/New_York, spring forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z).
    (
        "30 2 * * *",
        "America/New_York",
        "2026-03-07T12:00:00Z",
        "2026-03-08T07:00:00Z",
    ),
    (
        "30 2 * * *",
        "America/New_York",
        "2026-03-08T07:00:00Z",
        "2026-03-09T06:30:00Z",
    ),
    (
        "0 9 * * *",
        "America/New_York",
        "2026-03-07T14:00:00Z",
        "2026-03-08T13:00:00Z",
    ),
    // America/New_York, fall back 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
    (
        "30 1 * * *",
        "America/New_York",
        "2026-10-31T12:00:00Z",
        "2026-11-01T05:30:00Z",
    ),
    (
        "30 1 * * *",
        "America/New_York",
        "2026-11-01T05:30:00Z",
        "2026-11-02T06:30:00Z",
    ),
    (
        "0 9 * * *",
        "America/New_York",
        "2026-11-01T00:00:00Z",
        "2026-11-01T14:00:00Z",
    ),
];

#[test]
fn next_runs_follow_celery_and_the_dst_policy() {
    let mut failures = Vec::new();
    for (expression, tz, after, expected) in NEXT_RUNS {
        let got = cron(expression, tz).next_after(at(after));
        if got != Some(at(expected)) {
            failures.push(format!(
                "{expression:?} in {tz} after {after}: expected {expected}, got {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every run of a day across a DST change: each wall-clock time runs once.
#[test]
fn a_fixed_time_job_runs_exactly_once_on_each_dst_day() {
    for (tz, day_start, day_end) in [
        (
            "Europe/Berlin",
            "2026-03-28T23:00:00Z",
            "2026-03-29T22:00:00Z",
        ),
        (
            "Europe/Berlin",
            "2026-10-24T22:00:00Z",
            "2026-10-25T23:00:00Z",
        ),
        (
            "America/New_York",
            "2026-03-08T05:00:00Z",
            "2026-03-09T04:00:00Z",
        ),
        (
            "America/New_York",
            "2026-11-01T04:00:00Z",
            "2026-11-02T05:00:00Z",
        ),
    ] {
        for hour in 0..24 {
            for minute in [0, 30] {
                let c = cron(&format!("{minute} {hour} * * *"), tz);
                let mut runs = 0;
                let mut cursor = at(day_start) - chrono::Duration::seconds(1);
                while let Some(next) = c.next_after(cursor) {
                    if next >= at(day_end) {
                        break;
                    }
                    runs += 1;
                    cursor = next;
                }
                assert_eq!(runs, 1, "{minute:02} {hour:02} in {tz} from {day_start}");
            }
        }
    }
}

#[test]
fn intervals_are_anchored_grids_or_relative() {
    let every = Interval::new(Duration::from_secs(30)).expect("30s");
    assert_eq!(
        every.next_after(at("2026-01-01T00:00:10Z")),
        Some(at("2026-01-01T00:00:40Z")),
        "relative: every after the last run"
    );
    let grid = every.anchored(at("2026-01-01T00:00:05Z"));
    for (after, expected) in [
        ("2026-01-01T00:00:05Z", "2026-01-01T00:00:35Z"),
        ("2026-01-01T00:00:06Z", "2026-01-01T00:00:35Z"),
        ("2026-01-01T00:00:34.999Z", "2026-01-01T00:00:35Z"),
        ("2025-12-31T23:59:59Z", "2026-01-01T00:00:05Z"),
        ("2025-12-31T23:59:00Z", "2025-12-31T23:59:05Z"),
        ("2026-03-29T00:59:50Z", "2026-03-29T01:00:05Z"),
    ] {
        assert_eq!(
            grid.next_after(at(after)),
            Some(at(expected)),
            "after {after}"
        );
    }
    let half = Interval::new(Duration::from_millis(500))
        .expect("500ms")
        .anchored(at("2026-01-01T00:00:00Z"));
    assert_eq!(
        half.next_after(at("2026-01-01T00:00:01.2Z")),
        Some(at("2026-01-01T00:00:01.5Z"))
    );
    assert!(Interval::new(Duration::ZERO).is_err());
    assert!(Interval::new(Duration::from_micros(10)).is_err());
}

#[test]
fn clocked_runs_once() {
    let once = Schedule::Clocked(Clocked::new(at("2026-05-01T12:00:00Z")));
    assert_eq!(
        once.next_after(at("2026-05-01T11:59:59Z")),
        Some(at("2026-05-01T12:00:00Z"))
    );
    assert_eq!(once.next_after(at("2026-05-01T12:00:00Z")), None);
}

#[test]
fn last_due_between_finds_the_latest_missed_run_quickly() {
    let every_second: Schedule = Interval::new(Duration::from_secs(1))
        .expect("1s")
        .anchored(at("2026-01-01T00:00:00Z"))
        .into();
    // A year of downtime: found without stepping through 31 million runs.
    assert_eq!(
        every_second.last_due_between(at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00.5Z")),
        Some(at("2027-01-01T00:00:00Z"))
    );
    let minutely: Schedule = cron("* * * * *", "UTC").into();
    assert_eq!(
        minutely.last_due_between(at("2026-01-01T00:00:00Z"), at("2026-06-01T10:30:30Z")),
        Some(at("2026-06-01T10:30:00Z"))
    );
    let yearly: Schedule = cron("0 0 1 1 *", "UTC").into();
    assert_eq!(
        yearly.last_due_between(at("2020-06-01T00:00:00Z"), at("2026-06-01T00:00:00Z")),
        Some(at("2026-01-01T00:00:00Z"))
    );
    assert_eq!(
        yearly.last_due_between(at("2026-01-01T00:00:00Z"), at("2026-06-01T00:00:00Z")),
        None,
        "the bound is exclusive"
    );
    assert_eq!(
        minutely.last_due_between(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z")),
        None
    );
}

#[test]
fn schedules_round_trip_through_json_and_display() {
    let crontab: Schedule = cron("*/5 9-17 * * mon-fri", "Asia/Seoul").into();
    let json = serde_json::to_value(&crontab).expect("serialize");
    assert_eq!(
        json,
        serde_json::json!({"crontab": {"minute": "*/5", "hour": "9-17", "day_of_week": "mon-fri",
            "day_of_month": "*", "month_of_year": "*", "timezone": "Asia/Seoul"}})
    );
    assert_eq!(
        serde_json::from_value::<Schedule>(json).expect("back"),
        crontab
    );
    assert_eq!(
        crontab.to_string(),
        "crontab */5 9-17 * * mon-fri (Asia/Seoul)"
    );
    let bad = serde_json::json!({"crontab": {"minute": "61", "hour": "*", "day_of_week": "*",
        "day_of_month": "*", "month_of_year": "*"}});
    assert!(serde_json::from_value::<Schedule>(bad).is_err());

    let interval: Schedule = Interval::new(Duration::from_secs(90)).expect("90s").into();
    let json = serde_json::to_value(&interval).expect("serialize");
    assert_eq!(
        json,
        serde_json::json!({"interval": {"every": 90.0, "anchor": null}})
    );
    assert_eq!(
        serde_json::from_value::<Schedule>(json).expect("back"),
        interval
    );
    assert_eq!(interval.to_string(), "every 1m30s");

    let clocked: Schedule = Clocked::new(at("2026-05-01T12:00:00Z")).into();
    let json = serde_json::to_value(&clocked).expect("serialize");
    assert_eq!(
        serde_json::from_value::<Schedule>(json).expect("back"),
        clocked
    );
    assert_eq!(clocked.to_string(), "at 2026-05-01T12:00:00Z");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    assert_eq!(format_duration(Duration::from_secs(86_400 + 7_200)), "1d2h");
}
