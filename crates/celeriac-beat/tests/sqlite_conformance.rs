//! The schedule store conformance suite against SQLite, plus SQLite-only checks: the
//! shared migration ledger, sharing the file with the broker, and `connect`.

use celeriac_beat::sqlite::{SqliteScheduleStore, SqliteStoreOptions};
use celeriac_beat::testing::SqliteHarness;
use celeriac_beat::{Entry, Interval, ScheduleStore};
use rusqlite::Connection;

celeriac_beat::schedule_store_conformance_tests!(SqliteHarness::new());

#[tokio::test]
async fn shares_the_broker_file_and_records_its_schema_version() {
    let harness = SqliteHarness::new();
    let broker = celeriac_broker::sqlite::SqliteBroker::open(
        harness.path(),
        celeriac_broker::sqlite::SqliteBrokerOptions::default(),
    )
    .await
    .expect("broker on the file");
    let store = SqliteScheduleStore::open(harness.path(), SqliteStoreOptions::default())
        .await
        .expect("schedules on the same file");
    let _again = SqliteScheduleStore::open(harness.path(), SqliteStoreOptions::default())
        .await
        .expect("reopen");
    let every = Interval::new(std::time::Duration::from_secs(30)).expect("30s");
    store
        .upsert(&Entry::new("report", "proj.report", every))
        .await
        .expect("upsert");
    let conn = Connection::open(harness.path()).expect("inspect");
    let ledger: Vec<(String, i64)> = conn
        .prepare("SELECT component, MAX(version) FROM celeriac_schema GROUP BY component ORDER BY component")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(ledger.contains(&("beat".to_string(), 1)), "{ledger:?}");
    assert!(ledger.iter().any(|(c, _)| c == "broker"), "{ledger:?}");
    let (name, kind): (String, String) = conn
        .query_row("SELECT name, schedule_kind FROM beat_entries", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("operators can read entries with SQL");
    assert_eq!((name.as_str(), kind.as_str()), ("report", "interval"));
    // A plain SQL edit moves the change marker too.
    let before = store.change_marker().await.expect("marker");
    conn.execute(
        "UPDATE beat_entries SET enabled = 0 WHERE name = 'report'",
        [],
    )
    .expect("operator edit");
    assert_ne!(store.change_marker().await.expect("marker"), before);
    drop(broker);
}

#[tokio::test]
async fn connect_opens_sqlite_and_refuses_unknown_stores_clearly() {
    let harness = SqliteHarness::new();
    let url = format!("sqlite://{}", harness.path().display());
    let store = celeriac_beat::connect(&url).await.expect("sqlite");
    assert_eq!(store.describe(), url);
    for other in ["amqp://localhost//", "mongodb://localhost/beat"] {
        let error = match celeriac_beat::connect(other).await {
            Ok(_) => panic!("no store for {other}"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("not supported"), "{error}");
    }
    assert!(celeriac_beat::connect("no-scheme").await.is_err());
}
