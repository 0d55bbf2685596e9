//! Hostile input end to end: a table of malformed and dangerous messages published
//! straight to the broker (bypassing every producer check), on the embedded SQLite
//! broker and on Redis (when it answers). Each one must end in the dead letters with
//! a reason that says what was wrong; none may crash the worker or vanish; and the
//! worker must still run a good task afterwards.

mod support;

use std::sync::Arc;
use std::time::Duration;

use celeriac::broker::{DeadLetter, DeadLetterQuery};
use celeriac::core::message::{DeliveryInfo, CONTENT_TYPE_JSON, CONTENT_TYPE_PICKLE};
use celeriac::core::{Envelope, Map, Properties, SendOptions, TaskOptions, Value};
use celeriac::{App, AppBuilder};
use serde_json::json;
use support::{task, wait_for, RunningWorker};

const WAIT: Duration = Duration::from_secs(30);
const QUEUE: &str = "celery";
/// The size limit the apps of these tests use.
const LIMIT: usize = 64 * 1024;

/// One hostile message: its bytes as stored in the broker, a marker found in the
/// dead letter's payload, and what its dead-letter reason must say (any of these).
struct Case {
    marker: String,
    payload: Vec<u8>,
    reasons: &'static [&'static str],
    /// Refused by the worker (counted in its `dead_lettered`), not by the broker's
    /// envelope codec.
    by_worker: bool,
}

/// A kombu JSON envelope with `headers`, `content_type` and raw `body` bytes, with
/// the delivery tag and delivery info a publisher writes.
fn envelope(headers: Value, content_type: &str, body: &[u8]) -> Vec<u8> {
    let envelope = Envelope {
        headers: headers.as_object().cloned().unwrap_or_default().into(),
        properties: Properties {
            delivery_tag: Some(uuid::Uuid::new_v4().to_string()),
            delivery_info: Some(DeliveryInfo {
                exchange: String::new(),
                routing_key: QUEUE.into(),
                redelivered: None,
            }),
            priority: Some(0),
            ..Properties::default()
        },
        content_type: content_type.into(),
        content_encoding: "utf-8".into(),
        body: body.to_vec(),
    };
    envelope.to_kombu_json()
}

fn task_headers(id: &str) -> Value {
    json!({"lang": "py", "task": "tests.add", "id": id, "retries": 0, "root_id": id})
}

fn deep(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

fn cases() -> Vec<Case> {
    let worker = |marker: &str, payload: Vec<u8>, reasons: &'static [&'static str]| Case {
        marker: marker.into(),
        payload,
        reasons,
        by_worker: true,
    };
    let broker = |marker: &str, payload: Vec<u8>, reasons: &'static [&'static str]| Case {
        marker: marker.into(),
        payload,
        reasons,
        by_worker: false,
    };
    let big = format!(r#"[["{}"], {{}}, null]"#, "x".repeat(LIMIT + 1));
    vec![
        worker(
            "hostile-oversize-body",
            envelope(
                task_headers("hostile-oversize-body"),
                CONTENT_TYPE_JSON,
                big.as_bytes(),
            ),
            &["exceeds the limit of 65536 bytes"],
        ),
        worker(
            "hostile-oversize-header",
            envelope(
                json!({"task": "tests.add", "id": "hostile-oversize-header",
                       "argsrepr": "y".repeat(LIMIT + 1)}),
                CONTENT_TYPE_JSON,
                b"[[1], {}, null]",
            ),
            &["exceeds the limit of 65536 bytes"],
        ),
        worker(
            "hostile-pickle",
            envelope(
                task_headers("hostile-pickle"),
                CONTENT_TYPE_PICKLE,
                b"\x80\x04\x95\x1c\x00cposix\nsystem\n\x94\x8c\x02id\x94\x85\x94R\x94.",
            ),
            &["pickle can execute arbitrary code"],
        ),
        worker(
            "hostile-yaml",
            envelope(
                task_headers("hostile-yaml"),
                "application/x-yaml",
                b"!!python/object/apply:os.system ['id']",
            ),
            &["YAML bodies are not accepted"],
        ),
        worker(
            "hostile-unknown-type",
            envelope(
                task_headers("hostile-unknown-type"),
                "application/x-bogus",
                b"[[1], {}, null]",
            ),
            &["unsupported content type \"application/x-bogus\""],
        ),
        worker(
            "hostile-invalid-json",
            envelope(
                task_headers("hostile-invalid-json"),
                CONTENT_TYPE_JSON,
                b"[[2, 3], {",
            ),
            &["body is not valid JSON"],
        ),
        worker(
            "hostile-deep-body",
            envelope(
                task_headers("hostile-deep-body"),
                CONTENT_TYPE_JSON,
                format!("[{}, {{}}, null]", deep(10_000)).as_bytes(),
            ),
            &["recursion limit exceeded"],
        ),
        worker(
            "hostile-body-object",
            envelope(
                task_headers("hostile-body-object"),
                CONTENT_TYPE_JSON,
                br#"{"args": [1, 2]}"#,
            ),
            &["expected a JSON array [args, kwargs, embed]"],
        ),
        worker(
            "hostile-body-two",
            envelope(
                task_headers("hostile-body-two"),
                CONTENT_TYPE_JSON,
                b"[[1], {}]",
            ),
            &["expected 3 elements [args, kwargs, embed], found 2"],
        ),
        worker(
            "hostile-args-not-list",
            envelope(
                task_headers("hostile-args-not-list"),
                CONTENT_TYPE_JSON,
                br#"["rm -rf /", {}, null]"#,
            ),
            &["args must be an array"],
        ),
        worker(
            "hostile-no-headers",
            envelope(
                json!({"note": "hostile-no-headers"}),
                CONTENT_TYPE_JSON,
                b"[[1], {}, null]",
            ),
            &["missing header \"task\""],
        ),
        worker(
            "hostile-no-id",
            envelope(
                json!({"task": "tests.add", "note": "hostile-no-id"}),
                CONTENT_TYPE_JSON,
                b"[[1], {}, null]",
            ),
            &["missing header \"id\""],
        ),
        worker(
            "hostile-bad-retries",
            envelope(
                json!({"task": "tests.add", "id": "hostile-bad-retries", "retries": "many"}),
                CONTENT_TYPE_JSON,
                b"[[1], {}, null]",
            ),
            &["invalid header \"retries\""],
        ),
        worker(
            "hostile-protocol-v1",
            envelope(
                json!({"note": "hostile-protocol-v1"}),
                CONTENT_TYPE_JSON,
                br#"{"task": "tests.add", "id": "v1", "args": [1, 2], "kwargs": {}}"#,
            ),
            &["protocol v1 message"],
        ),
        worker(
            "hostile-compressed",
            envelope(
                json!({"task": "tests.add", "id": "hostile-compressed",
                       "compression": "application/x-gzip"}),
                CONTENT_TYPE_JSON,
                // A gzip header, not the zlib stream kombu's codec writes.
                b"\x1f\x8b\x08\x00",
            ),
            &["does not inflate"],
        ),
        worker(
            "hostile-bz2-body",
            envelope(
                json!({"task": "tests.add", "id": "hostile-bz2-body",
                       "compression": "application/x-bz2"}),
                CONTENT_TYPE_JSON,
                b"BZh91AY&SY",
            ),
            &["unsupported body compression"],
        ),
        worker(
            "hostile-non-utf8-body",
            envelope(
                task_headers("hostile-non-utf8-body"),
                CONTENT_TYPE_JSON,
                b"[[\"\xff\xfe\xfd\"], {}, null]",
            ),
            &["body is not valid JSON"],
        ),
        worker(
            "hostile-unregistered",
            envelope(
                json!({"task": "os.system", "id": "hostile-unregistered"}),
                CONTENT_TYPE_JSON,
                br#"[["id"], {}, null]"#,
            ),
            &["task \"os.system\" is not registered"],
        ),
        broker(
            "hostile-raw-binary",
            b"\xff\xfe\x00hostile-raw-binary\x80\x81".to_vec(),
            &["payload cannot be decoded", "not a kombu envelope"],
        ),
        broker(
            "hostile-raw-text",
            b"hostile-raw-text: not JSON at all".to_vec(),
            &["payload cannot be decoded", "not a kombu envelope"],
        ),
        broker(
            "hostile-raw-deep",
            format!(
                r#"{{"body": "", "properties": {{"delivery_tag": "{}"}}, "headers": {{"note": "hostile-raw-deep", "x": {}}}}}"#,
                uuid::Uuid::new_v4(),
                deep(10_000)
            )
            .into_bytes(),
            &["recursion limit exceeded", "too many nested"],
        ),
    ]
}

fn add() -> impl celeriac::core::Task {
    task(
        "tests.add",
        TaskOptions::default(),
        |_ctx, args, _kw| async move { Ok(json!(args.iter().filter_map(Value::as_i64).sum::<i64>())) },
    )
}

fn configure(builder: AppBuilder) -> AppBuilder {
    builder.task(add()).configure(|s| {
        s.broker_transport_options.lease = 2.0;
        s.worker_shutdown_timeout = 5.0;
        s.worker_concurrency = 2;
        s.task_max_message_bytes = LIMIT;
    })
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Injects every case with `inject`, runs a worker, and checks the dead letters,
/// the worker's counters and that a good task still runs.
async fn hostile_table<F, Fut>(app: &App, inject: F)
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let cases = cases();
    for case in &cases {
        inject(case.payload.clone()).await;
    }
    let worker = RunningWorker::start_default(app);
    let dead_letters = || async {
        app.broker()
            .dead_letters(&DeadLetterQuery {
                queue: None,
                limit: 1000,
            })
            .await
            .expect("dead letters")
    };
    wait_for("every hostile message dead-lettered", WAIT, || async {
        dead_letters().await.len() >= cases.len()
    })
    .await;
    let letters: Vec<DeadLetter> = dead_letters().await;
    assert_eq!(
        letters.len(),
        cases.len(),
        "one dead letter per hostile message: {:?}",
        letters.iter().map(|d| &d.reason).collect::<Vec<_>>()
    );
    for case in &cases {
        let found: Vec<&DeadLetter> = letters
            .iter()
            .filter(|d| contains(&d.payload, &case.marker))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: exactly one dead letter keeps its payload",
            case.marker
        );
        let reason = &found[0].reason;
        assert!(
            case.reasons.iter().any(|r| reason.contains(r)),
            "{}: the reason {reason:?} should say one of {:?}",
            case.marker,
            case.reasons
        );
        assert_eq!(found[0].queue, QUEUE, "{}", case.marker);
    }

    // Alive, and still working.
    let good = app
        .send_task(
            "tests.add",
            vec![json!(2), json!(3)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    assert_eq!(good.get(WAIT).await.expect("result"), json!(5));
    let report = worker.stop().await;
    // After the stop, so the good task's ack (batched by the completer) has landed.
    let stats = app
        .broker()
        .queue_stats(&[QUEUE.to_string()])
        .await
        .expect("stats");
    assert_eq!(
        (stats[0].ready, stats[0].held),
        (0, 0),
        "nothing hostile stays in the queue: {stats:?}"
    );
    let by_worker = cases.iter().filter(|c| c.by_worker).count() as u64;
    assert_eq!(
        (report.dead_lettered, report.succeeded),
        (by_worker, 1),
        "the worker refused each message its broker handed it, and ran the good one"
    );
}

#[tokio::test]
async fn hostile_messages_are_dead_lettered_with_reasons_on_sqlite() {
    let t = support::TestApp::new();
    let app = configure(t.builder()).build().await.expect("app");
    let path = t.dir.path().join("celeriac.db");
    let raw = Arc::new(
        celeriac::broker::sqlite::SqliteBroker::open(path, Default::default())
            .await
            .expect("a second handle on the broker file"),
    );
    hostile_table(&app, |payload| {
        let raw = raw.clone();
        async move {
            raw.insert_raw(QUEUE, &payload)
                .await
                .expect("insert a raw message")
        }
    })
    .await;
}

#[tokio::test]
async fn hostile_messages_are_dead_lettered_with_reasons_on_redis() {
    let Some(base) = celeriac_redis::testing::redis_url_or_skip(
        "hostile_messages_are_dead_lettered_with_reasons_on_redis",
    ) else {
        return;
    };
    let harness = celeriac::broker::redis::testing::RedisHarness::new(&base);
    let dir = tempfile::tempdir().expect("temp dir");
    let results = format!("sqlite://{}", dir.path().join("results.db").display());
    let app = configure(
        App::builder("test")
            .without_environment()
            .broker(harness.url())
            .backend(results),
    )
    .build()
    .await
    .expect("app");
    let raw = Arc::new(harness.redis_broker().await);
    hostile_table(&app, |payload| {
        let raw = raw.clone();
        async move {
            raw.push_raw(QUEUE, &payload)
                .await
                .expect("push a raw message")
        }
    })
    .await;
}
