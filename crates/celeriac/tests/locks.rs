//! Single-instance tasks, unique enqueue and the `locks` commands, end to end on the
//! embedded SQLite broker, backend and lock store.
//!
//! Two tests re-execute this binary as a child process (as `kill.rs` does): a worker
//! that is SIGKILLed while it holds a single-instance lock (`child_worker`), and the
//! CLI whose output is read (`child_cli`). Without their environment variables those
//! two tests do nothing.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac::core::{
    Map, SendOptions, Task, TaskContext, TaskError, TaskMeta, TaskOptions, TaskState, Value,
};
use celeriac::lock::postgres::PostgresLockManager;
use celeriac::lock::testing::{PostgresHarness, RedisHarness};
use celeriac::lock::{AcquireParams, LockManager};
use celeriac::{App, Error, KeyArg, LockKey, OnConflict, SingleInstance, Unique};
use serde_json::json;
use support::{options, task, wait_for, RunningWorker, TestApp};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(30);

/// Options of a single-instance task (one lock for the task name).
fn single(on_conflict: OnConflict, lease: Duration) -> TaskOptions {
    options(|o| {
        o.single_instance = Some(SingleInstance::new().on_conflict(on_conflict).lease(lease));
    })
}

/// One run: which call, and when it ran.
#[derive(Debug, Clone, Copy)]
struct Span {
    n: u64,
    start: Instant,
    end: Instant,
}

/// A task that records its run's span and takes `ms` milliseconds.
fn recording(
    name: &str,
    opts: TaskOptions,
    ms: u64,
    spans: Arc<Mutex<Vec<Span>>>,
) -> impl celeriac::core::Task {
    task(name, opts, move |_ctx, args: Vec<Value>, _kw| {
        let spans = spans.clone();
        async move {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let n = args.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
            spans.lock().expect("spans").push(Span {
                n,
                start,
                end: Instant::now(),
            });
            Ok(json!(n))
        }
    })
}

fn assert_no_overlap(spans: &[Span]) {
    let mut sorted = spans.to_vec();
    sorted.sort_by_key(|s| s.start);
    for pair in sorted.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "runs {} and {} overlap",
            pair[0].n,
            pair[1].n
        );
    }
}

/// A second app (its own broker, backend and lock connections) on the same file,
/// standing in for another worker process.
async fn second_app(t: &TestApp, task: impl celeriac::core::Task) -> App {
    t.builder()
        .configure(|s| s.worker_hostname = "second@test".into())
        .task(task)
        .build()
        .await
        .expect("second app")
}

#[tokio::test]
async fn same_key_runs_never_overlap_across_workers() {
    let t = TestApp::new();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let opts = single(
        OnConflict::Retry {
            countdown: Duration::from_millis(20),
        },
        Duration::from_secs(2),
    );
    let make = || recording("locks.serial", opts.clone(), 30, spans.clone());
    let app = t
        .builder()
        .configure(|s| s.worker_concurrency = 4)
        .task(make())
        .build()
        .await
        .expect("app");
    let other = second_app(&t, make()).await;
    let first = RunningWorker::start_default(&app);
    let second = RunningWorker::start_default(&other);
    let mut results = Vec::new();
    for n in 0..16u64 {
        results.push(
            app.send_task(
                "locks.serial",
                vec![json!(n)],
                Map::new(),
                SendOptions::new(),
            )
            .await
            .expect("sent"),
        );
    }
    for (n, result) in results.iter().enumerate() {
        assert_eq!(result.get(WAIT).await.expect("ran"), json!(n));
        let meta = result.meta().await.expect("meta");
        assert_eq!(meta.retries, Some(0), "a deferral is not a retry");
    }
    let spans = spans.lock().expect("spans").clone();
    assert_eq!(spans.len(), 16, "every call ran exactly once");
    assert_no_overlap(&spans);
    let deferred = first.stop().await.retried + second.stop().await.retried;
    assert!(deferred > 0, "with 6 slots some runs met the lock");
    assert!(
        app.locks()
            .expect("locks")
            .list()
            .await
            .expect("list")
            .is_empty(),
        "every lock was released"
    );
}

#[tokio::test]
async fn different_keys_run_concurrently_and_the_same_key_is_skipped() {
    let t = TestApp::new();
    let running = Arc::new(AtomicU32::new(0));
    let both = Arc::new(Notify::new());
    let opts = options(|o| {
        o.single_instance =
            Some(SingleInstance::new().key(LockKey::Args(vec![KeyArg::new("customer", Some(0))])));
    });
    let per_customer = {
        let running = running.clone();
        let both = both.clone();
        task(
            "locks.per_customer",
            opts,
            move |ctx: TaskContext, _a, _k| {
                let running = running.clone();
                let both = both.clone();
                async move {
                    let key = ctx.lock_key().map(str::to_string);
                    let notified = both.notified();
                    if running.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                        both.notify_waiters();
                    } else {
                        // Only returns if the other customer's run is going at the same time.
                        tokio::time::timeout(Duration::from_secs(10), notified)
                            .await
                            .map_err(|_| TaskError::fail("Timeout", "ran alone"))?;
                    }
                    Ok(json!(key))
                }
            },
        )
    };
    let app = t
        .builder()
        .configure(|s| s.worker_concurrency = 4)
        .task(per_customer)
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);
    let a = app
        .send_task(
            "locks.per_customer",
            vec![json!(1)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    wait_for("customer 1 to run", WAIT, || async {
        running.load(Ordering::SeqCst) == 1
    })
    .await;
    let same = app
        .send_task(
            "locks.per_customer",
            vec![json!(1)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    match same.get(WAIT).await {
        Err(Error::Revoked { reason, .. }) => assert_eq!(reason, "locked"),
        other => panic!("expected REVOKED (locked), got {other:?}"),
    }
    let mut by_keyword = Map::new();
    by_keyword.insert("customer".into(), json!(2));
    let b = app
        .send_task("locks.per_customer", vec![], by_keyword, SendOptions::new())
        .await
        .expect("sent");
    assert_eq!(
        a.get(WAIT).await.expect("customer 1"),
        json!("single:locks.per_customer:customer=1")
    );
    assert_eq!(
        b.get(WAIT).await.expect("customer 2 ran alongside"),
        json!("single:locks.per_customer:customer=2")
    );
    let stats = worker.stop().await;
    assert_eq!((stats.succeeded, stats.revoked), (2, 1));
}

/// A single-instance task that holds its lock until `release` is notified.
fn holder(name: &str, opts: TaskOptions, release: Arc<Notify>, runs: Arc<AtomicU32>) -> impl Task {
    task(name, opts, move |ctx: TaskContext, args: Vec<Value>, _k| {
        let release = release.clone();
        let runs = runs.clone();
        async move {
            // Registered before the run is counted, so a test that saw the count and
            // then notifies is never missed.
            let released = release.notified();
            runs.fetch_add(1, Ordering::SeqCst);
            if args.first() == Some(&json!("hold")) {
                released.await;
            }
            Ok(json!({"retries": ctx.retries(), "fencing": ctx.lock_fencing()}))
        }
    })
}

#[tokio::test]
async fn skip_records_revoked_locked_and_the_lock_is_visible_while_held() {
    let t = TestApp::new();
    let release = Arc::new(Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let app = t
        .builder()
        .task(holder(
            "locks.skip",
            single(OnConflict::Skip, Duration::from_secs(1)),
            release.clone(),
            runs.clone(),
        ))
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);
    let first = app
        .send_task(
            "locks.skip",
            vec![json!("hold")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    let locks = app.locks().expect("lock store").clone();
    wait_for("the first run to hold the lock", WAIT, || async {
        locks
            .list()
            .await
            .expect("list")
            .iter()
            .any(|l| l.key == "single:locks.skip" && l.owner.contains(first.id()))
    })
    .await;
    let skipped = app
        .send_task(
            "locks.skip",
            vec![json!("go")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    match skipped.get(WAIT).await {
        Err(Error::Revoked { reason, .. }) => assert_eq!(reason, "locked"),
        other => panic!("expected REVOKED (locked), got {other:?}"),
    }
    assert_eq!(
        skipped.meta().await.expect("meta").status,
        TaskState::Revoked
    );
    // The lease (1 s) is renewed while the run lasts longer than it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(locks.list().await.expect("list").len(), 1, "still held");
    release.notify_waiters();
    first.get(WAIT).await.expect("first run");
    assert!(
        locks.list().await.expect("list").is_empty(),
        "released at once"
    );
    let after = app
        .send_task(
            "locks.skip",
            vec![json!("go")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    let value = after.get(WAIT).await.expect("runs once the lock is free");
    let first_fencing = first.get(WAIT).await.expect("first")["fencing"].as_u64();
    assert!(value["fencing"].as_u64() > first_fencing, "fencing grows");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the skipped call never ran");
    worker.stop().await;
}

#[tokio::test]
async fn retry_runs_later_without_counting_as_a_retry() {
    let t = TestApp::new();
    let release = Arc::new(Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let opts = single(
        OnConflict::Retry {
            countdown: Duration::from_millis(100),
        },
        Duration::from_secs(2),
    );
    let mut opts = opts;
    opts.max_retries = Some(0);
    let app = t
        .builder()
        .task(holder("locks.retry", opts, release.clone(), runs.clone()))
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);
    let first = app
        .send_task(
            "locks.retry",
            vec![json!("hold")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    wait_for("the first run", WAIT, || async {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    let later = app
        .send_task(
            "locks.retry",
            vec![json!("go")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    let backend = app.backend().expect("backend").clone();
    let id = later.id().to_string();
    wait_for("the conflict to be recorded as RETRY", WAIT, || async {
        matches!(backend.get(&id).await, Ok(Some(meta)) if meta.status == TaskState::Retry)
    })
    .await;
    let retry_meta = later.meta().await.expect("meta");
    let why = retry_meta.exception().expect("retry reason").message();
    assert!(
        why.contains("single-instance lock single:locks.retry is held"),
        "{why}"
    );
    // Deferred several times while the first run holds the lock (max_retries = 0 does
    // not apply: a conflict is not a failure).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    release.notify_waiters();
    first.get(WAIT).await.expect("first");
    let value = later.get(WAIT).await.expect("ran after the first");
    assert_eq!(value["retries"], json!(0));
    let stats = worker.stop().await;
    assert!(stats.retried >= 2, "deferred {} times", stats.retried);
    assert_eq!(stats.failed, 0);
}

#[tokio::test]
async fn wait_starts_as_soon_as_the_lock_is_free_or_falls_back_to_retry() {
    let t = TestApp::new();
    let release = Arc::new(Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let opts = single(
        OnConflict::Wait {
            up_to: Duration::from_secs(10),
            then_retry_after: Duration::from_millis(50),
        },
        Duration::from_secs(2),
    );
    let short_wait = single(
        OnConflict::Wait {
            up_to: Duration::from_millis(200),
            then_retry_after: Duration::from_millis(50),
        },
        Duration::from_secs(2),
    );
    let app = t
        .builder()
        .configure(|s| s.worker_concurrency = 3)
        .task(holder("locks.wait", opts, release.clone(), runs.clone()))
        .task(holder(
            "locks.short_wait",
            short_wait,
            release.clone(),
            runs.clone(),
        ))
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);
    let first = app
        .send_task(
            "locks.wait",
            vec![json!("hold")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    wait_for("the first run", WAIT, || async {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    let waiting = app
        .send_task(
            "locks.wait",
            vec![json!("go")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the second run waits");
    let released_at = Instant::now();
    release.notify_waiters();
    first.get(WAIT).await.expect("first");
    waiting.get(WAIT).await.expect("second");
    assert!(
        released_at.elapsed() < Duration::from_secs(2),
        "the waiting run started right after the release ({:?})",
        released_at.elapsed()
    );
    assert_eq!(worker.handle.stats().retried, 0, "waited, not deferred");

    // A wait that runs out falls back to a retry.
    let holding = app
        .send_task(
            "locks.short_wait",
            vec![json!("hold")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    wait_for("the holder", WAIT, || async {
        runs.load(Ordering::SeqCst) == 3
    })
    .await;
    let deferred = app
        .send_task(
            "locks.short_wait",
            vec![json!("go")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    let stats = worker.handle.stats_ref();
    wait_for("the wait to run out into a retry", WAIT, || async {
        stats.retried.load(Ordering::SeqCst) >= 1
    })
    .await;
    release.notify_waiters();
    holding.get(WAIT).await.expect("holder");
    deferred.get(WAIT).await.expect("ran after its retry");
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_without_a_lock_store_fails_single_instance_runs_clearly() {
    let t = TestApp::new();
    let runs = Arc::new(AtomicU32::new(0));
    let app = t
        .builder()
        .task(holder(
            "locks.unprotected",
            single(OnConflict::Skip, Duration::from_secs(2)),
            Arc::new(Notify::new()),
            runs.clone(),
        ))
        .build()
        .await
        .expect("app");
    // A worker built without `with_locks`, as on a broker with no lock store.
    let worker = celeriac::worker::Worker::new(
        app.worker_config(),
        app.registry().clone(),
        app.broker().clone(),
        app.backend().cloned(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let result = app
        .send_task(
            "locks.unprotected",
            vec![json!("go")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    match result.get(WAIT).await {
        Err(Error::TaskFailed { exception, .. }) => {
            assert_eq!(exception.exc_type, "LockUnavailable");
            assert!(
                exception.message().contains("locks need a supported store"),
                "{}",
                exception.message()
            );
        }
        other => panic!("expected LockUnavailable, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "never run without its lock");
    let _ = stop.send(());
    running.await.expect("worker");
}

// --- A worker killed while it holds a single-instance lock -------------------------

const CHILD_DB: &str = "CELERIAC_TEST_LOCKS_CHILD_DB";
const CHILD_MARK: &str = "CELERIAC_TEST_LOCKS_CHILD_MARK";
const CHILD_RESULTS: &str = "CELERIAC_TEST_LOCKS_CHILD_RESULTS";
const KILL_LEASE: Duration = Duration::from_secs(1);

/// `locks.sleeper`: single-instance with a 1 s lease; waits for another run for up to
/// 20 s; writes its fencing number to `mark` (if set) and sleeps `args[0]` ms.
fn sleeper(mark: Option<String>) -> impl Task {
    let opts = single(
        OnConflict::Wait {
            up_to: Duration::from_secs(20),
            then_retry_after: Duration::from_millis(100),
        },
        KILL_LEASE,
    );
    task(
        "locks.sleeper",
        opts,
        move |ctx: TaskContext, args: Vec<Value>, _k| {
            let mark = mark.clone();
            async move {
                let fencing = ctx.lock_fencing().unwrap_or(0);
                if let Some(mark) = &mark {
                    std::fs::write(mark, fencing.to_string())?;
                }
                let ms = args.first().and_then(Value::as_u64).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!(fencing))
            }
        },
    )
}

/// The worker process body (only when re-executed by the parent test).
#[tokio::test]
async fn child_worker() {
    let (Ok(url), Ok(mark)) = (std::env::var(CHILD_DB), std::env::var(CHILD_MARK)) else {
        return;
    };
    let app = App::builder("lockchild")
        .without_environment()
        .broker(url)
        .configure(|s| s.result_backend = std::env::var(CHILD_RESULTS).unwrap_or_default())
        .task(sleeper(Some(mark)))
        .build()
        .await
        .expect("child app");
    app.worker(app.worker_config())
        .run_until(celeriac::cli::shutdown_signal())
        .await;
}

#[tokio::test]
async fn a_killed_workers_lock_lapses_within_the_lease_and_the_next_run_proceeds() {
    let t = TestApp::new();
    let url = t.url.clone();
    killed_worker_case(&t, &url, "").await;
}

#[tokio::test]
async fn a_killed_workers_lock_lapses_within_the_lease_on_the_redis_broker() {
    let Some(redis) = RedisHarness::connect_or_skip("killed_worker_on_redis") else {
        return;
    };
    let t = TestApp::new();
    killed_worker_case(&t, redis.url(), redis.url()).await;
}

/// SIGKILLs a worker process inside a single-instance run on broker `url` (results
/// in `results`, empty for the broker's file); the next run must start within the
/// lease, with a larger fencing number.
async fn killed_worker_case(t: &TestApp, url: &str, results: &str) {
    let mark = t.dir.path().join("started.txt");
    let next_mark = t.dir.path().join("next-started.txt");
    let results_url = results.to_string();
    let app = t
        .builder()
        .broker(url)
        .configure(move |s| s.result_backend = results_url)
        .task(sleeper(Some(next_mark.display().to_string())))
        .build()
        .await
        .expect("app");
    let stuck = app
        .send_task(
            "locks.sleeper",
            vec![json!(600_000)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, url)
        .env(CHILD_RESULTS, results)
        .env(CHILD_MARK, &mark)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker process");
    wait_for(
        "the child to start the task",
        Duration::from_secs(60),
        || async { mark.exists() },
    )
    .await;
    let locks = app.locks().expect("lock store").clone();
    let held = locks.list().await.expect("list");
    assert_eq!(held.len(), 1, "the child holds the lock: {held:?}");
    assert!(held[0].owner.contains(stuck.id()), "{held:?}");
    let child_fencing: u64 = std::fs::read_to_string(&mark)
        .expect("mark")
        .trim()
        .parse()
        .expect("fencing");

    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let killed_at = Instant::now();

    // The next run, on another worker, waits for the lock: no script, no manual step.
    let worker = RunningWorker::start_default(&app);
    let next = app
        .send_task(
            "locks.sleeper",
            vec![json!(0)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    wait_for("the next run to start", WAIT, || async {
        next_mark.exists()
    })
    .await;
    let started_after = killed_at.elapsed();
    let fencing = next.get(WAIT).await.expect("the next run proceeds");
    eprintln!("the next run started {started_after:?} after the SIGKILL (lease {KILL_LEASE:?})");
    // Within the lease, plus a worker start, a fetch and one wait poll (<= 250 ms).
    assert!(
        started_after < KILL_LEASE + Duration::from_millis(1500),
        "the dead worker's lock lapsed within its lease: the next run started {started_after:?} after the kill"
    );
    assert!(
        fencing.as_u64() > Some(child_fencing),
        "the next holder's fencing number ({fencing}) is larger than the dead one's ({child_fencing})"
    );
    worker.stop().await;
}

// --- Four worker processes, one single-instance task ----------------------------------

const FLEET_DB: &str = "CELERIAC_TEST_LOCKS_FLEET_DB";
const FLEET_RECORD: &str = "CELERIAC_TEST_LOCKS_FLEET_RECORD";
const FLEET_LOCKS: &str = "CELERIAC_TEST_LOCKS_FLEET_LOCKS";
const FLEET_CALLS: u64 = 200;

fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// `locks.fleet`: single-instance, retried 10 ms after a conflict; takes 50 ms and
/// appends `n start_us end_us pid` to `record`.
fn fleet_task(record: String) -> impl Task {
    let opts = single(
        OnConflict::Retry {
            countdown: Duration::from_millis(10),
        },
        Duration::from_secs(2),
    );
    task("locks.fleet", opts, move |_ctx, args: Vec<Value>, _k| {
        let record = record.clone();
        async move {
            let start = unix_micros();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = args.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
            let line = format!("{n} {start} {} {}\n", unix_micros(), std::process::id());
            // One O_APPEND write per line: lines of the processes never interleave.
            use std::io::Write as _;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&record)?
                .write_all(line.as_bytes())?;
            Ok(json!(n))
        }
    })
}

/// A fleet worker process (only when re-executed by the parent test).
#[tokio::test]
async fn child_fleet_worker() {
    let (Ok(url), Ok(record)) = (std::env::var(FLEET_DB), std::env::var(FLEET_RECORD)) else {
        return;
    };
    let app = App::builder("fleet")
        .without_environment()
        .broker(url)
        .configure(|s| {
            s.worker_concurrency = 2;
            s.worker_hostname = format!("fleet-{}@test", std::process::id());
            s.lock_store = std::env::var(FLEET_LOCKS).unwrap_or_default();
        })
        .task(fleet_task(record))
        .build()
        .await
        .expect("fleet app");
    app.worker(app.worker_config())
        .run_until(celeriac::cli::shutdown_signal())
        .await;
}

#[tokio::test]
async fn four_worker_processes_never_overlap_a_single_instance_task() {
    let t = TestApp::new();
    let url = t.url.clone();
    fleet_case(&t, &url).await;
}

#[tokio::test]
async fn four_worker_processes_never_overlap_a_single_instance_task_on_redis() {
    let Some(redis) = RedisHarness::connect_or_skip("fleet_on_redis") else {
        return;
    };
    let t = TestApp::new();
    fleet_case(&t, redis.url()).await;
}

#[tokio::test]
async fn four_worker_processes_never_overlap_with_postgres_locks() {
    let Some(pg) = PostgresHarness::connect_or_skip("fleet_with_postgres_locks") else {
        return;
    };
    let t = TestApp::new();
    let url = t.url.clone();
    fleet_case_with_locks(&t, &url, &pg.store_url()).await;
}

/// 200 enqueues of a 50 ms single-instance task, run by 4 worker processes on broker
/// `url`: every call runs once, and no two runs overlap.
async fn fleet_case(t: &TestApp, url: &str) {
    fleet_case_with_locks(t, url, "").await;
}

/// [`fleet_case`] with the locks in `locks` (a `lock_store` URL; empty for the
/// broker's).
async fn fleet_case_with_locks(t: &TestApp, url: &str, locks: &str) {
    let record = t.dir.path().join("fleet.txt");
    let lock_store = locks.to_string();
    let app = t
        .builder()
        .broker(url)
        .configure(move |s| s.lock_store = lock_store)
        .task(fleet_task(record.display().to_string()))
        .build()
        .await
        .expect("app");
    let store = if locks.is_empty() { url } else { locks };
    let scheme = store.split("://").next().unwrap_or_default();
    let described = app.locks().expect("lock store").describe();
    assert!(described.starts_with(scheme), "{described} is {store}");
    let calls: Vec<celeriac::TaskCall> = (0..FLEET_CALLS)
        .map(|n| celeriac::TaskCall::new("locks.fleet", vec![json!(n)]))
        .collect();
    app.send_batch(calls).await.expect("sent");
    let mut children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "child_fleet_worker",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(FLEET_DB, url)
                .env(FLEET_RECORD, &record)
                .env(FLEET_LOCKS, locks)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn worker process")
        })
        .collect();
    let lines = || std::fs::read_to_string(&record).unwrap_or_default();
    wait_for("every call to run", Duration::from_secs(120), || async {
        lines().lines().count() as u64 >= FLEET_CALLS
    })
    .await;
    for child in &children {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for child in &mut children {
        let _ = child.wait();
    }
    let mut runs: Vec<(u64, u128, u128, u32)> = lines()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (
                f[0].parse().expect("n"),
                f[1].parse().expect("start"),
                f[2].parse().expect("end"),
                f[3].parse().expect("pid"),
            )
        })
        .collect();
    runs.sort_by_key(|r| r.1);
    let mut seen: Vec<u64> = runs.iter().map(|r| r.0).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len() as u64, FLEET_CALLS, "every call ran");
    assert_eq!(runs.len() as u64, FLEET_CALLS, "and ran once");
    for pair in runs.windows(2) {
        assert!(
            pair[0].2 <= pair[1].1,
            "call {} (pid {}) and call {} (pid {}) overlap",
            pair[0].0,
            pair[0].3,
            pair[1].0,
            pair[1].3
        );
    }
    let mut pids: Vec<u32> = runs.iter().map(|r| r.3).collect();
    pids.sort_unstable();
    pids.dedup();
    let span = (runs[runs.len() - 1].2 - runs[0].1) as f64 / 1e6;
    eprintln!(
        "fleet: {FLEET_CALLS} runs of 50 ms on {} processes in {span:.1} s, no overlap",
        pids.len()
    );
    assert!(pids.len() >= 2, "runs were spread over processes: {pids:?}");
}

// --- Unique enqueue -------------------------------------------------------------------

#[tokio::test]
async fn unique_enqueue_refuses_a_duplicate_until_the_first_finished() {
    let t = TestApp::new();
    let release = Arc::new(Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let app = t
        .builder()
        .configure(|s| s.worker_concurrency = 4)
        .task(holder(
            "locks.report",
            TaskOptions::default(),
            release.clone(),
            runs.clone(),
        ))
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);
    let unique = || SendOptions::new().unique(Unique::new(Duration::from_secs(60)));
    let first = app
        .send_task("locks.report", vec![json!("hold")], Map::new(), unique())
        .await
        .expect("sent");
    // Refused while queued or running.
    let key = match app
        .send_task("locks.report", vec![json!("hold")], Map::new(), unique())
        .await
    {
        Err(Error::Duplicate { key, task }) => {
            assert_eq!(task, "locks.report");
            key
        }
        other => panic!("expected Duplicate, got {other:?}"),
    };
    assert!(key.starts_with("unique:locks.report:"), "{key}");
    let message = Error::Duplicate {
        key: key.clone(),
        task: "locks.report".into(),
    }
    .to_string();
    assert!(message.contains("already queued or running"), "{message}");
    let listed = app.locks().expect("locks").list().await.expect("list");
    assert!(
        listed
            .iter()
            .any(|l| l.key == key && l.owner.contains(first.id())),
        "{listed:?}"
    );
    // Other arguments are another task; without `unique` nothing is checked.
    let other_args = app
        .send_task("locks.report", vec![json!("go")], Map::new(), unique())
        .await
        .expect("different arguments are not a duplicate");
    other_args.get(WAIT).await.expect("ran");
    app.send_task(
        "locks.report",
        vec![json!("go")],
        Map::new(),
        SendOptions::new(),
    )
    .await
    .expect("a plain send is never refused")
    .get(WAIT)
    .await
    .expect("ran");

    release.notify_waiters();
    first.get(WAIT).await.expect("first finished");
    // Released by the worker before it stored the result: sendable again at once.
    let again = app
        .send_task("locks.report", vec![json!("hold")], Map::new(), unique())
        .await
        .expect("the first one finished, so the same call is accepted again");
    release.notify_waiters();
    wait_for("the repeat to run", WAIT, || async {
        release.notify_waiters();
        matches!(again.meta().await, Ok(meta) if meta.status == TaskState::Success)
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn an_explicit_unique_key_lapses_at_its_ttl_and_survives_retries() {
    let t = TestApp::new();
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let flaky = task(
        "locks.flaky",
        options(|o| o.max_retries = Some(1)),
        move |ctx: TaskContext, _a, _k| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Err::<Value, _>(ctx.retry_after(Duration::from_millis(300)))
            }
        },
    );
    let app = t.builder().task(flaky).build().await.expect("app");

    // Nobody runs it: the key lapses after its TTL.
    let short =
        || SendOptions::new().unique(Unique::new(Duration::from_millis(300)).key("nightly-report"));
    app.send_task("locks.flaky", vec![], Map::new(), short())
        .await
        .expect("sent");
    assert!(matches!(
        app.send_task("locks.flaky", vec![json!(1)], Map::new(), short()).await,
        Err(Error::Duplicate { key, .. }) if key == "unique:nightly-report"
    ));
    let started = Instant::now();
    wait_for("the key to lapse", WAIT, || async {
        app.locks()
            .expect("locks")
            .list()
            .await
            .expect("list")
            .is_empty()
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    app.broker().purge("celery").await.expect("purge");

    // Held through a retry, released at the final failure.
    let worker = RunningWorker::start_default(&app);
    let long = || SendOptions::new().unique(Unique::new(Duration::from_secs(60)).key("flaky"));
    let r = app
        .send_task("locks.flaky", vec![], Map::new(), long())
        .await
        .expect("sent");
    wait_for("the first attempt", WAIT, || async {
        attempts.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(
        matches!(
            app.send_task("locks.flaky", vec![], Map::new(), long())
                .await,
            Err(Error::Duplicate { .. })
        ),
        "still unique while the retry is pending"
    );
    assert!(matches!(r.get(WAIT).await, Err(Error::TaskFailed { .. })));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    app.send_task("locks.flaky", vec![], Map::new(), long())
        .await
        .expect("accepted again after the final failure");
    worker.stop().await;
}

// --- Idempotent redelivery --------------------------------------------------------------

#[tokio::test]
async fn a_redelivered_message_of_a_succeeded_task_is_not_run_again() {
    let t = TestApp::new();
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let once = task(
        "locks.once",
        options(|o| {
            o.skip_if_succeeded = true;
            o.acks_late = Some(true);
        }),
        move |_ctx, _a, _k| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(json!("done"))
            }
        },
    );
    let app = t.builder().task(once).build().await.expect("app");
    // As if an earlier delivery succeeded but its ack was lost.
    let backend = app.backend().expect("backend");
    backend
        .store(
            &TaskMeta::new("already-done", TaskState::Success, json!("earlier")),
            None,
        )
        .await
        .expect("store");
    let worker = RunningWorker::start_default(&app);
    app.send_task(
        "locks.once",
        vec![],
        Map::new(),
        SendOptions::new().task_id("already-done"),
    )
    .await
    .expect("sent");
    let fresh = app
        .send_task("locks.once", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    fresh.get(WAIT).await.expect("a new id runs");
    wait_for("the redelivered message to be acked", WAIT, || async {
        let stats = app
            .broker()
            .queue_stats(&["celery".into()])
            .await
            .expect("stats");
        stats[0].ready + stats[0].held == 0
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "only the new id ran");
    assert_eq!(
        backend
            .get("already-done")
            .await
            .expect("get")
            .map(|m| m.result),
        Some(json!("earlier"))
    );
    worker.stop().await;
}

// --- The `locks` commands -----------------------------------------------------------------

const CLI_DB: &str = "CELERIAC_TEST_LOCKS_CLI_DB";
const CLI_ARGS: &str = "CELERIAC_TEST_LOCKS_CLI_ARGS";

/// The CLI process body (only when re-executed by the parent test): runs
/// `celeriac <args>` against the app on `CLI_DB`; exits 1 on error.
#[tokio::test]
async fn child_cli() {
    let (Ok(url), Ok(args)) = (std::env::var(CLI_DB), std::env::var(CLI_ARGS)) else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).expect("args");
    let app = App::builder("cli")
        .without_environment()
        .broker(url)
        .build()
        .await
        .expect("cli app");
    let argv = std::iter::once("celeriac".to_string()).chain(args);
    if let Err(error) = celeriac::cli::run_with_args(app, argv).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// Runs the CLI in a child process; returns (success, stdout, stderr).
fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_cli", "--nocapture", "--test-threads=1"])
        .env(CLI_DB, url)
        .env(CLI_ARGS, serde_json::to_string(args).expect("json"))
        .env("RUST_LOG", "error")
        .output()
        .expect("run the CLI");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn locks_list_and_release_through_the_cli() {
    let t = TestApp::new();
    let app = t.builder().build().await.expect("app");
    let locks = app.locks().expect("lock store");
    let (ok, out, err) = cli(&t.url, &["locks", "list"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("no locks held"), "{out}");

    let lease = locks
        .acquire(&AcquireParams::new(
            "single:billing.run",
            Duration::from_secs(60),
            "w1@host pid=1 task=t-1",
        ))
        .await
        .expect("acquire")
        .expect("free");
    let (ok, out, err) = cli(&t.url, &["locks", "list"]);
    assert!(ok, "{out}\n{err}");
    let line = out
        .lines()
        .find(|l| l.contains("single:billing.run"))
        .unwrap_or_else(|| panic!("the lock is listed: {out}"));
    assert!(line.contains("w1@host pid=1 task=t-1"), "{line}");
    assert!(line.contains(&lease.fencing.to_string()), "{line}");
    let (ok, out, _) = cli(&t.url, &["locks", "list", "--json", "--prefix", "single:"]);
    assert!(ok);
    let start = out.find('[').expect("json array");
    let end = out.rfind(']').expect("json array end");
    let listed: Value = serde_json::from_str(&out[start..=end]).expect("json");
    assert_eq!(listed[0]["key"], json!("single:billing.run"));
    assert_eq!(listed[0]["fencing"], json!(lease.fencing));

    let (ok, out, err) = cli(&t.url, &["locks", "release", "single:billing.run"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("released single:billing.run"), "{out}");
    assert!(locks.list().await.expect("list").is_empty());
    assert!(
        !locks
            .renew(&lease, Duration::from_secs(60))
            .await
            .expect("renew"),
        "the former holder cannot renew a force-released lock"
    );
    let (ok, _, err) = cli(&t.url, &["locks", "release", "single:billing.run"]);
    assert!(!ok, "releasing a lock that is not held fails");
    assert!(err.contains("no live lock"), "{err}");
}

// --- Redis and PostgreSQL lock stores -------------------------------------------------

#[tokio::test]
async fn unique_enqueue_and_the_locks_commands_work_on_the_redis_broker() {
    let Some(redis) = RedisHarness::connect_or_skip("unique_on_redis") else {
        return;
    };
    let t = TestApp::new();
    let release = Arc::new(Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let app = t
        .builder()
        .broker(redis.url())
        .backend(redis.url())
        .configure(|s| s.worker_concurrency = 4)
        .task(holder(
            "locks.report",
            TaskOptions::default(),
            release.clone(),
            runs.clone(),
        ))
        .build()
        .await
        .expect("app");
    let locks = app
        .locks()
        .expect("a Redis broker has a lock store")
        .clone();
    assert!(
        locks.describe().starts_with("redis://"),
        "{}",
        locks.describe()
    );
    let worker = RunningWorker::start_default(&app);
    let unique = || SendOptions::new().unique(Unique::new(Duration::from_secs(60)));
    let first = app
        .send_task("locks.report", vec![json!("hold")], Map::new(), unique())
        .await
        .expect("sent");
    let key = match app
        .send_task("locks.report", vec![json!("hold")], Map::new(), unique())
        .await
    {
        Err(Error::Duplicate { key, .. }) => key,
        other => panic!("expected Duplicate, got {other:?}"),
    };
    // The lock is in the broker's Redis, under its key prefix, for the CLI too.
    let (ok, out, err) = cli(redis.url(), &["locks", "list", "--prefix", "unique:"]);
    assert!(ok, "{out}\n{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&key))
        .unwrap_or_else(|| panic!("{key} is listed: {out}"));
    assert!(line.contains(first.id()), "{line}");
    release.notify_waiters();
    wait_for("the first run to finish", WAIT, || async {
        release.notify_waiters();
        first.get(Duration::from_millis(50)).await.is_ok()
    })
    .await;
    wait_for("the worker to release the unique lock", WAIT, || async {
        locks.list().await.expect("list").is_empty()
    })
    .await;
    let again = app
        .send_task("locks.report", vec![json!("go")], Map::new(), unique())
        .await
        .expect("sent");
    again.get(WAIT).await.expect("ran");
    let repeat = app
        .send_task("locks.report", vec![json!("hold")], Map::new(), unique())
        .await
        .expect("the first one finished, so the same call is accepted again");
    // An operator's release through the CLI frees the key while the task still runs.
    wait_for("the repeat to hold its lock", WAIT, || async {
        runs.load(Ordering::SeqCst) >= 3
    })
    .await;
    let (ok, out, err) = cli(redis.url(), &["locks", "release", &key]);
    assert!(ok, "{out}\n{err}");
    let third = app
        .send_task("locks.report", vec![json!("go")], Map::new(), unique())
        .await
        .expect("sent");
    third.get(WAIT).await.expect("ran");
    let third_again = app
        .send_task("locks.report", vec![json!("hold")], Map::new(), unique())
        .await
        .expect("released by the operator: accepted while the repeat still runs");
    wait_for("the held runs to finish", WAIT, || async {
        release.notify_waiters();
        repeat.get(Duration::from_millis(50)).await.is_ok()
            && third_again.get(Duration::from_millis(50)).await.is_ok()
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn the_lock_store_setting_keeps_a_sqlite_brokers_locks_in_postgres() {
    let Some(pg) = PostgresHarness::connect_or_skip("lock_store_in_postgres") else {
        return;
    };
    let t = TestApp::new();
    let release = Arc::new(Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let store = pg.store_url();
    let app = t
        .builder()
        .configure(move |s| s.lock_store = store)
        .task(holder(
            "locks.pg",
            single(OnConflict::Skip, Duration::from_secs(1)),
            release.clone(),
            runs.clone(),
        ))
        .build()
        .await
        .expect("app");
    let locks = app.locks().expect("lock store").clone();
    assert!(
        locks.describe().starts_with("postgres://"),
        "{}",
        locks.describe()
    );
    let worker = RunningWorker::start_default(&app);
    let first = app
        .send_task(
            "locks.pg",
            vec![json!("hold")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    let direct = PostgresLockManager::open_url(&pg.store_url())
        .await
        .expect("open the tables directly");
    wait_for("the run's lock to be in PostgreSQL", WAIT, || async {
        direct
            .list()
            .await
            .expect("list")
            .iter()
            .any(|l| l.key == "single:locks.pg" && l.owner.contains(first.id()))
    })
    .await;
    let skipped = app
        .send_task(
            "locks.pg",
            vec![json!("go")],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    match skipped.get(WAIT).await {
        Err(Error::Revoked { reason, .. }) => assert_eq!(reason, "locked"),
        other => panic!("expected REVOKED (locked), got {other:?}"),
    }
    // The broker's own SQLite file has no lock; `--store` shows PostgreSQL's.
    let (ok, out, err) = cli(&t.url, &["locks", "list"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("no locks held"), "{out}");
    let (ok, out, err) = cli(&t.url, &["locks", "--store", &pg.store_url(), "list"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("single:locks.pg"), "{out}");
    // Renewed past its 1 s lease while the run lasts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(direct.list().await.expect("list").len(), 1, "still held");
    wait_for("the first run to finish", WAIT, || async {
        release.notify_waiters();
        first.get(Duration::from_millis(50)).await.is_ok()
    })
    .await;
    assert!(direct.list().await.expect("list").is_empty(), "released");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the skipped call never ran");
    worker.stop().await;
}

// --- `#[task]` options ---------------------------------------------------------------

#[celeriac::task(
    name = "locks.charge",
    single_instance,
    lock_key = "customer_id",
    on_conflict = "retry",
    lock_retry_delay = "50ms",
    lock_lease = "2s"
)]
async fn charge(ctx: &TaskContext, customer_id: u64, cents: u64) -> celeriac::TaskResult<String> {
    Ok(format!(
        "{cents} from {customer_id} under {}",
        ctx.lock_key().unwrap_or("no lock")
    ))
}

#[celeriac::task(name = "locks.nightly", single_instance)]
async fn nightly() -> celeriac::TaskResult<()> {
    Ok(())
}

#[celeriac::task(name = "locks.waits", single_instance, on_conflict = "wait")]
fn waits() -> celeriac::TaskResult<()> {
    Ok(())
}

#[tokio::test]
async fn task_attribute_options_reach_the_worker() {
    assert_eq!(
        nightly.options().single_instance,
        Some(SingleInstance::default())
    );
    assert_eq!(
        waits
            .options()
            .single_instance
            .as_ref()
            .map(|s| s.on_conflict),
        Some(OnConflict::Wait {
            up_to: Duration::from_secs(30),
            then_retry_after: SingleInstance::DEFAULT_RETRY_AFTER,
        })
    );
    let expected = SingleInstance::new()
        .key(LockKey::Args(vec![KeyArg::new("customer_id", Some(0))]))
        .on_conflict(OnConflict::Retry {
            countdown: Duration::from_millis(50),
        })
        .lease(Duration::from_secs(2));
    assert_eq!(charge.options().single_instance, Some(expected));

    let t = TestApp::new();
    let app = t.builder().task(charge).build().await.expect("app");
    let worker = RunningWorker::start_default(&app);
    let r = charge::delay(&app, 7, 250).await.expect("sent");
    assert_eq!(
        r.get(WAIT).await.expect("ran"),
        "250 from 7 under single:locks.charge:customer_id=7"
    );
    let unique = || SendOptions::new().unique(Unique::new(Duration::from_secs(60)));
    let queued = charge::apply_async(&app, 8, 1, unique().countdown(Duration::from_secs(60)))
        .await
        .expect("sent");
    assert!(matches!(
        charge::apply_async(&app, 8, 1, unique()).await,
        Err(Error::Duplicate { .. })
    ));
    charge::apply_async(&app, 8, 2, unique())
        .await
        .expect("other arguments")
        .get(WAIT)
        .await
        .expect("ran");
    let _ = queued;
    worker.stop().await;
}
