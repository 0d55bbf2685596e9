//! `GroupResult::save` / `restore` / `forget` on the embedded SQLite backend: a saved
//! group restores with its members in order and `get` returns their values in that
//! order.

use std::sync::Arc;
use std::time::Duration;

use celeriac::backend::sqlite::{SqliteBackend, SqliteOptions};
use celeriac::backend::{ResultBackend, ResultTuple, SavedGroup};
use celeriac::core::{TaskMeta, TaskState};
use celeriac::{AsyncResult, Error, GroupResult};
use serde_json::json;

async fn backend(dir: &tempfile::TempDir) -> Arc<dyn ResultBackend> {
    Arc::new(
        SqliteBackend::open(dir.path().join("results.db"), SqliteOptions::default())
            .await
            .expect("open the SQLite backend"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_group_restores_in_member_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = backend(&dir).await;
    // Members finish out of order; the group keeps its own order.
    let ids = ["m-2", "m-0", "m-1"];
    let group = GroupResult::new(
        "g-1".into(),
        ids.iter()
            .map(|id| AsyncResult::new(id.to_string(), Some(Arc::clone(&backend))))
            .collect(),
    );
    group
        .save(Some(Duration::from_secs(3600)))
        .await
        .expect("save");
    for (value, id) in [(0, "m-0"), (1, "m-1"), (2, "m-2")] {
        backend
            .store(&TaskMeta::new(id, TaskState::Success, json!(value)), None)
            .await
            .expect("store");
    }

    let other = backend_again(&dir).await;
    let restored = GroupResult::restore(other, "g-1")
        .await
        .expect("restore")
        .expect("the group was saved");
    assert_eq!(restored.id(), "g-1");
    let restored_ids: Vec<&str> = restored.results().iter().map(|r| r.id()).collect();
    assert_eq!(restored_ids, ids);
    assert_eq!(
        restored.get(Duration::from_secs(5)).await.expect("get"),
        vec![json!(2), json!(0), json!(1)]
    );

    restored.forget().await.expect("forget");
    assert!(GroupResult::restore(Arc::clone(&backend), "g-1")
        .await
        .expect("restore")
        .is_none());
    assert_eq!(
        AsyncResult::<i64>::new("m-0".into(), Some(backend))
            .get(Duration::from_secs(1))
            .await
            .expect("members survive forgetting the group"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_cases_say_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = backend(&dir).await;
    let nested = SavedGroup {
        id: "outer".into(),
        parent: None,
        members: vec![ResultTuple::Group(SavedGroup::of_tasks("inner", ["a"]))],
    };
    backend.save_group(&nested, None).await.expect("save");
    assert!(matches!(
        GroupResult::restore(Arc::clone(&backend), "outer").await,
        Err(Error::Workflow(reason)) if reason.contains("nested")
    ));
    let without_backend = GroupResult::new("g".into(), vec![AsyncResult::new("a".into(), None)]);
    assert!(matches!(
        without_backend.save(None).await,
        Err(Error::NoBackend)
    ));
}

async fn backend_again(dir: &tempfile::TempDir) -> Arc<dyn ResultBackend> {
    backend(dir).await
}
