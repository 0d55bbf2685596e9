//! Remote control and events end to end on the embedded SQLite broker: `ping`,
//! `inspect`, `revoke` (also `--terminate`), `rate_limit`, `shutdown` through
//! [`celeriac::control::Control`] and the CLI, and Celery events on `celeriac`.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac::broker::{Broadcast, SubscribeParams, Subscription};
use celeriac::control::{BroadcastOptions, Control};
use celeriac::core::event::events_in;
use celeriac::core::{Map, SendOptions, Task, TaskOptions, TaskState, Value};
use celeriac::App;
use serde_json::json;
use support::{task, wait_for, RunningWorker, TestApp};

const WAIT: Duration = Duration::from_secs(20);

fn quick() -> BroadcastOptions {
    BroadcastOptions {
        timeout: Duration::from_millis(500),
        ..BroadcastOptions::default()
    }
}

fn add() -> impl Task {
    task(
        "tests.add",
        TaskOptions::default(),
        |_ctx, args, _kw| async move { Ok(json!(args.iter().filter_map(Value::as_i64).sum::<i64>())) },
    )
}

/// Sleeps `args[0]` seconds (an await point every 10 ms); counts its starts.
fn sleeper(starts: Arc<AtomicU32>) -> impl Task {
    task(
        "tests.sleep",
        TaskOptions::default(),
        move |_ctx, args, _kw| {
            let starts = starts.clone();
            async move {
                starts.fetch_add(1, Ordering::SeqCst);
                let seconds = args.first().and_then(Value::as_f64).unwrap_or(1.0);
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                Ok(json!(seconds))
            }
        },
    )
}

/// Pings until the worker's control service answers (it subscribes after start).
async fn wait_for_node(control: &Control, node: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let replies = control.ping(&quick()).await.expect("ping");
        if replies.iter().any(|(n, _)| n == node) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{node} never answered ping"
        );
    }
}

async fn reply_of(replies: Vec<(String, Value)>, node: &str) -> Value {
    replies
        .into_iter()
        .find(|(n, _)| n == node)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no reply from {node}"))
}

async fn app_with(t: &TestApp, starts: &Arc<AtomicU32>, events: bool) -> App {
    t.builder()
        .task(add())
        .task(sleeper(starts.clone()))
        .configure(move |s| s.worker_send_task_events = events)
        .build()
        .await
        .expect("app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_inspect_see_held_tasks() {
    let t = TestApp::new();
    let starts = Arc::new(AtomicU32::new(0));
    let app = app_with(&t, &starts, false).await;
    let worker = RunningWorker::start_default(&app);
    let control = app.control();
    let node = app.hostname().to_string();
    wait_for_node(&control, &node).await;
    assert_eq!(
        reply_of(control.ping(&quick()).await.expect("ping"), &node).await,
        json!({"ok": "pong"})
    );

    let running = app
        .send_task(
            "tests.sleep",
            vec![json!(30)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    let mut later = SendOptions::new();
    later.countdown = Some(Duration::from_secs(60));
    let scheduled = app
        .send_task("tests.add", vec![json!(1), json!(2)], Map::new(), later)
        .await
        .expect("sent");
    wait_for("the sleeper to start", WAIT, || {
        let starts = starts.clone();
        async move { starts.load(Ordering::SeqCst) == 1 }
    })
    .await;

    let active = reply_of(
        control.inspect("active", &quick()).await.expect("active"),
        &node,
    )
    .await;
    let active = active.as_array().expect("list");
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["id"], running.id());
    assert_eq!(active[0]["name"], "tests.sleep");
    assert_eq!(active[0]["args"], json!([30]));
    assert_eq!(active[0]["hostname"], node.as_str());
    assert!(active[0]["time_start"].as_f64().is_some());
    assert_eq!(active[0]["worker_pid"], std::process::id());
    // The same fields as a Python worker's reply (captured, PROTOCOL.md §7.7).
    let captured: Value = serde_json::from_str(include_str!(
        "../../celeriac-core/tests/golden/pidbox_active_reply.json"
    ))
    .expect("fixture");
    let python = &captured["body"]["w2@vm"][0];
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&active[0]), keys(python));
    assert_eq!(
        keys(&active[0]["delivery_info"]),
        keys(&python["delivery_info"])
    );

    // The SQLite broker keeps ETA messages until they are due: nothing is held
    // here for the scheduled one (on Redis it is, see tests/interop/test_control.py).
    let listed = reply_of(
        control
            .inspect("scheduled", &quick())
            .await
            .expect("scheduled"),
        &node,
    )
    .await;
    assert_eq!(listed, json!([]));
    let query = reply_of(
        control
            .broadcast(
                "query_task",
                [("ids".to_string(), json!([running.id(), scheduled.id()]))]
                    .into_iter()
                    .collect(),
                &quick(),
            )
            .await
            .expect("query_task"),
        &node,
    )
    .await;
    assert_eq!(query[running.id()][0], "active");
    assert!(query.get(scheduled.id()).is_none(), "{query}");

    let registered = reply_of(
        control
            .inspect("registered", &quick())
            .await
            .expect("registered"),
        &node,
    )
    .await;
    assert_eq!(registered, json!(["tests.add", "tests.sleep"]));
    let stats = reply_of(
        control.inspect("stats", &quick()).await.expect("stats"),
        &node,
    )
    .await;
    assert_eq!(stats["pid"], std::process::id());
    assert_eq!(stats["celeriac"]["active"], 1);
    let queues = reply_of(
        control
            .inspect("active_queues", &quick())
            .await
            .expect("queues"),
        &node,
    )
    .await;
    assert_eq!(queues[0]["name"], "celery");
    let conf = reply_of(
        control.inspect("conf", &quick()).await.expect("conf"),
        &node,
    )
    .await;
    assert_eq!(conf["worker_send_task_events"], false);
    assert_eq!(conf["control_exchange"], "celery");
    let reserved = reply_of(
        control
            .inspect("reserved", &quick())
            .await
            .expect("reserved"),
        &node,
    )
    .await;
    assert_eq!(reserved, json!([]));
    let unknown = reply_of(
        control
            .broadcast("no_such_command", Map::new(), &quick())
            .await
            .expect("sent"),
        &node,
    )
    .await;
    assert_eq!(unknown, json!({"error": "KeyError('no_such_command')"}));

    // Addressed to someone else: no reply from this node.
    let elsewhere = BroadcastOptions {
        destination: Some(vec!["nobody@nowhere".into()]),
        ..quick()
    };
    assert!(control.ping(&elsewhere).await.expect("ping").is_empty());

    control
        .revoke(&[running.id().to_string()], true, &quick())
        .await
        .expect("revoke");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_stops_an_eta_task_and_terminate_stops_a_running_one() {
    let t = TestApp::new();
    let starts = Arc::new(AtomicU32::new(0));
    let app = app_with(&t, &starts, false).await;
    let worker = RunningWorker::start_default(&app);
    let control = app.control();
    let node = app.hostname().to_string();
    wait_for_node(&control, &node).await;

    let mut soon = SendOptions::new();
    soon.countdown = Some(Duration::from_secs(2));
    let eta = app
        .send_task("tests.sleep", vec![json!(0.01)], Map::new(), soon)
        .await
        .expect("sent");
    let reply = reply_of(
        control
            .revoke(&[eta.id().to_string()], false, &quick())
            .await
            .expect("revoke"),
        &node,
    )
    .await;
    assert_eq!(
        reply,
        json!({"ok": format!("tasks {{'{}'}} flagged as revoked", eta.id())})
    );
    let revoked = reply_of(
        control.inspect("revoked", &quick()).await.expect("revoked"),
        &node,
    )
    .await;
    assert_eq!(revoked, json!([eta.id()]));
    // REVOKED is stored at once (Celery 5.7), and stays after the ETA passed.
    assert_eq!(eta.state().await.expect("state"), TaskState::Revoked);

    let long = app
        .send_task(
            "tests.sleep",
            vec![json!(60)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    wait_for("the long task to start", WAIT, || {
        let starts = starts.clone();
        async move { starts.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let reply = reply_of(
        control
            .revoke(&[long.id().to_string()], true, &quick())
            .await
            .expect("revoke"),
        &node,
    )
    .await;
    assert_eq!(reply, json!({"ok": format!("terminate: {}", long.id())}));
    let app2 = app.clone();
    let long_id = long.id().to_string();
    wait_for("the terminated task to be REVOKED", WAIT, || {
        let app = app2.clone();
        let id = long_id.clone();
        async move {
            app.backend()
                .expect("backend")
                .get(&id)
                .await
                .ok()
                .flatten()
                .is_some_and(|m| m.status == TaskState::Revoked)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(starts.load(Ordering::SeqCst), 1, "the revoked ETA task ran");
    assert_eq!(eta.state().await.expect("state"), TaskState::Revoked);
    let stats = worker.stop().await;
    assert_eq!(stats.revoked, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_ignored_and_shutdown_stops_the_worker() {
    let t = TestApp::new();
    let starts = Arc::new(AtomicU32::new(0));
    let app = app_with(&t, &starts, false).await;
    let worker = RunningWorker::start_default(&app);
    let control = app.control();
    let node = app.hostname().to_string();
    wait_for_node(&control, &node).await;
    for body in [
        &b"not json"[..],
        b"[1, 2]",
        b"{\"method\": 7}",
        b"{\"method\": \"revoke\", \"arguments\": {\"task_id\": 5}}",
    ] {
        let mut envelope =
            celeriac::core::pidbox::ControlRequest::new("x", Map::new()).to_envelope(1, 0.0);
        envelope.body = body.to_vec();
        app.broker()
            .broadcast(Broadcast {
                exchange: "celery.pidbox".into(),
                routing_key: String::new(),
                envelope,
            })
            .await
            .expect("broadcast");
    }
    let rate = reply_of(
        control
            .rate_limit("tests.add", "10/m", &quick())
            .await
            .expect("rate"),
        &node,
    )
    .await;
    assert_eq!(rate, json!({"ok": "new rate limit set successfully"}));
    let bad = reply_of(
        control
            .rate_limit("tests.add", "ten", &quick())
            .await
            .expect("rate"),
        &node,
    )
    .await;
    assert!(bad["error"].as_str().is_some(), "{bad}");
    let unknown = reply_of(
        control
            .rate_limit("nope", "1/s", &quick())
            .await
            .expect("rate"),
        &node,
    )
    .await;
    assert_eq!(unknown, json!({"error": "unknown task"}));

    let reply = reply_of(control.shutdown(&quick()).await.expect("shutdown"), &node).await;
    assert_eq!(reply, json!({"ok": "shutting down"}));
    // The worker stops by itself (stop() only waits for it here).
    tokio::time::timeout(Duration::from_secs(15), worker.stop())
        .await
        .expect("the worker shut down");
}

async fn subscribe_events(app: &App) -> Subscription {
    app.broker()
        .subscribe(&SubscribeParams {
            exchange: "celeryev".into(),
            routing_key: None,
        })
        .await
        .expect("subscribe")
}

/// Event types received until `worker-offline` of `node`.
async fn event_types(events: &mut Subscription, node: &str) -> Vec<(String, Map<String, Value>)> {
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("an event within 20 s")
            .expect("subscription open");
        for event in events_in(&message.envelope) {
            let kind = event["type"].as_str().unwrap_or_default().to_string();
            assert_eq!(event["hostname"], node);
            let offline = kind == "worker-offline";
            seen.push((kind, event));
            if offline {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_events_are_sent_with_events_on() {
    let t = TestApp::new();
    let starts = Arc::new(AtomicU32::new(0));
    let app = app_with(&t, &starts, true).await;
    let mut events = subscribe_events(&app).await;
    let worker = RunningWorker::start_default(&app);
    let result = app
        .send_task(
            "tests.add",
            vec![json!(2), json!(3)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    assert_eq!(result.get(WAIT).await.expect("result"), json!(5));
    worker.stop().await;
    let seen = event_types(&mut events, app.hostname()).await;
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    let tasks: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| k.starts_with("task-"))
        .collect();
    assert_eq!(
        tasks,
        ["task-received", "task-started", "task-succeeded"],
        "{kinds:?}"
    );
    assert_eq!(kinds.first(), Some(&"worker-online"));
    let (_, received) = seen
        .iter()
        .find(|(k, _)| k == "task-received")
        .expect("received");
    assert_eq!(received["uuid"], result.id());
    assert_eq!(received["name"], "tests.add");
    assert_eq!(received["args"], "(2, 3)");
    let (_, succeeded) = seen
        .iter()
        .find(|(k, _)| k == "task-succeeded")
        .expect("succeeded");
    assert_eq!(succeeded["result"], "5");
    assert!(succeeded["runtime"].as_f64().is_some());
    let (_, offline) = seen.last().expect("offline");
    assert_eq!(offline["processed"], 1);
    assert_eq!(offline["sw_ident"], "celeriac");
    // Clocks increase.
    let clocks: Vec<u64> = seen
        .iter()
        .filter_map(|(_, e)| e["clock"].as_u64())
        .collect();
    assert!(clocks.windows(2).all(|w| w[0] < w[1]), "{clocks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_task_events_only_worker_events_are_sent() {
    let t = TestApp::new();
    let starts = Arc::new(AtomicU32::new(0));
    let app = app_with(&t, &starts, false).await;
    let mut events = subscribe_events(&app).await;
    let worker = RunningWorker::start_default(&app);
    let result = app
        .send_task(
            "tests.add",
            vec![json!(1), json!(1)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    assert_eq!(result.get(WAIT).await.expect("result"), json!(2));
    worker.stop().await;
    let seen = event_types(&mut events, app.hostname()).await;
    assert!(
        seen.iter().all(|(k, _)| k.starts_with("worker-")),
        "{seen:?}"
    );
    assert_eq!(seen.first().map(|(k, _)| k.as_str()), Some("worker-online"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_inspects_and_controls_workers() {
    let t = TestApp::new();
    let starts = Arc::new(AtomicU32::new(0));
    let app = app_with(&t, &starts, false).await;
    // Nobody there: inspect fails after its timeout.
    let none = celeriac::cli::run_with_args(
        app.clone(),
        ["app", "inspect", "ping", "--timeout", "300ms"],
    )
    .await;
    assert!(none.is_err());
    let worker = RunningWorker::start_default(&app);
    wait_for_node(&app.control(), app.hostname()).await;
    for args in [
        vec!["app", "inspect", "ping", "--json"],
        vec!["app", "inspect", "stats"],
        vec!["app", "inspect", "registered", "-d", app.hostname()],
        vec!["app", "control", "revoke", "some-id"],
        vec!["app", "control", "rate_limit", "tests.add", "5/s"],
    ] {
        celeriac::cli::run_with_args(app.clone(), args.clone())
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
    }
    let revoked = reply_of(
        app.control()
            .inspect("revoked", &quick())
            .await
            .expect("revoked"),
        app.hostname(),
    )
    .await;
    assert_eq!(revoked, json!(["some-id"]));
    // Reply queues leave nothing behind on the embedded broker.
    let queues = app.broker().queue_stats(&[]).await.expect("stats");
    assert!(
        queues.iter().all(|q| !q.name.ends_with(".pidbox")),
        "{queues:?}"
    );
    celeriac::cli::run_with_args(app.clone(), ["app", "control", "shutdown"])
        .await
        .expect("shutdown");
    tokio::time::timeout(Duration::from_secs(15), worker.stop())
        .await
        .expect("the worker shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_events_turns_task_events_on_at_runtime() {
    let t = TestApp::new();
    let starts = Arc::new(AtomicU32::new(0));
    let app = app_with(&t, &starts, false).await;
    let worker = RunningWorker::start_default(&app);
    let control = app.control();
    let node = app.hostname().to_string();
    wait_for_node(&control, &node).await;
    let mut events = subscribe_events(&app).await;
    let reply = reply_of(
        control
            .broadcast("enable_events", Map::new(), &quick())
            .await
            .expect("enable"),
        &node,
    )
    .await;
    assert_eq!(reply, json!({"ok": "task events enabled"}));
    let result = app
        .send_task(
            "tests.add",
            vec![json!(4), json!(4)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    assert_eq!(result.get(WAIT).await.expect("result"), json!(8));
    worker.stop().await;
    let seen = event_types(&mut events, &node).await;
    assert!(
        seen.iter()
            .any(|(k, e)| k == "task-succeeded" && e["uuid"] == result.id()),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_send_task_sent_when_asked() {
    let t = TestApp::new();
    let app = t
        .builder()
        .task(add())
        .configure(|s| s.task_send_sent_event = true)
        .build()
        .await
        .expect("app");
    let mut events = subscribe_events(&app).await;
    let result = app
        .send_task(
            "tests.add",
            vec![json!(2), json!(3)],
            Map::new(),
            SendOptions::new(),
        )
        .await
        .expect("sent");
    let message = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event")
        .expect("open");
    assert_eq!(message.routing_key, "task.sent");
    let sent = events_in(&message.envelope);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["type"], "task-sent");
    assert_eq!(sent[0]["uuid"], result.id());
    assert_eq!(sent[0]["name"], "tests.add");
    assert_eq!(sent[0]["args"], "(2, 3)");
    assert_eq!(sent[0]["queue"], "celery");
    // Off by default: a plain app sends none.
    let quiet = t.builder().task(add()).build().await.expect("app");
    quiet
        .send_task("tests.add", vec![json!(1)], Map::new(), SendOptions::new())
        .await
        .expect("sent");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err()
    );
}
