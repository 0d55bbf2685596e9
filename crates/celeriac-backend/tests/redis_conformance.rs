//! The result backend conformance suite against Redis (each test under its own key
//! prefix), plus Redis-only checks: URLs through `connect`, the global key prefix,
//! large batches, and waits across a lost connection.
//!
//! Every test is skipped when no Redis answers (see
//! `celeriac_redis::testing::redis_url_or_skip`).
#![cfg(feature = "redis")]

mod redis_support;

use std::time::{Duration, Instant};

use celeriac_backend::redis::RedisOptions;
use celeriac_backend::{BackendError, ResultBackend, ResultQuery, StoreOutcome};
use celeriac_core::{TaskMeta, TaskState};
use redis::AsyncCommands;
use redis_support::{Proxy, RedisHarness};
use serde_json::json;

celeriac_backend::backend_conformance_tests!(match RedisHarness::new("redis_conformance") {
    Some(harness) => harness,
    None => return,
});

#[tokio::test]
async fn connect_opens_redis_urls_and_refuses_bad_ones() {
    let Some(harness) = RedisHarness::new("connect_opens_redis_urls_and_refuses_bad_ones") else {
        return;
    };
    let backend = celeriac_backend::connect(&harness.url())
        .await
        .expect("connect");
    assert!(backend.describe().starts_with("redis://"));
    backend
        .store(
            &TaskMeta::new("via-connect", TaskState::Success, json!(1)),
            None,
        )
        .await
        .expect("store");
    let mut raw = harness.raw().await;
    let stored: Option<String> = raw.get(harness.key("via-connect")).await.expect("GET");
    assert!(stored.is_some(), "written under the prefixed key");

    for bad in [
        "redis://h/notadb",
        "redis+socket://relative.sock",
        "unix://relative.sock",
    ] {
        assert!(
            matches!(
                celeriac_backend::connect(bad).await,
                Err(BackendError::InvalidUrl { .. })
            ),
            "{bad} is refused"
        );
    }
    // A password never shows in errors.
    let error = celeriac_backend::connect("redis://:hunter2@127.0.0.1:1/0")
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(matches!(error, BackendError::Connection(_)), "{error}");
}

#[tokio::test]
async fn a_prefix_without_separator_gets_celerys_underscore() {
    let Some(harness) = RedisHarness::new("a_prefix_without_separator_gets_celerys_underscore")
    else {
        return;
    };
    // The harness's own prefix ends in ':'; one more segment without a separator.
    let prefix = format!("{}app", harness.prefix());
    let url = redis_support::with_prefix(harness.server(), &prefix);
    let backend = celeriac_backend::connect(&url).await.expect("connect");
    backend
        .store(&TaskMeta::new("p1", TaskState::Success, json!(7)), None)
        .await
        .expect("store");
    let mut raw = harness.raw().await;
    let key = format!("{prefix}_celery-task-meta-p1");
    let stored: Option<String> = raw.get(&key).await.expect("GET");
    assert!(stored.is_some(), "{key} holds the meta");
    assert_eq!(
        backend.get("p1").await.expect("get").map(|m| m.result),
        Some(json!(7))
    );
}

#[tokio::test]
async fn listings_are_declared_unsupported_and_cleanup_counts_nothing() {
    let Some(harness) =
        RedisHarness::new("listings_are_declared_unsupported_and_cleanup_counts_nothing")
    else {
        return;
    };
    let backend = harness.open().await;
    assert!(matches!(
        backend.recent(&ResultQuery::default()).await,
        Err(BackendError::Unsupported {
            operation: "recent",
            ..
        })
    ));
    assert!(matches!(
        backend.count_by_state().await,
        Err(BackendError::Unsupported {
            operation: "count_by_state",
            ..
        })
    ));
    assert_eq!(backend.cleanup_expired().await.expect("cleanup"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_larger_than_one_script_call_are_all_stored() {
    let Some(harness) = RedisHarness::new("batches_larger_than_one_script_call_are_all_stored")
    else {
        return;
    };
    let backend = harness.open().await;
    let metas: Vec<TaskMeta> = (0..2500)
        .map(|i| TaskMeta::new(format!("big-{i}"), TaskState::Success, json!(i)))
        .collect();
    backend
        .store_many(&metas, Some(Duration::from_secs(600)))
        .await
        .expect("store_many");
    let mut raw = harness.raw().await;
    let keys: Vec<String> = metas.iter().map(|m| harness.key(&m.task_id)).collect();
    let stored: Vec<Option<String>> = raw.mget(&keys).await.expect("MGET");
    assert!(stored.iter().all(Option::is_some), "every meta is stored");
    assert_eq!(
        backend
            .get("big-2499")
            .await
            .expect("get")
            .map(|m| m.result),
        Some(json!(2499))
    );
}

/// A waiter whose connections are cut still returns promptly once the result is
/// stored: the subscriber reconnects, subscribes again and reads the key (the safety
/// re-read is set to a minute, so it is not what finds the result).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_survives_a_lost_connection() {
    let Some(harness) = RedisHarness::new("a_wait_survives_a_lost_connection") else {
        return;
    };
    let proxy = Proxy::start(&harness).await;
    let mut options = RedisOptions::default();
    options.recheck_interval = Duration::from_secs(60);
    let waiter = harness.open_via(&proxy.url, options).await;
    let writer = harness.open().await;

    // Stored while the waiter's connections are down: the published message is lost.
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.wait("reconnect-1", Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    let stored_at = Instant::now();
    writer
        .store(
            &TaskMeta::new("reconnect-1", TaskState::Success, json!("after the cut")),
            None,
        )
        .await
        .expect("store");
    let meta = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait returns")
        .expect("join")
        .expect("wait succeeds")
        .expect("the result, not a timeout");
    assert_eq!(meta.result, json!("after the cut"));
    assert!(
        stored_at.elapsed() < Duration::from_secs(5),
        "found after {:?}",
        stored_at.elapsed()
    );

    // Stored after the reconnect: delivered by the new subscription.
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.wait("reconnect-2", Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored_at = Instant::now();
    writer
        .store(
            &TaskMeta::new("reconnect-2", TaskState::Failure, json!(null)),
            None,
        )
        .await
        .expect("store");
    let meta = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait returns")
        .expect("join")
        .expect("wait succeeds")
        .expect("the result");
    assert_eq!(meta.status, TaskState::Failure);
    assert!(stored_at.elapsed() < Duration::from_secs(2));

    // The command connection recovers too.
    assert_eq!(
        waiter
            .store(
                &TaskMeta::new("reconnect-1", TaskState::Failure, json!(null)),
                None
            )
            .await
            .expect("store after reconnect"),
        StoreOutcome::KeptSuccess
    );
}
