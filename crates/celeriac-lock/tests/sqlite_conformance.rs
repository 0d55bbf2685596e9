//! The lock manager conformance suite against SQLite, plus SQLite-only checks: the
//! shared migration ledger and sharing the file with the broker.

use std::time::Duration;

use celeriac_lock::sqlite::{SqliteLockManager, SqliteLockOptions};
use celeriac_lock::testing::SqliteHarness;
use celeriac_lock::{AcquireParams, LockManager};
use rusqlite::Connection;

celeriac_lock::lock_conformance_tests!(SqliteHarness::new());

#[tokio::test]
async fn shares_the_broker_file_and_records_its_schema_version() {
    let harness = SqliteHarness::new();
    let broker = celeriac_broker::sqlite::SqliteBroker::open(
        harness.path(),
        celeriac_broker::sqlite::SqliteBrokerOptions::default(),
    )
    .await
    .expect("broker on the file");
    let locks = SqliteLockManager::open(harness.path(), SqliteLockOptions::default())
        .await
        .expect("locks on the same file");
    let _again = SqliteLockManager::open(harness.path(), SqliteLockOptions::default())
        .await
        .expect("reopen");
    let lease = locks
        .acquire(&AcquireParams::new(
            "single:t",
            Duration::from_secs(30),
            "me",
        ))
        .await
        .expect("acquire")
        .expect("free");
    let conn = Connection::open(harness.path()).expect("inspect");
    let ledger: Vec<(String, i64)> = conn
        .prepare("SELECT component, MAX(version) FROM celeriac_schema GROUP BY component ORDER BY component")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(ledger.contains(&("lock".to_string(), 1)), "{ledger:?}");
    assert!(ledger.iter().any(|(c, _)| c == "broker"), "{ledger:?}");
    let (key, owner): (String, String) = conn
        .query_row("SELECT key, owner FROM lock_locks", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("operators can read the locks with SQL");
    assert_eq!((key.as_str(), owner.as_str()), ("single:t", "me"));
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    assert!(locks.release(&lease).await.expect("release"));
    drop(broker);
}

#[tokio::test]
async fn connect_opens_sqlite_and_refuses_unknown_stores_clearly() {
    let harness = SqliteHarness::new();
    let url = format!("sqlite://{}", harness.path().display());
    let manager = celeriac_lock::connect(&url).await.expect("sqlite");
    assert_eq!(manager.describe(), url);
    let error = match celeriac_lock::connect("amqp://localhost:5672//").await {
        Ok(_) => panic!("no AMQP lock store"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("locks need a supported store") && error.contains("amqp"),
        "{error}"
    );
    assert!(matches!(
        celeriac_lock::connect("no-scheme").await,
        Err(celeriac_lock::LockError::InvalidUrl { .. })
    ));
    assert!(matches!(
        celeriac_lock::connect("redis://h/notadb").await,
        Err(celeriac_lock::LockError::InvalidUrl { .. })
    ));
}
