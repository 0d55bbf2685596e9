//! The broker conformance suite against the embedded SQLite broker, one fresh file per
//! test, plus an ignored throughput check:
//!
//! ```text
//! cargo test --release -p celeriac-broker --test sqlite_conformance -- --ignored --nocapture
//! ```

use std::time::Duration;

use tokio::time::Instant;

use celeriac_broker::testing::SqliteHarness;
use celeriac_broker::{Broker, FetchParams, Publish};
use celeriac_core::TaskMessage;

celeriac_broker::broker_conformance_tests!(SqliteHarness::new());

/// Publishes 100,000 messages in batches of 1,000, then drains them with fetches of
/// 64 and one ack per batch, and prints the rates.
#[test]
#[ignore = "throughput check; run in release mode with --ignored --nocapture"]
fn throughput() {
    celeriac_broker::testing::run("throughput", async {
        const TOTAL: usize = 100_000;
        let harness = SqliteHarness::new();
        let broker = harness.sqlite_broker().await;
        let envelope = TaskMessage::new(
            "bench.noop",
            "00000000-0000-0000-0000-000000000000",
            vec![
                serde_json::json!(1),
                serde_json::json!("some argument text"),
            ],
            serde_json::Map::new(),
        )
        .encode();

        let started = Instant::now();
        for _ in 0..TOTAL / 1000 {
            let batch = (0..1000)
                .map(|_| Publish {
                    queue: "bench".into(),
                    envelope: envelope.clone(),
                    not_before: None,
                })
                .collect();
            broker.publish(batch).await.expect("publish");
        }
        let publish = started.elapsed();

        let params = FetchParams {
            queues: vec!["bench".into()],
            max: 64,
            wait: Duration::ZERO,
            consumer: "bench".into(),
            lease: Duration::from_secs(60),
        };
        let started = Instant::now();
        let mut drained = 0;
        loop {
            let got = broker.fetch(&params).await.expect("fetch");
            if got.is_empty() {
                break;
            }
            drained += got.len();
            let tags: Vec<_> = got.into_iter().map(|d| d.tag).collect();
            broker.ack(&tags).await.expect("ack");
        }
        let drain = started.elapsed();
        assert_eq!(drained, TOTAL);
        println!(
            "publish (batches of 1,000): {:.0} msgs/s; fetch(max 64) + ack: {:.0} msgs/s; payload {} bytes",
            TOTAL as f64 / publish.as_secs_f64(),
            TOTAL as f64 / drain.as_secs_f64(),
            envelope.to_kombu_json().len(),
        );
    });
}

/// Environment of a child process started by [`processes_share_one_file_safely`]:
/// `consume` or `crash`, then the broker file and the output file.
const CHILD_ROLE: &str = "CELERIAC_BROKER_TEST_CHILD_ROLE";
const CHILD_DB: &str = "CELERIAC_BROKER_TEST_CHILD_DB";
const CHILD_OUT: &str = "CELERIAC_BROKER_TEST_CHILD_OUT";
/// Unix milliseconds at which the children start fetching, so they contend.
const CHILD_START: &str = "CELERIAC_BROKER_TEST_CHILD_START";

/// Real worker processes on one file: a process that takes messages and exits without
/// acking loses nothing, and three processes draining the queue concurrently get every
/// message exactly once.
#[test]
fn processes_share_one_file_safely() {
    celeriac_broker::testing::run("processes_share_one_file_safely", async {
        const TOTAL: usize = 3000;
        let harness = SqliteHarness::new();
        let broker = harness.sqlite_broker().await;
        let envelopes = (0..TOTAL).map(|i| Publish {
            queue: "shared".into(),
            envelope: TaskMessage::new("t", format!("m{i:05}"), vec![], serde_json::Map::new())
                .encode(),
            not_before: None,
        });
        broker.publish(envelopes.collect()).await.expect("publish");

        let dir = tempfile::tempdir().expect("tempdir");
        let crashed = run_children(&harness, &dir, "crash", 1).await.remove(0);
        assert_eq!(crashed.len(), 5, "the crashing process took 5 messages");
        let per_child = run_children(&harness, &dir, "consume", 3).await;
        let split: Vec<usize> = per_child.iter().map(Vec::len).collect();
        eprintln!("messages per consuming process: {split:?}");
        let consumed: Vec<String> = per_child.concat();

        // The crashed process's messages come back once its lease lapses.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut recovered = Vec::new();
        while recovered.len() < crashed.len() {
            assert!(
                Instant::now() < deadline,
                "recovered only {recovered:?} of {crashed:?}"
            );
            broker.restore_expired().await.expect("restore_expired");
            let params = FetchParams {
                queues: vec!["shared".into()],
                max: 10,
                wait: Duration::from_millis(100),
                consumer: "parent".into(),
                lease: Duration::from_secs(60),
            };
            for delivery in broker.fetch(&params).await.expect("fetch") {
                assert_eq!(
                    delivery.delivery_count, 2,
                    "a recovered message is a second delivery"
                );
                recovered.push(
                    delivery
                        .envelope
                        .task_id_hint()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
        let mut sorted_crashed = crashed.clone();
        sorted_crashed.sort();
        recovered.sort();
        assert_eq!(recovered, sorted_crashed);

        let mut all: Vec<String> = consumed.into_iter().chain(recovered).collect();
        let delivered = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), delivered, "a message went to two processes");
        assert_eq!(delivered, TOTAL, "every message is delivered");
    });
}

/// Starts `count` children of this test binary in `role` at once; returns the task
/// ids each one printed.
async fn run_children(
    harness: &SqliteHarness,
    dir: &tempfile::TempDir,
    role: &str,
    count: usize,
) -> Vec<Vec<String>> {
    let exe = std::env::current_exe().expect("the test binary");
    let start_at = chrono::Utc::now().timestamp_millis() + 500;
    let mut children = Vec::new();
    for i in 0..count {
        let out = dir.path().join(format!("{role}-{i}.txt"));
        let child = tokio::process::Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ROLE, role)
            .env(CHILD_DB, harness.path())
            .env(CHILD_OUT, &out)
            .env(CHILD_START, start_at.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn a child process");
        children.push((child, out));
    }
    let mut outputs = Vec::new();
    for (child, out) in children {
        let output = child.wait_with_output().await.expect("wait for the child");
        assert!(
            output.status.success(),
            "child {role} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
        );
        let text = std::fs::read_to_string(&out).expect("the child's output");
        outputs.push(text.lines().map(str::to_string).collect());
    }
    outputs
}

/// The body of a child process (does nothing when run directly).
#[test]
#[ignore = "run by processes_share_one_file_safely in a child process"]
fn child_process() {
    let (Ok(role), Ok(db), Ok(out)) = (
        std::env::var(CHILD_ROLE),
        std::env::var(CHILD_DB),
        std::env::var(CHILD_OUT),
    ) else {
        return;
    };
    celeriac_broker::testing::run("child_process", async move {
        let broker = celeriac_broker::sqlite::SqliteBroker::open(&db, Default::default())
            .await
            .expect("open the shared file");
        let start_at: i64 = std::env::var(CHILD_START)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let until_start = start_at - chrono::Utc::now().timestamp_millis();
        if until_start > 0 {
            tokio::time::sleep(Duration::from_millis(until_start as u64)).await;
        }
        let mut params = FetchParams {
            queues: vec!["shared".into()],
            max: 16,
            wait: Duration::from_millis(500),
            consumer: format!("child-{}", std::process::id()),
            lease: Duration::from_secs(60),
        };
        let mut taken = Vec::new();
        if role == "crash" {
            params.max = 5;
            params.lease = Duration::from_millis(300);
            let got = broker.fetch(&params).await.expect("fetch");
            taken.extend(
                got.iter()
                    .map(|d| d.envelope.task_id_hint().unwrap_or_default().to_string()),
            );
            std::fs::write(&out, taken.join("\n")).expect("write the output");
            // Dies holding the messages: no ack, no release, no clean shutdown.
            std::process::exit(0);
        }
        loop {
            let got = broker.fetch(&params).await.expect("fetch");
            if got.is_empty() {
                break;
            }
            taken.extend(
                got.iter()
                    .map(|d| d.envelope.task_id_hint().unwrap_or_default().to_string()),
            );
            let tags: Vec<_> = got.into_iter().map(|d| d.tag).collect();
            broker.ack(&tags).await.expect("ack");
        }
        std::fs::write(&out, taken.join("\n")).expect("write the output");
    });
}
