//! Golden checks against the values captured from Celery 5.7's Redis backend
//! (PROTOCOL.md §7.4): what celeriac writes for a SUCCESS and a FAILURE has Celery's
//! key, keys in Celery's order, values and TTL; and Python's exact bytes read back.
#![cfg(feature = "redis")]

mod redis_support;

use std::time::Duration;

use celeriac_backend::ResultBackend;
use celeriac_core::{ExceptionInfo, TaskMeta, TaskState};
use redis::AsyncCommands;
use redis_support::RedisHarness;
use serde_json::{json, Value};

/// §7.4 "Success", key `celery-task-meta-plain-0001`, TTL 86400.
const CELERY_SUCCESS: &str = r#"{
  "status": "SUCCESS",
  "result": 5,
  "traceback": null,
  "children": [],
  "date_done": "2026-11-26T16:01:56.204318+00:00",
  "task_id": "plain-0001"
}"#;

/// §7.4 "Failure (ValueError)", key `celery-task-meta-boom-0004`.
const CELERY_FAILURE: &str = r#"{
  "status": "FAILURE",
  "result": {
    "exc_type": "ValueError",
    "exc_message": [
      "kaboom"
    ],
    "exc_module": "builtins"
  },
  "traceback": "Traceback (most recent call last):\n  File \"/proj/tasks.py\", line 27, in boom\n    raise ValueError(msg)\nValueError: kaboom\n",
  "children": [],
  "date_done": "2026-11-26T16:01:56.251737+00:00",
  "task_id": "boom-0004"
}"#;

/// §7.4 "Chord body result" (group and parent ids between date_done and task_id).
const CELERY_CHORD_BODY: &str = r#"{
  "status": "SUCCESS",
  "result": 14,
  "traceback": null,
  "children": [],
  "date_done": "2026-11-26T16:01:56.278102+00:00",
  "group_id": "1ee95526-aaf5-4553-ac01-421bd51a30f4",
  "parent_id": "29103872-cc4c-49a0-87d1-5337945a6628",
  "task_id": "c5d0a215-ec52-4b5c-84fb-e8e0b85e58ad"
}"#;

/// The keys of a JSON object in order.
fn key_order(value: &Value) -> Vec<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Stores `meta` with Celery's default expiry and checks the raw value and TTL
/// against `golden`.
async fn assert_written_like_celery(harness: &RedisHarness, meta: &TaskMeta, golden: &str) {
    let backend = harness.open().await;
    backend
        .store(meta, Some(Duration::from_secs(86400)))
        .await
        .expect("store");
    let key = harness.key(&meta.task_id);
    assert!(
        key.ends_with(&format!("celery-task-meta-{}", meta.task_id)),
        "{key}"
    );
    let mut raw = harness.raw().await;
    let stored: String = raw.get(&key).await.expect("GET");
    let written: Value = serde_json::from_str(&stored).expect("the stored value is JSON");
    let golden: Value = serde_json::from_str(golden).expect("golden JSON");
    assert_eq!(written, golden, "the stored meta equals Celery's");
    assert_eq!(
        key_order(&written),
        key_order(&golden),
        "keys in Celery's order"
    );
    let ttl: i64 = raw.ttl(&key).await.expect("TTL");
    assert!((86399..=86400).contains(&ttl), "TTL {ttl}");
}

#[tokio::test]
async fn a_success_is_written_as_celery_writes_it() {
    let Some(harness) = RedisHarness::new("a_success_is_written_as_celery_writes_it") else {
        return;
    };
    let mut meta = TaskMeta::new("plain-0001", TaskState::Success, json!(5));
    meta.date_done = Some("2026-11-26T16:01:56.204318+00:00".into());
    assert_written_like_celery(&harness, &meta, CELERY_SUCCESS).await;
}

#[tokio::test]
async fn a_failure_is_written_as_celery_writes_it() {
    let Some(harness) = RedisHarness::new("a_failure_is_written_as_celery_writes_it") else {
        return;
    };
    let mut meta = TaskMeta::new(
        "boom-0004",
        TaskState::Failure,
        ExceptionInfo::new("ValueError", "builtins", "kaboom").to_value(),
    );
    meta.traceback = Some(
        "Traceback (most recent call last):\n  File \"/proj/tasks.py\", line 27, in boom\n    raise ValueError(msg)\nValueError: kaboom\n"
            .into(),
    );
    meta.date_done = Some("2026-11-26T16:01:56.251737+00:00".into());
    assert_written_like_celery(&harness, &meta, CELERY_FAILURE).await;
}

#[tokio::test]
async fn group_and_parent_ids_are_written_in_celerys_order() {
    let Some(harness) = RedisHarness::new("group_and_parent_ids_are_written_in_celerys_order")
    else {
        return;
    };
    let mut meta = TaskMeta::new(
        "c5d0a215-ec52-4b5c-84fb-e8e0b85e58ad",
        TaskState::Success,
        json!(14),
    );
    meta.date_done = Some("2026-11-26T16:01:56.278102+00:00".into());
    meta.group_id = Some("1ee95526-aaf5-4553-ac01-421bd51a30f4".into());
    meta.parent_id = Some("29103872-cc4c-49a0-87d1-5337945a6628".into());
    assert_written_like_celery(&harness, &meta, CELERY_CHORD_BODY).await;
}

/// Python's bytes (`json.dumps`, with spaces) under Celery's key read back as the
/// same meta, and a FAILURE keeps its message.
#[tokio::test]
async fn values_written_by_python_read_back() {
    let Some(harness) = RedisHarness::new("values_written_by_python_read_back") else {
        return;
    };
    let mut raw = harness.raw().await;
    for golden in [CELERY_SUCCESS, CELERY_FAILURE, CELERY_CHORD_BODY] {
        let value: Value = serde_json::from_str(golden).expect("golden");
        let id = value["task_id"].as_str().expect("task_id").to_string();
        // Python's separators: ", " and ": ".
        let python = python_dumps(&value);
        let () = raw
            .set_ex(harness.key(&id), &python, 86400)
            .await
            .expect("SETEX");
        let backend = harness.open().await;
        let meta = backend.get(&id).await.expect("get").expect("stored");
        assert_eq!(serde_json::to_value(&meta).expect("json"), value);
        let waited = backend
            .wait(&id, Duration::from_secs(1))
            .await
            .expect("wait")
            .expect("ready");
        assert_eq!(waited, meta);
    }
    let backend = harness.open().await;
    let failure = backend
        .get("boom-0004")
        .await
        .expect("get")
        .expect("stored");
    let exception = failure.exception().expect("an exception");
    assert_eq!(
        (exception.exc_type.as_str(), exception.message()),
        ("ValueError", "kaboom".to_string())
    );
}

/// `json.dumps(value)` with Python's default separators.
fn python_dumps(value: &Value) -> String {
    match value {
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(python_dumps)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_dumps(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// §7.4 "Saved GroupResult" (`GroupResult.save()`), key
/// `celery-taskset-meta-c3c92a7b-8bb9-475d-aa02-36c5bf48971d`.
const CELERY_SAVED_GROUP: &str = r#"{
  "result": [
    [
      "c3c92a7b-8bb9-475d-aa02-36c5bf48971d",
      null
    ],
    [
      [
        [
          "5d11b560-6f3d-40e6-b175-d92345d2e12e",
          null
        ],
        null
      ],
      [
        [
          "54a3a1db-9a85-4224-a9f8-7d6f33bdaf23",
          null
        ],
        null
      ]
    ]
  ]
}"#;

/// A saved group has Celery's key, value (compact as `json.dumps` writes it), TTL and
/// notification; Python's bytes restore; forget deletes the key.
#[tokio::test]
async fn a_saved_group_is_written_as_celery_writes_it() {
    use futures::StreamExt as _;
    let Some(harness) = RedisHarness::new("a_saved_group_is_written_as_celery_writes_it") else {
        return;
    };
    let gid = "c3c92a7b-8bb9-475d-aa02-36c5bf48971d";
    let key = format!("{}celery-taskset-meta-{gid}", harness.prefix());
    let mut pubsub = harness.client().get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(&key).await.expect("SUBSCRIBE");
    let backend = harness.open().await;
    let group = celeriac_backend::SavedGroup::of_tasks(
        gid,
        [
            "5d11b560-6f3d-40e6-b175-d92345d2e12e",
            "54a3a1db-9a85-4224-a9f8-7d6f33bdaf23",
        ],
    );
    backend
        .save_group(&group, Some(Duration::from_secs(86400)))
        .await
        .expect("save_group");
    let mut raw = harness.raw().await;
    let stored: String = raw.get(&key).await.expect("GET");
    let golden: Value = serde_json::from_str(CELERY_SAVED_GROUP).expect("golden JSON");
    assert_eq!(
        serde_json::from_str::<Value>(&stored).expect("JSON"),
        golden
    );
    assert_eq!(
        stored,
        r#"{"result": [["c3c92a7b-8bb9-475d-aa02-36c5bf48971d", null], [[["5d11b560-6f3d-40e6-b175-d92345d2e12e", null], null], [["54a3a1db-9a85-4224-a9f8-7d6f33bdaf23", null], null]]]}"#,
        "json.dumps spacing"
    );
    let ttl: i64 = raw.ttl(&key).await.expect("TTL");
    assert!((86399..=86400).contains(&ttl), "TTL {ttl}");
    let published = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .expect("a notification")
        .expect("the stream is open");
    assert_eq!(published.get_payload_bytes(), stored.as_bytes());

    // Python's pretty-printed bytes (any spacing) restore to the same group.
    let _: () = raw.set(&key, CELERY_SAVED_GROUP).await.expect("SET");
    assert_eq!(
        backend.restore_group(gid).await.expect("restore_group"),
        Some(group)
    );
    backend.forget_group(gid).await.expect("forget_group");
    let exists: bool = raw.exists(&key).await.expect("EXISTS");
    assert!(!exists);
}
