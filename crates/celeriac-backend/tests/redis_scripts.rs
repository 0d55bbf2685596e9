//! `store.lua` against a real Redis: seed a key as Python Celery (or anything else)
//! left it, run the script through the backend or raw `EVAL`, assert the end state,
//! the TTL and what was published.
#![cfg(feature = "redis")]

mod redis_support;

use std::time::Duration;

use celeriac_backend::redis::STORE_SCRIPT;
use celeriac_backend::{ResultBackend, StoreOutcome};
use celeriac_core::{ExceptionInfo, TaskMeta, TaskState};
use futures::StreamExt;
use redis::AsyncCommands;
use redis_support::RedisHarness;
use serde_json::json;

/// A Python worker's SUCCESS, byte for byte as `json.dumps` writes it.
const PYTHON_SUCCESS: &str = r#"{"status": "SUCCESS", "result": 5, "traceback": null, "children": [], "date_done": "2026-11-26T16:01:56.204318+00:00", "task_id": "ID"}"#;
/// A Python worker's STARTED.
const PYTHON_STARTED: &str = r#"{"status": "STARTED", "result": {"pid": 10429, "hostname": "w2@vm"}, "traceback": null, "children": [], "date_done": null, "task_id": "ID"}"#;

/// A subscription to `channel` on its own connection.
async fn subscribe(harness: &RedisHarness, channel: &str) -> redis::aio::PubSub {
    let mut pubsub = harness.client().get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(channel).await.expect("SUBSCRIBE");
    pubsub
}

/// The next published payload within `limit`, if any.
async fn next_message(pubsub: &mut redis::aio::PubSub, limit: Duration) -> Option<Vec<u8>> {
    tokio::time::timeout(limit, pubsub.on_message().next())
        .await
        .ok()
        .flatten()
        .map(|m| m.get_payload_bytes().to_vec())
}

#[tokio::test]
async fn an_empty_key_is_set_with_setex_and_the_same_bytes_are_published() {
    let Some(harness) = RedisHarness::new("an_empty_key_is_set_with_setex") else {
        return;
    };
    let backend = harness.open().await;
    let key = harness.key("fresh");
    let mut pubsub = subscribe(&harness, &key).await;
    let meta = TaskMeta::new("fresh", TaskState::Success, json!({"total": 5}));
    let outcome = backend
        .store(&meta, Some(Duration::from_secs(86400)))
        .await
        .expect("store");
    assert_eq!(outcome, StoreOutcome::Stored);

    let mut raw = harness.raw().await;
    let stored: Vec<u8> = raw.get(&key).await.expect("GET");
    assert_eq!(stored, serde_json::to_vec(&meta).expect("json"));
    let ttl: i64 = raw.ttl(&key).await.expect("TTL");
    assert!((86399..=86400).contains(&ttl), "TTL {ttl}");
    let published = next_message(&mut pubsub, Duration::from_secs(5))
        .await
        .expect("published");
    assert_eq!(
        published, stored,
        "the published bytes are the stored bytes"
    );
}

#[tokio::test]
async fn a_python_success_is_kept_untouched_and_nothing_is_published() {
    let Some(harness) = RedisHarness::new("a_python_success_is_kept_untouched") else {
        return;
    };
    let backend = harness.open().await;
    let key = harness.key("done");
    let seeded = PYTHON_SUCCESS.replace("ID", "done");
    let mut raw = harness.raw().await;
    let () = raw.set_ex(&key, &seeded, 1000).await.expect("SETEX");
    let mut pubsub = subscribe(&harness, &key).await;

    let failure = TaskMeta::new(
        "done",
        TaskState::Failure,
        ExceptionInfo::new("ValueError", "builtins", "redelivered").to_value(),
    );
    assert_eq!(
        backend.store(&failure, None).await.expect("store"),
        StoreOutcome::KeptSuccess
    );
    backend
        .store_many(std::slice::from_ref(&failure), Some(Duration::from_secs(5)))
        .await
        .expect("store_many");

    let stored: String = raw.get(&key).await.expect("GET");
    assert_eq!(stored, seeded, "the bytes are untouched");
    let ttl: i64 = raw.ttl(&key).await.expect("TTL");
    assert!(ttl > 900, "the TTL is untouched: {ttl}");
    assert_eq!(
        next_message(&mut pubsub, Duration::from_millis(300)).await,
        None,
        "a kept SUCCESS publishes nothing"
    );
    let read = backend.get("done").await.expect("get").expect("stored");
    assert_eq!((read.status, read.result), (TaskState::Success, json!(5)));
}

#[tokio::test]
async fn other_states_and_unreadable_values_are_replaced() {
    let Some(harness) = RedisHarness::new("other_states_and_unreadable_values_are_replaced") else {
        return;
    };
    let backend = harness.open().await;
    let mut raw = harness.raw().await;
    let seeds: [(&str, Vec<u8>); 4] = [
        (
            "started",
            PYTHON_STARTED.replace("ID", "started").into_bytes(),
        ),
        ("garbage", b"{not json".to_vec()),
        ("list", b"[1, 2]".to_vec()),
        (
            "compressed",
            b"\x00celery-compressed\x00application/x-gzip\x00\x1f\x8b".to_vec(),
        ),
    ];
    for (id, seed) in seeds {
        let key = harness.key(id);
        let () = raw.set(&key, seed).await.expect("SET");
        let meta = TaskMeta::new(id, TaskState::Success, json!(id));
        assert_eq!(
            backend.store(&meta, None).await.expect("store"),
            StoreOutcome::Stored,
            "{id} is replaced"
        );
        let stored: Vec<u8> = raw.get(&key).await.expect("GET");
        assert_eq!(stored, serde_json::to_vec(&meta).expect("json"), "{id}");
    }
}

#[tokio::test]
async fn expiries_use_setex_psetex_or_no_ttl() {
    let Some(harness) = RedisHarness::new("expiries_use_setex_psetex_or_no_ttl") else {
        return;
    };
    let backend = harness.open().await;
    let mut raw = harness.raw().await;
    let cases = [
        ("never", None),
        ("zero", Some(Duration::ZERO)),
        ("seconds", Some(Duration::from_secs(120))),
        ("millis", Some(Duration::from_millis(60_500))),
    ];
    for (id, expires) in cases {
        backend
            .store(&TaskMeta::new(id, TaskState::Started, json!(null)), expires)
            .await
            .expect("store");
    }
    let pttl = |id: &str| {
        let key = harness.key(id);
        let mut raw = raw.clone();
        async move { raw.pttl::<_, i64>(&key).await.expect("PTTL") }
    };
    assert_eq!(pttl("never").await, -1);
    assert_eq!(pttl("zero").await, -1);
    let seconds = pttl("seconds").await;
    assert!((110_000..=120_000).contains(&seconds), "{seconds}");
    let millis = pttl("millis").await;
    assert!((50_000..=60_500).contains(&millis), "{millis}");
    // A store replaces the TTL, as SETEX does.
    backend
        .store(
            &TaskMeta::new("seconds", TaskState::Success, json!(1)),
            None,
        )
        .await
        .expect("store");
    assert_eq!(pttl("seconds").await, -1);
    let _: () = raw.del(harness.key("never")).await.expect("DEL");
}

#[tokio::test]
async fn a_batch_reports_each_key_and_publishes_only_what_it_wrote() {
    let Some(harness) = RedisHarness::new("a_batch_reports_each_key") else {
        return;
    };
    let mut raw = harness.raw().await;
    let kept = harness.key("b-kept");
    let () = raw
        .set(&kept, PYTHON_SUCCESS.replace("ID", "b-kept"))
        .await
        .expect("SET");
    let metas = [
        TaskMeta::new("b-new", TaskState::Success, json!(1)),
        TaskMeta::new("b-kept", TaskState::Failure, json!(null)),
        TaskMeta::new("b-started", TaskState::Started, json!(null)),
    ];
    let script = redis::Script::new(STORE_SCRIPT);
    let mut invocation = script.prepare_invoke();
    invocation.arg(0);
    for meta in &metas {
        invocation
            .key(harness.key(&meta.task_id))
            .arg(serde_json::to_vec(meta).expect("json"));
    }
    let mut pubsub = harness.client().get_async_pubsub().await.expect("pubsub");
    pubsub
        .psubscribe(format!("{}*", harness.prefix()))
        .await
        .expect("PSUBSCRIBE");
    let outcome: Vec<i64> = invocation.invoke_async(&mut raw).await.expect("EVALSHA");
    assert_eq!(outcome, vec![1, 0, 1]);
    let mut channels = Vec::new();
    while let Some(message) =
        tokio::time::timeout(Duration::from_millis(300), pubsub.on_message().next())
            .await
            .ok()
            .flatten()
    {
        channels.push(message.get_channel_name().to_string());
    }
    assert_eq!(
        channels,
        vec![harness.key("b-new"), harness.key("b-started")],
        "published in order, the kept key not at all"
    );
}

#[tokio::test]
async fn the_script_refuses_arguments_outside_its_contract() {
    let Some(harness) = RedisHarness::new("the_script_refuses_arguments_outside_its_contract")
    else {
        return;
    };
    let mut raw = harness.raw().await;
    let key = harness.key("contract");
    let no_ttl: redis::RedisResult<Vec<i64>> = redis::cmd("EVAL")
        .arg(STORE_SCRIPT)
        .arg(1)
        .arg(&key)
        .arg("soon")
        .arg("{}")
        .query_async(&mut raw)
        .await;
    assert!(no_ttl.is_err(), "a non-numeric expiry is refused");
    let missing_value: redis::RedisResult<Vec<i64>> = redis::cmd("EVAL")
        .arg(STORE_SCRIPT)
        .arg(1)
        .arg(&key)
        .arg(0)
        .query_async(&mut raw)
        .await;
    assert!(missing_value.is_err(), "one meta per key");
    let exists: bool = raw.exists(&key).await.expect("EXISTS");
    assert!(!exists, "nothing was written");
}
