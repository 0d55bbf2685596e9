//! Compressed task messages (Celery's `task_compression` / `compression=`): a
//! celeriac producer writes kombu's zlib codec (header `compression:
//! application/x-gzip`, the body zlib-compressed JSON) and a celeriac worker reads
//! it back (with message signing on: the signature covers the compressed body); a
//! codec celeriac does not write is refused at build or send time.

mod support;

use std::time::Duration;

use celeriac::broker::FetchParams;
use celeriac::core::{Queue, TaskOptions, Value};
use celeriac::{Error, SendOptions};
use serde_json::json;
use support::{task, RunningWorker, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_compression_writes_zlib_and_the_worker_reads_it() {
    let t = TestApp::new();
    let app = t
        .builder()
        .configure(|s| {
            s.task_compression = "gzip".into();
            // Signed too: the signature covers the compressed body the worker checks.
            s.signing_key = celeriac::core::config::Secret("a compression test signing key".into());
        })
        .queue(Queue::new("packed"))
        .queue(Queue::new("run"))
        .task(task(
            "tests.len",
            TaskOptions::default(),
            |_ctx, args, _kw| async move {
                Ok(json!(args
                    .first()
                    .and_then(Value::as_str)
                    .map_or(0, str::len)))
            },
        ))
        .build()
        .await
        .expect("app");
    let text = "celeriac ".repeat(10_000);

    // On the wire: the header and a body much smaller than the JSON.
    app.send_task(
        "tests.len",
        vec![json!(text)],
        Default::default(),
        SendOptions::new().queue("packed"),
    )
    .await
    .expect("sent");
    let raw = app
        .broker()
        .fetch(&FetchParams {
            queues: vec!["packed".into()],
            max: 1,
            wait: Duration::from_secs(5),
            consumer: "compression-test".into(),
            lease: Duration::from_secs(30),
        })
        .await
        .expect("fetch")
        .pop()
        .expect("the message");
    let headers = raw.envelope.headers.clone().into_map();
    assert_eq!(
        headers.get("compression"),
        Some(&json!("application/x-gzip"))
    );
    assert!(
        raw.envelope.body.len() < text.len() / 10,
        "{} bytes for {} of text",
        raw.envelope.body.len(),
        text.len()
    );
    assert!(
        serde_json::from_slice::<Value>(&raw.envelope.body).is_err(),
        "not plain JSON"
    );

    // A worker runs it.
    let worker = RunningWorker::start_default(&app);
    let result = app
        .send_task(
            "tests.len",
            vec![json!(text)],
            Default::default(),
            SendOptions::new().queue("run"),
        )
        .await
        .expect("sent");
    assert_eq!(
        result.get(Duration::from_secs(20)).await.expect("ran"),
        json!(text.len())
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codecs_celeriac_does_not_write_are_refused() {
    let t = TestApp::new();
    let refused = t
        .builder()
        .configure(|s| s.task_compression = "bzip2".into())
        .build()
        .await
        .expect_err("a build error");
    assert!(
        refused.to_string().contains("task_compression"),
        "{refused}"
    );

    let app = t.builder().build().await.expect("app");
    let per_call = app
        .send_task(
            "tests.len",
            vec![],
            Default::default(),
            SendOptions::new().compression("lzma"),
        )
        .await;
    assert!(
        matches!(&per_call, Err(Error::Encode(reason)) if reason.contains("\"lzma\"")),
        "{:?}",
        per_call.err()
    );
}
