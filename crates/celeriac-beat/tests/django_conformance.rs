//! The schedule store conformance suite against django-celery-beat's tables on
//! PostgreSQL (a private schema per test holding the tables its migrations create;
//! skipped with a printed reason when PostgreSQL does not answer, failed instead with
//! `CELERIAC_REQUIRE_SERVICES=1`), plus checks of what the Django side sees.
#![cfg(feature = "django")]

use celeriac_beat::django::DjangoScheduleStore;
use celeriac_beat::testing::{postgres_url_or_skip, DjangoHarness};
use celeriac_beat::{ClaimParams, Crontab, Entry, Interval, ListParams, Schedule, ScheduleStore};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Expands the suite with a harness that skips each test when PostgreSQL is absent.
macro_rules! django_conformance {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(url) = postgres_url_or_skip(stringify!($name)) else { return };
                let harness = DjangoHarness::new(&url).await;
                tokio::time::timeout(
                    Duration::from_secs(60),
                    celeriac_beat::testing::$name(&harness),
                )
                .await
                .expect(concat!(stringify!($name), " finishes within 60 s"));
            }
        )*
    };
}

django_conformance!(
    upsert_and_get_round_trip_every_field,
    upsert_replaces_configuration_and_keeps_run_state,
    list_orders_by_name_and_filters,
    remove_and_set_enabled_report_whether_the_entry_exists,
    change_marker_moves_on_every_edit_and_only_then,
    claim_succeeds_exactly_once_under_concurrent_claimers,
    claims_advance_run_state_and_refuse_older_due_times,
    disabled_entries_are_not_due_and_cannot_be_claimed,
    one_off_entries_are_disabled_by_their_run,
    unsent_runs_are_taken_over_once_after_their_lease,
    finish_run_only_by_the_current_claimer,
    runs_are_listed_newest_first_and_removed_with_their_entry,
    catch_up_policies_with_stored_run_state,
    invalid_entries_are_refused,
);

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test time")
        .with_timezone(&Utc)
}

/// A plain SQL connection into the harness's schema.
async fn sql(harness: &DjangoHarness, url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("SET search_path TO \"{}\"", harness.schema()))
        .await
        .expect("search_path");
    client
}

/// What celeriac writes is what django-celery-beat's models read: schedule rows
/// shared and reused, JSON text, `expire_seconds`, the `periodictasks` marker.
#[tokio::test]
async fn entries_are_written_as_django_celery_beat_rows() {
    let Some(url) = postgres_url_or_skip("entries_are_written_as_django_celery_beat_rows") else {
        return;
    };
    let harness = DjangoHarness::new(&url).await;
    let store = DjangoScheduleStore::open_url(&harness.url())
        .await
        .expect("open");
    let db = sql(&harness, &url).await;
    let cron = Crontab::parse("*/5 9-17 * * mon-fri")
        .and_then(|c| c.in_timezone("Asia/Seoul"))
        .expect("crontab");
    let mut report = Entry::new("report", "proj.report", cron.clone())
        .args(vec![serde_json::json!(1)])
        .queue("reports")
        .expires(Duration::from_millis(1500));
    report.priority = Some(3);
    store.upsert(&report).await.expect("upsert");
    store
        .upsert(&Entry::new("report-2", "proj.report", cron))
        .await
        .expect("upsert");
    store
        .upsert(&Entry::new(
            "tick",
            "proj.tick",
            Interval::new(Duration::from_secs(90)).expect("90s"),
        ))
        .await
        .expect("upsert");

    let row = db
        .query_one(
            "SELECT t.task, t.args, t.kwargs, t.queue, t.priority, t.expire_seconds, t.headers,
                    t.enabled, t.one_off, t.total_run_count, c.minute, c.hour, c.day_of_week,
                    c.day_of_month, c.month_of_year, c.timezone
             FROM django_celery_beat_periodictask t
             JOIN django_celery_beat_crontabschedule c ON c.id = t.crontab_id
             WHERE t.name = 'report'",
            &[],
        )
        .await
        .expect("report row");
    assert_eq!(row.get::<_, String>(0), "proj.report");
    assert_eq!(row.get::<_, String>(1), "[1]");
    assert_eq!(row.get::<_, String>(2), "{}");
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("reports"));
    assert_eq!(row.get::<_, Option<i32>>(4), Some(3));
    assert_eq!(row.get::<_, Option<i32>>(5), Some(2), "1.5 s rounds up");
    assert_eq!(row.get::<_, String>(6), "{}");
    assert!(row.get::<_, bool>(7));
    assert!(!row.get::<_, bool>(8));
    assert_eq!(row.get::<_, i32>(9), 0);
    let fields: Vec<String> = (10..16).map(|i| row.get(i)).collect();
    assert_eq!(fields, ["*/5", "9-17", "mon-fri", "*", "*", "Asia/Seoul"]);
    let crontabs: i64 = db
        .query_one(
            "SELECT count(*) FROM django_celery_beat_crontabschedule",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(crontabs, 1, "one crontab row shared by both tasks");
    let interval = db
        .query_one(
            "SELECT i.every, i.period FROM django_celery_beat_periodictask t
             JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id
             WHERE t.name = 'tick'",
            &[],
        )
        .await
        .expect("interval row");
    assert_eq!(
        (interval.get::<_, i32>(0), interval.get::<_, String>(1)),
        (90, "seconds".to_string())
    );
    let marker_rows: i64 = db
        .query_one(
            "SELECT count(*) FROM django_celery_beat_periodictasks WHERE ident = 1",
            &[],
        )
        .await
        .expect("marker")
        .get(0);
    assert_eq!(marker_rows, 1, "edits bump PeriodicTasks.last_update");
    assert_eq!(
        store.get("report").await.expect("get").map(|e| e.expires),
        Some(Some(Duration::from_millis(1500))),
        "the exact expiry is kept while Django's column agrees"
    );
}

/// Periodic tasks made on the Django side (plain SQL standing in for the ORM) are
/// read, edits there move the change marker and win over celeriac's exact values,
/// and solar tasks are read as solar schedules.
#[tokio::test]
async fn tasks_edited_on_the_django_side_are_read() {
    let Some(url) = postgres_url_or_skip("tasks_edited_on_the_django_side_are_read") else {
        return;
    };
    let harness = DjangoHarness::new(&url).await;
    let store = DjangoScheduleStore::open_url(&harness.url())
        .await
        .expect("open");
    let db = sql(&harness, &url).await;
    db.batch_execute(
        "INSERT INTO django_celery_beat_intervalschedule (id, every, period) VALUES (1, 2, 'minutes');
         INSERT INTO django_celery_beat_solarschedule (id, event, latitude, longitude)
             VALUES (1, 'sunrise', 37.5665, 126.978);
         SELECT setval(pg_get_serial_sequence('django_celery_beat_solarschedule', 'id'), 1);
         INSERT INTO django_celery_beat_periodictask (name, task, args, kwargs, queue, exchange,
             routing_key, expires, enabled, last_run_at, total_run_count, date_changed,
             description, crontab_id, interval_id, solar_id, one_off, start_time, priority,
             headers, clocked_id, expire_seconds)
         VALUES ('from-admin', 'proj.cleanup', '[\"a\"]', '{\"k\": 2}', '', NULL, NULL, NULL,
             true, NULL, 0, '2026-01-01T00:00:00Z', 'made in the admin', NULL, 1, NULL, false,
             NULL, NULL, '{\"x-origin\": \"admin\"}', NULL, 60),
            ('at-sunrise', 'proj.wake', '[]', '{}', NULL, NULL, NULL, NULL, true, NULL, 0,
             now(), '', NULL, NULL, 1, false, NULL, NULL, '{}', NULL, NULL);
         INSERT INTO django_celery_beat_periodictasks (ident, last_update) VALUES (1, now())
             ON CONFLICT (ident) DO UPDATE SET last_update = now();",
    )
    .await
    .expect("rows as Django writes them");
    let entries = store.list(&ListParams::all()).await.expect("list");
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["at-sunrise", "from-admin"]);
    let sunrise = &entries[0];
    assert_eq!(
        sunrise.schedule,
        Schedule::from(
            celeriac_beat::Solar::new(celeriac_beat::SolarEvent::Sunrise, 37.5665, 126.978)
                .expect("valid")
        ),
        "the solar task is read with its event and place"
    );
    let entry = &entries[1];
    assert_eq!(entry.task, "proj.cleanup");
    assert_eq!(entry.args, vec![serde_json::json!("a")]);
    assert_eq!(entry.kwargs["k"], serde_json::json!(2));
    assert_eq!(entry.headers["x-origin"], serde_json::json!("admin"));
    assert_eq!(entry.queue, None, "'' is no queue");
    assert_eq!(entry.expires, Some(Duration::from_secs(60)));
    assert_eq!(entry.schedule.to_string(), "every 2m");
    assert_eq!(entry.created_at, Some(at("2026-01-01T00:00:00Z")));
    assert_eq!(
        entry.next_due(at("2026-01-01T00:00:30Z"), Duration::from_secs(5)),
        Some(at("2026-01-01T00:02:00Z")),
        "a never-run task counts from its date_changed"
    );
    let sunrise_next = store
        .get("at-sunrise")
        .await
        .expect("get")
        .expect("the solar task")
        .schedule
        .next_after(at("2026-06-01T00:00:00Z"))
        .expect("the sun rises in Seoul");
    // Sunrise in Seoul on 1 June is at about 05:11 KST (20:11 UTC the day before).
    assert!(
        sunrise_next > at("2026-06-01T20:05:00Z") && sunrise_next < at("2026-06-01T20:15:00Z"),
        "{sunrise_next}"
    );

    // A solar entry written by celeriac is a row Django reads back.
    let solar = celeriac_beat::Solar::new(celeriac_beat::SolarEvent::DuskCivil, 52.52, 13.405)
        .expect("valid");
    store
        .upsert(&Entry::new("berlin-dusk", "proj.lights", solar))
        .await
        .expect("upsert a solar entry");
    let row = db
        .query_one(
            "SELECT s.event, s.latitude::text, s.longitude::text
             FROM django_celery_beat_periodictask t
             JOIN django_celery_beat_solarschedule s ON s.id = t.solar_id
             WHERE t.name = 'berlin-dusk'",
            &[],
        )
        .await
        .expect("the solar row");
    let (event, lat, lon): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (event.as_str(), lat.as_str(), lon.as_str()),
        ("dusk_civil", "52.520000", "13.405000")
    );
    assert_eq!(
        store
            .get("berlin-dusk")
            .await
            .expect("get")
            .expect("entry")
            .schedule,
        Schedule::from(solar)
    );
    assert!(store.remove("berlin-dusk").await.expect("remove"));

    // Claim, then an edit on the Django side (as the admin saves: the signal bumps
    // the marker) moves the marker and its values win.
    let due = at("2026-01-01T00:02:00Z");
    assert!(store
        .claim_run(&ClaimParams::new(
            "from-admin",
            due,
            "b",
            "t1",
            due,
            due + chrono::Duration::seconds(30)
        ))
        .await
        .expect("claim"));
    let last_run: Option<DateTime<Utc>> = db
        .query_one(
            "SELECT last_run_at FROM django_celery_beat_periodictask WHERE name = 'from-admin'",
            &[],
        )
        .await
        .expect("last_run_at")
        .get(0);
    assert_eq!(last_run, Some(due), "Django sees the run");
    let before = store.change_marker().await.expect("marker");
    db.batch_execute(
        "UPDATE django_celery_beat_periodictask SET enabled = false, last_run_at = NULL,
             date_changed = now() WHERE name = 'from-admin';
         UPDATE django_celery_beat_periodictasks SET last_update = now() WHERE ident = 1;",
    )
    .await
    .expect("admin disable");
    assert_ne!(store.change_marker().await.expect("marker"), before);
    let entry = store.get("from-admin").await.expect("get").expect("exists");
    assert!(!entry.enabled);
    assert_eq!(entry.last_run_at, None, "Django cleared it");
    assert_eq!(entry.total_run_count, 1);
}

/// Without django-celery-beat's tables the store says what to run.
#[tokio::test]
async fn missing_django_tables_are_reported() {
    let Some(url) = postgres_url_or_skip("missing_django_tables_are_reported") else {
        return;
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let empty = format!(
        "django+{url}{separator}schema=celeriac_no_such_schema_{}",
        uuid::Uuid::new_v4().simple()
    );
    let error = DjangoScheduleStore::open_url(&empty)
        .await
        .expect_err("no tables");
    assert!(
        format!("{error:#}").contains("manage.py migrate django_celery_beat")
            || format!("{:?}", error).contains("manage.py migrate django_celery_beat"),
        "{error:?}"
    );
}
