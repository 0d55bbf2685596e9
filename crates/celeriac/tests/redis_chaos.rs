//! Chaos on Redis (private `redis-server` per test, see `private_redis`):
//!
//! - a worker process holding late-ack tasks is killed with SIGKILL while one of them
//!   runs; a second worker process finishes every task within 10 s, none is lost,
//!   and only the task that was running at the kill runs twice;
//! - with `visibility_timeout = 2` a 6-second late-ack task on a live worker runs
//!   once: its renewals keep `unacked_index` fresh, so neither celeriac's scan nor
//!   kombu's (Python's `restore_visible`, run for real when the repository's `.venv`
//!   has kombu) restores it.
//!
//! The worker processes are this test binary re-executed with `--exact
//! chaos_child_worker` and the environment variables below; without them that test
//! does nothing.

mod private_redis;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac::core::{Map, Queue, SendOptions, TaskOptions, Value};
use celeriac::App;
use private_redis::PrivateRedis;
use serde_json::json;
use support::{task, wait_for, RunningWorker};

const CHILD_URL: &str = "CELERIAC_TEST_CHAOS_URL";
const CHILD_RECORD: &str = "CELERIAC_TEST_CHAOS_RECORD";
const CHILD_CONCURRENCY: &str = "CELERIAC_TEST_CHAOS_CONCURRENCY";
const TASKS: u64 = 24;
/// How long each task of the kill test runs.
const TASK_MS: u64 = 400;

/// A late-ack task that logs `start <n> <pid>` and, `TASK_MS` later, `done <n> <pid>`.
fn child_app(url: &str, record: PathBuf, concurrency: usize) -> celeriac::AppBuilder {
    let log = move |what: &str, n: u64| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&record)?;
        file.write_all(format!("{what} {n} {}\n", std::process::id()).as_bytes())
    };
    let log = Arc::new(log);
    let work = task(
        "chaos.work",
        {
            let mut o = TaskOptions::default();
            o.acks_late = Some(true);
            o
        },
        move |_ctx, args: Vec<Value>, _kw| {
            let log = Arc::clone(&log);
            async move {
                let n = args.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
                log("start", n)?;
                tokio::time::sleep(Duration::from_millis(TASK_MS)).await;
                log("done", n)?;
                Ok(json!(n))
            }
        },
    );
    App::builder("chaos")
        .without_environment()
        .broker(url.to_string())
        .configure(|s| {
            s.broker_transport_options.lease = 1.0;
            s.worker_shutdown_timeout = 5.0;
        })
        // The first worker runs one task at a time and holds up to 7 more.
        .queue(
            Queue::new("celery")
                .concurrency(concurrency)
                .prefetch_multiplier(8 / concurrency.max(1)),
        )
        .task(work)
}

/// The worker process body (only when re-executed by a test below).
#[tokio::test]
async fn chaos_child_worker() {
    let (Ok(url), Ok(record), Ok(concurrency)) = (
        std::env::var(CHILD_URL),
        std::env::var(CHILD_RECORD),
        std::env::var(CHILD_CONCURRENCY),
    ) else {
        return;
    };
    let concurrency = concurrency.parse().expect("concurrency");
    let app = child_app(&url, record.into(), concurrency)
        .build()
        .await
        .expect("child app");
    let worker = app.worker(app.worker_config());
    worker.run_until(celeriac::cli::shutdown_signal()).await;
}

fn spawn_child(url: &str, record: &Path, concurrency: usize) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "chaos_child_worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_RECORD, record)
        .env(CHILD_CONCURRENCY, concurrency.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker process")
}

/// The record: per `(start|done)`, task number → pids, in order.
#[derive(Default, Debug)]
struct Record {
    started: BTreeMap<u64, Vec<u32>>,
    done: BTreeMap<u64, Vec<u32>>,
}

fn read_record(path: &Path) -> Record {
    let mut record = Record::default();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let mut parts = line.split_whitespace();
        let (Some(what), Some(n), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(n), Ok(pid)) = (n.parse::<u64>(), pid.parse::<u32>()) else {
            continue;
        };
        let map = match what {
            "start" => &mut record.started,
            "done" => &mut record.done,
            _ => continue,
        };
        map.entry(n).or_default().push(pid);
    }
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkilled_worker_holding_late_ack_tasks_loses_none() {
    let Some(server) =
        PrivateRedis::start_or_skip("redis_sigkilled_worker_holding_late_ack_tasks_loses_none")
    else {
        return;
    };
    let url = server.url(0);
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record.txt");
    let app = child_app(&url, record.clone(), 1)
        .build()
        .await
        .expect("app");
    for n in 0..TASKS {
        app.send_task("chaos.work", vec![json!(n)], Map::new(), SendOptions::new())
            .await
            .expect("sent");
    }

    let mut first = spawn_child(&url, &record, 1);
    let first_pid = first.id();
    // Kill in the middle of a task, after a few finished: wait for a start with no
    // done, then 100 ms more (the previous task's ack has long landed).
    wait_for(
        "the first worker to be in the middle of its fourth task",
        Duration::from_secs(60),
        || async {
            let r = read_record(&record);
            r.done.len() >= 3 && r.started.len() > r.done.len()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = app
        .broker()
        .queue_stats(&["celery".into()])
        .await
        .expect("stats")[0]
        .held;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let killed_at = Instant::now();
    let at_kill = read_record(&record);
    let running: BTreeSet<u64> = at_kill
        .started
        .keys()
        .filter(|n| !at_kill.done.contains_key(n))
        .copied()
        .collect();
    assert_eq!(
        running.len(),
        1,
        "one task was running at the kill: {at_kill:?}"
    );
    assert!(
        held > 1,
        "the killed worker held late-ack tasks beyond the running one ({held})"
    );

    let mut second = spawn_child(&url, &record, 4);
    wait_for("every task to finish", Duration::from_secs(10), || async {
        read_record(&record).done.len() as u64 == TASKS
    })
    .await;
    let finished_in = killed_at.elapsed();
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    let _ = second.wait();

    let end = read_record(&record);
    let missing: Vec<u64> = (0..TASKS).filter(|n| !end.done.contains_key(n)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let twice: BTreeSet<u64> = end
        .started
        .iter()
        .filter(|(_, pids)| pids.len() > 1)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        twice.is_subset(&running),
        "only the task running at the kill ({running:?}) may run twice, ran twice: {twice:?}"
    );
    for (n, pids) in &end.done {
        assert_eq!(pids.len(), 1, "task {n} finished more than once: {pids:?}");
    }
    let by_first = end
        .done
        .values()
        .filter(|pids| pids[0] == first_pid)
        .count();
    let stats = app
        .broker()
        .queue_stats(&["celery".into()])
        .await
        .expect("stats");
    assert_eq!((stats[0].ready, stats[0].held), (0, 0), "drained and acked");
    eprintln!(
        "redis kill: {TASKS} tasks, {by_first} done by the killed worker, {held} held at the kill, \
         rest finished {finished_in:?} after it, running at kill {running:?} ran again: {}",
        twice == running
    );
}

/// `redis-cli -p <port> <args...>`, each output line.
fn redis_cli(port: u16, args: &[&str]) -> Vec<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The repository's Python, if it has kombu.
fn python_with_kombu() -> Option<PathBuf> {
    let python = std::env::var_os("CELERIAC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    Command::new(&python)
        .args(["-c", "import kombu"])
        .output()
        .is_ok_and(|out| out.status.success())
        .then_some(python)
}

/// kombu's `restore_visible` once (no throttle), as a Python worker runs it.
const KOMBU_RESTORE_VISIBLE: &str = r#"
import sys
from kombu import Connection
url, timeout = sys.argv[1], float(sys.argv[2])
with Connection(url, transport_options={"visibility_timeout": timeout}) as conn:
    conn.default_channel.qos.restore_visible(num=1000, interval=1)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_long_late_ack_task_past_the_visibility_timeout_runs_once() {
    let Some(server) = PrivateRedis::start_or_skip(
        "redis_long_late_ack_task_past_the_visibility_timeout_runs_once",
    ) else {
        return;
    };
    let url = server.url(0);
    let runs = Arc::new(Mutex::new(0u32));
    let long = task(
        "chaos.long",
        {
            let mut o = TaskOptions::default();
            o.acks_late = Some(true);
            o
        },
        {
            let runs = Arc::clone(&runs);
            move |_ctx, _args: Vec<Value>, _kw| {
                let runs = Arc::clone(&runs);
                async move {
                    *runs.lock().expect("lock") += 1;
                    tokio::time::sleep(Duration::from_secs(6)).await;
                    Ok(json!("done"))
                }
            }
        },
    );
    // The default lease (30 s): the worker must still keep kombu's view fresh.
    let app = App::builder("chaos")
        .without_environment()
        .broker(url.clone())
        .backend(url.clone())
        .configure(|s| {
            s.broker_transport_options.visibility_timeout = 2.0;
            s.worker_shutdown_timeout = 5.0;
        })
        .queue(Queue::new("celery").concurrency(2))
        .task(long)
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);
    let result = app
        .send_task("chaos.long", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    let python = python_with_kombu();
    if python.is_none() {
        let required = std::env::var("CELERIAC_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "CELERIAC_REQUIRE_PYTHON=1 but there is no Python with kombu (run scripts/python-env.sh)"
        );
        eprintln!("no Python with kombu (.venv or CELERIAC_PYTHON): kombu's own scan is not run, only its condition is checked");
    }

    // kombu's own scan runs beside the sampling, as often as Python starts (about
    // once a second, slower on a loaded machine), so the samples do not wait for it.
    let scanning = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let kombu_scans = python.map(|python| {
        let (scanning, url) = (Arc::clone(&scanning), url.clone());
        tokio::spawn(async move {
            let mut scans = 0u32;
            while scanning.load(std::sync::atomic::Ordering::SeqCst) {
                let out = tokio::process::Command::new(&python)
                    .arg("-c")
                    .arg(KOMBU_RESTORE_VISIBLE)
                    .arg(&url)
                    .arg("2")
                    .output()
                    .await
                    .expect("run Python");
                assert!(
                    out.status.success(),
                    "kombu failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                scans += 1;
            }
            scans
        })
    });

    let started = Instant::now();
    let mut oldest_seen = 0.0f64;
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(7) {
        // kombu's condition: an unacked_index entry older than the visibility timeout
        // is restored by any Python worker's scan.
        let now: Vec<String> = redis_cli(server.port, &["TIME"]);
        let index = redis_cli(
            server.port,
            &["ZRANGE", "unacked_index", "0", "-1", "WITHSCORES"],
        );
        if let (Some(seconds), Some(micros)) = (now.first(), now.get(1)) {
            let now =
                seconds.parse::<f64>().unwrap_or(0.0) + micros.parse::<f64>().unwrap_or(0.0) / 1e6;
            for score in index.iter().skip(1).step_by(2) {
                let age = now - score.parse::<f64>().unwrap_or(0.0);
                oldest_seen = oldest_seen.max(age);
                samples += 1;
            }
        }
        // No copy of the message went back to the queue.
        let ready = redis_cli(server.port, &["LLEN", "celery"]);
        assert_eq!(
            ready.first().map(String::as_str),
            Some("0"),
            "the held message was restored"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    scanning.store(false, std::sync::atomic::Ordering::SeqCst);
    if let Some(scans) = kombu_scans {
        let scans = scans.await.expect("the kombu scans");
        assert!(scans >= 1, "kombu's scan ran");
    }
    let value: Value = result.get(Duration::from_secs(30)).await.expect("result");
    assert_eq!(value, json!("done"));
    assert!(
        samples > 5,
        "the held message was seen in unacked_index ({samples} samples)"
    );
    assert!(
        oldest_seen < 2.0,
        "unacked_index aged {oldest_seen:.2} s, past the visibility timeout of 2 s"
    );
    // Give a wrongly restored copy time to run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = worker.stop().await;
    assert_eq!(*runs.lock().expect("lock"), 1, "the task ran once");
    assert_eq!(stats.processed, 1);
    eprintln!("visibility: 6 s task with visibility_timeout=2 ran once; unacked_index at most {oldest_seen:.2} s old");
}
