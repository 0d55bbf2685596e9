//! Worker behaviour end to end on the embedded SQLite broker and backend.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac::broker::{DeadLetterQuery, Publish};
use celeriac::core::message::CONTENT_TYPE_PICKLE;
use celeriac::core::{
    CancelReason, Map, Queue, RateLimit, SendOptions, Task, TaskContext, TaskError, TaskFuture,
    TaskMessage, TaskOptions, TaskState, Value,
};
use celeriac::Error;
use serde_json::json;
use support::{options, task, wait_for, RunningWorker, TestApp};

const WAIT: Duration = Duration::from_secs(20);

fn add() -> impl Task {
    task(
        "tests.add",
        TaskOptions::default(),
        |_ctx, args, _kw| async move {
            let sum: i64 = args.iter().filter_map(Value::as_i64).sum();
            Ok(json!(sum))
        },
    )
}

#[tokio::test]
async fn runs_a_task_and_stores_its_result() {
    let t = TestApp::new();
    let app = t.builder().task(add()).build().await.expect("app");
    let worker = RunningWorker::start_default(&app);
    let result = app
        .send_task(
            "tests.add",
            vec![json!(2), json!(3)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    assert_eq!(result.get(WAIT).await.expect("result"), json!(5));
    let meta = result.meta().await.expect("meta");
    assert_eq!(meta.status, TaskState::Success);
    assert_eq!(meta.name.as_deref(), Some("tests.add"));
    assert_eq!(meta.queue.as_deref(), Some("celery"));
    let workers = app.broker().workers().await.expect("workers");
    let me = workers
        .iter()
        .find(|w| w.hostname == app.hostname())
        .expect("the worker reported itself");
    assert!(me.is_alive(chrono::Utc::now()) && me.queues == vec!["celery".to_string()]);
    let stats = worker.stop().await;
    assert_eq!((stats.succeeded, stats.failed), (1, 0));
    let workers = app.broker().workers().await.expect("workers");
    let me = workers
        .iter()
        .find(|w| w.hostname == app.hostname())
        .expect("still listed");
    assert!(!me.online, "a clean shutdown marks the worker offline");
    assert_eq!(me.processed, 1);
}

#[tokio::test]
async fn retry_is_a_new_message_with_retries_plus_one() {
    let t = TestApp::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let flaky = task(
        "tests.flaky",
        TaskOptions::default(),
        move |ctx: TaskContext, _a, _k| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .expect("lock")
                    .push((ctx.retries(), ctx.id().to_string()));
                if ctx.retries() < 2 {
                    return Err(ctx.retry_after(Duration::from_millis(50)));
                }
                Ok(json!("finally"))
            }
        },
    );
    let app = t.builder().task(flaky).build().await.expect("app");
    let worker = RunningWorker::start_default(&app);
    let r = app
        .send_task("tests.flaky", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    assert_eq!(r.get(WAIT).await.expect("result"), json!("finally"));
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        seen.iter().all(|(_, id)| id == r.id()),
        "the task id is stable across retries"
    );
    let stats = worker.stop().await;
    assert_eq!(stats.retried, 2);
}

#[tokio::test]
async fn autoretry_for_listed_errors_then_fails_after_max_retries() {
    let t = TestApp::new();
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let opts = options(|o| {
        o.autoretry_for = vec!["Error".into()];
        o.max_retries = Some(2);
        o.retry_backoff = Some(celeriac::core::Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
            jitter: true,
        });
    });
    let failing = task("tests.io", opts, move |_ctx, _a, _k| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Err(std::io::Error::other("disk unavailable").into())
        }
    });
    let app = t.builder().task(failing).build().await.expect("app");
    let worker = RunningWorker::start_default(&app);
    let r = app
        .send_task("tests.io", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    match r.get(WAIT).await {
        Err(Error::TaskFailed { exception, .. }) => {
            assert_eq!(exception.exc_type, "Error");
            assert_eq!(exception.message(), "disk unavailable");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3, "one run plus two retries");
    worker.stop().await;
}

#[tokio::test]
async fn countdown_delays_the_start_and_expired_messages_are_revoked() {
    let t = TestApp::new();
    let started = Arc::new(Mutex::new(None));
    let mark = started.clone();
    let timed = task(
        "tests.timed",
        TaskOptions::default(),
        move |_ctx, _a, _k| {
            let mark = mark.clone();
            async move {
                *mark.lock().expect("lock") = Some(Instant::now());
                Ok(Value::Null)
            }
        },
    );
    let app = t.builder().task(timed).build().await.expect("app");
    let worker = RunningWorker::start_default(&app);
    let sent_at = Instant::now();
    let r = app
        .send_task(
            "tests.timed",
            vec![],
            Map::new(),
            SendOptions::new().countdown(Duration::from_millis(600)),
        )
        .await
        .expect("sent");
    r.get(WAIT).await.expect("ran");
    let start = started.lock().expect("lock").expect("started");
    assert!(
        start - sent_at >= Duration::from_millis(550),
        "started after {:?}",
        start - sent_at
    );

    *started.lock().expect("lock") = None;
    let expired = app
        .send_task(
            "tests.timed",
            vec![],
            Map::new(),
            SendOptions::new().expires_at(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .await
        .expect("sent");
    match expired.get(WAIT).await {
        Err(Error::Revoked { reason, .. }) => assert_eq!(reason, "expired"),
        other => panic!("expected REVOKED, got {other:?}"),
    }
    assert!(
        started.lock().expect("lock").is_none(),
        "an expired task must not run"
    );
    worker.stop().await;
}

#[tokio::test]
async fn soft_time_limit_cancels_and_hard_time_limit_stops() {
    let t = TestApp::new();
    let soft = task(
        "tests.soft",
        options(|o| o.soft_time_limit = Some(Duration::from_millis(100))),
        |ctx: TaskContext, _a, _k| async move {
            ctx.cancelled().await;
            assert_eq!(ctx.cancel_reason(), Some(CancelReason::SoftTimeLimit));
            Err(TaskError::fail(
                "Cleanup",
                "cleaned up after the soft limit",
            ))
        },
    );
    let hard = task(
        "tests.hard",
        options(|o| o.time_limit = Some(Duration::from_millis(200))),
        |_ctx, _a, _k| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Value::Null)
        },
    );
    let app = t
        .builder()
        .task(soft)
        .task(hard)
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);
    let s = app
        .send_task("tests.soft", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    let began = Instant::now();
    let h = app
        .send_task("tests.hard", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    match s.get(WAIT).await {
        Err(Error::TaskFailed { exception, .. }) => {
            assert!(
                exception.message().contains("soft time limit"),
                "{exception}"
            )
        }
        other => panic!("expected failure, got {other:?}"),
    }
    match h.get(WAIT).await {
        Err(Error::TaskFailed { exception, .. }) => {
            assert_eq!(exception.exc_type, "TimeLimitExceeded")
        }
        other => panic!("expected TimeLimitExceeded, got {other:?}"),
    }
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the hard limit stopped the task"
    );
    worker.stop().await;
}

#[tokio::test]
async fn rate_limit_spaces_starts() {
    let t = TestApp::new();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mark = starts.clone();
    let limited = task(
        "tests.limited",
        options(|o| o.rate_limit = RateLimit::parse("20/s").ok()),
        move |_ctx, _a, _k| {
            let mark = mark.clone();
            async move {
                mark.lock().expect("lock").push(Instant::now());
                Ok(Value::Null)
            }
        },
    );
    let app = t.builder().task(limited).build().await.expect("app");
    let worker = RunningWorker::start_default(&app);
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(
            app.send_task("tests.limited", vec![], Map::new(), SendOptions::new())
                .await
                .expect("sent"),
        );
    }
    for r in results {
        r.get(WAIT).await.expect("ran");
    }
    let mut starts = starts.lock().expect("lock").clone();
    starts.sort();
    let span = starts[4] - starts[0];
    assert!(
        span >= Duration::from_millis(190),
        "5 starts at 20/s span {span:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn unknown_task_goes_to_dead_letter_and_records_not_registered() {
    let t = TestApp::new();
    let app = t.builder().task(add()).build().await.expect("app");
    let worker = RunningWorker::start_default(&app);
    let r = app
        .send_task("tests.nope", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    match r.get(WAIT).await {
        Err(Error::TaskFailed { exception, .. }) => {
            assert_eq!(exception.exc_type, "NotRegistered");
            assert_eq!(exception.message(), "tests.nope");
        }
        other => panic!("expected NotRegistered, got {other:?}"),
    }
    let letters = app
        .broker()
        .dead_letters(&DeadLetterQuery::default())
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.contains("not registered"),
        "{}",
        letters[0].reason
    );
    // The worker kept working.
    let ok = app
        .send_task("tests.add", vec![json!(1)], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    assert_eq!(ok.get(WAIT).await.expect("result"), json!(1));
    worker.stop().await;
}

/// A task that checks its arguments before it is acknowledged.
struct Typed;
impl Task for Typed {
    fn name(&self) -> &str {
        "tests.typed"
    }
    fn options(&self) -> &TaskOptions {
        static OPTIONS: std::sync::OnceLock<TaskOptions> = std::sync::OnceLock::new();
        OPTIONS.get_or_init(TaskOptions::default)
    }
    fn check_args(&self, args: &[Value], _kwargs: &Map<String, Value>) -> Result<(), TaskError> {
        match args {
            [Value::Number(_)] => Ok(()),
            _ => Err(TaskError::invalid_argument("n", "expected one integer")),
        }
    }
    fn run(&self, _ctx: TaskContext, args: Vec<Value>, _kwargs: Map<String, Value>) -> TaskFuture {
        Box::pin(async move { Ok(args[0].clone()) })
    }
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_a_reason_and_never_crashes_the_worker() {
    let t = TestApp::new();
    let app = t.builder().task(Typed).build().await.expect("app");
    let worker = RunningWorker::start_default(&app);

    // Arguments that do not fit.
    let bad = app
        .send_task(
            "tests.typed",
            vec![json!("x"), json!(2)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    match bad.get(WAIT).await {
        Err(Error::TaskFailed { exception, .. }) => {
            assert_eq!(exception.exc_type, "TypeError");
            assert!(exception.message().contains("\"n\""), "{exception}");
        }
        other => panic!("expected TypeError, got {other:?}"),
    }

    // A pickle body: refused, never deserialized.
    let mut envelope =
        TaskMessage::new("tests.typed", "pickled-1", vec![json!(1)], Map::new()).encode();
    envelope.content_type = CONTENT_TYPE_PICKLE.into();
    envelope.body = b"\x80\x04\x95cos\nsystem\n".to_vec();
    app.broker()
        .publish(vec![Publish {
            queue: "celery".into(),
            envelope,
            not_before: None,
        }])
        .await
        .expect("published");
    let pickled = app.result::<Value>("pickled-1");
    match pickled.get(WAIT).await {
        Err(Error::TaskFailed { exception, .. }) => {
            assert_eq!(exception.exc_type, "ContentDisallowed")
        }
        other => panic!("expected ContentDisallowed, got {other:?}"),
    }

    // A two-element body (which kills a Python worker).
    let mut envelope = TaskMessage::new("tests.typed", "short-body", vec![], Map::new()).encode();
    envelope.body = br#"[[1], {}]"#.to_vec();
    app.broker()
        .publish(vec![Publish {
            queue: "celery".into(),
            envelope,
            not_before: None,
        }])
        .await
        .expect("published");
    wait_for("three dead letters", WAIT, || async {
        app.broker()
            .dead_letters(&DeadLetterQuery::default())
            .await
            .map(|d| d.len())
            .unwrap_or(0)
            == 3
    })
    .await;
    let letters = app
        .broker()
        .dead_letters(&DeadLetterQuery::default())
        .await
        .expect("letters");
    let reasons: Vec<&str> = letters.iter().map(|d| d.reason.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("pickle")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("3 elements")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("invalid argument") || r.contains("argument \"n\"")),
        "{reasons:?}"
    );

    let good = app
        .send_task(
            "tests.typed",
            vec![json!(7)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    assert_eq!(good.get(WAIT).await.expect("result"), json!(7));
    let stats = worker.stop().await;
    assert_eq!(stats.dead_lettered, 3);
}

#[tokio::test]
async fn graceful_shutdown_finishes_running_tasks_and_returns_unstarted_ones() {
    let t = TestApp::new();
    let started = Arc::new(AtomicU32::new(0));
    let count = started.clone();
    let slow = task("tests.slow", TaskOptions::default(), move |_ctx, _a, _k| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok(json!("finished"))
        }
    });
    let app = t
        .builder()
        .queue(Queue::new("celery").concurrency(1).prefetch_multiplier(4))
        .task(slow)
        .build()
        .await
        .expect("app");
    let mut results = Vec::new();
    for _ in 0..4 {
        results.push(
            app.send_task("tests.slow", vec![], Map::new(), SendOptions::new())
                .await
                .expect("sent"),
        );
    }
    let worker = RunningWorker::start_default(&app);
    wait_for("the first task to start", WAIT, || async {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_for("all four reserved", WAIT, || async {
        worker.handle.stats().received == 4
    })
    .await;
    let stats = worker.stop().await;
    assert_eq!(stats.succeeded, 1, "the running task finished");
    assert_eq!(stats.released, 3, "the reserved ones went back");
    assert_eq!(
        results[0].get(WAIT).await.expect("first finished"),
        json!("finished")
    );
    let queue = app
        .broker()
        .queue_stats(&["celery".to_string()])
        .await
        .expect("stats");
    assert_eq!(
        (queue[0].ready, queue[0].held),
        (3, 0),
        "nothing lost: three messages wait in the queue"
    );
}

#[tokio::test]
async fn revoke_with_terminate_stops_a_running_task() {
    let t = TestApp::new();
    let forever = task(
        "tests.forever",
        TaskOptions::default(),
        |_ctx, _a, _k| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Value::Null)
        },
    );
    let app = t.builder().task(forever).build().await.expect("app");
    let worker = RunningWorker::start_default(&app);
    let r = app
        .send_task("tests.forever", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    wait_for("the task to run", WAIT, || async {
        worker.handle.active().len() == 1
    })
    .await;
    worker.handle.revoke(&[r.id().to_string()], true);
    match r.get(WAIT).await {
        Err(Error::Revoked { reason, .. }) => assert_eq!(reason, "terminated"),
        other => panic!("expected a terminated task, got {other:?}"),
    }
    worker.stop().await;
}

#[tokio::test]
async fn long_tasks_never_block_short_ones() {
    let t = TestApp::new();
    let long_running = Arc::new(AtomicU32::new(0));
    let running = long_running.clone();
    let long = task(
        "files.process",
        TaskOptions::default(),
        move |_ctx, _a, _k| {
            let running = running.clone();
            async move {
                running.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2500)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        },
    );
    let waits = Arc::new(Mutex::new(Vec::new()));
    let record = waits.clone();
    let busy = long_running.clone();
    let short = task(
        "notify.send",
        TaskOptions::default(),
        move |ctx: TaskContext, _a, _k| {
            let record = record.clone();
            let busy = busy.clone();
            async move {
                let sent = ctx
                    .headers()
                    .get("sent_at")
                    .and_then(Value::as_f64)
                    .unwrap_or_default();
                let waited = celeriac::core::time::unix_now() - sent;
                record
                    .lock()
                    .expect("lock")
                    .push((waited, busy.load(Ordering::SeqCst)));
                Ok(Value::Null)
            }
        },
    );
    let app = t
        .builder()
        .queue(
            Queue::new("short-task")
                .routing_key("short.#")
                .concurrency(2)
                .prefetch_multiplier(4),
        )
        .queue(
            Queue::new("long-task")
                .routing_key("long.#")
                .concurrency(2)
                .prefetch_multiplier(1)
                .acks_late(true),
        )
        .route(celeriac::Route::to_routing_key("notify.*", "short.notify"))
        .route(celeriac::Route::to_routing_key("files.*", "long.files"))
        .task(long)
        .task(short)
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);
    // More long tasks than long-task slots: both slots busy, more waiting.
    for _ in 0..4 {
        app.send_task("files.process", vec![], Map::new(), SendOptions::new())
            .await
            .expect("sent");
    }
    wait_for("both long-task slots busy", WAIT, || async {
        long_running.load(Ordering::SeqCst) == 2
    })
    .await;
    let mut shorts = Vec::new();
    for _ in 0..30 {
        let options = SendOptions::new().header("sent_at", json!(celeriac::core::time::unix_now()));
        shorts.push(
            app.send_task("notify.send", vec![], Map::new(), options)
                .await
                .expect("sent"),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for r in &shorts {
        r.get(WAIT).await.expect("short task ran");
    }
    let waits = waits.lock().expect("lock").clone();
    assert_eq!(waits.len(), 30);
    assert!(
        waits.iter().all(|(_, busy)| *busy == 2),
        "long-task slots were all busy meanwhile"
    );
    let worst = waits.iter().map(|(w, _)| *w).fold(0.0, f64::max);
    assert!(
        worst < 0.25,
        "short tasks waited up to {:.1} ms behind long ones",
        worst * 1000.0
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_renewed_lease_keeps_a_long_task_from_running_twice() {
    let t = TestApp::new();
    let runs = Arc::new(AtomicU32::new(0));
    let make = |runs: Arc<AtomicU32>| {
        task(
            "tests.long",
            options(|o| o.acks_late = Some(true)),
            move |_ctx, _a, _k| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Ok(Value::Null)
                }
            },
        )
    };
    // Leases of 300 ms: the task runs five times longer than its lease.
    let short_lease =
        |b: celeriac::AppBuilder| b.configure(|s| s.broker_transport_options.lease = 0.3);
    let app_a = short_lease(t.builder())
        .task(make(runs.clone()))
        .build()
        .await
        .expect("app a");
    let app_b = short_lease(t.builder())
        .task(make(runs.clone()))
        .build()
        .await
        .expect("app b");
    let worker_a = RunningWorker::start_default(&app_a);
    let r = app_a
        .send_task("tests.long", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    wait_for("the task to start", WAIT, || async {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    // A second worker (another "process" on the same file) runs its rescuer meanwhile.
    let worker_b = RunningWorker::start_default(&app_b);
    r.get(WAIT).await.expect("finished");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "delivered once although it outlived its lease"
    );
    worker_a.stop().await;
    worker_b.stop().await;
}
