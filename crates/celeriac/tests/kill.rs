//! A worker process is killed with SIGKILL while it holds late-ack messages on
//! SQLite; a second worker process runs every one of them. Nothing is lost.
//!
//! The worker processes are this test binary re-executed with `--exact child_worker`
//! and the environment variables below; without them `child_worker` does nothing.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use celeriac::core::{Map, Queue, SendOptions, TaskOptions, Value};
use celeriac::App;
use serde_json::json;
use support::{task, wait_for, TestApp};

const CHILD_DB: &str = "CELERIAC_TEST_CHILD_DB";
const CHILD_RECORD: &str = "CELERIAC_TEST_CHILD_RECORD";
const TASKS: u64 = 40;

fn child_app(url: &str, record: String) -> celeriac::AppBuilder {
    let record_task = task(
        "kill.record",
        {
            let mut o = TaskOptions::default();
            o.acks_late = Some(true);
            o
        },
        move |_ctx, args: Vec<Value>, _kw| {
            let record = record.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let n = args.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&record)?;
                writeln!(file, "{n}")?;
                Ok(json!(n))
            }
        },
    );
    App::builder("killtest")
        .without_environment()
        .broker(url.to_string())
        .configure(|s| s.broker_transport_options.lease = 1.0)
        .queue(Queue::new("celery").concurrency(4).prefetch_multiplier(2))
        .task(record_task)
}

/// The worker process body (only when re-executed by the parent test).
#[tokio::test]
async fn child_worker() {
    let (Ok(url), Ok(record)) = (std::env::var(CHILD_DB), std::env::var(CHILD_RECORD)) else {
        return;
    };
    let app = child_app(&url, record).build().await.expect("child app");
    let worker = app.worker(app.worker_config());
    worker.run_until(celeriac::cli::shutdown_signal()).await;
}

fn spawn_child(url: &str, record: &std::path::Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, url)
        .env(CHILD_RECORD, record)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker process")
}

fn recorded(record: &std::path::Path) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(record).unwrap_or_default().lines() {
        if let Ok(n) = line.trim().parse::<u64>() {
            *counts.entry(n).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test]
async fn sigkilled_worker_loses_nothing() {
    let t = TestApp::new();
    let record = t.dir.path().join("record.txt");
    let app = child_app(&t.url, record.display().to_string())
        .build()
        .await
        .expect("app");
    for n in 0..TASKS {
        app.send_task(
            "kill.record",
            vec![json!(n)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    }

    let mut first = spawn_child(&t.url, &record);
    wait_for(
        "the first worker to finish a few tasks",
        Duration::from_secs(60),
        || async { recorded(&record).values().sum::<u32>() >= 6 },
    )
    .await;
    let held = app
        .broker()
        .queue_stats(&["celery".into()])
        .await
        .expect("stats")[0]
        .held;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let done_at_kill: u32 = recorded(&record).values().sum();
    assert!(held > 0, "the killed worker held messages");
    assert!(done_at_kill < TASKS as u32, "killed before the end");

    let mut second = spawn_child(&t.url, &record);
    wait_for("every task to run", Duration::from_secs(90), || async {
        recorded(&record).len() as u64 == TASKS
    })
    .await;
    // Graceful stop of the second worker.
    send_sigterm(second.id());
    let _ = second.wait();

    let counts = recorded(&record);
    let missing: Vec<u64> = (0..TASKS).filter(|n| !counts.contains_key(n)).collect();
    assert!(missing.is_empty(), "lost tasks: {missing:?}");
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    // Only messages held by the killed worker (at most its window of 8) can run twice.
    assert!(duplicates <= 8, "{duplicates} duplicate runs");
    let stats = app
        .broker()
        .queue_stats(&["celery".into()])
        .await
        .expect("stats");
    assert_eq!(
        (stats[0].ready, stats[0].held),
        (0, 0),
        "queue drained and acked"
    );
    eprintln!("kill test: {TASKS} tasks, {done_at_kill} done before SIGKILL, {held} held at kill, 0 lost, {duplicates} duplicates");
}

/// Sends SIGTERM through the `kill` command (no unsafe code in tests).
fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
