//! Redis restarts under a running worker and a publisher: a private `redis-server`
//! (its own port and temp dir, `--appendonly yes --appendfsync always`) is stopped
//! with SIGTERM and started again on the same port in the middle of the stream.
//! Every task whose publish returned Ok runs exactly once, the same worker carries
//! on by itself, and result waiters subscribed before the restart still complete.
//!
//! Skipped, with the reason printed, when `redis-server` is not on PATH (fails
//! instead with `CELERIAC_REQUIRE_SERVICES=1`). Never touches the shared Redis.

mod private_redis;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use celeriac::core::{Map, Queue, SendOptions, TaskOptions, Value};
use celeriac::App;
use private_redis::PrivateRedis;
use serde_json::json;
use std::sync::Mutex;
use support::{task, wait_for, RunningWorker};

const TASKS: u64 = 300;
/// The server restarts after this many tasks were published.
const RESTART_AT: u64 = 100;

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

    // Waiters subscribed before the restart, for tasks published after it.
    let late_ids: Vec<String> = (0..5)
        .map(|i| format!("restart-late-{i}-{}", std::process::id()))
        .collect();
    let waiters: Vec<_> = late_ids
        .iter()
        .map(|id| {
            let result = app.result::<Value>(id.clone());
            tokio::spawn(async move { result.get(Duration::from_secs(60)).await })
        })
        .collect();

    let mut published = Vec::new();
    let mut failed = Vec::new();
    let mut restart_took = Duration::ZERO;
    for n in 0..TASKS {
        if n == RESTART_AT {
            wait_for(
                "some tasks to run before the restart",
                Duration::from_secs(30),
                || async { !runs.lock().expect("lock").is_empty() },
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
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.start_again();
            restart_took = started.elapsed();
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
        "redis restart: {TASKS} tasks published, {RESTART_AT} before the restart ({restart_took:?} down), all ran once"
    );
}
