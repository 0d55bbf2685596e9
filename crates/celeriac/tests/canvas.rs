//! Workflow continuations run by a celeriac worker, encoded as Celery encodes them
//! (PROTOCOL.md §4): chain steps in `embed.chain` (reversed), `link` callbacks and
//! `link_error` errbacks. Embedded SQLite broker and backend.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac::canvas::{chain, chord, chunks, group, si, sig, xmap, xstarmap, SignatureExt};
use celeriac::core::{Embed, Map, SendOptions, Signature, TaskOptions, TaskState, Value};
use celeriac::App;
use serde_json::json;
use support::{task, wait_for, RunningWorker, TestApp};

const WAIT: Duration = Duration::from_secs(20);

/// A signature with a preassigned id, as Python's chain builds them.
fn step(name: &str, args: Vec<Value>, id: &str) -> Signature {
    let mut sig = Signature::new(name, args);
    sig.options.insert("task_id".into(), json!(id));
    sig
}

/// What `t.record` saw: (parent id, arguments) per call.
type Seen = Arc<Mutex<Vec<(String, Vec<Value>)>>>;

async fn app_with_tasks(t: &TestApp, seen: Seen) -> App {
    let add = task("t.add", TaskOptions::default(), |_c, args, _k| async move {
        Ok(json!(args.iter().filter_map(Value::as_i64).sum::<i64>()))
    });
    let mul = task("t.mul", TaskOptions::default(), |_c, args, _k| async move {
        Ok(json!(args
            .iter()
            .filter_map(Value::as_i64)
            .product::<i64>()))
    });
    let fail = task(
        "t.fail",
        TaskOptions::default(),
        |_c, args, _k| async move {
            let message = args.first().and_then(Value::as_str).unwrap_or("boom");
            Err(celeriac::core::TaskError::Failed(
                celeriac::core::TaskFailure::new("ValueError", message),
            ))
        },
    );
    let record = task("t.record", TaskOptions::default(), move |ctx, args, _k| {
        let seen = seen.clone();
        async move {
            seen.lock()
                .expect("lock")
                .push((ctx.parent_id().unwrap_or_default().to_string(), args));
            Ok(Value::Null)
        }
    });
    let tsum = task("t.sum", TaskOptions::default(), |_c, args, _k| async move {
        let list = args
            .first()
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(json!(list.iter().filter_map(Value::as_i64).sum::<i64>()))
    });
    t.builder()
        .task(add)
        .task(mul)
        .task(tsum)
        .task(fail)
        .task(record)
        .build()
        .await
        .expect("app")
}

fn with_embed(embed: Embed) -> SendOptions {
    let mut options = SendOptions::new();
    options.embed = Some(embed);
    options
}

#[tokio::test]
async fn a_chain_passes_each_result_to_the_next_step() {
    let t = TestApp::new();
    let app = app_with_tasks(&t, Arc::default()).await;
    let worker = RunningWorker::start_default(&app);
    // add(1, 2) | mul(10) | add(5): the chain is carried reversed, next step last.
    let embed = Embed {
        chain: Some(vec![
            step("t.add", vec![json!(5)], "chain-3"),
            step("t.mul", vec![json!(10)], "chain-2"),
        ]),
        ..Embed::default()
    };
    let first = app
        .send_task(
            "t.add",
            vec![json!(1), json!(2)],
            Map::new(),
            with_embed(embed),
        )
        .await
        .expect("sent");
    let last = app.result::<Value>("chain-3");
    assert_eq!(last.get(WAIT).await.expect("last step"), json!(35));
    let middle = app
        .result::<Value>("chain-2")
        .meta()
        .await
        .expect("middle meta");
    assert_eq!(middle.result, json!(30));
    assert_eq!(middle.parent_id.as_deref(), Some(first.id()));
    let head = first.meta().await.expect("first meta");
    assert_eq!(
        head.children,
        vec![json!([["chain-2", null], null])],
        "the first step lists the step it sent"
    );
    worker.stop().await;
}

#[tokio::test]
async fn link_callbacks_get_the_result_unless_immutable() {
    let t = TestApp::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = app_with_tasks(&t, seen.clone()).await;
    let worker = RunningWorker::start_default(&app);
    let mut immutable = Signature::new("t.record", vec![json!("fixed")]);
    immutable.immutable = true;
    let embed = Embed {
        callbacks: Some(vec![
            Signature::new("t.record", vec![json!("extra")]),
            immutable,
        ]),
        ..Embed::default()
    };
    let sent = app
        .send_task(
            "t.add",
            vec![json!(4), json!(4)],
            Map::new(),
            with_embed(embed),
        )
        .await
        .expect("sent");
    assert_eq!(sent.get(WAIT).await.expect("result"), json!(8));
    wait_for("both callbacks", WAIT, || {
        let seen = seen.clone();
        async move { seen.lock().expect("lock").len() == 2 }
    })
    .await;
    let mut calls = seen.lock().expect("lock").clone();
    calls.sort_by_key(|call| call.1.len());
    assert_eq!(calls[0], (sent.id().to_string(), vec![json!("fixed")]));
    assert_eq!(
        calls[1],
        (sent.id().to_string(), vec![json!(8), json!("extra")])
    );
    assert_eq!(sent.meta().await.expect("meta").children.len(), 2);
    worker.stop().await;
}

#[tokio::test]
async fn a_failed_step_fails_the_rest_of_the_chain_and_calls_errbacks() {
    let t = TestApp::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = app_with_tasks(&t, seen.clone()).await;
    let worker = RunningWorker::start_default(&app);
    let embed = Embed {
        chain: Some(vec![
            step("t.add", vec![json!(1)], "broken-3"),
            step("t.add", vec![json!(1)], "broken-2"),
        ]),
        errbacks: Some(vec![Signature::new("t.record", vec![json!("cleanup")])]),
        ..Embed::default()
    };
    let first = app
        .send_task(
            "t.fail",
            vec![json!("no luck")],
            Map::new(),
            with_embed(embed),
        )
        .await
        .expect("sent");
    for id in ["broken-2", "broken-3"] {
        let result = app.result::<Value>(id);
        let error = result.get(WAIT).await.expect_err("the step never runs");
        assert!(error.to_string().contains("no luck"), "{id}: {error}");
        let meta = result.meta().await.expect("meta");
        assert_eq!(meta.status, TaskState::Failure);
    }
    wait_for("the errback", WAIT, || {
        let seen = seen.clone();
        async move { !seen.lock().expect("lock").is_empty() }
    })
    .await;
    let calls = seen.lock().expect("lock").clone();
    assert_eq!(
        calls,
        vec![(
            first.id().to_string(),
            vec![json!(first.id()), json!("cleanup")]
        )],
        "the errback gets the failed task's id first"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_group_callback_sends_every_member_with_the_group_id() {
    let t = TestApp::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = app_with_tasks(&t, seen.clone()).await;
    let worker = RunningWorker::start_default(&app);
    let mut group = Signature::new("celery.group", vec![]);
    group.subtask_type = Some("group".into());
    group.options.insert("task_id".into(), json!("group-1"));
    group.kwargs.insert(
        "tasks".into(),
        json!([
            {"task": "t.mul", "args": [2], "kwargs": {}, "options": {"task_id": "member-0"}},
            {"task": "t.mul", "args": [3], "kwargs": {}, "options": {"task_id": "member-1"}},
        ]),
    );
    let embed = Embed {
        callbacks: Some(vec![group]),
        ..Embed::default()
    };
    let sent = app
        .send_task("t.add", vec![json!(5)], Map::new(), with_embed(embed))
        .await
        .expect("sent");
    assert_eq!(sent.get(WAIT).await.expect("result"), json!(5));
    for (id, value) in [("member-0", 10), ("member-1", 15)] {
        let member = app.result::<Value>(id);
        assert_eq!(member.get(WAIT).await.expect("member"), json!(value));
        let meta = member.meta().await.expect("meta");
        assert_eq!(meta.group_id.as_deref(), Some("group-1"));
    }
    let children = sent.meta().await.expect("meta").children;
    assert_eq!(
        children,
        vec![json!([
            ["group-1", null],
            [[["member-0", null], null], [["member-1", null], null]]
        ])]
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_rust_built_chain_group_and_chord_run_as_celery_would_run_them() {
    let t = TestApp::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = app_with_tasks(&t, seen.clone()).await;
    let worker = RunningWorker::start_default(&app);

    let total = app
        .apply(chain([
            sig("t.add", [json!(1), json!(2)]),
            sig("t.mul", [json!(10)]),
            sig("t.add", [json!(5)]),
        ]))
        .await
        .expect("chain sent");
    assert_eq!(total.get(WAIT).await.expect("chain"), json!(35));

    let squares = app
        .apply_group(group((1..=4).map(|i| sig("t.mul", [json!(i), json!(i)]))))
        .await
        .expect("group sent");
    assert_eq!(squares.results().len(), 4);
    assert_eq!(
        squares.get(WAIT).await.expect("group"),
        vec![json!(1), json!(4), json!(9), json!(16)]
    );

    let sum = app
        .apply(chord(
            (0..5).map(|i| sig("t.add", [json!(i), json!(i)])),
            sig("t.sum", []),
        ))
        .await
        .expect("chord sent");
    assert_eq!(sum.get(WAIT).await.expect("chord"), json!(20));

    // A group followed by a step is a chord; steps after a chord follow its body.
    let upgraded = app
        .apply(chain([
            sig("t.add", [json!(1), json!(1)]),
            group([sig("t.mul", [json!(3)]), sig("t.mul", [json!(4)])]),
            sig("t.sum", []),
            sig("t.mul", [json!(2)]),
        ]))
        .await
        .expect("chain with a group sent");
    // (2*3 + 2*4) * 2
    assert_eq!(upgraded.get(WAIT).await.expect("upgraded chain"), json!(28));
    worker.stop().await;
}

#[tokio::test]
async fn a_failed_header_task_fails_the_chord_body_and_calls_its_errback() {
    let t = TestApp::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = app_with_tasks(&t, seen.clone()).await;
    let worker = RunningWorker::start_default(&app);
    let body = sig("t.sum", []).link_error(si("t.record", [json!("chord-errback")]));
    let sum = app
        .apply(chord(
            [
                sig("t.add", [json!(1)]),
                sig("t.fail", [json!("header down")]),
            ],
            body,
        ))
        .await
        .expect("chord sent");
    let error = sum.get(WAIT).await.expect_err("the body fails");
    let text = error.to_string();
    assert!(
        text.contains("ChordError") && text.contains("header down"),
        "{text}"
    );
    wait_for("the body's errback", WAIT, || {
        let seen = seen.clone();
        async move { !seen.lock().expect("lock").is_empty() }
    })
    .await;
    assert_eq!(
        seen.lock().expect("lock")[0].1,
        vec![json!("chord-errback")]
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_chord_of_1000_header_tasks_calls_its_body_exactly_once() {
    let t = TestApp::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = app_with_tasks(&t, seen.clone()).await;
    let worker = RunningWorker::start_default(&app);
    let body = si("t.record", [json!("chord-body")]);
    let done = app
        .apply(chord(
            (0..1000).map(|i| sig("t.add", [json!(i), json!(1)])),
            body,
        ))
        .await
        .expect("chord sent");
    done.get(Duration::from_secs(120))
        .await
        .expect("the body ran");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = seen.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "the body ran exactly once: {calls:?}");
    let stats = worker.stop().await;
    assert_eq!(stats.succeeded, 1001);
}

#[tokio::test]
async fn map_starmap_and_chunks_run_the_task_per_item() {
    let t = TestApp::new();
    let app = app_with_tasks(&t, Arc::default()).await;
    let worker = RunningWorker::start_default(&app);
    let mapped = app
        .apply(xmap(sig("t.add", []), [json!(1), json!(2), json!(3)]))
        .await
        .expect("map sent");
    assert_eq!(mapped.get(WAIT).await.expect("map"), json!([1, 2, 3]));
    let starred = app
        .apply(xstarmap(
            sig("t.mul", []),
            [vec![json!(2), json!(3)], vec![json!(4), json!(5)]],
        ))
        .await
        .expect("starmap sent");
    assert_eq!(starred.get(WAIT).await.expect("starmap"), json!([6, 20]));
    let chunked = app
        .apply_group(chunks(
            sig("t.add", []),
            (0..5).map(|i| vec![json!(i), json!(i)]),
            2,
        ))
        .await
        .expect("chunks sent");
    assert_eq!(
        chunked.get(WAIT).await.expect("chunks"),
        vec![json!([0, 2]), json!([4, 6]), json!([8])]
    );
    worker.stop().await;
}

mod typed {
    use celeriac::prelude::*;

    #[task(name = "typed.add")]
    pub async fn add(x: i64, y: i64) -> TaskResult<i64> {
        Ok(x + y)
    }

    #[task(name = "typed.describe")]
    pub async fn describe(total: i64, unit: String) -> TaskResult<String> {
        Ok(format!("{total} {unit}"))
    }
}

#[tokio::test]
async fn a_typed_chain_passes_typed_results() {
    use celeriac::canvas::Chain;
    let t = TestApp::new();
    let app = t
        .builder()
        .task(typed::add)
        .task(typed::describe)
        .build()
        .await
        .expect("app");
    let worker = RunningWorker::start_default(&app);
    let text: String = Chain::start(typed::add::s(1, 2).expect("sig"))
        .then(typed::add::partial(10).expect("sig"))
        .then(typed::describe::partial("apples".into()).expect("sig"))
        .apply(&app)
        .await
        .expect("sent")
        .get(WAIT)
        .await
        .expect("typed result");
    assert_eq!(text, "13 apples");
    let ignored: i64 = Chain::start(typed::add::s(1, 1).expect("sig"))
        .then_ignoring(typed::add::s(5, 5).expect("sig"))
        .apply(&app)
        .await
        .expect("sent")
        .get(WAIT)
        .await
        .expect("typed result");
    assert_eq!(ignored, 10, "an immutable step ignores the previous result");
    worker.stop().await;
}

#[tokio::test]
async fn groups_and_chord_headers_may_hold_chains() {
    let t = TestApp::new();
    let app = app_with_tasks(&t, Arc::default()).await;
    let worker = RunningWorker::start_default(&app);
    let nested = app
        .apply_group(group([
            chain([
                sig("t.add", [json!(1), json!(1)]),
                sig("t.mul", [json!(10)]),
            ]),
            sig("t.add", [json!(3), json!(4)]),
        ]))
        .await
        .expect("group sent");
    assert_eq!(
        nested.get(WAIT).await.expect("group"),
        vec![json!(20), json!(7)],
        "a chain member's result is its last step's"
    );
    // Chains in a chord header: each chain's last result is one header result.
    let chained = app
        .apply(chord(
            [
                chain([
                    sig("t.add", [json!(1), json!(1)]),
                    sig("t.mul", [json!(10)]),
                ]),
                chain([
                    sig("t.add", [json!(2), json!(2)]),
                    sig("t.mul", [json!(100)]),
                ]),
                sig("t.add", [json!(5), json!(5)]),
            ],
            sig("t.sum", []),
        ))
        .await
        .expect("a chord with chains in its header");
    assert_eq!(
        chained.get(WAIT).await.expect("chord"),
        json!(20 + 400 + 10)
    );
    let refused = app
        .apply(chord(
            [group([sig("t.add", [json!(1), json!(1)])])],
            sig("t.sum", []),
        ))
        .await
        .expect_err("a group in a chord header is refused");
    assert!(refused.to_string().contains("chord header"), "{refused}");
    worker.stop().await;
}
