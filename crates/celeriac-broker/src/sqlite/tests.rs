//! SQLite-specific tests; the shared behaviour is covered by the conformance suite
//! (`tests/sqlite_conformance.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::TaskMessage;
use chrono::Utc;
use rusqlite::Connection;

use super::*;
use crate::testing::SqliteHarness;

fn message(queue: &str, id: &str) -> Publish {
    Publish {
        queue: queue.into(),
        envelope: TaskMessage::new("t", id, vec![], serde_json::Map::new()).encode(),
        not_before: None,
    }
}

fn params(queue: &str, max: usize) -> FetchParams {
    FetchParams {
        queues: vec![queue.into()],
        max,
        wait: Duration::ZERO,
        consumer: "unit".into(),
        lease: Duration::from_secs(60),
    }
}

fn id_of(delivery: &Delivery) -> String {
    delivery
        .envelope
        .task_id_hint()
        .unwrap_or_default()
        .to_string()
}

fn raw(harness: &SqliteHarness) -> Connection {
    Connection::open(harness.path()).expect("open the broker file")
}

#[test]
fn urls_name_paths() {
    assert_eq!(
        parse_url("sqlite:///abs/x.db").ok(),
        Some(PathBuf::from("/abs/x.db"))
    );
    assert_eq!(
        parse_url("sqlite://rel.db").ok(),
        Some(PathBuf::from("rel.db"))
    );
    assert_eq!(
        parse_url("sqlite://dir/rel.db").ok(),
        Some(PathBuf::from("dir/rel.db"))
    );
    assert!(matches!(
        parse_url("sqlite://"),
        Err(BrokerError::InvalidUrl { .. })
    ));
    assert!(matches!(
        parse_url("redis://x"),
        Err(BrokerError::InvalidUrl { .. })
    ));
}

#[test]
fn tags_round_trip_and_garbage_is_rejected() {
    let tag = Tag { id: 42, token: 3 };
    assert_eq!(tag.to_delivery_tag().0, "42.3");
    assert_eq!(Tag::parse(&tag.to_delivery_tag()), Some(tag));
    for garbage in ["", "42", "42.", ".3", "a.b", "42.3.1"] {
        assert_eq!(
            Tag::parse(&DeliveryTag(garbage.into())),
            None,
            "{garbage:?}"
        );
    }
}

#[tokio::test]
async fn open_url_creates_the_file_in_wal_mode_and_records_the_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("b.db");
    let broker = SqliteBroker::open_url(&format!("sqlite://{}", path.display()))
        .await
        .expect("open");
    assert_eq!(broker.describe(), format!("sqlite://{}", path.display()));
    assert_eq!(broker.path(), path);

    let conn = Connection::open(&path).expect("open raw");
    assert_eq!(store::journal_mode(&conn).expect("journal_mode"), "wal");
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM celeriac_schema WHERE component = 'broker' ORDER BY version")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("schema rows");
    let known: Vec<i64> = migrate::MIGRATIONS.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, known);
}

#[tokio::test]
async fn each_connection_keeps_one_thread_and_the_reader_a_small_page_cache() {
    // Issue 9: calls spread over the blocking pool's threads spread SQLite's page
    // cache over as many malloc arenas, and the worker's heap crept up with every
    // task run.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = SqliteBroker::open(dir.path().join("b.db"), SqliteBrokerOptions::default())
        .await
        .expect("open");
    let on_thread = |conn: &mut Connection| -> rusqlite::Result<(std::thread::ThreadId, i64)> {
        let cache: i64 = conn.query_row("PRAGMA cache_size", [], |row| row.get(0))?;
        Ok((std::thread::current().id(), cache))
    };
    let (writer, writer_cache) = broker.write(on_thread).await.expect("write");
    let (reader, reader_cache) = broker.read(on_thread).await.expect("read");
    let calls = (0..20).map(|_| broker.write(on_thread));
    for call in futures::future::join_all(calls).await {
        assert_eq!(call.expect("write").0, writer, "every write on one thread");
    }
    assert_eq!(broker.read(on_thread).await.expect("read").0, reader);
    assert_ne!(writer, reader);
    assert_eq!(reader_cache, READER_CACHE_KIB);
    assert_eq!(writer_cache, -2000, "the writer keeps SQLite's default");
}

#[tokio::test]
async fn the_checkpointer_copies_the_wal_into_the_file_beside_the_writer() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    let autocheckpoint: i64 = broker
        .write(|conn| conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)))
        .await
        .expect("pragma");
    assert_eq!(autocheckpoint, WRITER_AUTOCHECKPOINT_PAGES);
    let file_size = || std::fs::metadata(harness.path()).expect("metadata").len();
    let before = file_size();
    // About 150 pages: far below the writer's own automatic checkpoint, so only the
    // checkpointer can have copied them into the file.
    let payload = "x".repeat(1000);
    let batch = (0..500)
        .map(|i| {
            let mut m = message("q", &format!("m{i}"));
            m.envelope.body = payload.clone().into_bytes();
            m
        })
        .collect();
    broker.publish(batch).await.expect("publish");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while file_size() < before + 500_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL was not checkpointed: {} bytes",
            file_size()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(broker.fetch(&params("q", 1)).await.expect("fetch").len(), 1);
}

#[tokio::test]
async fn migrations_apply_once_and_leave_other_components_alone() {
    let harness = SqliteHarness::new();
    // Another component (the result backend) got there first.
    {
        let conn = raw(&harness);
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS celeriac_schema (component TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (component, version));
             INSERT INTO celeriac_schema VALUES ('backend', 1), ('backend', 2);",
        )
        .expect("seed");
    }
    let first = harness.sqlite_broker().await;
    first
        .publish(vec![message("q", "kept")])
        .await
        .expect("publish");
    drop(first);
    let _again = harness.sqlite_broker().await; // reopening applies nothing and keeps data
    let conn = raw(&harness);
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT component, version FROM celeriac_schema ORDER BY component, version")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("rows");
    assert_eq!(
        rows,
        [
            ("backend".into(), 1),
            ("backend".into(), 2),
            ("broker".into(), 1),
            ("broker".into(), 2),
            ("broker".into(), 3),
            ("broker".into(), 4)
        ]
    );
    let messages: i64 = conn
        .query_row("SELECT COUNT(*) FROM broker_messages", [], |r| r.get(0))
        .expect("count");
    assert_eq!(messages, 1);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let harness = SqliteHarness::new();
    drop(harness.sqlite_broker().await);
    raw(&harness)
        .execute("INSERT INTO celeriac_schema VALUES ('broker', 999)", [])
        .expect("seed");
    let err = SqliteBroker::open(harness.path(), SqliteBrokerOptions::default())
        .await
        .expect_err("newer schema");
    assert!(err.to_string().contains("999"), "{err}");
}

#[tokio::test]
async fn memory_databases_are_refused() {
    let err = SqliteBroker::open(":memory:", SqliteBrokerOptions::default())
        .await
        .expect_err("cannot share memory");
    assert!(matches!(err, BrokerError::InvalidUrl { .. }), "{err}");
}

/// Two brokers on one file (as two processes would open it) fetching at the same time
/// never get the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brokers_on_one_file_never_share_a_message() {
    const TOTAL: usize = 1500;
    let harness = SqliteHarness::new();
    let producer = harness.sqlite_broker().await;
    let batch = (0..TOTAL)
        .map(|i| message("shared", &format!("m{i}")))
        .collect();
    producer.publish(batch).await.expect("publish");

    let mut consumers = Vec::new();
    for _ in 0..2 {
        let broker = harness.sqlite_broker().await;
        consumers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = broker.fetch(&params("shared", 7)).await.expect("fetch");
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.iter().map(id_of));
                // Deliberately no ack: held rows must stay out of the other's reach.
            }
        }));
    }
    let mut all = Vec::new();
    let mut per_consumer = Vec::new();
    for consumer in consumers {
        let mine = consumer.await.expect("consumer");
        per_consumer.push(mine.len());
        all.extend(mine);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a message went to both brokers");
    assert_eq!(all.len(), TOTAL, "split {per_consumer:?}");
    let stats = producer
        .queue_stats(&["shared".into()])
        .await
        .expect("stats");
    assert_eq!((stats[0].ready, stats[0].held), (0, TOTAL as u64));
}

#[tokio::test]
async fn malformed_rows_written_with_raw_sql_are_dead_lettered() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    {
        let conn = raw(&harness);
        let now = Utc::now().timestamp_millis();
        // A blob that is not JSON, a TEXT value that is JSON but not an envelope, and
        // an envelope whose base64 body is broken.
        let insert = "INSERT INTO broker_messages (queue, priority, state, not_before, published_at, payload)
                      VALUES ('q', 0, 'ready', 0, ?1, ?2)";
        conn.execute(insert, rusqlite::params![now, b"\xff\x00garbage".to_vec()])
            .expect("blob");
        conn.execute(insert, rusqlite::params![now, "[1, 2, 3]"])
            .expect("text");
        conn.execute(
            insert,
            rusqlite::params![
                now,
                br#"{"body": "%%%", "properties": {"body_encoding": "base64"}}"#.to_vec()
            ],
        )
        .expect("bad base64");
    }
    broker
        .publish(vec![message("q", "good")])
        .await
        .expect("publish");

    let got = broker.fetch(&params("q", 10)).await.expect("fetch");
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), ["good"]);
    let dead = broker
        .dead_letters(&DeadLetterQuery::default())
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 3, "{dead:?}");
    // Newest first.
    assert!(dead[0].reason.contains("base64"), "{}", dead[0].reason);
    assert_eq!(dead[1].payload, b"[1, 2, 3]");
    assert_eq!(dead[2].payload, b"\xff\x00garbage");
    for letter in &dead {
        assert_eq!(letter.queue, "q");
        assert!(
            letter.reason.starts_with("payload cannot be decoded"),
            "{}",
            letter.reason
        );
    }
    let stats = broker.queue_stats(&["q".into()]).await.expect("stats");
    assert_eq!(
        (stats[0].ready, stats[0].held, stats[0].dead_letters),
        (0, 1, 3)
    );
}

#[tokio::test]
async fn purge_deletes_scheduled_messages_too() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    let mut later = message("q", "later");
    later.not_before = Some(Utc::now() + chrono::Duration::hours(1));
    broker
        .publish(vec![message("q", "now"), later])
        .await
        .expect("publish");
    let stats = broker.queue_stats(&["q".into()]).await.expect("stats");
    assert_eq!((stats[0].ready, stats[0].scheduled), (1, 1));
    assert_eq!(broker.purge("q").await.expect("purge"), 2);
    let stats = broker.queue_stats(&["q".into()]).await.expect("stats");
    assert_eq!((stats[0].ready, stats[0].scheduled), (0, 0));
}

#[tokio::test]
async fn release_does_not_count_as_a_delivery_but_requeue_does() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    broker
        .publish(vec![message("q", "m")])
        .await
        .expect("publish");
    let first = broker
        .fetch(&params("q", 1))
        .await
        .expect("fetch")
        .remove(0);
    assert_eq!(first.delivery_count, 1);
    broker
        .reject(&first.tag, RejectAction::Release)
        .await
        .expect("release");
    let second = broker
        .fetch(&params("q", 1))
        .await
        .expect("fetch")
        .remove(0);
    assert_eq!(
        second.delivery_count, 1,
        "a released delivery is not counted"
    );
    assert_ne!(second.tag, first.tag, "tags are never reused");
    broker
        .reject(&second.tag, RejectAction::Requeue)
        .await
        .expect("requeue");
    let third = broker
        .fetch(&params("q", 1))
        .await
        .expect("fetch")
        .remove(0);
    assert_eq!(third.delivery_count, 2, "a requeued delivery is counted");
}

#[tokio::test]
async fn a_large_publish_keeps_order_priorities_and_etas_across_insert_chunks() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    // 150 rows: two full multi-row INSERTs and 22 single ones. Every 7th is due in an
    // hour, every 10th has priority 5.
    let mut batch = Vec::new();
    for i in 0..150 {
        let mut m = message("q", &format!("m{i}"));
        if i % 7 == 3 {
            m.not_before = Some(Utc::now() + chrono::Duration::hours(1));
        }
        if i % 10 == 9 {
            m.envelope.properties.priority = Some(5);
        }
        batch.push(m);
    }
    broker.publish(batch).await.expect("publish");
    let stats = broker.queue_stats(&["q".into()]).await.expect("stats");
    let scheduled = (0..150).filter(|i| i % 7 == 3).count() as u64;
    assert_eq!(
        (stats[0].ready, stats[0].scheduled),
        (150 - scheduled, scheduled)
    );
    let mut got = Vec::new();
    loop {
        let batch = broker.fetch(&params("q", 32)).await.expect("fetch");
        if batch.is_empty() {
            break;
        }
        got.extend(batch.iter().map(id_of));
    }
    let ready: Vec<usize> = (0..150).filter(|i| i % 7 != 3).collect();
    let expected: Vec<String> = ready
        .iter()
        .filter(|i| *i % 10 == 9)
        .chain(ready.iter().filter(|i| *i % 10 != 9))
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(got, expected, "priority 5 first, then publish order");
}

#[tokio::test]
async fn batched_acks_and_renewals_touch_only_current_tags() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    broker
        .publish((0..5).map(|i| message("q", &format!("m{i}"))).collect())
        .await
        .expect("publish");
    let held = broker.fetch(&params("q", 5)).await.expect("fetch");
    let tags: Vec<DeliveryTag> = held.iter().map(|d| d.tag.clone()).collect();
    // A stale tag of the first message (an earlier lease token) and garbage.
    let first = Tag::parse(&tags[0]).expect("tag");
    let stale = Tag {
        id: first.id,
        token: first.token - 1,
    }
    .to_delivery_tag();
    let lease_of = |id: i64| -> i64 {
        raw(&harness)
            .query_row(
                "SELECT lease_until FROM broker_messages WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .expect("lease")
    };
    let before = lease_of(first.id);
    broker
        .renew_leases(std::slice::from_ref(&stale), Duration::from_secs(3600))
        .await
        .expect("renew stale");
    assert_eq!(lease_of(first.id), before, "a stale tag renews nothing");
    broker
        .renew_leases(&tags, Duration::from_secs(3600))
        .await
        .expect("renew");
    assert!(lease_of(first.id) > before + 3_000_000);
    broker
        .ack(&[
            stale,
            DeliveryTag("x".into()),
            tags[1].clone(),
            tags[3].clone(),
        ])
        .await
        .expect("ack");
    let left: Vec<i64> = raw(&harness)
        .prepare("SELECT id FROM broker_messages ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("ids");
    let id = |i: usize| Tag::parse(&tags[i]).expect("tag").id;
    assert_eq!(left, [id(0), id(2), id(4)]);
    broker.ack(&tags).await.expect("ack all");
    let stats = broker.queue_stats(&["q".into()]).await.expect("stats");
    assert_eq!((stats[0].ready, stats[0].held), (0, 0));
}

#[tokio::test]
async fn a_full_fetch_refills_the_places_of_undecodable_payloads() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    broker.insert_raw("q", b"not json").await.expect("raw");
    broker
        .publish(vec![message("q", "a")])
        .await
        .expect("publish");
    broker.insert_raw("q", b"{}").await.expect("raw");
    broker
        .publish(vec![message("q", "b"), message("q", "c")])
        .await
        .expect("publish");
    let got = broker.fetch(&params("q", 2)).await.expect("fetch");
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), ["a", "b"]);
    assert!(got.iter().all(|d| d.delivery_count == 1));
    let dead = broker
        .dead_letters(&DeadLetterQuery::default())
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 2, "{dead:?}");
    let counts: Vec<i64> = raw(&harness)
        .prepare("SELECT delivery_count FROM broker_dead_letters")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("counts");
    assert_eq!(counts, [0, 0], "a failed decode is not a delivery");
    let stats = broker.queue_stats(&["q".into()]).await.expect("stats");
    assert_eq!((stats[0].ready, stats[0].held), (1, 2));
}

#[tokio::test]
async fn unknown_tags_are_ignored() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    broker
        .publish(vec![message("q", "m")])
        .await
        .expect("publish");
    let held = broker
        .fetch(&params("q", 1))
        .await
        .expect("fetch")
        .remove(0);
    let garbage = [DeliveryTag("nonsense".into()), DeliveryTag("999.1".into())];
    broker.ack(&garbage).await.expect("ack garbage");
    broker
        .renew_leases(&garbage, Duration::from_secs(1))
        .await
        .expect("renew garbage");
    for tag in &garbage {
        broker
            .reject(tag, RejectAction::Requeue)
            .await
            .expect("reject garbage");
    }
    let stats = broker.queue_stats(&["q".into()]).await.expect("stats");
    assert_eq!((stats[0].ready, stats[0].held), (0, 1));
    broker.ack(&[held.tag]).await.expect("ack");
}

#[tokio::test]
async fn lease_columns_are_set_on_fetch_and_cleared_on_restore() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    broker
        .publish(vec![message("q", "m")])
        .await
        .expect("publish");
    let before = Utc::now().timestamp_millis();
    let mut p = params("q", 1);
    p.consumer = "worker-1".into();
    p.lease = Duration::from_millis(50);
    broker.fetch(&p).await.expect("fetch");
    let (state, lease_until, consumer): (String, i64, String) = raw(&harness)
        .query_row(
            "SELECT state, lease_until, consumer FROM broker_messages",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("row");
    assert_eq!((state.as_str(), consumer.as_str()), ("held", "worker-1"));
    assert!(lease_until >= before + 50 && lease_until <= Utc::now().timestamp_millis() + 50);

    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(broker.restore_expired().await.expect("restore"), 1);
    assert_eq!(broker.restore_expired().await.expect("restore again"), 0);
    let (state, lease_until, consumer): (String, Option<i64>, Option<String>) = raw(&harness)
        .query_row(
            "SELECT state, lease_until, consumer FROM broker_messages",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("row");
    assert_eq!(
        (state.as_str(), lease_until, consumer),
        ("ready", None, None)
    );
}

#[tokio::test]
async fn due_eta_messages_keep_their_place() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    let mut eta = message("q", "eta");
    eta.not_before = Some(Utc::now() + chrono::Duration::milliseconds(100));
    broker.publish(vec![eta]).await.expect("publish");
    broker
        .publish(vec![message("q", "a"), message("q", "b")])
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let got = broker.fetch(&params("q", 3)).await.expect("fetch");
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), ["eta", "a", "b"]);
}

#[tokio::test]
async fn a_waiting_fetch_wakes_when_an_eta_message_becomes_due() {
    let harness = SqliteHarness::with_options(SqliteBrokerOptions {
        // No polling help: only the due time can wake the fetch.
        poll_interval: Duration::from_secs(60),
        ..SqliteBrokerOptions::default()
    });
    let broker = harness.sqlite_broker().await;
    let mut eta = message("q", "eta");
    eta.not_before = Some(Utc::now() + chrono::Duration::milliseconds(300));
    broker.publish(vec![eta]).await.expect("publish");
    let started = std::time::Instant::now();
    let mut p = params("q", 1);
    p.wait = Duration::from_secs(10);
    let got = broker.fetch(&p).await.expect("fetch");
    assert_eq!(got.len(), 1);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

/// A write by another process (here a raw connection, which no in-process signal
/// reaches) is noticed through `PRAGMA data_version` polling.
#[tokio::test]
async fn a_waiting_fetch_notices_other_processes_by_polling() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    let path = harness.path();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let envelope = TaskMessage::new("t", "foreign", vec![], serde_json::Map::new()).encode();
        let conn = Connection::open(path).expect("open");
        conn.execute(
            "INSERT INTO broker_messages (queue, priority, state, not_before, published_at, payload)
             VALUES ('q', 0, 'ready', 0, 0, ?1)",
            [envelope.to_kombu_json()],
        )
        .expect("insert");
        std::time::Instant::now()
    });
    let mut p = params("q", 1);
    p.wait = Duration::from_secs(10);
    let got = broker.fetch(&p).await.expect("fetch");
    let inserted = writer.await.expect("writer");
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), ["foreign"]);
    assert!(
        inserted.elapsed() < Duration::from_millis(500),
        "{:?}",
        inserted.elapsed()
    );
}

#[tokio::test]
async fn an_empty_fetch_waits_its_time_without_spinning() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    let mut p = params("q", 1);
    p.wait = Duration::from_millis(300);
    let started = std::time::Instant::now();
    assert!(broker.fetch(&p).await.expect("fetch").is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let attempts = broker.inner.claim_attempts.load(Ordering::Relaxed);
    assert!(
        attempts <= 2,
        "{attempts} claim attempts while nothing changed"
    );
}

#[tokio::test]
async fn several_queues_are_served_in_turn() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.push(message("a", &format!("a{i}")));
        batch.push(message("b", &format!("b{i}")));
    }
    broker.publish(batch).await.expect("publish");
    let mut p = params("a", 2);
    p.queues = vec!["a".into(), "b".into()];
    let mut from_b = 0;
    for _ in 0..4 {
        let got = broker.fetch(&p).await.expect("fetch");
        from_b += got.iter().filter(|d| d.queue == "b").count();
    }
    assert_eq!(from_b, 4, "half of the fetches start at the second queue");
}

/// The query plan of `sql` run with `params`, one line per step.
fn query_plan(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> String {
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .and_then(|mut s| s.query_map(params, |r| r.get::<_, String>(3))?.collect())
        .expect("plan");
    plan.join("\n")
}

#[tokio::test]
async fn the_fetch_query_uses_the_ready_index_without_sorting() {
    let harness = SqliteHarness::new();
    drop(harness.sqlite_broker().await);
    let conn = raw(&harness);
    let plan = query_plan(&conn, store::CLAIM_READY, rusqlite::params!["q", 1, 0, "c"]);
    assert!(
        plan.contains("USING COVERING INDEX broker_messages_ready"),
        "{plan}"
    );
    assert!(plan.contains("INTEGER PRIMARY KEY"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
}

#[tokio::test]
async fn batched_acks_and_renewals_find_each_row_by_its_id() {
    let harness = SqliteHarness::new();
    drop(harness.sqlite_broker().await);
    let conn = raw(&harness);
    for (sql, params) in [
        (store::ACK_HELD, vec!["[[1,1]]"]),
        (store::RENEW_HELD, vec!["[[1,1]]", "0"]),
    ] {
        let plan = query_plan(&conn, sql, rusqlite::params_from_iter(params));
        assert!(plan.contains("INTEGER PRIMARY KEY"), "{sql}: {plan}");
        assert!(!plan.contains("SCAN broker_messages"), "{sql}: {plan}");
    }
}

#[tokio::test]
async fn queue_stats_lists_declared_and_used_queues() {
    let harness = SqliteHarness::new();
    let broker = harness.sqlite_broker().await;
    broker
        .declare_queue(&Queue::new("declared").routing_key("x.#"))
        .await
        .expect("declare");
    broker
        .publish(vec![message("used", "m")])
        .await
        .expect("publish");
    let names: Vec<String> = broker
        .queue_stats(&[])
        .await
        .expect("stats")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["declared", "used"]);
    let binding: (String, String, String) = raw(&harness)
        .query_row(
            "SELECT exchange, exchange_kind, routing_key FROM broker_bindings",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("binding");
    assert_eq!(binding, ("tasks".into(), "topic".into(), "x.#".into()));
}

#[test]
fn public_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let broker: Option<Arc<SqliteBroker>> = None;
    if let Some(broker) = broker {
        assert_send(&SqliteBroker::open("x", SqliteBrokerOptions::default()));
        assert_send(&broker.insert_raw("q", b""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_brokers_can_open_a_fresh_file_at_once() {
    let harness = Arc::new(SqliteHarness::new());
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let harness = Arc::clone(&harness);
            tokio::spawn(async move {
                SqliteBroker::open(harness.path(), SqliteBrokerOptions::default())
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for open in opens {
        open.await.expect("task").expect("open");
    }
    let versions: i64 = raw(&harness)
        .query_row(
            "SELECT COUNT(*) FROM celeriac_schema WHERE component = 'broker'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(versions as usize, migrate::MIGRATIONS.len());
}

#[tokio::test]
async fn extreme_parameters_do_not_panic() {
    let harness = SqliteHarness::with_options(SqliteBrokerOptions {
        poll_interval: Duration::MAX,
        ..SqliteBrokerOptions::default()
    });
    let broker = harness.sqlite_broker().await;
    broker
        .publish(vec![message("q", "m")])
        .await
        .expect("publish");
    let mut p = params("q", usize::MAX);
    p.wait = Duration::MAX;
    p.lease = Duration::MAX;
    let got = broker.fetch(&p).await.expect("fetch");
    assert_eq!(got.len(), 1);
    broker
        .renew_leases(&[got[0].tag.clone()], Duration::MAX)
        .await
        .expect("renew");
    assert_eq!(broker.restore_expired().await.expect("restore"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_handles_creating_one_new_file_at_once_all_open() {
    for round in 0..5 {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(format!("race-{round}.db"));
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move {
                    SqliteBroker::open(path, SqliteBrokerOptions::default()).await
                })
            })
            .collect();
        for open in opens {
            open.await
                .expect("join")
                .expect("every concurrent open succeeds");
        }
    }
}
