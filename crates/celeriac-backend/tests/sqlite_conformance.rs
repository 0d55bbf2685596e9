//! The result backend conformance suite against SQLite, plus SQLite-only checks:
//! URLs, the shared migration ledger, sharing the file with the broker, and a
//! throughput measurement (`--ignored`).

use std::time::{Duration, Instant};

use celeriac_backend::sqlite::{SqliteBackend, SqliteOptions};
use celeriac_backend::testing::SqliteHarness;
use celeriac_backend::{BackendError, ResultBackend, StoreOutcome};
use celeriac_core::{TaskMeta, TaskState};
use rusqlite::Connection;
use serde_json::json;

celeriac_backend::backend_conformance_tests!(SqliteHarness::new());

#[tokio::test]
async fn open_url_takes_the_path_after_the_scheme() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("via-url.db");
    let url = format!("sqlite://{}", path.display());
    assert!(
        url.starts_with("sqlite:///"),
        "an absolute path gives three slashes"
    );
    let backend = SqliteBackend::open_url(&url).await.expect("open_url");
    assert_eq!(backend.path(), path);
    assert_eq!(backend.describe(), url);
    assert!(path.exists(), "the file is created");

    let via_connect = celeriac_backend::connect(&url).await.expect("connect");
    via_connect
        .store(&TaskMeta::new("t", TaskState::Success, json!(1)), None)
        .await
        .expect("store");
    assert!(backend.get("t").await.expect("get").is_some());

    for bad in ["sqlite://", "sqlite://:memory:", "sqlite:celeriac.db"] {
        assert!(
            matches!(
                SqliteBackend::open_url(bad).await,
                Err(BackendError::InvalidUrl { .. })
            ),
            "{bad} is refused"
        );
    }
    let missing_dir = format!("sqlite://{}/no/such/dir/x.db", dir.path().display());
    assert!(
        SqliteBackend::open_url(&missing_dir).await.is_err(),
        "an unreachable path is an error, not a panic"
    );
}

#[tokio::test]
async fn the_file_is_in_wal_mode_and_records_its_schema_version() {
    let harness = SqliteHarness::new();
    let _first = SqliteBackend::open(harness.path(), SqliteOptions::default())
        .await
        .expect("open");
    let _second = SqliteBackend::open(harness.path(), SqliteOptions::default())
        .await
        .expect("reopen");
    let conn = Connection::open(harness.path()).expect("inspect");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT component, version FROM celeriac_schema ORDER BY version")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        rows,
        vec![
            ("backend".to_string(), 1),
            ("backend".to_string(), 2),
            ("backend".to_string(), 3)
        ],
        "migrated once"
    );
    let indexes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'backend_results' AND name LIKE 'backend_%'",
            [],
            |r| r.get(0),
        )
        .expect("indexes");
    assert_eq!(indexes, 4);
}

#[tokio::test]
async fn shares_a_file_with_the_broker_tables() {
    let harness = SqliteHarness::new();
    {
        // What the broker leaves behind: its own ledger row and tables.
        let conn = Connection::open(harness.path()).expect("broker side");
        conn.execute_batch(
            "CREATE TABLE celeriac_schema (component TEXT, version INTEGER, PRIMARY KEY(component, version));
             INSERT INTO celeriac_schema VALUES ('broker', 1), ('broker', 2);
             CREATE TABLE broker_messages (id INTEGER PRIMARY KEY, body BLOB);
             INSERT INTO broker_messages (body) VALUES (x'00');",
        )
        .expect("broker schema");
    }
    let backend = SqliteBackend::open(harness.path(), SqliteOptions::default())
        .await
        .expect("open");
    backend
        .store(
            &TaskMeta::new("shared", TaskState::Success, json!("ok")),
            None,
        )
        .await
        .expect("store");
    let conn = Connection::open(harness.path()).expect("inspect");
    let ledger: Vec<(String, i64)> = conn
        .prepare("SELECT component, version FROM celeriac_schema ORDER BY component, version")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        ledger,
        vec![
            ("backend".into(), 1),
            ("backend".into(), 2),
            ("backend".into(), 3),
            ("broker".into(), 1),
            ("broker".into(), 2)
        ]
    );
    let messages: i64 = conn
        .query_row("SELECT COUNT(*) FROM broker_messages", [], |r| r.get(0))
        .expect("broker table untouched");
    assert_eq!(messages, 1);
}

#[tokio::test]
async fn a_write_lock_held_by_another_connection_is_waited_for() {
    let harness = SqliteHarness::new();
    let backend = SqliteBackend::open(harness.path(), SqliteOptions::default())
        .await
        .expect("open");
    let path = harness.path();
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let holder = std::thread::spawn(move || {
        let mut conn = Connection::open(path).expect("other connection");
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .expect("lock");
        let _ = locked_tx.send(());
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().expect("release");
    });
    locked_rx
        .await
        .expect("the other connection holds the lock");
    let outcome = backend
        .store(&TaskMeta::new("busy", TaskState::Success, json!(1)), None)
        .await
        .expect("the store waits for the lock instead of failing");
    assert_eq!(outcome, StoreOutcome::Stored);
    holder.join().expect("holder");
}

/// With re-checks effectively off, only the in-process notification can wake a
/// waiter: a store through the same handle (or a clone) still wakes it at once,
/// while a store through another handle is seen only by a re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_handle_stores_wake_waiters_without_polling() {
    let harness = SqliteHarness::new();
    let mut options = SqliteOptions::default();
    options.poll_min = Duration::from_secs(30);
    options.poll_max = Duration::from_secs(30);
    let backend = SqliteBackend::open(harness.path(), options.clone())
        .await
        .expect("open");
    let other = SqliteBackend::open(harness.path(), options)
        .await
        .expect("open other");

    let waiting = tokio::spawn({
        let backend = backend.clone();
        async move { backend.wait("same", Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stored_at = Instant::now();
    backend
        .clone()
        .store(&TaskMeta::new("same", TaskState::Success, json!(1)), None)
        .await
        .expect("store");
    let meta = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("woken by the notification")
        .expect("join")
        .expect("wait");
    assert_eq!(meta.map(|m| m.result), Some(json!(1)));
    assert!(
        stored_at.elapsed() < Duration::from_millis(500),
        "woke in {:?}",
        stored_at.elapsed()
    );

    let mut waiting = tokio::spawn({
        let backend = backend.clone();
        async move { backend.wait("other", Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    other
        .store(&TaskMeta::new("other", TaskState::Success, json!(2)), None)
        .await
        .expect("store");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut waiting)
            .await
            .is_err(),
        "another handle's store is not notified in-process"
    );
    waiting.abort();
}

/// With default options a store through another handle (as from another process)
/// is seen within a few re-check intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_handle_stores_are_seen_within_the_poll_interval() {
    let harness = SqliteHarness::new();
    let waiter = SqliteBackend::open(harness.path(), SqliteOptions::default())
        .await
        .expect("open");
    let writer = SqliteBackend::open(harness.path(), SqliteOptions::default())
        .await
        .expect("open");
    let waiting = tokio::spawn(async move { waiter.wait("polled", Duration::from_secs(20)).await });
    // Long enough for the re-check interval to reach its 50 ms maximum.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored_at = Instant::now();
    writer
        .store(
            &TaskMeta::new("polled", TaskState::Failure, json!(null)),
            None,
        )
        .await
        .expect("store");
    let meta = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("seen")
        .expect("join")
        .expect("wait");
    assert_eq!(meta.map(|m| m.status), Some(TaskState::Failure));
    let latency = stored_at.elapsed();
    assert!(
        latency < Duration::from_millis(500),
        "seen after {latency:?}"
    );
}

/// Release-mode throughput:
/// `cargo test --release -p celeriac-backend --test sqlite_conformance -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run in release mode"]
async fn throughput() {
    let harness = SqliteHarness::new();
    let backend = SqliteBackend::open(harness.path(), SqliteOptions::default())
        .await
        .expect("open");
    let meta = |i: usize| {
        let mut meta = TaskMeta::new(
            format!("bench-{i}"),
            TaskState::Success,
            json!({"value": i}),
        );
        meta.name = Some("bench.task".into());
        meta
    };
    let expires = Some(Duration::from_secs(86_400));

    let batches = 200;
    let metas: Vec<Vec<TaskMeta>> = (0..batches)
        .map(|b| (0..256).map(|i| meta(b * 256 + i)).collect())
        .collect();
    let started = Instant::now();
    for batch in &metas {
        backend
            .store_many(batch, expires)
            .await
            .expect("store_many");
    }
    let elapsed = started.elapsed();
    let total = batches * 256;
    println!(
        "store_many (batches of 256): {total} results in {elapsed:?} = {:.0}/s",
        total as f64 / elapsed.as_secs_f64()
    );

    let singles = 20_000;
    let metas: Vec<TaskMeta> = (0..singles).map(|i| meta(1_000_000 + i)).collect();
    let started = Instant::now();
    for meta in &metas {
        backend.store(meta, expires).await.expect("store");
    }
    let elapsed = started.elapsed();
    println!(
        "store (sequential): {singles} results in {elapsed:?} = {:.0}/s",
        singles as f64 / elapsed.as_secs_f64()
    );

    let started = Instant::now();
    for i in 0..singles {
        backend
            .get(&format!("bench-{}", 1_000_000 + i))
            .await
            .expect("get")
            .expect("stored");
    }
    let elapsed = started.elapsed();
    println!(
        "get (sequential): {singles} in {elapsed:?} = {:.0}/s",
        singles as f64 / elapsed.as_secs_f64()
    );
}
