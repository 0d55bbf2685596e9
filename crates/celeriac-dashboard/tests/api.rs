//! The dashboard's REST API, metrics and page against real stores in one SQLite file
//! (broker, results, schedules and locks), through the router without a socket.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use celeriac_broker::{Publish, WorkerInfo};
use celeriac_core::{
    Envelope, Map, SendOptions, TaskMessage, TaskMeta, TaskSender, TaskState, Value,
};
use celeriac_dashboard::{router, DashboardState};
use celeriac_lock::AcquireParams;
use chrono::Utc;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

/// Records what "run now" sends.
#[derive(Default)]
struct RecordingSender {
    sent: Mutex<Vec<(String, Vec<Value>)>>,
}

impl TaskSender for RecordingSender {
    fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        _kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        self.sent
            .lock()
            .expect("lock")
            .push((name.to_string(), args));
        let id = options.task_id.unwrap_or_else(|| "generated".into());
        Box::pin(async move { Ok(id) })
    }
}

/// A recorded remote-control command: method, arguments, destination.
type Command = (String, Value, Option<Vec<String>>);

/// Records remote-control commands; every node "worker@test" answers ok.
#[derive(Default)]
struct FakeControl {
    commands: Mutex<Vec<Command>>,
}

#[async_trait::async_trait]
impl celeriac_dashboard::Controller for FakeControl {
    async fn command(
        &self,
        method: &str,
        arguments: Map<String, Value>,
        destination: Option<Vec<String>>,
    ) -> Result<Vec<(String, Value)>, String> {
        self.commands.lock().expect("lock").push((
            method.to_string(),
            Value::Object(arguments),
            destination,
        ));
        Ok(vec![("worker@test".to_string(), json!({"ok": method}))])
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: DashboardState,
    sender: Arc<RecordingSender>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("celeriac.db").display());
    let sender = Arc::new(RecordingSender::default());
    let state = DashboardState {
        broker: celeriac_broker::connect(&url).await.expect("broker"),
        backend: Some(celeriac_backend::connect(&url).await.expect("backend")),
        schedules: Some(celeriac_beat::connect(&url).await.expect("schedules")),
        locks: Some(celeriac_lock::connect(&url).await.expect("locks")),
        sender: Some(sender.clone()),
        control: Some(Arc::new(FakeControl::default())),
        credentials: None,
        history: None,
        rates: None,
    };
    Fixture {
        _dir: dir,
        state,
        sender,
    }
}

/// Sends one request; returns the status and the body (JSON, or a string).
async fn call(
    state: &DashboardState,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call_as(state, method, path, body, None).await
}

/// [`call`] with an `Authorization` header.
async fn call_as(
    state: &DashboardState,
    method: Method,
    path: &str,
    body: Option<Value>,
    authorization: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let body = match body {
        Some(value) => {
            request = request.header("content-type", "application/json");
            Body::from(value.to_string())
        }
        None => Body::empty(),
    };
    let response = router(state.clone())
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn get(state: &DashboardState, path: &str) -> (StatusCode, Value) {
    call(state, Method::GET, path, None).await
}

fn envelope(id: &str) -> Envelope {
    TaskMessage::new("reports.build", id, vec![json!(1)], Map::new()).encode()
}

#[tokio::test]
async fn workers_queues_and_tasks_are_listed() {
    let f = fixture().await;
    let now = Utc::now();
    f.state
        .broker
        .worker_heartbeat(&WorkerInfo {
            hostname: "w1@host".into(),
            pid: 42,
            queues: vec!["short-task".into()],
            active: 2,
            processed: 7,
            started_at: now,
            last_heartbeat: now,
            freq: 2.0,
            online: true,
        })
        .await
        .expect("heartbeat");
    f.state
        .broker
        .publish(vec![Publish {
            queue: "short-task".into(),
            envelope: envelope("queued-1"),
            not_before: None,
        }])
        .await
        .expect("publish");
    let backend = f.state.backend.as_ref().expect("backend");
    let mut done = TaskMeta::new("done-1".to_string(), TaskState::Success, json!(3));
    done.name = Some("reports.build".into());
    backend.store(&done, None).await.expect("store");
    let failed = TaskMeta::new(
        "failed-1".to_string(),
        TaskState::Failure,
        json!({"exc_type": "ValueError", "exc_message": ["x"], "exc_module": "builtins"}),
    );
    backend.store(&failed, None).await.expect("store");

    let (status, workers) = get(&f.state, "/api/workers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(workers[0]["hostname"], json!("w1@host"));
    assert_eq!(workers[0]["alive"], json!(true));
    assert_eq!(workers[0]["active"], json!(2));

    let (_, queues) = get(&f.state, "/api/queues").await;
    let short = queues
        .as_array()
        .expect("list")
        .iter()
        .find(|q| q["name"] == json!("short-task"))
        .expect("the queue is listed");
    assert_eq!(short["ready"], json!(1));

    let (_, overview) = get(&f.state, "/api/overview").await;
    assert_eq!(overview["workers"]["alive"], json!(1));
    assert_eq!(overview["tasks"]["SUCCESS"], json!(1));
    assert_eq!(overview["tasks"]["FAILURE"], json!(1));

    let (_, failures) = get(&f.state, "/api/tasks?state=FAILURE").await;
    let ids: Vec<&Value> = failures
        .as_array()
        .expect("list")
        .iter()
        .map(|t| &t["task_id"])
        .collect();
    assert_eq!(ids, vec![&json!("failed-1")]);
    let (_, by_name) = get(&f.state, "/api/tasks?name=reports.build").await;
    assert_eq!(by_name.as_array().expect("list").len(), 1);
    let (_, by_id) = get(&f.state, "/api/tasks?q=done").await;
    assert_eq!(by_id[0]["task_id"], json!("done-1"));
    let (status, one) = get(&f.state, "/api/tasks/done-1").await;
    assert_eq!((status, &one["result"]), (StatusCode::OK, &json!(3)));
    let (status, missing) = get(&f.state, "/api/tasks/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing["error"]
        .as_str()
        .expect("error")
        .contains("PENDING"));

    let (status, purged) = call(&f.state, Method::POST, "/api/queues/short-task/purge", None).await;
    assert_eq!((status, &purged["purged"]), (StatusCode::OK, &json!(1)));
}

#[tokio::test]
async fn schedules_are_created_edited_toggled_run_and_deleted() {
    let f = fixture().await;
    let entry = json!({
        "name": "nightly",
        "task": "reports.nightly",
        "args": [1],
        "schedule": {"crontab": {"minute": "0", "hour": "3", "day_of_week": "*",
                                  "day_of_month": "*", "month_of_year": "*", "timezone": "Asia/Seoul"}},
        "queue": "long-task"
    });
    let (status, saved) = call(&f.state, Method::POST, "/api/schedules", Some(entry)).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert!(saved["next_run_at"].is_string());

    let edit =
        json!({"task": "reports.nightly", "args": [2], "schedule": {"interval": {"every": 30}}});
    let (status, edited) = call(&f.state, Method::PUT, "/api/schedules/nightly", Some(edit)).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["args"], json!([2]));
    assert_eq!(edited["schedule"]["interval"]["every"], json!(30.0));

    let (status, _) = call(
        &f.state,
        Method::POST,
        "/api/schedules/nightly/disable",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = get(&f.state, "/api/schedules").await;
    assert_eq!(listed[0]["enabled"], json!(false));

    let (status, run) = call(&f.state, Method::POST, "/api/schedules/nightly/run", None).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(
        f.sender.sent.lock().expect("lock").clone(),
        vec![("reports.nightly".to_string(), vec![json!(2)])]
    );

    let bad = json!({"name": "bad", "task": "x", "schedule": {"crontab": {"minute": "99", "hour": "*",
        "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}}});
    let (status, error) = call(&f.state, Method::POST, "/api/schedules", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");

    let (status, _) = call(&f.state, Method::DELETE, "/api/schedules/nightly", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&f.state, "/api/schedules/nightly").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn locks_are_listed_with_their_lease_and_force_released() {
    let f = fixture().await;
    let locks = f.state.locks.as_ref().expect("locks");
    let lease = locks
        .acquire(&AcquireParams::new(
            "single:reports.nightly",
            Duration::from_secs(30),
            "w1@host/42 t-1",
        ))
        .await
        .expect("acquire")
        .expect("free");
    let (_, listed) = get(&f.state, "/api/locks").await;
    assert_eq!(listed[0]["key"], json!("single:reports.nightly"));
    assert_eq!(listed[0]["owner"], json!("w1@host/42 t-1"));
    let left = listed[0]["lease_left"].as_f64().expect("number");
    assert!(left > 25.0 && left <= 30.0, "{left}");
    let (status, _) = call(
        &f.state,
        Method::DELETE,
        "/api/locks/single:reports.nightly",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !locks.release(&lease).await.expect("release"),
        "the holder lost it"
    );
    let (status, _) = call(
        &f.state,
        Method::DELETE,
        "/api/locks/single:reports.nightly",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_page_and_openapi_are_served() {
    let f = fixture().await;
    f.state
        .broker
        .publish(vec![Publish {
            queue: "celery".into(),
            envelope: envelope("m-1"),
            not_before: None,
        }])
        .await
        .expect("publish");
    let (status, metrics) = get(&f.state, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().expect("text");
    assert!(
        text.contains("celeriac_queue_messages{queue=\"celery\",state=\"ready\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("celeriac_workers{state=\"alive\"} 0"),
        "{text}"
    );

    let (status, page) = get(&f.state, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page
        .as_str()
        .expect("html")
        .contains("<title>celeriac</title>"));

    let (status, spec) = get(&f.state, "/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = spec["paths"].as_object().expect("paths");
    for documented in [
        "/api/workers",
        "/api/tasks",
        "/api/schedules/{name}/run",
        "/api/locks/{key}",
        "/api/queues/rates",
        "/metrics",
    ] {
        assert!(paths.contains_key(documented), "{documented} is documented");
    }
}

#[tokio::test]
async fn a_dashboard_without_stores_says_what_is_missing() {
    let f = fixture().await;
    let state = DashboardState::new(f.state.broker.clone());
    let (status, error) = get(&state, "/api/schedules").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(error["error"]
        .as_str()
        .expect("error")
        .contains("schedule store"));
    let (status, _) = get(&state, "/api/overview").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn control_actions_reach_the_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("celeriac.db").display());
    let control = Arc::new(FakeControl::default());
    let mut state = DashboardState::new(celeriac_broker::connect(&url).await.expect("broker"));
    state.control = Some(control.clone());

    // Without credentials configured, control actions are refused with a hint.
    let (status, error) = call(&state, Method::POST, "/api/tasks/t-0/revoke", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        error["error"].as_str().expect("error").contains("--token"),
        "{error}"
    );
    state.credentials = Some(celeriac_dashboard::Credentials::bearer("t0k"));
    let (status, _) = call(&state, Method::POST, "/api/tasks/t-0/revoke", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "credentials are checked");
    let (status, _) = get(&state, "/api/queues").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "every route needs them once configured"
    );
    let call = |state: &DashboardState, method: Method, path: &str, body: Option<Value>| {
        let (state, path) = (state.clone(), path.to_string());
        async move { call_as(&state, method, &path, body, Some("Bearer t0k")).await }
    };
    let get = |state: &DashboardState, path: &str| call(state, Method::GET, path, None);

    let (status, reply) = call(
        &state,
        Method::POST,
        "/api/tasks/t-1/revoke",
        Some(json!({"terminate": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["replies"]["worker@test"]["ok"], json!("revoke"));
    let (status, _) = call(&state, Method::POST, "/api/tasks/t-2/revoke", None).await;
    assert_eq!(status, StatusCode::OK);

    let limit = json!({"task": "notify.send", "rate": "10/m"});
    let (status, _) = call(&state, Method::POST, "/api/control/rate-limit", Some(limit)).await;
    assert_eq!(status, StatusCode::OK);
    let bad = json!({"task": "notify.send", "rate": "fast"});
    let (status, error) = call(&state, Method::POST, "/api/control/rate-limit", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");

    let (status, _) = call(&state, Method::POST, "/api/workers/w1@host/shutdown", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&state, "/api/workers/w1@host/inspect/active").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&state, "/api/workers/w1@host/inspect/secrets").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let commands = control.commands.lock().expect("lock").clone();
    let methods: Vec<&str> = commands.iter().map(|(m, _, _)| m.as_str()).collect();
    assert_eq!(
        methods,
        ["revoke", "revoke", "rate_limit", "shutdown", "active"]
    );
    assert_eq!(commands[0].1["task_id"], json!("t-1"));
    assert_eq!(commands[0].1["terminate"], json!(true));
    assert_eq!(commands[1].1["terminate"], json!(false));
    assert_eq!(commands[2].1["rate_limit"], json!("10/m"));
    assert_eq!(commands[3].2, Some(vec!["w1@host".to_string()]));
    assert_eq!(commands[0].2, None, "a revoke goes to every worker");

    let mut without = DashboardState::new(state.broker.clone());
    without.credentials = state.credentials.clone();
    let (status, _) = call(&without, Method::POST, "/api/tasks/t-1/revoke", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_non_loopback_address_needs_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("celeriac.db").display());
    let mut state = DashboardState::new(celeriac_broker::connect(&url).await.expect("broker"));
    let anywhere: std::net::SocketAddr = "0.0.0.0:0".parse().expect("addr");
    let refused = celeriac_dashboard::Dashboard::bind(anywhere, state.clone()).await;
    let error = refused
        .err()
        .expect("refused without credentials")
        .to_string();
    assert!(error.contains("without credentials"), "{error}");
    state.credentials = Some(celeriac_dashboard::Credentials::basic("ops", "pw"));
    assert!(celeriac_dashboard::Dashboard::bind(anywhere, state)
        .await
        .is_ok());
}

#[tokio::test]
async fn task_events_fill_the_history_the_tasks_screen_and_the_runtime_histogram() {
    use celeriac_dashboard::history::{follow, TaskHistory};
    let f = fixture().await;
    let mut state = f.state.clone();
    let history = Arc::new(TaskHistory::new(1000));
    state.history = Some(history.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(follow(
        history.clone(),
        None,
        state.broker.clone(),
        stop.clone(),
    ));
    // Give the subscription a moment, then publish a batch as a worker with -E does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = Utc::now().timestamp_millis() as f64 / 1000.0;
    let batch = json!([
        {"type": "task-received", "uuid": "ev-1", "name": "reports.build", "args": "(1,)",
         "kwargs": "{}", "retries": 0, "hostname": "w1@host", "timestamp": now},
        {"type": "task-started", "uuid": "ev-1", "hostname": "w1@host", "timestamp": now + 0.01},
        {"type": "task-succeeded", "uuid": "ev-1", "result": "42", "runtime": 0.2,
         "hostname": "w1@host", "timestamp": now + 0.21},
        {"type": "task-received", "uuid": "ev-2", "name": "reports.build", "hostname": "w1@host", "timestamp": now},
        {"type": "task-failed", "uuid": "ev-2", "exception": "ValueError('no')", "hostname": "w1@host", "timestamp": now}
    ]);
    state
        .broker
        .broadcast(celeriac_broker::Broadcast {
            exchange: "celeryev".into(),
            routing_key: "task.multi".into(),
            envelope: celeriac_core::event::event_envelope("w1@host", &batch),
        })
        .await
        .expect("broadcast");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while history.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the events arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, tasks) = get(&state, "/api/tasks").await;
    let ids: Vec<&Value> = tasks
        .as_array()
        .expect("list")
        .iter()
        .map(|t| &t["task_id"])
        .collect();
    assert_eq!(ids, vec![&json!("ev-2"), &json!("ev-1")], "newest first");
    let (_, failed) = get(&state, "/api/tasks?state=FAILURE").await;
    assert_eq!(failed[0]["exception"], json!("ValueError('no')"));
    let (_, one) = get(&state, "/api/tasks/ev-1").await;
    assert_eq!(
        (one["status"].clone(), one["runtime"].clone()),
        (json!("SUCCESS"), json!(0.2))
    );
    assert_eq!(one["worker"], json!("w1@host"));
    let (_, metrics) = get(&state, "/metrics").await;
    let text = metrics.as_str().expect("text");
    assert!(
        text.contains("celeriac_task_runtime_seconds_bucket{name=\"reports.build\",le=\"0.25\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("celeriac_task_runtime_seconds_count{name=\"reports.build\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("celeriac_tasks{state=\"FAILURE\",name=\"reports.build\"} 1"),
        "{text}"
    );
    stop.cancel();
}

/// Publishes `batch` as a worker with `-E` does (one `task.multi` message).
async fn publish_events(state: &DashboardState, batch: Value) {
    state
        .broker
        .broadcast(celeriac_broker::Broadcast {
            exchange: "celeryev".into(),
            routing_key: "task.multi".into(),
            envelope: celeriac_core::event::event_envelope("w1@host", &batch),
        })
        .await
        .expect("broadcast");
}

#[tokio::test]
async fn the_task_history_survives_a_dashboard_restart_bounded_oldest_first() {
    use celeriac_dashboard::history::{follow, persist, HistoryStore, TaskHistory};
    use celeriac_dashboard::rates::QueueRates;
    let f = fixture().await;
    let url = format!("sqlite://{}", f._dir.path().join("celeriac.db").display());

    // The first dashboard: keeps 3 tasks, in the broker's own file.
    let store = HistoryStore::open_url(&url).expect("store");
    let history = Arc::new(TaskHistory::persistent(3, store).await.expect("history"));
    assert!(history.is_empty(), "a new file holds no tasks");
    let rates = Arc::new(QueueRates::default());
    let mut state = f.state.clone();
    state.history = Some(history.clone());
    state.rates = Some(rates.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let following = tokio::spawn(follow(
        history.clone(),
        Some(rates.clone()),
        state.broker.clone(),
        stop.clone(),
    ));
    let saving = tokio::spawn(persist(history.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = Utc::now().timestamp_millis() as f64 / 1000.0;
    let mut batch = vec![
        json!({"type": "task-sent", "uuid": "old-0", "name": "reports.build",
        "queue": "reports", "routing_key": "reports", "timestamp": now}),
    ];
    for i in 0..4 {
        batch.push(json!({"type": "task-received", "uuid": format!("old-{i}"),
            "name": "reports.build", "args": format!("({i},)"), "hostname": "w1@host",
            "timestamp": now + i as f64}));
    }
    batch.push(
        json!({"type": "task-succeeded", "uuid": "old-3", "result": "7",
        "runtime": 0.3, "hostname": "w1@host", "timestamp": now + 4.0}),
    );
    publish_events(&state, Value::Array(batch)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while history.get("old-3").is_none_or(|r| r.status != "SUCCESS") {
        assert!(std::time::Instant::now() < deadline, "the events arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Counted for the queue the task-sent event named, the later ones by name.
    let counters = rates.counters();
    assert_eq!(
        (counters["reports"].sent, counters["reports"].received),
        (1, 4)
    );
    // Stopping saves what the last periodic save missed.
    stop.cancel();
    saving.await.expect("saved");
    following.await.expect("stopped");
    drop(state);
    drop(history);

    // The second dashboard on the same file sees the newest 3 tasks.
    let store = HistoryStore::open_url(&url).expect("store again");
    assert_eq!(store.count().expect("rows"), 3, "the oldest row was pruned");
    let history = Arc::new(TaskHistory::persistent(3, store).await.expect("reloaded"));
    let mut state = f.state.clone();
    state.history = Some(history.clone());
    let (status, tasks) = get(&state, "/api/tasks").await;
    assert_eq!(status, StatusCode::OK);
    let seen: Vec<(&str, &str)> = tasks
        .as_array()
        .expect("list")
        .iter()
        .map(|t| {
            (
                t["task_id"].as_str().unwrap_or(""),
                t["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("old-3", "SUCCESS"),
            ("old-2", "RECEIVED"),
            ("old-1", "RECEIVED")
        ],
        "newest first, as before the restart"
    );
    let (_, one) = get(&state, "/api/tasks/old-2").await;
    assert_eq!(one["args"], json!("(2,)"));
    let (_, metrics) = get(&state, "/metrics").await;
    let text = metrics.as_str().expect("text");
    assert!(
        text.contains("celeriac_task_runtime_seconds_count{name=\"reports.build\"} 1"),
        "runtimes are rebuilt from the kept tasks: {text}"
    );

    // A later event of a reloaded task updates its row; a new task pushes out the
    // oldest, in memory and in the file.
    history.apply(&map(json!({"type": "task-failed", "uuid": "old-2",
        "exception": "ValueError('late')", "timestamp": now + 9.0})));
    history.apply(&map(json!({"type": "task-received", "uuid": "new-1",
        "name": "reports.build", "timestamp": now + 10.0})));
    assert_eq!(history.flush().await.expect("flush"), 2);
    let store = HistoryStore::open_url(&url).expect("store a third time");
    let kept: Vec<(String, String)> = store
        .load(10)
        .expect("load")
        .into_iter()
        .map(|(_, r)| (r.task_id, r.status))
        .collect();
    assert_eq!(
        kept,
        vec![
            ("old-2".to_string(), "FAILURE".to_string()),
            ("old-3".to_string(), "SUCCESS".to_string()),
            ("new-1".to_string(), "RECEIVED".to_string()),
        ]
    );
}

fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[tokio::test]
async fn queue_rates_are_served_and_exported() {
    use celeriac_broker::QueueStats;
    use celeriac_dashboard::history::Observed;
    use celeriac_dashboard::rates::QueueRates;
    let f = fixture().await;
    let mut state = f.state.clone();
    let (status, body) = get(&state, "/api/queues/rates").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let rates = Arc::new(QueueRates::default());
    state.rates = Some(rates.clone());
    let stats = |ready| QueueStats {
        name: "reports".into(),
        ready,
        ..QueueStats::default()
    };
    rates.sample(10.0, &[stats(4)], &[]);
    for kind in ["task-sent", "task-sent", "task-sent", "task-received"] {
        rates.observe(&Observed {
            kind,
            name: Some("reports.build".into()),
            worker: None,
            queue: (kind == "task-sent").then(|| "reports".to_string()),
        });
    }
    rates.sample(12.0, &[stats(6)], &[]);
    let (status, body) = get(&state, "/api/queues/rates").await;
    assert_eq!(status, StatusCode::OK);
    let queue = &body["queues"][0];
    assert_eq!(queue["name"], json!("reports"));
    assert_eq!(
        (queue["in_rate"].clone(), queue["out_rate"].clone()),
        (json!(1.5), json!(0.5))
    );
    assert_eq!(queue["samples"][0]["depth"], json!(6));
    assert_eq!(queue["source"], json!("events"));
    assert_eq!(body["interval_seconds"], json!(2.0));
    let (_, metrics) = get(&state, "/metrics").await;
    let text = metrics.as_str().expect("text");
    assert!(
        text.contains("celeriac_queue_tasks_total{queue=\"reports\",event=\"sent\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("celeriac_queue_rate{queue=\"reports\",direction=\"in\"} 1.5"),
        "{text}"
    );
}
