//! Deferred publish confirms (`PublishConfirms::Deferred`, issue 9): sends return at
//! once and a background publisher stores them in batches. On SQLite (a wrapper
//! broker injects failures and stalls) and on Redis (skipped with a printed reason
//! when Redis does not answer, failed instead with `CELERIAC_REQUIRE_SERVICES=1`). Also
//! `App::send_batch`, whose large plain batches go out in chunks.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac::broker::{
    Broadcast, Broker, BrokerError, Capabilities, DeadLetter, DeadLetterQuery, Delivery,
    DeliveryTag, FetchParams, Publish, QueueStats, RejectAction, SubscribeParams, Subscription,
    WorkerInfo,
};
use celeriac::core::{Map, Queue, TaskMessage, TaskOptions, Value};
use celeriac::{App, Error, PublishConfirms, SendOptions, TaskCall, Unique, BATCH_CHUNK};
use serde_json::json;
use support::{task, wait_for, RunningWorker, TestApp};

const WAIT: Duration = Duration::from_secs(20);

/// A broker that forwards to another and can be told to fail or stall publishes.
struct Faulty {
    inner: Arc<dyn Broker>,
    fail: AtomicBool,
    /// Publishes take a read guard: a test holding the write guard stalls them.
    gate: Arc<tokio::sync::RwLock<()>>,
    publishes: AtomicUsize,
    /// Publishes called (counted before the gate).
    entered: AtomicUsize,
}

impl Faulty {
    fn new(inner: Arc<dyn Broker>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            fail: AtomicBool::new(false),
            gate: Arc::new(tokio::sync::RwLock::new(())),
            publishes: AtomicUsize::new(0),
            entered: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Broker for Faulty {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
    async fn declare_queue(&self, queue: &Queue) -> Result<(), BrokerError> {
        self.inner.declare_queue(queue).await
    }
    async fn publish(&self, messages: Vec<Publish>) -> Result<(), BrokerError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let _open = self.gate.read().await;
        self.publishes.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(BrokerError::Connection("injected publish failure".into()));
        }
        self.inner.publish(messages).await
    }
    async fn fetch(&self, params: &FetchParams) -> Result<Vec<Delivery>, BrokerError> {
        self.inner.fetch(params).await
    }
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        self.inner.ack(tags).await
    }
    async fn reject(&self, tag: &DeliveryTag, action: RejectAction) -> Result<(), BrokerError> {
        self.inner.reject(tag, action).await
    }
    async fn renew_leases(&self, tags: &[DeliveryTag], lease: Duration) -> Result<(), BrokerError> {
        self.inner.renew_leases(tags, lease).await
    }
    async fn restore_expired(&self) -> Result<u64, BrokerError> {
        self.inner.restore_expired().await
    }
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        self.inner.purge(queue).await
    }
    async fn queue_stats(&self, queues: &[String]) -> Result<Vec<QueueStats>, BrokerError> {
        self.inner.queue_stats(queues).await
    }
    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, BrokerError> {
        self.inner.dead_letters(query).await
    }
    async fn worker_heartbeat(&self, info: &WorkerInfo) -> Result<(), BrokerError> {
        self.inner.worker_heartbeat(info).await
    }
    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        self.inner.workers().await
    }
    async fn broadcast(&self, message: Broadcast) -> Result<(), BrokerError> {
        self.inner.broadcast(message).await
    }
    async fn subscribe(&self, params: &SubscribeParams) -> Result<Subscription, BrokerError> {
        self.inner.subscribe(params).await
    }
}

/// A deferred-confirm app on `t`'s file with the broker wrapped in [`Faulty`].
async fn faulty_app(t: &TestApp, buffer: usize) -> (App, Arc<Faulty>) {
    let inner = celeriac::broker::connect(&t.url).await.expect("broker");
    let faulty = Faulty::new(inner);
    let app = t
        .builder()
        .broker_instance(faulty.clone())
        .queue(Queue::new("q"))
        .publish_confirms(PublishConfirms::Deferred)
        .publish_buffer(buffer)
        .build()
        .await
        .expect("app");
    (app, faulty)
}

async fn send(app: &App, queue: &str, i: usize) -> Result<String, Error> {
    app.send_task(
        "tests.seq",
        vec![json!(i)],
        Map::new(),
        SendOptions::new().queue(queue.to_string()),
    )
    .await
    .map(|r| r.id().to_string())
}

/// The first argument of every ready message of `queue`, in delivery order.
async fn drain_args(broker: &dyn Broker, queue: &str) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let batch = broker
            .fetch(&FetchParams {
                queues: vec![queue.to_string()],
                max: 500,
                wait: Duration::from_millis(50),
                consumer: "deferred-test".into(),
                lease: Duration::from_secs(60),
            })
            .await
            .expect("fetch");
        if batch.is_empty() {
            return seen;
        }
        let tags: Vec<DeliveryTag> = batch.iter().map(|d| d.tag.clone()).collect();
        for delivery in batch {
            let message = TaskMessage::decode(&delivery.envelope).expect("decodes");
            seen.push(message.args[0].as_u64().expect("a number"));
        }
        broker.ack(&tags).await.expect("ack");
    }
}

async fn ready(broker: &dyn Broker, queue: &str) -> u64 {
    broker
        .queue_stats(&[queue.to_string()])
        .await
        .expect("stats")
        .first()
        .map_or(0, |s| s.ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_deferred_sends_keep_their_order() {
    let t = TestApp::new();
    let app = t
        .builder()
        .queue(Queue::new("q"))
        .publish_confirms(PublishConfirms::Deferred)
        .build()
        .await
        .expect("app");
    assert_eq!(app.publish_confirms(), PublishConfirms::Deferred);
    for i in 0..2000 {
        send(&app, "q", i).await.expect("handed over");
    }
    app.flush().await.expect("all stored");
    assert_eq!(app.unconfirmed_sends(), 0);
    assert_eq!(ready(app.broker().as_ref(), "q").await, 2000);
    let args = drain_args(app.broker().as_ref(), "q").await;
    assert_eq!(args, (0..2000).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_is_the_default_and_confirms_every_send() {
    let t = TestApp::new();
    let app = t
        .builder()
        .queue(Queue::new("q"))
        .build()
        .await
        .expect("app");
    assert_eq!(app.publish_confirms(), PublishConfirms::Each);
    send(&app, "q", 1).await.expect("sent");
    // Stored before the send returned: no flush needed.
    assert_eq!(ready(app.broker().as_ref(), "q").await, 1);
    app.flush().await.expect("nothing to flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_is_returned_by_flush_and_by_the_next_send() {
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, 100).await;
    faulty.fail.store(true, Ordering::SeqCst);
    // Stalled while the three are handed over, so that they fail together (a
    // failure seen before a send would be returned by that send).
    let stall = faulty.gate.clone().write_owned().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(send(&app, "q", i).await.expect("handed over"));
    }
    drop(stall);
    match app.flush().await {
        Err(Error::PublishFailed { task_ids, source }) => {
            assert_eq!(task_ids, ids);
            assert!(source.to_string().contains("injected"), "{source}");
        }
        other => panic!("expected PublishFailed, got {other:?}"),
    }
    // Reported once per flush.
    app.flush().await.expect("no new failure");

    // The next send reports a failure it did not cause, and sends nothing.
    let lost = send(&app, "q", 10).await.expect("handed over");
    wait_for("the failed publish", WAIT, || async {
        app.unconfirmed_sends() == 0
    })
    .await;
    faulty.fail.store(false, Ordering::SeqCst);
    match send(&app, "q", 11).await {
        Err(Error::PublishFailed { task_ids, .. }) => assert_eq!(task_ids, vec![lost.clone()]),
        other => panic!("expected PublishFailed, got {other:?}"),
    }
    // flush still reports the first failure since the last flush.
    match app.flush().await {
        Err(Error::PublishFailed { task_ids, .. }) => assert_eq!(task_ids, vec![lost]),
        other => panic!("expected PublishFailed, got {other:?}"),
    }
    // Healthy again: sends go through.
    send(&app, "q", 12).await.expect("handed over");
    app.flush().await.expect("stored");
    assert_eq!(drain_args(app.broker().as_ref(), "q").await, vec![12]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_makes_senders_wait() {
    const BUFFER: usize = 4;
    const SENDS: usize = 50;
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, BUFFER).await;
    let stall = faulty.gate.write().await;
    let done = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (app, done) = (app.clone(), done.clone());
        tokio::spawn(async move {
            for i in 0..SENDS {
                send(&app, "q", i).await.expect("handed over");
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The publisher holds one batch (at most BUFFER sends), BUFFER wait in the
    // buffer, and the next send waits for room.
    let before = done.load(Ordering::SeqCst);
    assert!(before >= BUFFER, "{before} sends returned");
    assert!(
        before <= 2 * BUFFER,
        "{before} sends returned past a full buffer"
    );
    assert!(!sender.is_finished());
    drop(stall);
    tokio::time::timeout(WAIT, sender)
        .await
        .expect("sends finish once the broker answers")
        .expect("sender task");
    app.flush().await.expect("all stored");
    assert_eq!(
        drain_args(app.broker().as_ref(), "q").await,
        (0..SENDS as u64).collect::<Vec<_>>()
    );
    // Coalesced: far fewer publishes than sends.
    assert!(faulty.publishes.load(Ordering::SeqCst) < SENDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_given_up_while_the_buffer_is_full_is_not_sent_nor_counted() {
    const BUFFER: usize = 2;
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, BUFFER).await;
    let stall = faulty.gate.clone().write_owned().await;
    // One in the publisher's hands, BUFFER in the buffer.
    send(&app, "q", 0).await.expect("handed over");
    wait_for("the publisher to take the first", WAIT, || async {
        faulty.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    for i in 1..=BUFFER {
        send(&app, "q", i).await.expect("handed over");
    }
    let waited = tokio::time::timeout(Duration::from_millis(100), send(&app, "q", 99)).await;
    assert!(waited.is_err(), "a send to a full buffer returned");
    assert_eq!(app.unconfirmed_sends(), 1 + BUFFER);
    drop(stall);
    app.flush().await.expect("stored");
    assert_eq!(app.unconfirmed_sends(), 0);
    assert_eq!(
        drain_args(app.broker().as_ref(), "q").await,
        (0..=BUFFER as u64).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_app_stores_what_is_buffered() {
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, 10_000).await;
    let stall = faulty.gate.clone().write_owned().await;
    for i in 0..500 {
        send(&app, "q", i).await.expect("handed over");
    }
    assert_eq!(app.unconfirmed_sends(), 500);
    // Let the broker answer a moment after the drop started waiting.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(stall);
    });
    drop(app);
    // On a multi-threaded runtime the drop waited for the publisher.
    assert_eq!(ready(faulty.inner.as_ref(), "q").await, 500);
    release.await.expect("release");
    assert_eq!(
        drain_args(faulty.inner.as_ref(), "q").await,
        (0..500).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn on_a_current_thread_runtime_the_dropped_app_publishes_in_the_background() {
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, 10_000).await;
    for i in 0..300 {
        send(&app, "q", i).await.expect("handed over");
    }
    drop(app);
    wait_for("the buffered sends", WAIT, || async {
        ready(faulty.inner.as_ref(), "q").await == 300
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_every_deferred_send() {
    const SENDS: usize = 1000;
    let t = TestApp::new();
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = ran.clone();
    let mut options = TaskOptions::default();
    options.ignore_result = true;
    let app = t
        .builder()
        .publish_confirms(PublishConfirms::Deferred)
        .task(task("tests.seq", options, move |_ctx, args, _kwargs| {
            let record = record.clone();
            async move {
                let i = args.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
                record.lock().expect("lock").push(i);
                Ok(Value::Null)
            }
        }))
        .build()
        .await
        .expect("app");
    for i in 0..SENDS {
        send(&app, "celery", i).await.expect("handed over");
    }
    app.flush().await.expect("stored");
    let worker = RunningWorker::start_default(&app);
    wait_for("every task run", WAIT, || async {
        ran.lock().expect("lock").len() >= SENDS
    })
    .await;
    worker.stop().await;
    let mut ran = ran.lock().expect("lock").clone();
    ran.sort_unstable();
    assert_eq!(ran, (0..SENDS as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_sends_wait_for_the_broker_in_deferred_mode() {
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, 100).await;
    let options = || {
        SendOptions::new()
            .queue("q")
            .unique(Unique::new(Duration::from_secs(60)))
    };
    app.send_task("tests.seq", vec![json!(1)], Map::new(), options())
        .await
        .expect("sent");
    // Confirmed path: stored before the call returned.
    assert_eq!(ready(faulty.inner.as_ref(), "q").await, 1);
    assert!(matches!(
        app.send_task("tests.seq", vec![json!(1)], Map::new(), options())
            .await,
        Err(Error::Duplicate { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_sends_do_not_overtake_deferred_ones() {
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, 100).await;
    // The publisher is stalled while 0..3 are handed over.
    let stall = faulty.gate.clone().write_owned().await;
    for i in 0..3 {
        send(&app, "q", i).await.expect("handed over");
    }
    // A unique send, a publish-once send and a batch, made after them.
    let confirmed = tokio::spawn({
        let app = app.clone();
        async move {
            app.send_task(
                "tests.seq",
                vec![json!(3)],
                Map::new(),
                SendOptions::new()
                    .queue("q")
                    .unique(Unique::new(Duration::from_secs(60))),
            )
            .await
            .expect("unique send");
            app.send_task(
                "tests.seq",
                vec![json!(4)],
                Map::new(),
                SendOptions::new()
                    .queue("q")
                    .publish_once(Duration::from_secs(60)),
            )
            .await
            .expect("publish-once send");
            app.send_batch(batch_calls("q", 7).split_off(5))
                .await
                .expect("batch");
        }
    });
    // They wait behind the deferred sends instead of going first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!confirmed.is_finished(), "a confirmed send overtook");
    assert_eq!(ready(faulty.inner.as_ref(), "q").await, 0);
    drop(stall);
    tokio::time::timeout(WAIT, confirmed)
        .await
        .expect("the confirmed sends finish")
        .expect("no panic");
    assert_eq!(app.unconfirmed_sends(), 0);
    let args = drain_args(faulty.inner.as_ref(), "q").await;
    assert_eq!(args, (0..7).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_send_after_a_failed_deferred_one_reports_it() {
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, 100).await;
    faulty.fail.store(true, Ordering::SeqCst);
    let stall = faulty.gate.clone().write_owned().await;
    let lost = send(&app, "q", 0).await.expect("handed over");
    let batch = tokio::spawn({
        let app = app.clone();
        async move { app.send_batch(batch_calls("q", 2)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stall);
    // The batch waited for the deferred send, which failed: the batch reports
    // that failure and sends nothing.
    match tokio::time::timeout(WAIT, batch)
        .await
        .expect("done")
        .expect("no panic")
    {
        Err(Error::PublishFailed { task_ids, .. }) => assert_eq!(task_ids, vec![lost]),
        other => panic!("expected PublishFailed, got {other:?}"),
    }
    assert_eq!(
        faulty.publishes.load(Ordering::SeqCst),
        1,
        "the batch was not published"
    );
    // Flush still reports it (the first failure since the last flush).
    assert!(matches!(
        app.flush().await,
        Err(Error::PublishFailed { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_sends_still_send_task_sent_events() {
    let t = TestApp::new();
    let app = t
        .builder()
        .publish_confirms(PublishConfirms::Deferred)
        .configure(|s| s.task_send_sent_event = true)
        .build()
        .await
        .expect("app");
    let mut events = app
        .broker()
        .subscribe(&SubscribeParams {
            exchange: "celeryev".into(),
            routing_key: None,
        })
        .await
        .expect("subscribe");
    let id = send(&app, "celery", 7).await.expect("handed over");
    app.flush().await.expect("stored");
    let message = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event")
        .expect("open");
    assert_eq!(message.routing_key, "task.sent");
    let body = String::from_utf8_lossy(&message.envelope.body).to_string();
    assert!(body.contains("task-sent") && body.contains(&id), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_sends_on_redis_are_stored_in_order() {
    let Some(redis) =
        celeriac_redis::testing::redis_url_or_skip("deferred_sends_on_redis_are_stored_in_order")
    else {
        return;
    };
    // A fresh queue of its own; purged at the end (the database is never flushed).
    let queue = format!("deferred-test-{}", uuid::Uuid::new_v4().simple());
    let app = App::builder("test")
        .without_environment()
        .broker(redis.clone())
        .queue(Queue::new(queue.clone()))
        .publish_confirms(PublishConfirms::Deferred)
        .build()
        .await
        .expect("app");
    const SENDS: usize = 3000;
    for i in 0..SENDS {
        send(&app, &queue, i).await.expect("handed over");
    }
    app.flush().await.expect("stored");
    assert_eq!(ready(app.broker().as_ref(), &queue).await, SENDS as u64);
    let args = drain_args(app.broker().as_ref(), &queue).await;
    app.broker().purge(&queue).await.expect("purge");
    assert_eq!(args, (0..SENDS as u64).collect::<Vec<_>>());
}

// ---- send_batch: large plain batches go out in chunks --------------------------

fn batch_calls(queue: &str, n: usize) -> Vec<TaskCall> {
    (0..n)
        .map(|i| {
            TaskCall::new("tests.seq", vec![json!(i)]).options(SendOptions::new().queue(queue))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_plain_batch_goes_out_in_chunks_in_order() {
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, 100).await;
    let n = 3 * BATCH_CHUNK + 7;
    let ids = app.send_batch(batch_calls("b", n)).await.expect("sent");
    assert_eq!(ids.len(), n);
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), n, "every call has an id of its own");
    // Stored when the call returns, one publish per chunk.
    assert_eq!(faulty.publishes.load(Ordering::SeqCst), 4);
    assert_eq!(ready(faulty.inner.as_ref(), "b").await, n as u64);
    let args = drain_args(faulty.inner.as_ref(), "b").await;
    assert_eq!(args, (0..n as u64).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_publish_fails_returns_the_error() {
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, 100).await;
    faulty.fail.store(true, Ordering::SeqCst);
    let sent = app.send_batch(batch_calls("b", 2 * BATCH_CHUNK)).await;
    assert!(sent.is_err(), "the failed publish is reported");
    // The first chunk failed; the second was never handed over.
    assert_eq!(faulty.publishes.load(Ordering::SeqCst), 1);
    assert_eq!(ready(faulty.inner.as_ref(), "b").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_unique_call_is_one_publish_and_all_or_nothing() {
    let t = TestApp::new();
    let (app, faulty) = faulty_app(&t, 100).await;
    let unique = || {
        TaskCall::new("tests.seq", vec![json!("once")]).options(
            SendOptions::new()
                .queue("b")
                .unique(Unique::new(Duration::from_secs(60))),
        )
    };
    let mut calls = batch_calls("b", 2 * BATCH_CHUNK);
    calls.push(unique());
    app.send_batch(calls).await.expect("sent");
    assert_eq!(faulty.publishes.load(Ordering::SeqCst), 1);
    assert_eq!(
        ready(faulty.inner.as_ref(), "b").await,
        2 * BATCH_CHUNK as u64 + 1
    );
    // The same unique call again refuses the whole batch: nothing of it is sent.
    let mut calls = batch_calls("b", 2 * BATCH_CHUNK);
    calls.push(unique());
    assert!(matches!(
        app.send_batch(calls).await,
        Err(Error::Duplicate { .. })
    ));
    assert_eq!(
        ready(faulty.inner.as_ref(), "b").await,
        2 * BATCH_CHUNK as u64 + 1
    );
}
