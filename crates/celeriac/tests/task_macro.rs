//! `#[task]`: what the generated task declares and how it runs, through the `Task`
//! trait (no broker), plus one round trip through a worker on SQLite.

mod support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::Duration;

use celeriac::core::limits::parse_duration;
use celeriac::core::{Backoff, Map, RateLimit, Task, TaskFailure, Value};
use celeriac::prelude::*;
use serde_json::json;

// ---------------------------------------------------------------------------------
// Tasks under test
// ---------------------------------------------------------------------------------

/// Sends a notification.
#[task(name = "notify.send", queue = "short-task")]
pub async fn send_notification(user_id: u64, text: String) -> TaskResult<String> {
    Ok(format!("{user_id}:{text}"))
}

#[task(
    name = "files.process",
    queue = "long-task",
    acks_late = true,
    soft_time_limit = "30m",
    time_limit = "35m",
    max_retries = 5,
    retry_backoff = true,
    retry_backoff_max = "10m",
    retry_jitter = false,
    autoretry_for(std::io::Error, "TimeoutError"),
    rate_limit = "100/m",
    expires = "1h",
    ignore_result = false,
    priority = 5,
    routing_key = "long.file",
    default_retry_delay = "30s",
    exchange = "files",
    skip_if_succeeded = true
)]
fn process_large_file(ctx: TaskContext, path: String) -> TaskResult<u64> {
    if path == "missing" {
        std::fs::metadata("/definitely/not/here/celeriac")?;
    }
    if path == "timeout" {
        return Err(TaskError::fail("TimeoutError", "took too long"));
    }
    if path == "retry" {
        return Err(ctx.retry_after(Duration::from_secs(10)));
    }
    Ok(path.len() as u64)
}

#[task]
async fn default_named(x: i64, y: i64) -> TaskResult<i64> {
    Ok(x + y)
}

mod nested {
    use celeriac::prelude::*;

    #[task(max_retries = unlimited, retry_backoff = "2s", acks_late, ignore_result)]
    pub(crate) async fn inner_task() -> TaskResult<()> {
        Ok(())
    }
}

#[task(name = "t.optional")]
async fn optional(a: u32, b: Option<u32>, c: Option<String>) -> TaskResult<Value> {
    Ok(json!([a, b, c]))
}

#[task(name = "t.context_first")]
async fn context_first(ctx: TaskContext, tag: String) -> TaskResult<String> {
    Ok(format!("{}:{tag}", ctx.id()))
}

#[task(name = "t.context_ref_middle")]
async fn context_ref_middle(a: u8, ctx: &TaskContext, b: u8) -> TaskResult<String> {
    Ok(format!("{}:{}:{}", a, ctx.retries(), b))
}

#[task(name = "t.blocking_ref")]
fn blocking_ref(ctx: &TaskContext) -> TaskResult<String> {
    Ok(ctx.id().to_string())
}

static BLOCKING_THREAD: Mutex<Option<ThreadId>> = Mutex::new(None);

#[task(name = "t.blocking")]
fn blocking(n: u64) -> TaskResult<u64> {
    *BLOCKING_THREAD.lock().expect("lock") = Some(std::thread::current().id());
    std::thread::sleep(Duration::from_millis(5));
    Ok(n * 2)
}

#[task(name = "t.panics")]
async fn panics(message: String) -> TaskResult<()> {
    tokio::task::yield_now().await;
    panic!("{message}");
}

#[task(name = "t.panics_blocking")]
fn panics_blocking() -> TaskResult<()> {
    panic!("blocking boom");
}

#[task(name = "t.io")]
async fn io_failure() -> TaskResult<()> {
    std::fs::read("/definitely/not/here/celeriac")?;
    Ok(())
}

#[task(name = "t.io_result")]
fn io_result(fail: bool) -> Result<String, std::io::Error> {
    if fail {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "nope",
        ));
    }
    Ok("fine".into())
}

#[task(name = "t.anything", autoretry_for("*"))]
async fn retries_anything() -> TaskResult<()> {
    Err(TaskError::fail("Whatever", "x"))
}

#[task(name = "t.raw")]
async fn raw_names(r#type: String, app: u8, options: u8) -> TaskResult<String> {
    Ok(format!("{type}{app}{options}", type = r#type))
}

#[task(name = "t.unencodable_argument")]
fn unencodable_argument(pairs: HashMap<(u8, u8), u8>) -> TaskResult<usize> {
    Ok(pairs.len())
}

#[task(name = "t.unencodable_result")]
async fn unencodable_result() -> TaskResult<HashMap<(u8, u8), u8>> {
    Ok(HashMap::from([((1, 2), 3)]))
}

#[task(
    name = "t.durations",
    soft_time_limit = "1.5",
    time_limit = 120,
    default_retry_delay = "500ms",
    expires = "2d",
    rate_limit = "2.5"
)]
async fn durations() -> TaskResult<()> {
    Ok(())
}

#[cfg(any())]
#[task(name = "t.compiled_out")]
async fn compiled_out(x: NotAType) -> TaskResult<()> {
    Ok(())
}

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

fn ctx(id: &str) -> TaskContext {
    TaskContext::builder(id, "test").build()
}

fn kwargs(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

async fn run<T: Task>(
    task: &T,
    args: Vec<Value>,
    kw: Map<String, Value>,
) -> Result<Value, TaskError> {
    task.run(ctx("task-id-1"), args, kw).await
}

fn invalid(result: Result<Value, TaskError>) -> String {
    match result {
        Err(TaskError::InvalidArguments(message)) => message,
        other => panic!("expected InvalidArguments, got {other:?}"),
    }
}

fn failure(result: Result<Value, TaskError>) -> TaskFailure {
    match result {
        Err(TaskError::Failed(failure)) => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Declaration
// ---------------------------------------------------------------------------------

#[test]
fn name_and_options_reflect_the_attribute() {
    assert_eq!(send_notification::NAME, "notify.send");
    assert_eq!(send_notification.name(), "notify.send");
    let o = send_notification.options();
    assert_eq!(o.queue.as_deref(), Some("short-task"));
    assert!(!o.blocking);
    assert_eq!(o.max_retries, Some(3), "Celery's default");
    assert_eq!(o.acks_late, None);

    let o = process_large_file.options();
    assert_eq!(process_large_file.name(), "files.process");
    assert_eq!(o.queue.as_deref(), Some("long-task"));
    assert_eq!(o.routing_key.as_deref(), Some("long.file"));
    assert_eq!(o.exchange.as_deref(), Some("files"));
    assert_eq!(o.priority, Some(5));
    assert_eq!(o.acks_late, Some(true));
    assert!(!o.ignore_result);
    assert_eq!(o.max_retries, Some(5));
    assert_eq!(o.default_retry_delay, Duration::from_secs(30));
    assert_eq!(
        o.retry_backoff,
        Some(Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
            jitter: false
        })
    );
    assert_eq!(o.autoretry_for, vec!["TimeoutError".to_string()]);
    assert_eq!(o.soft_time_limit, Some(Duration::from_secs(1800)));
    assert_eq!(o.time_limit, Some(Duration::from_secs(2100)));
    assert_eq!(o.expires, Some(Duration::from_secs(3600)));
    assert_eq!(
        o.rate_limit,
        Some(RateLimit::parse("100/m").expect("valid"))
    );
    assert!(o.blocking, "a plain fn is blocking code");
    assert!(o.skip_if_succeeded);
    assert!(std::ptr::eq(o, process_large_file.options()), "built once");
}

#[test]
fn default_names_follow_the_module_path() {
    assert_eq!(default_named::NAME, "task_macro.default_named");
    assert_eq!(default_named.name(), "task_macro.default_named");
    assert_eq!(nested::inner_task::NAME, "task_macro.nested.inner_task");
    let o = nested::inner_task.options();
    assert_eq!(o.max_retries, None, "unlimited");
    assert_eq!(o.acks_late, Some(true), "a bare flag means true");
    assert!(o.ignore_result);
    assert_eq!(
        o.retry_backoff,
        Some(Backoff {
            base: Duration::from_secs(2),
            ..Backoff::default()
        })
    );
}

#[test]
fn compile_time_durations_match_the_core_grammar() {
    let o = durations.options();
    assert_eq!(o.soft_time_limit, parse_duration("1.5").ok());
    assert_eq!(o.time_limit, parse_duration("120").ok());
    assert_eq!(Some(o.default_retry_delay), parse_duration("500ms").ok());
    assert_eq!(o.expires, parse_duration("2d").ok());
    assert_eq!(o.rate_limit, RateLimit::parse("2.5").ok());
}

#[tokio::test]
async fn tasks_can_be_declared_inside_a_function() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Point {
        x: i32,
        y: i32,
    }

    #[task]
    async fn local(p: Point) -> TaskResult<i32> {
        Ok(p.x * p.y)
    }

    assert_eq!(local::NAME, "task_macro.local");
    let value = run(&local, vec![json!({"x": 3, "y": 4})], Map::new()).await;
    assert_eq!(value.expect("ok"), json!(12));
}

#[test]
fn tasks_register_with_the_builder_and_as_trait_objects() {
    let registry: Vec<std::sync::Arc<dyn Task>> = vec![
        std::sync::Arc::new(send_notification),
        std::sync::Arc::new(process_large_file),
        std::sync::Arc::new(default_named),
    ];
    let names: Vec<&str> = registry.iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        ["notify.send", "files.process", "task_macro.default_named"]
    );
    let _builder = App::builder("proj")
        .task(send_notification)
        .task(process_large_file);
}

// ---------------------------------------------------------------------------------
// Binding arguments
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn binds_positional_keyword_and_mixed_arguments() {
    let positional = run(&send_notification, vec![json!(7), json!("hi")], Map::new()).await;
    assert_eq!(positional.expect("ok"), json!("7:hi"));

    let by_keyword = run(
        &send_notification,
        vec![],
        kwargs(&[("text", json!("yo")), ("user_id", json!(8))]),
    )
    .await;
    assert_eq!(by_keyword.expect("ok"), json!("8:yo"));

    let mixed = run(
        &send_notification,
        vec![json!(9)],
        kwargs(&[("text", json!("mix"))]),
    )
    .await;
    assert_eq!(mixed.expect("ok"), json!("9:mix"));
}

#[tokio::test]
async fn missing_option_parameters_are_none() {
    let value = run(&optional, vec![json!(1)], Map::new())
        .await
        .expect("ok");
    assert_eq!(value, json!([1, null, null]));
    let value = run(&optional, vec![json!(1)], kwargs(&[("c", json!("see"))]))
        .await
        .expect("ok");
    assert_eq!(value, json!([1, null, "see"]));
    let value = run(&optional, vec![json!(1), json!(2), json!("x")], Map::new())
        .await
        .expect("ok");
    assert_eq!(value, json!([1, 2, "x"]));
}

#[tokio::test]
async fn bad_arguments_are_invalid_arguments_naming_the_parameter() {
    let wrong = invalid(
        run(
            &send_notification,
            vec![json!("seven"), json!("hi")],
            Map::new(),
        )
        .await,
    );
    assert!(wrong.contains("user_id"), "{wrong}");
    // The worker checks the same binding before it acknowledges a message.
    match send_notification.check_args(&[json!("seven"), json!("hi")], &Map::new()) {
        Err(TaskError::InvalidArguments(message)) => {
            assert!(message.contains("user_id"), "{message}")
        }
        other => panic!("check_args should refuse the arguments, got {other:?}"),
    }
    assert!(send_notification
        .check_args(
            &[json!(7)],
            &json!({"text": "hi"})
                .as_object()
                .cloned()
                .unwrap_or_default()
        )
        .is_ok());

    let missing = invalid(run(&send_notification, vec![json!(7)], Map::new()).await);
    assert!(
        missing.contains("text") && missing.contains("missing"),
        "{missing}"
    );

    let extra = invalid(
        run(
            &send_notification,
            vec![json!(7), json!("hi"), json!(1)],
            Map::new(),
        )
        .await,
    );
    assert!(extra.contains("unexpected positional"), "{extra}");

    let extra_kw = invalid(
        run(
            &send_notification,
            vec![json!(7), json!("hi")],
            kwargs(&[("loud", json!(true))]),
        )
        .await,
    );
    assert!(extra_kw.contains("loud"), "{extra_kw}");

    let twice = invalid(
        run(
            &send_notification,
            vec![json!(7)],
            kwargs(&[("user_id", json!(8))]),
        )
        .await,
    );
    assert!(twice.contains("user_id"), "{twice}");

    let none = invalid(run(&default_named, vec![json!(null), json!(1)], Map::new()).await);
    assert!(none.contains("\"x\""), "{none}");
}

#[tokio::test]
async fn raw_identifiers_are_keyword_names_without_the_prefix() {
    let value = run(
        &raw_names,
        vec![],
        kwargs(&[
            ("type", json!("t")),
            ("app", json!(1)),
            ("options", json!(2)),
        ]),
    )
    .await;
    assert_eq!(value.expect("ok"), json!("t12"));
}

// ---------------------------------------------------------------------------------
// Context, blocking code, failures
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn the_context_parameter_receives_the_context_and_is_not_an_argument() {
    let value = context_first
        .run(ctx("abc"), vec![json!("t")], Map::new())
        .await
        .expect("ok");
    assert_eq!(value, json!("abc:t"));

    let retried = TaskContext::builder("id", "t").retries(4).build();
    let value = context_ref_middle
        .run(retried, vec![json!(1)], kwargs(&[("b", json!(2))]))
        .await
        .expect("ok");
    assert_eq!(value, json!("1:4:2"));

    let value = blocking_ref
        .run(ctx("blk"), vec![], Map::new())
        .await
        .expect("ok");
    assert_eq!(value, json!("blk"));

    let extra = invalid(
        context_first
            .run(ctx("abc"), vec![json!("t"), json!("u")], Map::new())
            .await,
    );
    assert!(extra.contains("unexpected"), "{extra}");
}

#[tokio::test]
async fn blocking_functions_run_on_a_blocking_thread() {
    assert!(blocking.options().blocking);
    let value = run(&blocking, vec![json!(21)], Map::new())
        .await
        .expect("ok");
    assert_eq!(value, json!(42));
    let ran_on = BLOCKING_THREAD.lock().expect("lock").expect("recorded");
    assert_ne!(
        ran_on,
        std::thread::current().id(),
        "not on the runtime's thread"
    );
}

#[tokio::test]
async fn a_panic_is_a_failure_not_a_crash() {
    let f = failure(run(&panics, vec![json!("boom")], Map::new()).await);
    assert_eq!(f.exc_type, "WorkerLostError");
    assert_eq!(f.message, "panic: boom");

    let f = failure(run(&panics_blocking, vec![], Map::new()).await);
    assert_eq!(f.exc_type, "WorkerLostError");
    assert_eq!(f.message, "panic: blocking boom");
}

#[tokio::test]
async fn errors_keep_their_type_for_autoretry() {
    let f = failure(run(&process_large_file, vec![json!("missing")], Map::new()).await);
    assert!(f.is::<std::io::Error>());
    assert_eq!(f.exc_type, "Error");
    assert!(
        process_large_file.should_autoretry(&f),
        "io::Error is listed"
    );

    let f = failure(run(&io_failure, vec![], Map::new()).await);
    assert!(f.is::<std::io::Error>());
    assert!(!io_failure.should_autoretry(&f), "nothing listed");

    let f = failure(run(&process_large_file, vec![json!("timeout")], Map::new()).await);
    assert!(!f.is::<std::io::Error>());
    assert!(process_large_file.should_autoretry(&f), "listed by name");

    let other = TaskFailure::new("ValueError", "x");
    assert!(!process_large_file.should_autoretry(&other));

    let f = failure(run(&retries_anything, vec![], Map::new()).await);
    assert!(retries_anything.should_autoretry(&f), "\"*\" matches all");
}

#[tokio::test]
async fn result_errors_convert_into_failures() {
    let value = run(&io_result, vec![json!(false)], Map::new()).await;
    assert_eq!(value.expect("ok"), json!("fine"));
    let f = failure(run(&io_result, vec![json!(true)], Map::new()).await);
    assert!(f.is::<std::io::Error>());
    assert_eq!(f.message, "nope");
}

#[tokio::test]
async fn typed_outcomes_pass_through() {
    match run(&process_large_file, vec![json!("retry")], Map::new()).await {
        Err(TaskError::Retry(request)) => {
            assert_eq!(request.countdown, Some(Duration::from_secs(10)))
        }
        other => panic!("expected a retry, got {other:?}"),
    }
}

#[tokio::test]
async fn values_that_are_not_json_are_encode_errors() {
    let f = failure(run(&unencodable_result, vec![], Map::new()).await);
    assert_eq!(f.exc_type, "EncodeError");

    let err =
        unencodable_argument::signature(HashMap::from([((1, 2), 3)])).expect_err("tuple keys");
    assert!(
        matches!(&err, celeriac::Error::Encode(m) if m.contains("\"pairs\"")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// Calling and sending
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn call_runs_the_function_directly() {
    assert_eq!(default_named::call(2, 3).await.expect("ok"), 5);
    assert_eq!(
        process_large_file::call(ctx("x"), "abcd".into()).expect("ok"),
        4
    );
    assert_eq!(io_result::call(false).expect("ok"), "fine");
}

#[test]
fn signature_carries_the_name_and_json_arguments() {
    let sig = send_notification::signature(7, "hi".into()).expect("encodes");
    assert_eq!(sig.task, "notify.send");
    assert_eq!(sig.args, vec![json!(7), json!("hi")]);
    assert!(sig.kwargs.is_empty());
    let sig = optional::signature(1, None, Some("c".into())).expect("encodes");
    assert_eq!(sig.args, vec![json!(1), json!(null), json!("c")]);
    let sig = context_first::signature("t".into()).expect("encodes");
    assert_eq!(sig.args, vec![json!("t")], "the context is not an argument");
}

fn assert_send<T: Send>(_: &T) {}

/// Never run: `delay` and `apply_async` type-check with typed results, and their
/// futures are `Send`.
#[allow(dead_code)]
async fn _compile_only(app: &App) -> Result<(), celeriac::Error> {
    let r: celeriac::AsyncResult<String> = send_notification::delay(app, 7, "hi".into()).await?;
    let _: String = r.get(Duration::from_secs(1)).await?;
    let r: celeriac::AsyncResult<u64> =
        process_large_file::apply_async(app, "/tmp/x".into(), SendOptions::default()).await?;
    let _ = r;
    let _: celeriac::AsyncResult<()> = nested::inner_task::delay(app).await?;
    let _: celeriac::AsyncResult<String> = raw_names::delay(app, "t".into(), 1, 2).await?;
    let _: celeriac::AsyncResult<String> =
        raw_names::apply_async(app, "t".into(), 1, 2, SendOptions::default()).await?;
    assert_send(&send_notification::delay(app, 1, String::new()));
    assert_send(&blocking::apply_async(app, 1, SendOptions::default()));
    Ok(())
}

#[tokio::test]
async fn generated_run_futures_are_send() {
    let future = send_notification.run(ctx("s"), vec![json!(1), json!("a")], Map::new());
    assert_send(&future);
    future.await.expect("ok");
}

// ---------------------------------------------------------------------------------
// End to end: a worker runs the generated tasks
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn delay_reaches_a_worker_and_returns_a_typed_result() {
    let t = support::TestApp::new();
    let app = t
        .builder()
        .queue(Queue::new("short-task"))
        .queue(Queue::new("long-task"))
        .task(send_notification)
        .task(blocking)
        .task(process_large_file)
        .build()
        .await
        .expect("app");
    let worker = support::RunningWorker::start_default(&app);

    let r = send_notification::delay(&app, 7, "hi".into())
        .await
        .expect("sent");
    assert_eq!(
        r.get(Duration::from_secs(20)).await.expect("result"),
        "7:hi"
    );

    let r = blocking::delay(&app, 21).await.expect("sent");
    assert_eq!(r.get(Duration::from_secs(20)).await.expect("result"), 42);

    let r = process_large_file::apply_async(&app, "abc".into(), SendOptions::default())
        .await
        .expect("sent");
    assert_eq!(r.get(Duration::from_secs(20)).await.expect("result"), 3);

    worker.stop().await;
}
