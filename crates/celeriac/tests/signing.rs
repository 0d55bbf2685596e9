//! Message signing end to end on the embedded broker: with `signing_key` set the app
//! signs what it sends (and the worker what it re-publishes: retries), and the worker
//! dead-letters unsigned, forged and altered messages without writing a result.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac::broker::{DeadLetterQuery, Publish};
use celeriac::core::signing::{SigningKey, SIGNATURE_HEADER};
use celeriac::core::{Map, SendOptions, TaskContext, TaskMessage, TaskOptions, Value};
use serde_json::json;
use support::{task, wait_for, RunningWorker, TestApp};

const WAIT: Duration = Duration::from_secs(20);
const KEY: &str = "test-signing-key-0123456789";

#[tokio::test]
async fn signed_messages_run_and_unsigned_or_forged_ones_are_dead_lettered() {
    let t = TestApp::new();
    signing_end_to_end(t.builder()).await;
}

/// The same on Redis (kombu's transport), plus a signed message as kombu's restore
/// leaves it (`headers.redelivered = true`), which must still verify.
#[tokio::test]
async fn signing_works_end_to_end_on_redis_including_restored_messages() {
    let Some(base) = celeriac_redis::testing::redis_url_or_skip(
        "signing_works_end_to_end_on_redis_including_restored_messages",
    ) else {
        return;
    };
    let harness = celeriac::broker::redis::testing::RedisHarness::new(&base);
    let dir = tempfile::tempdir().expect("temp dir");
    let results = format!("sqlite://{}", dir.path().join("results.db").display());
    let builder = celeriac::App::builder("test")
        .without_environment()
        .broker(harness.url())
        .backend(results)
        .configure(|s| {
            s.broker_transport_options.lease = 2.0;
            s.worker_shutdown_timeout = 5.0;
            s.worker_concurrency = 2;
        });
    let app = signing_end_to_end(builder).await;

    let mut restored = TaskMessage::new(
        "tests.add",
        "restored-1",
        vec![json!(40), json!(2)],
        Map::new(),
    )
    .encode();
    restored.properties.delivery_tag = Some(uuid::Uuid::new_v4().to_string());
    SigningKey::new(KEY).expect("key").sign(&mut restored);
    restored.headers.insert("redelivered".into(), json!(true));
    harness
        .redis_broker()
        .await
        .push_raw("celery", &restored.to_kombu_json())
        .await
        .expect("push");
    let worker = RunningWorker::start_default(&app);
    assert_eq!(
        app.result::<Value>("restored-1")
            .get(WAIT)
            .await
            .expect("a restored signed message still verifies"),
        json!(42)
    );
    worker.stop().await;
}

/// Runs the signing scenario on an app built from `builder`; returns the app.
async fn signing_end_to_end(builder: celeriac::AppBuilder) -> celeriac::App {
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let flaky = task(
        "tests.flaky",
        TaskOptions::default(),
        move |ctx: TaskContext, _a, _k| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                if ctx.retries() == 0 {
                    return Err(ctx.retry_after(Duration::from_millis(20)));
                }
                Ok(json!("retried"))
            }
        },
    );
    let add = task(
        "tests.add",
        TaskOptions::default(),
        |_ctx, args, _kw| async move { Ok(json!(args.iter().filter_map(Value::as_i64).sum::<i64>())) },
    );
    let app = builder
        .task(add)
        .task(flaky)
        .configure(|s| s.signing_key = celeriac::core::config::Secret(KEY.into()))
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);

    // The app signs: the task runs; a retry the worker re-publishes is signed too.
    let ok = app
        .send_task(
            "tests.add",
            vec![json!(2), json!(3)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    assert_eq!(ok.get(WAIT).await.expect("result"), json!(5));
    let retried = app
        .send_task("tests.flaky", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    assert_eq!(retried.get(WAIT).await.expect("result"), json!("retried"));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);

    let publish = |envelope| Publish {
        queue: "celery".into(),
        envelope,
        not_before: None,
    };
    // Unsigned (what a Python producer or an intruder with broker access sends).
    let unsigned = TaskMessage::new("tests.add", "unsigned-1", vec![json!(1)], Map::new()).encode();
    // Signed with another key.
    let mut forged = TaskMessage::new("tests.add", "forged-1", vec![json!(1)], Map::new()).encode();
    SigningKey::new("some-other-key-0123456789")
        .expect("key")
        .sign(&mut forged);
    // Signed with the right key, then altered.
    let key = SigningKey::new(KEY).expect("key");
    let mut altered =
        TaskMessage::new("tests.add", "altered-1", vec![json!(1)], Map::new()).encode();
    key.sign(&mut altered);
    altered.body = br#"[[1000000], {}, null]"#.to_vec();
    // A signature header that is not a signature.
    let mut garbage =
        TaskMessage::new("tests.add", "garbage-1", vec![json!(1)], Map::new()).encode();
    garbage
        .headers
        .insert(SIGNATURE_HEADER.into(), json!({"trust": "me"}));
    app.broker()
        .publish(vec![
            publish(unsigned),
            publish(forged),
            publish(altered),
            publish(garbage),
        ])
        .await
        .expect("published");

    wait_for("four dead letters", WAIT, || async {
        app.broker()
            .dead_letters(&DeadLetterQuery::default())
            .await
            .map(|d| d.len())
            .unwrap_or(0)
            >= 4
    })
    .await;
    let letters = app
        .broker()
        .dead_letters(&DeadLetterQuery::default())
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), 4);
    let reason_of = |id: &str| {
        letters
            .iter()
            .find(|d| String::from_utf8_lossy(&d.payload).contains(id))
            .map(|d| d.reason.clone())
            .unwrap_or_else(|| panic!("no dead letter for {id}"))
    };
    assert!(reason_of("unsigned-1").contains("unsigned message refused"));
    assert!(reason_of("forged-1").contains("bad signature"));
    assert!(reason_of("altered-1").contains("bad signature"));
    assert!(reason_of("garbage-1").contains("malformed celeriac_signature"));

    // No result is written for an unverified message's task id.
    let backend = app.backend().expect("backend");
    for id in ["unsigned-1", "forged-1", "altered-1", "garbage-1"] {
        assert!(
            backend.get(id).await.expect("read").is_none(),
            "{id}: an unverified message must not write a result"
        );
    }
    let stats = worker.stop().await;
    assert_eq!((stats.dead_lettered, stats.succeeded), (4, 2));
    app
}

#[tokio::test]
async fn a_short_signing_key_is_refused_at_build_time() {
    let t = TestApp::new();
    let error = t
        .builder()
        .configure(|s| s.signing_key = celeriac::core::config::Secret("short".into()))
        .build()
        .await
        .expect_err("a 5-byte key is refused");
    let text = error.to_string();
    assert!(text.contains("signing_key is 5 bytes"), "{text}");
    assert!(!text.contains("short"), "the key is never shown: {text}");
}

/// Signed messages keep their signature through RabbitMQ (headers travel as AMQP
/// field tables and come back in another order and representation).
#[tokio::test]
async fn signed_messages_verify_after_a_trip_through_rabbitmq() {
    let Some(base) = celeriac::broker::amqp::testing::amqp_url_or_skip(
        "signed_messages_verify_after_a_trip_through_rabbitmq",
    ) else {
        return;
    };
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}queue_expires=60000");
    let queue = format!("signing-{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().expect("temp dir");
    let results = format!("sqlite://{}", dir.path().join("results.db").display());
    let add = task(
        "tests.add",
        TaskOptions::default(),
        |_ctx, args, _kw| async move { Ok(json!(args.iter().filter_map(Value::as_i64).sum::<i64>())) },
    );
    let retrying = task(
        "tests.retrying",
        TaskOptions::default(),
        |ctx: TaskContext, _a, _k| async move {
            if ctx.retries() == 0 {
                return Err(ctx.retry_after(Duration::from_millis(20)));
            }
            Ok(json!("retried"))
        },
    );
    let app = celeriac::App::builder("test")
        .without_environment()
        .broker(url)
        .backend(results)
        .task(add)
        .task(retrying)
        .configure(|s| {
            s.task_default_queue = queue.clone();
            s.worker_concurrency = 2;
            s.worker_shutdown_timeout = 5.0;
            s.signing_key = celeriac::core::config::Secret(KEY.into());
        })
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);
    let sum = app
        .send_task(
            "tests.add",
            vec![json!(2), json!(3), json!(1.5)],
            Map::new(),
            SendOptions::new().countdown(Duration::from_millis(10)),
        )
        .await
        .expect("sent");
    assert_eq!(sum.get(WAIT).await.expect("signed on RabbitMQ"), json!(5));
    let retried = app
        .send_task("tests.retrying", vec![], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    assert_eq!(retried.get(WAIT).await.expect("retry"), json!("retried"));
    let stats = worker.stop().await;
    assert_eq!((stats.dead_lettered, stats.succeeded), (0, 2));
}
