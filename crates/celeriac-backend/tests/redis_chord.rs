//! Chord bookkeeping on Redis (`chord_part_return.lua`, `chord_extend_claim.lua`,
//! `chord_finish.lua`) on Celery 5.7's keys: counting, dedupe of redelivered parts,
//! one dispatcher among racing callers, the `done` marker, and parts written by a
//! Python worker read back in order.
#![cfg(feature = "redis")]

mod redis_support;

use std::time::Duration;

use celeriac_backend::{ChordPart, ChordProgress, ResultBackend};
use celeriac_core::TaskState;
use redis::AsyncCommands;
use redis_support::RedisHarness;
use serde_json::json;

const DAY: Option<Duration> = Some(Duration::from_secs(86400));
const CLAIM: Duration = Duration::from_secs(10);

fn part(group: &str, id: &str, index: i64, value: i64) -> ChordPart {
    ChordPart::new(group, id, Some(index), TaskState::Success, json!(value))
}

#[tokio::test]
async fn the_last_part_completes_the_chord_with_results_in_header_order() {
    let Some(harness) = RedisHarness::new("chord_last_part_completes") else {
        return;
    };
    let backend = harness.open().await;
    backend.chord_set_size("g1", 3, DAY).await.expect("size");
    // Out of order, with a redelivered copy of the first part.
    for p in [
        part("g1", "b", 1, 20),
        part("g1", "c", 2, 30),
        part("g1", "b", 1, 99),
    ] {
        let progress = backend
            .chord_part_return(&p, DAY, CLAIM)
            .await
            .expect("part");
        assert!(
            matches!(progress, ChordProgress::Pending { .. }),
            "{progress:?}"
        );
    }
    let progress = backend
        .chord_part_return(&part("g1", "a", 0, 10), DAY, CLAIM)
        .await
        .expect("last part");
    let ChordProgress::Complete { claim, parts } = progress else {
        panic!("the last part completes the chord: {progress:?}");
    };
    let values: Vec<_> = parts.iter().map(|p| p.result.clone()).collect();
    assert_eq!(
        values,
        vec![json!(10), json!(20), json!(30)],
        "header order, first copy kept"
    );
    assert!(backend
        .chord_extend_claim("g1", &claim, CLAIM)
        .await
        .expect("extend"));
    assert!(!backend
        .chord_extend_claim("g1", "someone-else", CLAIM)
        .await
        .expect("extend"));
    assert!(backend.chord_finish("g1", &claim).await.expect("finish"));

    let mut raw = harness.raw().await;
    let base = format!("{}celery-taskset-meta-g1", harness.prefix());
    let done: Option<String> = raw.get(format!("{base}.c")).await.expect("GET");
    assert_eq!(done.as_deref(), Some("done"));
    for suffix in [".j", ".s", ".d", ".t"] {
        let exists: bool = raw.exists(format!("{base}{suffix}")).await.expect("EXISTS");
        assert!(!exists, "{suffix} deleted after dispatch");
    }
    // A late duplicate of a header task does nothing.
    let late = backend
        .chord_part_return(&part("g1", "a", 0, 10), DAY, CLAIM)
        .await
        .expect("late part");
    assert_eq!(late, ChordProgress::Done);
}

#[tokio::test]
async fn of_racing_last_parts_exactly_one_dispatches() {
    let Some(harness) = RedisHarness::new("chord_racing_last_parts") else {
        return;
    };
    let backend = harness.open().await;
    let size = 50;
    backend
        .chord_set_size("race", size, DAY)
        .await
        .expect("size");
    let mut calls = Vec::new();
    for i in 0..size as i64 {
        let backend = backend.clone();
        calls.push(tokio::spawn(async move {
            backend
                .chord_part_return(&part("race", &format!("t{i}"), i, i), DAY, CLAIM)
                .await
                .expect("part")
        }));
    }
    let mut completes = 0;
    for call in calls {
        if let ChordProgress::Complete { parts, .. } = call.await.expect("join") {
            completes += 1;
            assert_eq!(parts.len(), size as usize);
        }
    }
    assert_eq!(completes, 1, "one dispatcher");
}

#[tokio::test]
async fn parts_a_python_worker_recorded_are_read_back() {
    let Some(harness) = RedisHarness::new("chord_python_parts") else {
        return;
    };
    let backend = harness.open().await;
    backend.chord_set_size("py", 2, DAY).await.expect("size");
    // What Celery 5.7's script leaves after a Python header task (index 0) failed.
    let base = format!("{}celery-taskset-meta-py", harness.prefix());
    let mut raw = harness.raw().await;
    let python_part = r#"[1, "py-0", "FAILURE", {"exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins"}]"#;
    let _: () = raw
        .zadd(format!("{base}.j"), python_part, 0)
        .await
        .expect("ZADD");
    let _: () = raw.sadd(format!("{base}.d"), "py-0:0").await.expect("SADD");
    let progress = backend
        .chord_part_return(&part("py", "rs-1", 1, 7), DAY, CLAIM)
        .await
        .expect("part");
    let ChordProgress::Complete { parts, .. } = progress else {
        panic!("complete: {progress:?}");
    };
    assert_eq!(parts[0].task_id, "py-0");
    assert_eq!(parts[0].state, TaskState::Failure);
    assert_eq!(parts[0].result["exc_type"], json!("ValueError"));
    assert_eq!(parts[1].result, json!(7));
    // Expiries are refreshed on every part.
    let ttl: i64 = raw.ttl(format!("{base}.j")).await.expect("TTL");
    assert!(ttl > 86000, "{ttl}");
}

#[tokio::test]
async fn without_a_size_nothing_completes() {
    let Some(harness) = RedisHarness::new("chord_without_size") else {
        return;
    };
    let backend = harness.open().await;
    let progress = backend
        .chord_part_return(&part("nosize", "a", 0, 1), DAY, CLAIM)
        .await
        .expect("part");
    assert_eq!(progress, ChordProgress::Pending { ready: 1 });
}
