//! Redis restarts under a running worker and a publisher: a private `redis-server`
//! (its own port and temp dir, `--appendonly yes --appendfsync always`) is stopped
//! with SIGTERM and started again on the same port in the middle of the stream.
//! Every task whose publish returned Ok runs exactly once, the same worker carries
//! on by itself, result waiters resubscribe, and a waiter whose notification was
//! missed (stored before its pub/sub connection was back) still completes.
//!
//! Skipped, with the reason printed, when `redis-server` is not on PATH (fails
//! instead with `CELERIAC_REQUIRE_SERVICES=1`). Never touches the shared Redis.

mod private_redis;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use celeriac::core::{Map, Queue, SendOptions, TaskMeta, TaskOptions, TaskState, Value};
use celeriac::App;
use private_redis::PrivateRedis;
use serde_json::json;
use std::sync::Mutex;
use support::{task, wait_for, RunningWorker};

const TASKS: u64 = 300;
/// The server restarts after this many tasks were published, down for the paired
/// time (the second outage outlasts the client's own reconnect attempts).
const RESTARTS: [(u64, Duration); 2] = [
    (100, Duration::from_millis(500)),
    (200, Duration::from_secs(8)),
];

fn app(url: &str, runs: Arc<Mutex<BTreeMap<u64, u32>>>) -> celeriac::AppBuilder {
    let record = task(
        "restart.record",
        {
            let mut o = TaskOptions::default();
            o.acks_late = Some(true);
            o
        },
        move |_ctx, args: Vec<Value>, _kw| {
            let runs = Arc::clone(&runs);
            async move {
                let n = args.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
                // Long enough for a backlog: tasks run and finish during the outages.
                tokio::time::sleep(Duration::from_millis(40)).await;
                *runs.lock().expect("lock").entry(n).or_insert(0) += 1;
                Ok(json!(n))
            }
        },
    );
    App::builder("restart")
        .without_environment()
        .broker(url.to_string())
        .backend(url.to_string())
        .configure(|s| {
            // Longer than the outage: no lease lapses while Redis is away.
            s.broker_transport_options.lease = 15.0;
            s.worker_shutdown_timeout = 5.0;
        })
        .queue(Queue::new("celery").concurrency(4).prefetch_multiplier(2))
        .task(record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_no_published_task_and_the_worker_carries_on() {
    let Some(mut server) = PrivateRedis::start_or_skip(
        "redis_restart_loses_no_published_task_and_the_worker_carries_on",
    ) else {
        return;
    };
    let url = server.url(0);
    let runs = Arc::new(Mutex::new(BTreeMap::new()));
    let app = app(&url, Arc::clone(&runs)).build().await.expect("app");
    let worker = RunningWorker::start_default(&app);

    // Waiters subscribed before the restarts, for the last tasks published.
    let late_ids: Vec<String> = (0..5)
        .map(|i| format!("restart-late-{i}-{}", std::process::id()))
        .collect();
    let waiters: Vec<_> = late_ids
        .iter()
        .map(|id| {
            let result = app.result::<Value>(id.clone());
            tokio::spawn(async move { result.get(Duration::from_secs(90)).await })
        })
        .collect();
    // A waiter whose result is stored right after the first restart, before its
    // pub/sub connection is back: the notification is missed, the read after
    // resubscribing finds the result.
    let missed_id = format!("restart-missed-{}", std::process::id());
    let mut missed = {
        let result = app.result::<Value>(missed_id.clone());
        tokio::spawn(async move {
            let value = result.get(Duration::from_secs(60)).await;
            (value, std::time::Instant::now())
        })
    };
    let writer = celeriac::backend::connect(&url).await.expect("writer");
    wait_for(
        "the waiters to subscribe",
        Duration::from_secs(10),
        || async {
            late_ids
                .iter()
                .chain([&missed_id])
                .all(|id| subscribers(server.port, id) == 1)
        },
    )
    .await;

    let mut published = Vec::new();
    let mut failed = Vec::new();
    let mut outages = Vec::new();
    for n in 0..TASKS {
        if let Some((_, down)) = RESTARTS.iter().find(|(at, _)| *at == n) {
            wait_for(
                "tasks to run before the restart",
                Duration::from_secs(30),
                || async { runs.lock().expect("lock").len() as u64 >= n / 2 },
            )
            .await;
            let started = std::time::Instant::now();
            server.stop();
            // A publish while Redis is down: retried until it is back.
            let publisher = {
                let app = app.clone();
                tokio::spawn(async move {
                    app.send_task(
                        "restart.record",
                        vec![json!(n)],
                        Map::new(),
                        SendOptions::new(),
                    )
                    .await
                })
            };
            tokio::time::sleep(*down).await;
            server.start_again();
            outages.push(started.elapsed());
            if n == RESTARTS[0].0 {
                let meta = TaskMeta::new(missed_id.clone(), TaskState::Success, json!("missed"));
                let mut attempts = 0;
                while let Err(error) = writer.store(&meta, None).await {
                    attempts += 1;
                    assert!(attempts < 50, "storing after the restart: {error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let stored_at = std::time::Instant::now();
                let (value, woke_at) = tokio::time::timeout(Duration::from_secs(30), &mut missed)
                    .await
                    .expect("the waiter of a missed notification completes")
                    .expect("join");
                assert_eq!(value.expect("result"), json!("missed"));
                let waited = woke_at.saturating_duration_since(stored_at);
                assert!(
                    waited < Duration::from_secs(3),
                    "woke {waited:?} after the store"
                );
                // The other waiters are subscribed again, on the new server.
                wait_for(
                    "the waiters to resubscribe",
                    Duration::from_secs(15),
                    || async { late_ids.iter().all(|id| subscribers(server.port, id) == 1) },
                )
                .await;
            }
            match publisher.await.expect("join") {
                Ok(_) => published.push(n),
                Err(error) => failed.push((n, error.to_string())),
            }
            continue;
        }
        let mut options = SendOptions::new();
        if n >= TASKS - late_ids.len() as u64 {
            options = options.task_id(late_ids[(TASKS - 1 - n) as usize].clone());
        }
        match app
            .send_task("restart.record", vec![json!(n)], Map::new(), options)
            .await
        {
            Ok(_) => published.push(n),
            Err(error) => failed.push((n, error.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(failed.is_empty(), "publishes failed: {failed:?}");

    wait_for(
        "every published task to run",
        Duration::from_secs(60),
        || async {
            let runs = runs.lock().expect("lock");
            published.iter().all(|n| runs.contains_key(n))
        },
    )
    .await;
    for (waiter, id) in waiters.into_iter().zip(&late_ids) {
        let value = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the waiter completes")
            .expect("join")
            .unwrap_or_else(|e| panic!("result of {id}: {e}"));
        assert!(
            value.as_u64().is_some_and(|n| n >= TASKS - 5),
            "{id}: {value}"
        );
    }
    // Late acks settle: nothing ready or held is left.
    wait_for("the queue to drain", Duration::from_secs(30), || async {
        app.broker()
            .queue_stats(&["celery".into()])
            .await
            .is_ok_and(|s| s[0].ready == 0 && s[0].held == 0)
    })
    .await;
    let stats = worker.stop().await;

    let runs = runs.lock().expect("lock").clone();
    let missing: Vec<u64> = published
        .iter()
        .copied()
        .filter(|n| !runs.contains_key(n))
        .collect();
    let twice: Vec<(u64, u32)> = runs
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, c)| (*n, *c))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    assert_eq!(published.len() as u64, TASKS);
    assert_eq!(
        stats.processed, TASKS,
        "one worker ran them all, without a restart"
    );
    eprintln!(
        "redis restart: {TASKS} tasks published across restarts (down {outages:?}), all ran once on one worker"
    );
}

/// How many clients are subscribed to the result channel of `task_id`.
fn subscribers(port: u16, task_id: &str) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "PUBSUB", "NUMSUB"])
        .arg(format!("celery-task-meta-{task_id}"))
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
