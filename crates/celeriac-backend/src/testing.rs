//! The result backend conformance suite: one test per behaviour of the
//! [`ResultBackend`] contract, run by every implementation.
//!
//! An implementation provides a [`BackendHarness`] and expands
//! [`backend_conformance_tests!`](crate::backend_conformance_tests) in one of its
//! integration test files:
//!
//! ```ignore
//! // tests/sqlite_conformance.rs
//! celeriac_backend::backend_conformance_tests!(celeriac_backend::testing::SqliteHarness::new());
//! ```
//!
//! Each generated test builds its own harness and uses fresh task ids (UUIDs), so
//! the tests run in parallel, also against one shared store (a Redis database).
//! [`BackendHarness::backend`] returns a new handle to the same store on every call,
//! which is how the suite simulates a second process: a result stored through one
//! handle must be readable, and must wake waiters, through another.
//!
//! The test functions are public so an implementation can also call single ones from
//! its own tests. Waits are bounded by timeouts; nothing sleeps for long.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::{ExceptionInfo, TaskMeta, TaskState};
use serde_json::json;
use tokio::time::Instant;

use crate::{BackendError, ChordPart, ChordProgress, ResultBackend, ResultQuery, StoreOutcome};

/// Builds handles to one result store for the conformance suite.
#[async_trait]
pub trait BackendHarness: Send + Sync {
    /// A new handle to the same store on every call (as another process would open
    /// it). Panics if the store cannot be opened.
    async fn backend(&self) -> Arc<dyn ResultBackend>;

    /// Whether expired results stay stored until
    /// [`ResultBackend::cleanup_expired`] deletes (and counts) them. A store that
    /// drops them by itself (Redis TTLs) returns `false`, and the suite then only
    /// checks that expired results read as absent.
    fn expires_lazily(&self) -> bool {
        true
    }
}

/// A SQLite file in a temporary directory, deleted on drop.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub struct SqliteHarness {
    dir: tempfile::TempDir,
}

#[cfg(feature = "sqlite")]
impl SqliteHarness {
    /// A harness on a new, empty file. Panics if no temporary directory can be made.
    pub fn new() -> SqliteHarness {
        SqliteHarness {
            dir: tempfile::tempdir().expect("a temporary directory for the SQLite harness"),
        }
    }

    /// The database file.
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("results.db")
    }
}

#[cfg(feature = "sqlite")]
impl Default for SqliteHarness {
    fn default() -> Self {
        SqliteHarness::new()
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl BackendHarness for SqliteHarness {
    async fn backend(&self) -> Arc<dyn ResultBackend> {
        let backend = crate::sqlite::SqliteBackend::open(
            self.path(),
            crate::sqlite::SqliteOptions::default(),
        )
        .await
        .expect("the SQLite harness opens its file");
        Arc::new(backend)
    }
}

/// Expands to one `#[tokio::test]` per conformance behaviour. The argument is an
/// expression building a [`BackendHarness`]; it is evaluated once per test. The
/// calling crate needs `tokio` (with `macros` and `rt-multi-thread`).
#[macro_export]
macro_rules! backend_conformance_tests {
    ($harness:expr) => {
        $crate::backend_conformance_tests!(@tests $harness;
            store_then_get_round_trips,
            celery_meta_round_trips_unchanged,
            missing_id_reads_as_none,
            success_is_never_overwritten,
            other_states_are_overwritten_in_order,
            wait_returns_when_another_handle_stores_a_ready_state,
            wait_wakes_on_a_store_through_the_same_handle,
            wait_returns_at_once_when_already_ready,
            wait_times_out_with_none,
            concurrent_waiters_each_get_their_result,
            forget_deletes_the_result,
            expired_results_read_as_absent_and_are_cleaned_up,
            zero_expiry_never_expires,
            store_many_stores_every_meta,
            concurrent_stores_through_several_handles,
            recent_lists_newest_first_filtered_by_state,
            count_by_state_counts_live_results,
            chord_completes_once_with_parts_in_header_order,
            chord_racing_parts_elect_one_dispatcher,
            chord_claim_is_owned_and_finish_marks_done,
            saved_group_restores_with_members_in_order,
            saved_group_expires,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                ::tokio::time::timeout(
                    ::std::time::Duration::from_secs(60),
                    $crate::testing::$name(&harness),
                )
                .await
                .expect(concat!(stringify!($name), " finishes within 60 s"));
            }
        )*
    };
}

/// A task id no other test uses.
fn unique_id(label: &str) -> String {
    format!("conformance-{label}-{}", uuid::Uuid::new_v4())
}

/// A custom state no other test uses, to isolate listings in a shared store.
fn unique_state(label: &str) -> TaskState {
    TaskState::Custom(format!(
        "CONFORMANCE-{label}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

/// A SUCCESS meta returning `result`.
fn success(task_id: &str, result: serde_json::Value) -> TaskMeta {
    TaskMeta::new(task_id, TaskState::Success, result)
}

/// A meta in `state` with an exception dict as Celery writes for exception states.
fn failed(task_id: &str, state: TaskState, message: &str) -> TaskMeta {
    let mut meta = TaskMeta::new(
        task_id,
        state,
        ExceptionInfo::new("ValueError", "builtins", message).to_value(),
    );
    meta.traceback = Some(format!(
        "Traceback (most recent call last):\nValueError: {message}\n"
    ));
    meta
}

/// Asserts that `meta` was stored.
async fn store(backend: &Arc<dyn ResultBackend>, meta: &TaskMeta, expires: Option<Duration>) {
    let outcome = backend.store(meta, expires).await.expect("store succeeds");
    assert_eq!(
        outcome,
        StoreOutcome::Stored,
        "{} {} is stored",
        meta.task_id,
        meta.status
    );
}

/// Reads `task_id`, which must be present.
async fn get(backend: &Arc<dyn ResultBackend>, task_id: &str) -> TaskMeta {
    backend
        .get(task_id)
        .await
        .expect("get succeeds")
        .unwrap_or_else(|| panic!("{task_id} is stored"))
}

/// Polls `condition` every 10 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Returns `Ok(None)` (skipping the test) when the backend does not support an
/// optional operation.
fn supported<T>(result: Result<T, BackendError>, operation: &str) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(BackendError::Unsupported { backend, .. }) => {
            eprintln!("skipped: {backend} does not support {operation}");
            None
        }
        Err(other) => panic!("{operation} failed: {other}"),
    }
}

/// Every Celery field, and the `result_extended` ones, survive a store and a get
/// through another handle.
pub async fn store_then_get_round_trips<H: BackendHarness>(harness: &H) {
    let writer = harness.backend().await;
    let reader = harness.backend().await;
    let id = unique_id("round-trip");
    let child = unique_id("child");
    let mut meta = success(&id, json!({"total": 5, "items": [1, "two", null, 4.5]}));
    meta.traceback = Some("no traceback, just text".into());
    meta.children = vec![json!([[child, null], null])];
    meta.date_done = Some("2026-11-26T16:01:56.204318+00:00".into());
    meta.group_id = Some(unique_id("group"));
    meta.parent_id = Some(unique_id("parent"));
    meta.name = Some("proj.tasks.add".into());
    meta.args = Some(json!([2, 3]));
    meta.kwargs = Some(json!({"scale": 1}));
    meta.worker = Some("celery@host".into());
    meta.retries = Some(2);
    meta.queue = Some("short-task".into());
    store(&writer, &meta, Some(Duration::from_secs(3600))).await;
    assert_eq!(get(&reader, &id).await, meta);
    assert_eq!(
        get(&writer, &id).await,
        meta,
        "the writing handle reads it too"
    );

    let id = unique_id("failure");
    let meta = failed(&id, TaskState::Failure, "kaboom");
    store(&writer, &meta, None).await;
    let read = get(&reader, &id).await;
    assert_eq!(read, meta);
    assert_eq!(read.exception().map(|e| e.message()), Some("kaboom".into()));
}

/// A meta as Python Celery writes it reads back and serializes to the same JSON.
pub async fn celery_meta_round_trips_unchanged<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let id = unique_id("celery");
    let raw = json!({
        "status": "FAILURE",
        "result": {"exc_type": "ValueError", "exc_message": ["kaboom"], "exc_module": "builtins"},
        "traceback": "Traceback (most recent call last):\nValueError: kaboom\n",
        "children": [[[unique_id("next"), null], null]],
        "date_done": "2026-11-26T16:01:56.251737+00:00",
        "group_id": unique_id("group"),
        "parent_id": unique_id("parent"),
        "task_id": id,
    });
    let meta: TaskMeta = serde_json::from_value(raw.clone()).expect("a Celery meta parses");
    store(&backend, &meta, None).await;
    let read = get(&harness.backend().await, &id).await;
    assert_eq!(serde_json::to_value(&read).expect("serializes"), raw);
}

/// An id nobody stored reads as `None` (PENDING).
pub async fn missing_id_reads_as_none<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    assert_eq!(backend.get(&unique_id("missing")).await.expect("get"), None);
    backend
        .store(&success(&unique_id("other"), json!(1)), None)
        .await
        .expect("store");
    assert_eq!(backend.get(&unique_id("missing")).await.expect("get"), None);
}

/// A stored SUCCESS is kept whatever is stored after it, by `store` and by
/// `store_many`.
pub async fn success_is_never_overwritten<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let other = harness.backend().await;
    let id = unique_id("success-kept");
    let original = success(&id, json!("first"));
    store(&backend, &original, None).await;

    for later in [
        failed(&id, TaskState::Failure, "redelivered and failed"),
        TaskMeta::new(&id, TaskState::Started, json!({"pid": 1, "hostname": "w"})),
        failed(&id, TaskState::Revoked, "revoked"),
        success(&id, json!("second")),
    ] {
        for handle in [&backend, &other] {
            let outcome = handle.store(&later, None).await.expect("store");
            assert_eq!(
                outcome,
                StoreOutcome::KeptSuccess,
                "{} does not replace SUCCESS",
                later.status
            );
            assert_eq!(get(handle, &id).await, original);
        }
    }
    other
        .store_many(&[failed(&id, TaskState::Failure, "batched")], None)
        .await
        .expect("store_many");
    assert_eq!(
        get(&backend, &id).await,
        original,
        "store_many keeps SUCCESS too"
    );
}

/// States other than SUCCESS are replaced by each later store.
pub async fn other_states_are_overwritten_in_order<H: BackendHarness>(harness: &H) {
    let writer = harness.backend().await;
    let reader = harness.backend().await;
    let id = unique_id("progress");
    let steps = [
        TaskMeta::new(&id, TaskState::Received, json!(null)),
        TaskMeta::new(
            &id,
            TaskState::Started,
            json!({"pid": 42, "hostname": "celery@w"}),
        ),
        failed(&id, TaskState::Retry, "try again"),
        failed(&id, TaskState::Failure, "gave up"),
        // A FAILURE is not final for the store: a retried message may still succeed.
        success(&id, json!("finally")),
    ];
    for step in &steps {
        store(&writer, step, None).await;
        assert_eq!(
            get(&reader, &id).await,
            *step,
            "{} replaced the previous state",
            step.status
        );
    }
}

/// `wait` ignores states that are not ready and returns soon after another handle
/// stores a ready one.
pub async fn wait_returns_when_another_handle_stores_a_ready_state<H: BackendHarness>(harness: &H) {
    let waiter = harness.backend().await;
    let writer = harness.backend().await;
    let id = unique_id("wait-other");
    let timeout = Duration::from_secs(20);
    let mut waiting = tokio::spawn({
        let id = id.clone();
        async move { waiter.wait(&id, timeout).await }
    });

    store(
        &writer,
        &TaskMeta::new(&id, TaskState::Started, json!({"pid": 1})),
        None,
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "wait does not return for STARTED"
    );

    let stored_at = Instant::now();
    let done = success(&id, json!(42));
    store(&writer, &done, None).await;
    let meta = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("wait returns after the SUCCESS")
        .expect("the waiting task does not panic")
        .expect("wait succeeds")
        .expect("wait returns the meta, not a timeout");
    assert_eq!(meta, done);
    let latency = stored_at.elapsed();
    assert!(
        latency < Duration::from_secs(2),
        "woken {latency:?} after the store"
    );
}

/// A store through the waiting handle wakes the wait.
pub async fn wait_wakes_on_a_store_through_the_same_handle<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let id = unique_id("wait-same");
    let waiting = tokio::spawn({
        let backend = Arc::clone(&backend);
        let id = id.clone();
        async move { backend.wait(&id, Duration::from_secs(20)).await }
    });
    // Let the waiter start; the result must arrive whether or not it has.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stored_at = Instant::now();
    let done = failed(&id, TaskState::Failure, "boom");
    store(&backend, &done, None).await;
    let meta = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("wait returns after the FAILURE")
        .expect("the waiting task does not panic")
        .expect("wait succeeds")
        .expect("wait returns the meta");
    assert_eq!(meta, done);
    let latency = stored_at.elapsed();
    assert!(
        latency < Duration::from_secs(1),
        "woken {latency:?} after the store"
    );
}

/// `wait` on a task that is already ready returns it without waiting.
pub async fn wait_returns_at_once_when_already_ready<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let id = unique_id("wait-ready");
    let revoked = TaskMeta::new(
        &id,
        TaskState::Revoked,
        ExceptionInfo::revoked("revoked").to_value(),
    );
    store(&backend, &revoked, None).await;
    let started = Instant::now();
    let meta = harness
        .backend()
        .await
        .wait(&id, Duration::from_secs(20))
        .await
        .expect("wait succeeds");
    assert_eq!(meta, Some(revoked));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "returned at once"
    );
}

/// `wait` returns `None` after the timeout for a missing task and for one that
/// never becomes ready.
pub async fn wait_times_out_with_none<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let timeout = Duration::from_millis(200);

    let started = Instant::now();
    let meta = backend
        .wait(&unique_id("wait-missing"), timeout)
        .await
        .expect("wait");
    let waited = started.elapsed();
    assert_eq!(meta, None);
    assert!(
        waited >= timeout - Duration::from_millis(5),
        "waited the timeout, not {waited:?}"
    );
    assert!(
        waited < timeout + Duration::from_secs(2),
        "returned soon after the timeout, not {waited:?}"
    );

    let id = unique_id("wait-started");
    store(
        &backend,
        &TaskMeta::new(&id, TaskState::Started, json!(null)),
        None,
    )
    .await;
    let started = Instant::now();
    assert_eq!(backend.wait(&id, timeout).await.expect("wait"), None);
    assert!(started.elapsed() >= timeout - Duration::from_millis(5));

    assert_eq!(
        backend.wait(&id, Duration::ZERO).await.expect("wait"),
        None,
        "a zero timeout checks once"
    );
}

/// Many concurrent waits on different tasks each return their own result.
pub async fn concurrent_waiters_each_get_their_result<H: BackendHarness>(harness: &H) {
    let waiter = harness.backend().await;
    let writer = harness.backend().await;
    let ids: Vec<String> = (0..20)
        .map(|i| unique_id(&format!("waiters-{i}")))
        .collect();
    let waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let waiter = Arc::clone(&waiter);
            let id = id.clone();
            tokio::spawn(async move { waiter.wait(&id, Duration::from_secs(20)).await })
        })
        .collect();
    // Half through the other handle, half through the waiting one.
    for (i, id) in ids.iter().enumerate() {
        let handle = if i % 2 == 0 { &writer } else { &waiter };
        store(handle, &success(id, json!(i)), None).await;
    }
    for (i, wait) in waits.into_iter().enumerate() {
        let meta = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("every wait returns")
            .expect("no panic")
            .expect("wait succeeds")
            .expect("a result, not a timeout");
        assert_eq!(meta.task_id, ids[i]);
        assert_eq!(meta.result, json!(i));
    }
}

/// `forget` deletes a result (any state), after which the id is new again.
pub async fn forget_deletes_the_result<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let other = harness.backend().await;
    let id = unique_id("forget");
    let kept = unique_id("not-forgotten");
    store(&backend, &success(&id, json!(1)), None).await;
    store(&backend, &success(&kept, json!(2)), None).await;

    other.forget(&id).await.expect("forget");
    assert_eq!(backend.get(&id).await.expect("get"), None);
    assert_eq!(
        get(&backend, &kept).await.result,
        json!(2),
        "only the forgotten id is deleted"
    );

    let again = failed(&id, TaskState::Failure, "second run");
    store(&backend, &again, None).await;
    assert_eq!(
        get(&other, &id).await,
        again,
        "a forgotten SUCCESS no longer blocks stores"
    );

    other
        .forget(&unique_id("never-stored"))
        .await
        .expect("forgetting a missing id is fine");
}

/// An expired result reads as absent, can be replaced (even a SUCCESS), and
/// `cleanup_expired` deletes it but nothing live.
pub async fn expired_results_read_as_absent_and_are_cleaned_up<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let other = harness.backend().await;
    let expiry = Duration::from_millis(150);
    let state = unique_state("expiring");
    let short = unique_id("short");
    let replaced = unique_id("replaced");
    let long = unique_id("long");
    let forever = unique_id("forever");

    let stored_at = Instant::now();
    store(
        &backend,
        &TaskMeta::new(&short, state.clone(), json!(1)),
        Some(expiry),
    )
    .await;
    store(&backend, &success(&replaced, json!("old")), Some(expiry)).await;
    let read = other.get(&short).await.expect("get");
    if stored_at.elapsed() < expiry {
        assert!(read.is_some(), "readable before it expires");
    }
    store(
        &backend,
        &success(&long, json!(3)),
        Some(Duration::from_secs(3600)),
    )
    .await;
    store(&backend, &success(&forever, json!(4)), None).await;

    eventually(
        Duration::from_secs(5),
        "the short-lived results expire",
        || async {
            other.get(&short).await.expect("get").is_none()
                && other.get(&replaced).await.expect("get").is_none()
        },
    )
    .await;
    assert!(
        stored_at.elapsed() >= expiry - Duration::from_millis(5),
        "not before its expiry"
    );
    let listed = supported(
        other
            .recent(&ResultQuery {
                state: Some(state.clone()),
                ..ResultQuery::default()
            })
            .await,
        "recent",
    );
    if let Some(listed) = listed {
        assert!(listed.is_empty(), "recent leaves out expired results");
    }

    let fresh = failed(&replaced, TaskState::Failure, "ran again");
    let outcome = backend.store(&fresh, None).await.expect("store");
    assert_eq!(
        outcome,
        StoreOutcome::Stored,
        "an expired SUCCESS does not block a store"
    );
    assert_eq!(get(&other, &replaced).await, fresh);

    let cleaned = other.cleanup_expired().await.expect("cleanup_expired");
    if harness.expires_lazily() {
        assert!(
            cleaned >= 1,
            "cleanup counted the expired result, got {cleaned}"
        );
    }
    assert_eq!(other.get(&short).await.expect("get"), None);
    assert_eq!(
        get(&other, &long).await.result,
        json!(3),
        "live results survive cleanup"
    );
    assert_eq!(
        get(&other, &forever).await.result,
        json!(4),
        "results without expiry survive cleanup"
    );
    assert_eq!(get(&other, &replaced).await, fresh);
}

/// `Some(Duration::ZERO)` means "never", like Celery's `result_expires = 0`.
pub async fn zero_expiry_never_expires<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let id = unique_id("zero-expiry");
    store(&backend, &success(&id, json!(0)), Some(Duration::ZERO)).await;
    assert_eq!(get(&backend, &id).await.result, json!(0));
    backend.cleanup_expired().await.expect("cleanup_expired");
    assert_eq!(get(&harness.backend().await, &id).await.result, json!(0));
}

/// `store_many` stores every meta of a batch, with the same rules as `store`.
pub async fn store_many_stores_every_meta<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let reader = harness.backend().await;
    let succeeded = unique_id("batch-succeeded");
    store(&backend, &success(&succeeded, json!("kept")), None).await;

    let mut metas: Vec<TaskMeta> = (0..500)
        .map(|i| {
            let id = unique_id(&format!("batch-{i}"));
            match i % 3 {
                0 => success(&id, json!(i)),
                1 => failed(&id, TaskState::Failure, &format!("failure {i}")),
                _ => TaskMeta::new(&id, TaskState::Started, json!({"pid": i})),
            }
        })
        .collect();
    metas.push(failed(&succeeded, TaskState::Failure, "redelivered"));
    backend
        .store_many(&metas, Some(Duration::from_secs(3600)))
        .await
        .expect("store_many");

    for meta in &metas[..500] {
        assert_eq!(get(&reader, &meta.task_id).await, *meta);
    }
    assert_eq!(get(&reader, &succeeded).await.result, json!("kept"));
    backend
        .store_many(&[], None)
        .await
        .expect("an empty batch is fine");
}

/// Several handles storing at once all succeed (no lock errors) and every result
/// is readable.
pub async fn concurrent_stores_through_several_handles<H: BackendHarness>(harness: &H) {
    let mut writers = Vec::new();
    for handle in 0..4 {
        let backend = harness.backend().await;
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                let id = unique_id(&format!("concurrent-{handle}-{i}"));
                let meta = success(&id, json!([handle, i]));
                if i % 10 == 0 {
                    backend.store_many(&[meta], None).await.expect("store_many");
                } else {
                    backend.store(&meta, None).await.expect("store");
                }
                ids.push((id, json!([handle, i])));
            }
            ids
        }));
    }
    let reader = harness.backend().await;
    for writer in writers {
        for (id, result) in writer.await.expect("writer does not panic") {
            assert_eq!(get(&reader, &id).await.result, result);
        }
    }
}

/// `recent` lists the newest results first, filtered by state and limited.
pub async fn recent_lists_newest_first_filtered_by_state<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let reader = harness.backend().await;
    let first = unique_state("first");
    let second = unique_state("second");
    let ids: Vec<String> = (0..3).map(|i| unique_id(&format!("recent-{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        store(&backend, &TaskMeta::new(id, first.clone(), json!(i)), None).await;
    }
    let other = unique_id("recent-other");
    store(
        &backend,
        &TaskMeta::new(&other, second.clone(), json!("x")),
        None,
    )
    .await;

    let query = |state: &TaskState, limit: usize| ResultQuery {
        state: Some(state.clone()),
        limit,
    };
    let Some(listed) = supported(reader.recent(&query(&first, 10)).await, "recent") else {
        return;
    };
    let listed_ids: Vec<&str> = listed.iter().map(|m| m.task_id.as_str()).collect();
    assert_eq!(
        listed_ids,
        vec![ids[2].as_str(), ids[1].as_str(), ids[0].as_str()],
        "newest first"
    );
    assert!(listed.iter().all(|m| m.status == first));
    assert_eq!(listed[0], TaskMeta::new(&ids[2], first.clone(), json!(2)));

    let limited = reader.recent(&query(&first, 2)).await.expect("recent");
    let limited_ids: Vec<&str> = limited.iter().map(|m| m.task_id.as_str()).collect();
    assert_eq!(
        limited_ids,
        vec![ids[2].as_str(), ids[1].as_str()],
        "the limit keeps the newest"
    );

    let listed = reader.recent(&query(&second, 10)).await.expect("recent");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].task_id, other);

    // A state change moves the result to the other state's listing.
    store(
        &backend,
        &TaskMeta::new(&ids[0], second.clone(), json!("moved")),
        None,
    )
    .await;
    let listed = reader.recent(&query(&second, 10)).await.expect("recent");
    let listed_ids: Vec<&str> = listed.iter().map(|m| m.task_id.as_str()).collect();
    assert_eq!(listed_ids, vec![ids[0].as_str(), other.as_str()]);
    assert_eq!(
        reader
            .recent(&query(&first, 10))
            .await
            .expect("recent")
            .len(),
        2
    );

    assert!(
        reader
            .recent(&query(&first, 0))
            .await
            .expect("recent")
            .is_empty(),
        "limit 0 lists nothing"
    );
    let any = reader
        .recent(&ResultQuery {
            state: None,
            limit: 5,
        })
        .await
        .expect("recent");
    assert!(
        !any.is_empty() && any.len() <= 5,
        "unfiltered listing honours the limit"
    );
    let all = reader
        .recent(&ResultQuery {
            state: None,
            limit: 1_000_000,
        })
        .await
        .expect("recent");
    let all_ids: HashSet<&str> = all.iter().map(|m| m.task_id.as_str()).collect();
    for id in ids.iter().chain([&other]) {
        assert!(
            all_ids.contains(id.as_str()),
            "unfiltered listing includes {id}"
        );
    }
}

/// `count_by_state` counts the live results of each state.
pub async fn count_by_state_counts_live_results<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let counted = unique_state("counted");
    let other = unique_state("other");
    if supported(
        harness.backend().await.count_by_state().await,
        "count_by_state",
    )
    .is_none()
    {
        return;
    }

    for i in 0..4 {
        store(
            &backend,
            &TaskMeta::new(unique_id("count"), counted.clone(), json!(i)),
            None,
        )
        .await;
    }
    store(
        &backend,
        &TaskMeta::new(unique_id("count-other"), other.clone(), json!(0)),
        None,
    )
    .await;
    store(
        &backend,
        &success(&unique_id("count-success"), json!(0)),
        None,
    )
    .await;
    store(
        &backend,
        &TaskMeta::new(unique_id("count-expiring"), counted.clone(), json!(0)),
        Some(Duration::from_millis(100)),
    )
    .await;

    let reader = harness.backend().await;
    eventually(
        Duration::from_secs(5),
        "the expiring result leaves the count",
        || async {
            count_of(
                &reader.count_by_state().await.expect("count_by_state"),
                &counted,
            ) == 4
        },
    )
    .await;
    let counts = reader.count_by_state().await.expect("count_by_state");
    assert_eq!(count_of(&counts, &other), 1);
    assert!(count_of(&counts, &TaskState::Success) >= 1);
    let states: Vec<&TaskState> = counts.iter().map(|(state, _)| state).collect();
    let distinct: HashSet<&str> = states.iter().map(|s| s.as_str()).collect();
    assert_eq!(distinct.len(), states.len(), "each state is listed once");
    assert!(
        counts.iter().all(|(_, n)| *n > 0),
        "states without results are left out"
    );
}

/// The count of `state` in a `count_by_state` answer (0 if absent).
fn count_of(counts: &[(TaskState, u64)], state: &TaskState) -> u64 {
    counts
        .iter()
        .find(|(s, _)| s == state)
        .map_or(0, |(_, n)| *n)
}

const CHORD_EXPIRES: Option<Duration> = Some(Duration::from_secs(3600));
const CHORD_CLAIM: Duration = Duration::from_secs(10);

fn chord_part(group: &str, task: &str, index: i64, value: i64) -> ChordPart {
    ChordPart::new(group, task, Some(index), TaskState::Success, json!(value))
}

/// A chord completes with its last part (redelivered parts count once), the parts
/// come back in header order with each task's first result, and a late duplicate
/// after dispatch does nothing. Parts are reported through different handles.
pub async fn chord_completes_once_with_parts_in_header_order<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let group = unique_id("chord");
    if supported(
        backend.chord_set_size(&group, 3, CHORD_EXPIRES).await,
        "chords",
    )
    .is_none()
    {
        return;
    }
    let parts = [
        chord_part(&group, "c", 2, 30),
        chord_part(&group, "a", 0, 10),
        chord_part(&group, "a", 0, 99),
    ];
    for part in &parts {
        let other = harness.backend().await;
        let progress = other
            .chord_part_return(part, CHORD_EXPIRES, CHORD_CLAIM)
            .await
            .expect("chord_part_return");
        assert!(
            matches!(progress, ChordProgress::Pending { .. }),
            "{progress:?}"
        );
    }
    let last = harness
        .backend()
        .await
        .chord_part_return(&chord_part(&group, "b", 1, 20), CHORD_EXPIRES, CHORD_CLAIM)
        .await
        .expect("chord_part_return");
    let ChordProgress::Complete { claim, parts } = last else {
        panic!("the last part completes the chord: {last:?}");
    };
    let ids: Vec<&str> = parts.iter().map(|p| p.task_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let values: Vec<_> = parts.iter().map(|p| p.result.clone()).collect();
    assert_eq!(values, [json!(10), json!(20), json!(30)]);
    assert!(parts.iter().all(|p| p.state == TaskState::Success));
    assert!(backend.chord_finish(&group, &claim).await.expect("finish"));
    let late = backend
        .chord_part_return(&chord_part(&group, "b", 1, 20), CHORD_EXPIRES, CHORD_CLAIM)
        .await
        .expect("late part");
    assert_eq!(late, ChordProgress::Done, "a late duplicate does nothing");
}

/// Of many parts reported at once through several handles, exactly one completes
/// the chord.
pub async fn chord_racing_parts_elect_one_dispatcher<H: BackendHarness>(harness: &H) {
    let group = unique_id("chord-race");
    let setup = harness.backend().await;
    if supported(
        setup.chord_set_size(&group, 20, CHORD_EXPIRES).await,
        "chords",
    )
    .is_none()
    {
        return;
    }
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(harness.backend().await);
    }
    let mut calls = Vec::new();
    for i in 0..20i64 {
        let backend = Arc::clone(&handles[i as usize % handles.len()]);
        let part = chord_part(&group, &format!("t{i}"), i, i);
        calls.push(tokio::spawn(async move {
            backend
                .chord_part_return(&part, CHORD_EXPIRES, CHORD_CLAIM)
                .await
                .expect("chord_part_return")
        }));
    }
    let mut complete = 0;
    for call in calls {
        if let ChordProgress::Complete { parts, .. } = call.await.expect("join") {
            complete += 1;
            assert_eq!(parts.len(), 20);
        }
    }
    assert_eq!(complete, 1, "exactly one dispatcher");
}

/// Only the claim's holder extends it or finishes the chord; a failed header part is
/// reported with its state and exception.
pub async fn chord_claim_is_owned_and_finish_marks_done<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let group = unique_id("chord-claim");
    if supported(
        backend.chord_set_size(&group, 1, CHORD_EXPIRES).await,
        "chords",
    )
    .is_none()
    {
        return;
    }
    let failure = ExceptionInfo::new("ValueError", "builtins", "bad").to_value();
    let part = ChordPart::new(&group, "only", Some(0), TaskState::Failure, failure.clone());
    let progress = backend
        .chord_part_return(&part, CHORD_EXPIRES, CHORD_CLAIM)
        .await
        .expect("chord_part_return");
    let ChordProgress::Complete { claim, parts } = progress else {
        panic!("a one-part chord completes: {progress:?}");
    };
    assert_eq!(parts[0].state, TaskState::Failure);
    assert_eq!(parts[0].result, failure);
    assert!(!backend
        .chord_extend_claim(&group, "not-the-holder", CHORD_CLAIM)
        .await
        .expect("extend"));
    assert!(!backend
        .chord_finish(&group, "not-the-holder")
        .await
        .expect("finish"));
    assert!(backend
        .chord_extend_claim(&group, &claim, CHORD_CLAIM)
        .await
        .expect("extend"));
    assert!(backend.chord_finish(&group, &claim).await.expect("finish"));
    assert!(!backend
        .chord_finish(&group, &claim)
        .await
        .expect("finish twice"));
}

/// A saved group reads back (through another handle) with its members in order,
/// nested groups and parents included; saving again replaces it; forgetting it
/// deletes only the group value, not the members' results.
pub async fn saved_group_restores_with_members_in_order<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let other = harness.backend().await;
    let id = unique_id("group");
    let members: Vec<String> = (0..5).map(|i| unique_id(&format!("member-{i}"))).collect();
    let group = crate::SavedGroup::of_tasks(&id, members.iter().cloned());
    if supported(
        backend.save_group(&group, CHORD_EXPIRES).await,
        "saved groups",
    )
    .is_none()
    {
        return;
    }
    assert_eq!(
        other.restore_group(&id).await.expect("restore_group"),
        Some(group.clone())
    );
    assert_eq!(
        other
            .restore_group(&unique_id("never-saved"))
            .await
            .expect("restore_group"),
        None,
        "an unsaved group reads as None"
    );

    let nested = crate::SavedGroup {
        id: id.clone(),
        parent: Some(Box::new(crate::ResultTuple::task(unique_id("parent")))),
        members: vec![
            crate::ResultTuple::Group(crate::SavedGroup::of_tasks(
                unique_id("inner"),
                [members[0].clone(), members[1].clone()],
            )),
            crate::ResultTuple::Task {
                id: members[2].clone(),
                parent: Some(Box::new(crate::ResultTuple::task(members[3].clone()))),
            },
        ],
    };
    backend
        .save_group(&nested, CHORD_EXPIRES)
        .await
        .expect("save again");
    assert_eq!(
        other.restore_group(&id).await.expect("restore_group"),
        Some(nested),
        "saving again replaces the group"
    );

    store(
        &backend,
        &success(&members[0], json!("kept")),
        CHORD_EXPIRES,
    )
    .await;
    other.forget_group(&id).await.expect("forget_group");
    assert_eq!(
        backend.restore_group(&id).await.expect("restore_group"),
        None
    );
    assert_eq!(
        get(&backend, &members[0]).await.result,
        json!("kept"),
        "forgetting the group keeps its members' results"
    );
    other
        .forget_group(&id)
        .await
        .expect("forgetting twice is fine");
}

/// A saved group expires like a result; without expiry (or zero) it stays.
pub async fn saved_group_expires<H: BackendHarness>(harness: &H) {
    let backend = harness.backend().await;
    let short = crate::SavedGroup::of_tasks(unique_id("short-group"), [unique_id("m")]);
    let forever = crate::SavedGroup::of_tasks(unique_id("forever-group"), [unique_id("m")]);
    let zero = crate::SavedGroup::of_tasks(unique_id("zero-group"), [unique_id("m")]);
    if supported(
        backend
            .save_group(&short, Some(Duration::from_millis(150)))
            .await,
        "saved groups",
    )
    .is_none()
    {
        return;
    }
    backend.save_group(&forever, None).await.expect("save");
    backend
        .save_group(&zero, Some(Duration::ZERO))
        .await
        .expect("save");
    eventually(
        Duration::from_secs(5),
        "the saved group expires",
        || async {
            backend
                .restore_group(&short.id)
                .await
                .expect("restore_group")
                .is_none()
        },
    )
    .await;
    backend.cleanup_expired().await.expect("cleanup_expired");
    for kept in [&forever, &zero] {
        assert_eq!(
            backend
                .restore_group(&kept.id)
                .await
                .expect("restore_group"),
            Some(kept.clone())
        );
        backend.forget_group(&kept.id).await.expect("forget_group");
    }
}
