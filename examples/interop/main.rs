//! The interop worker: the `interop.*` tasks that `tests/interop/tasks.py` also
//! defines for Python Celery, so a Python client can call them on a celeriac worker
//! (and a celeriac client on a Python worker) and compare.
//!
//! ```text
//! cargo build --release --example interop
//! CELERIAC_BROKER_URL=redis://127.0.0.1:6379/13 CELERIAC_RESULT_BACKEND=redis://127.0.0.1:6379/13 \
//!     target/release/examples/interop worker            # consumes Celery's default queue `celery`
//! target/release/examples/interop call interop.add --args '[2, 3]' --wait 10s
//! target/release/examples/interop result <task-id> --wait 10s
//! ```
//!
//! The command line is celeriac's (`worker`, `call`, `result`, `queues`, ...); the
//! broker and result backend come from `--broker`/`--backend`, else
//! `CELERIAC_BROKER_URL` / `CELERIAC_RESULT_BACKEND`, else the SQLite file
//! `celeriac.db` for both.
//!
//! | task | does |
//! |---|---|
//! | `interop.add(x, y)` | `x + y`; integers stay integers, floats work |
//! | `interop.echo(*args, **kwargs)` | `{"args": [...], "kwargs": {...}}` |
//! | `interop.sleep(seconds)` | sleeps (blocking), returns `seconds` as a float |
//! | `interop.fail(message)` | fails with `ValueError(message)` |
//! | `interop.flaky(token, failures)` | retries `failures` times (countdown 0.1 s), then returns the number of attempts |
//! | `interop.record(token)` | appends `token worker-hostname` to the file `$CELERIAC_INTEROP_LOG`, returns `token` |
//! | `interop.record_late(token)` | the same with `acks_late` |
//! | `interop.single(token, ms)` | single-instance (one lock for the task name, 10 s lease); sleeps `ms` milliseconds and appends `token start_unix_ms end_unix_ms worker-hostname` to `$CELERIAC_INTEROP_LOG`; on conflict it is sent again 0.1 s later, so every call runs once |

use std::io::Write;
use std::time::Duration;

use celeriac::core::task::{RetryRequest, TaskFailure};
use celeriac::core::{FnTask, Map, TaskOptions, Value};
use celeriac::prelude::*;
use serde_json::{json, Number};

/// `x + y` on JSON numbers: exact for integers (as Python's `int`), `f64` as soon as
/// one side is a float.
#[task(name = "interop.add")]
async fn add(x: Number, y: Number) -> TaskResult<Number> {
    sum(&x, &y)
}

/// The sum of two JSON numbers (see [`add`]).
fn sum(x: &Number, y: &Number) -> TaskResult<Number> {
    let integer = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    if let (Some(a), Some(b)) = (integer(x), integer(y)) {
        let total = a + b;
        if let Ok(total) = i64::try_from(total) {
            return Ok(Number::from(total));
        }
        if let Ok(total) = u64::try_from(total) {
            return Ok(Number::from(total));
        }
        return Err(TaskError::fail(
            "OverflowError",
            format!("{x} + {y} does not fit in 64 bits"),
        ));
    }
    let (a, b) = (x.as_f64(), y.as_f64());
    a.zip(b)
        .and_then(|(a, b)| Number::from_f64(a + b))
        .ok_or_else(|| TaskError::fail("ValueError", format!("{x} + {y} is not a finite number")))
}

/// `interop.echo(*args, **kwargs)`: takes any arguments, which `#[task]` (fixed
/// parameters) cannot, so it is a hand-written task over the raw JSON.
fn echo() -> impl celeriac::core::Task {
    FnTask::new(
        "interop.echo",
        TaskOptions::default(),
        |_ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>| async move {
            Ok(json!({"args": args, "kwargs": kwargs}))
        },
    )
}

/// Sleeps `seconds` on a blocking thread (waking early only to honour a soft time
/// limit, revoke or shutdown) and returns `seconds`.
#[task(name = "interop.sleep")]
fn sleep(ctx: &TaskContext, seconds: f64) -> TaskResult<f64> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(TaskError::fail(
            "ValueError",
            format!("sleep length must be a non-negative number, got {seconds}"),
        ));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(seconds);
        }
        if ctx.is_cancelled() {
            return Err(TaskError::fail("Cancelled", "interrupted while sleeping"));
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Fails with `ValueError(message)`.
#[task(name = "interop.fail")]
async fn fail(message: String) -> TaskResult<()> {
    Err(TaskError::fail("ValueError", message))
}

/// Fails (retrying after 0.1 s) while fewer than `failures` retries happened, then
/// returns the number of attempts. The count travels in the message (`retries`), so
/// attempts may run on different workers, Python or Rust.
#[task(name = "interop.flaky", max_retries = 100)]
async fn flaky(ctx: TaskContext, token: String, failures: u32) -> TaskResult<u32> {
    let attempt = ctx.retries() + 1;
    if ctx.retries() < failures {
        return Err(TaskError::Retry(RetryRequest {
            countdown: Some(Duration::from_millis(100)),
            cause: Some(Box::new(TaskFailure::new(
                "RuntimeError",
                format!("flaky {token}: attempt {attempt} of {}", failures + 1),
            ))),
            ..RetryRequest::default()
        }));
    }
    Ok(attempt)
}

/// Appends `token hostname` as one line to `$CELERIAC_INTEROP_LOG`.
fn append_record(ctx: &TaskContext, token: &str) -> TaskResult<String> {
    let path = std::env::var_os("CELERIAC_INTEROP_LOG")
        .ok_or_else(|| TaskError::fail("RuntimeError", "CELERIAC_INTEROP_LOG is not set"))?;
    let line = format!("{token} {}\n", ctx.hostname());
    // O_APPEND and one write per line: lines of concurrent workers never interleave.
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?
        .write_all(line.as_bytes())?;
    Ok(token.to_string())
}

/// Records that this worker ran `token`.
#[task(name = "interop.record")]
fn record(ctx: &TaskContext, token: String) -> TaskResult<String> {
    append_record(ctx, &token)
}

/// Records that this worker ran `token`; acknowledged only after it ran.
#[task(name = "interop.record_late", acks_late = true)]
fn record_late(ctx: &TaskContext, token: String) -> TaskResult<String> {
    append_record(ctx, &token)
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// One run at a time across every worker: sleeps `ms` and records
/// `token start_unix_ms end_unix_ms hostname`, so a test can check that no two runs
/// overlap. A run that finds the lock held is sent again 0.1 s later.
#[task(
    name = "interop.single",
    single_instance,
    on_conflict = "retry",
    lock_retry_delay = "100ms",
    lock_lease = "10s"
)]
async fn single(ctx: &TaskContext, token: String, ms: u64) -> TaskResult<String> {
    let path = std::env::var_os("CELERIAC_INTEROP_LOG")
        .ok_or_else(|| TaskError::fail("RuntimeError", "CELERIAC_INTEROP_LOG is not set"))?;
    let start = unix_ms();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let line = format!("{token} {start} {} {}\n", unix_ms(), ctx.hostname());
    // O_APPEND and one write per line: lines of concurrent workers never interleave.
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?
        .write_all(line.as_bytes())?;
    Ok(token)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let builder = App::builder("interop")
        .broker("sqlite://celeriac.db")
        .task(add)
        .task(echo())
        .task(sleep)
        .task(fail)
        .task(flaky)
        .task(record)
        .task(record_late)
        .task(single);
    // Connects only once the command-line flags are known.
    celeriac::cli::run_builder(builder).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(value: Value) -> Number {
        match value {
            Value::Number(n) => n,
            other => panic!("{other} is not a number"),
        }
    }

    #[test]
    fn add_keeps_integers_and_adds_floats() {
        assert_eq!(sum(&n(json!(2)), &n(json!(3))).ok(), Some(n(json!(5))));
        assert_eq!(sum(&n(json!(-2)), &n(json!(3))).ok(), Some(n(json!(1))));
        assert_eq!(sum(&n(json!(1.5)), &n(json!(2))).ok(), Some(n(json!(3.5))));
        assert_eq!(
            sum(&n(json!(u64::MAX)), &n(json!(-1))).ok(),
            Some(n(json!(u64::MAX - 1)))
        );
        assert!(sum(&n(json!(u64::MAX)), &n(json!(1))).is_err());
    }
}
