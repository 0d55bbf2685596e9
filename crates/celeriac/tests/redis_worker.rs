//! A worker on Redis with a wide window (two fetches in flight per queue, see
//! `Broker::concurrent_fetches`) runs every message exactly once and leaves nothing
//! held. Skipped with a printed reason when Redis does not answer (failed instead
//! with `CELERIAC_REQUIRE_SERVICES=1`).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac::core::{Queue, TaskOptions, Value};
use celeriac::{App, TaskCall};
use serde_json::json;
use support::{task, wait_for, RunningWorker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_window_on_redis_runs_every_message_once() {
    let Some(redis) = celeriac_redis::testing::redis_url_or_skip(
        "a_wide_window_on_redis_runs_every_message_once",
    ) else {
        return;
    };
    // A fresh queue of its own; purged at the end (the database is never flushed).
    let queue = format!("wide-window-{}", uuid::Uuid::new_v4().simple());
    let runs: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let recorded = runs.clone();
    let app = App::builder("test")
        .without_environment()
        .broker(redis)
        // Window 2 × 128 = 256 messages: room for two fetches of 64 in flight.
        .queue(
            Queue::new(queue.clone())
                .concurrency(2)
                .prefetch_multiplier(128),
        )
        .task(task(
            "tests.record",
            TaskOptions::default(),
            move |_ctx, args, _kw| {
                let recorded = recorded.clone();
                async move {
                    let n = args.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
                    *recorded.lock().expect("lock").entry(n).or_default() += 1;
                    Ok(Value::Null)
                }
            },
        ))
        .build()
        .await
        .expect("app");
    assert_eq!(app.broker().concurrent_fetches(), 2);
    const TASKS: u64 = 5_000;
    let calls = (0..TASKS)
        .map(|n| TaskCall::new("tests.record", vec![json!(n)]))
        .collect();
    app.send_batch(calls).await.expect("sent");
    let worker = RunningWorker::start_default(&app);
    wait_for("every task ran", Duration::from_secs(60), || async {
        runs.lock().expect("lock").len() as u64 == TASKS
    })
    .await;
    // Nothing is left held or waiting once the acks are in.
    wait_for("the queue is empty", Duration::from_secs(10), || async {
        let stats = app
            .broker()
            .queue_stats(std::slice::from_ref(&queue))
            .await
            .expect("stats");
        stats.iter().all(|s| s.ready == 0 && s.held == 0)
    })
    .await;
    worker.stop().await;
    app.broker().purge(&queue).await.expect("purge");
    let runs = runs.lock().expect("lock");
    let twice: Vec<_> = runs.iter().filter(|(_, &count)| count != 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    assert!((0..TASKS).all(|n| runs.contains_key(&n)));
}
