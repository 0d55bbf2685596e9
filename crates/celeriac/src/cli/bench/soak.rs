//! The soak (issue 10, "Load and soak"): a producer sends a steady mix of tasks for
//! minutes while one worker, in a process of its own, runs them. `bench/soak.sh`
//! starts both, samples the worker's memory and joins the two records.
//!
//! `--soak-worker`: a worker on `short-task` and `long-task` (slots of their own)
//! with the soak's tasks; it writes one line per execution to `--record`
//! (`kind id retries start_unix sent_unix`) and runs until SIGTERM / Ctrl-C.
//!
//! `--soak`: the producer. For `--minutes` it sends `--mixed-rate` tasks a second
//! (default 100), one `send_task` at a time, every message stamped with its send
//! time; it writes one line per send to `--record` (`kind id sent_unix`) and reads
//! the queues' depths every second. Of every 100 tasks: 10 `long` (200 ms, on
//! `long-task`), 3 `flaky` (fails its first run and asks for a retry in 1 s, then
//! succeeds), 2 `fail` (always fails; FAILURE stored), 4 `result` (1 ms; its
//! result is stored) and 81 `short` (1 ms, result ignored), all but `long` on
//! `short-task`. When the time is up it waits for both queues to empty, then
//! checks the stored state of every task that keeps one (`result`, `flaky`,
//! `fail`) and prints one JSON line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use celeriac_core::{
    Map, Queue, SendOptions, Task, TaskContext, TaskError, TaskFuture, TaskOptions, TaskState,
    Value,
};
use serde_json::json;

use super::{peak_rss_mb, progress, round3, BenchArgs};
use crate::app::App;

/// Queue of everything but the long tasks.
const SHORT_QUEUE: &str = "short-task";
/// Queue of the 200 ms tasks.
const LONG_QUEUE: &str = "long-task";
/// The kinds of task, in the order of the report.
const KINDS: [&str; 5] = ["short", "long", "result", "flaky", "fail"];
/// Delay of the flaky task's retry.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn task_name(kind: &str) -> String {
    format!("celeriac.soak.{kind}")
}

/// What the `i`-th task sent is.
fn kind_of(i: u64) -> &'static str {
    match i % 100 {
        n if n % 10 == 9 => "long",
        0 | 20 | 40 => "flaky",
        10 | 50 => "fail",
        30 | 60 | 70 | 80 => "result",
        _ => "short",
    }
}

/// Lines appended to a file, flushed every second and at the end.
#[derive(Clone)]
struct Record(Arc<Mutex<std::io::BufWriter<std::fs::File>>>);

impl Record {
    fn create(path: &PathBuf) -> anyhow::Result<Record> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating the record file {}", path.display()))?;
        Ok(Record(Arc::new(Mutex::new(std::io::BufWriter::new(file)))))
    }
    fn line(&self, text: std::fmt::Arguments<'_>) {
        if let Ok(mut w) = self.0.lock() {
            let _ = w.write_fmt(text);
            let _ = w.write_all(b"\n");
        }
    }
    fn flush(&self) {
        if let Ok(mut w) = self.0.lock() {
            let _ = w.flush();
        }
    }
    fn flush_every_second(&self) -> tokio::task::JoinHandle<()> {
        let record = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                record.flush();
            }
        })
    }
}

/// One of the soak's tasks; every run is written to the record.
struct SoakTask {
    name: String,
    kind: &'static str,
    options: TaskOptions,
    record: Record,
}

impl Task for SoakTask {
    fn name(&self) -> &str {
        &self.name
    }
    fn options(&self) -> &TaskOptions {
        &self.options
    }
    fn run(&self, ctx: TaskContext, args: Vec<Value>, _kwargs: Map<String, Value>) -> TaskFuture {
        let start = celeriac_core::time::unix_now();
        let sent = ctx
            .headers()
            .get("bench_sent_at")
            .and_then(Value::as_f64)
            .map_or_else(|| "-".to_string(), |t| format!("{t:.6}"));
        self.record.line(format_args!(
            "{} {} {} {start:.6} {sent}",
            self.kind,
            ctx.id(),
            ctx.retries()
        ));
        let kind = self.kind;
        let retries = ctx.retries();
        let retry = ctx.retry_after(RETRY_AFTER);
        let value = args.first().cloned().unwrap_or(Value::Null);
        Box::pin(async move {
            match kind {
                "long" => tokio::time::sleep(Duration::from_millis(200)).await,
                "fail" => return Err(TaskError::fail("SoakError", "this task always fails")),
                "flaky" if retries == 0 => return Err(retry),
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
            Ok(value)
        })
    }
}

async fn connect(app: App, args: &BenchArgs, record: Option<Record>) -> anyhow::Result<App> {
    let mut builder = app
        .to_builder()
        .queue(
            Queue::new(SHORT_QUEUE)
                .concurrency(args.short_slots)
                .prefetch_multiplier(args.prefetch_multiplier),
        )
        .queue(
            Queue::new(LONG_QUEUE)
                .concurrency(args.long_slots)
                .prefetch_multiplier(1),
        );
    if let Some(record) = record {
        for kind in KINDS {
            let mut options = TaskOptions::default();
            options.ignore_result = matches!(kind, "short" | "long");
            options.max_retries = Some(if kind == "flaky" { 1 } else { 0 });
            builder = builder.task(SoakTask {
                name: task_name(kind),
                kind,
                options,
                record: record.clone(),
            });
        }
    }
    builder.build().await.context("connecting for the soak")
}

fn record_path(args: &BenchArgs) -> anyhow::Result<&PathBuf> {
    args.record
        .as_ref()
        .context("--soak and --soak-worker need --record FILE")
}

/// `--soak-worker`: runs the soak's tasks until SIGTERM / Ctrl-C.
pub async fn worker(app: App, args: BenchArgs) -> anyhow::Result<()> {
    let record = Record::create(record_path(&args)?)?;
    let app = connect(app, &args, Some(record.clone())).await?;
    let mut config = app.worker_config();
    config
        .queues
        .retain(|q| q.name == SHORT_QUEUE || q.name == LONG_QUEUE);
    let worker = app.worker(config);
    let handle = worker.handle();
    let stats = handle.stats_ref();
    let flusher = record.flush_every_second();
    eprintln!("soak worker: running (pid {})", std::process::id());
    let _ = worker.run_until(crate::cli::shutdown_signal()).await;
    flusher.abort();
    record.flush();
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "{}",
        json!({
            "role": "soak-worker",
            "processed": stats.processed.load(Relaxed),
            "succeeded": stats.succeeded.load(Relaxed),
            "failed": stats.failed.load(Relaxed),
            "retried": stats.retried.load(Relaxed),
            "peak_rss_mb": round3(peak_rss_mb()),
        })
    );
    Ok(())
}

/// `--soak`: the producer.
pub async fn producer(app: App, args: BenchArgs) -> anyhow::Result<()> {
    let rate = args.mixed_rate.unwrap_or(100.0);
    if !(rate > 0.0 && rate.is_finite()) {
        anyhow::bail!("--mixed-rate must be a positive number");
    }
    if !(args.minutes > 0.0 && args.minutes.is_finite()) {
        anyhow::bail!("--minutes must be a positive number");
    }
    let record = Record::create(record_path(&args)?)?;
    let app = connect(app, &args, None).await?;
    let broker_name = app.broker().describe();
    let backend_name = app.backend().map(|b| b.describe());
    let names = [SHORT_QUEUE.to_string(), LONG_QUEUE.to_string()];
    let flusher = record.flush_every_second();

    // Depths every second, in a task of its own so a slow read never delays a send.
    let epoch = Instant::now();
    let depths = Arc::new(Mutex::new(Vec::<Value>::new()));
    let sampler = {
        let app = app.clone();
        let names = names.clone();
        let depths = depths.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Ok(stats) = app.broker().queue_stats(&names).await {
                    let at = round3(epoch.elapsed().as_secs_f64());
                    let of = |name: &str| {
                        stats
                            .iter()
                            .find(|s| s.name == name)
                            .map_or((0, 0), |s| (s.ready + s.scheduled, s.held))
                    };
                    let (short_ready, short_held) = of(SHORT_QUEUE);
                    let (long_ready, long_held) = of(LONG_QUEUE);
                    if let Ok(mut d) = depths.lock() {
                        d.push(json!([at, short_ready, short_held, long_ready, long_held]));
                    }
                }
            }
        })
    };

    let total = (args.minutes * 60.0 * rate).round() as u64;
    let bar = progress(total, "soak");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut kept: Vec<(&'static str, String, u64)> = Vec::new();
    let mut sent = [0u64; KINDS.len()];
    let mut send_errors = 0u64;
    let send_start = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let kind = kind_of(i);
        let queue = if kind == "long" {
            LONG_QUEUE
        } else {
            SHORT_QUEUE
        };
        let now = celeriac_core::time::unix_now();
        let options = SendOptions::new()
            .queue(queue)
            .header("bench_sent_at", json!(now));
        match app
            .send_task(&task_name(kind), vec![json!(i)], Map::new(), options)
            .await
        {
            Ok(result) => {
                record.line(format_args!("{kind} {} {now:.6}", result.id()));
                if let Some(k) = KINDS.iter().position(|k| *k == kind) {
                    sent[k] += 1;
                }
                if matches!(kind, "result" | "flaky" | "fail") {
                    kept.push((kind, result.id().to_string(), i));
                }
            }
            Err(e) => {
                send_errors += 1;
                eprintln!("soak: send {i} failed: {e}");
            }
        }
        bar.inc(1);
    }
    let send_secs = send_start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    record.flush();

    // Drained: both queues empty twice, a retry delay apart (a flaky task's retry
    // is a new message that appears up to RETRY_AFTER after its first run).
    let drain_start = Instant::now();
    let limit = Duration::from_secs(600);
    let mut empty_since: Option<Instant> = None;
    loop {
        let stats = app.broker().queue_stats(&names).await?;
        let waiting: u64 = stats.iter().map(|s| s.ready + s.scheduled + s.held).sum();
        match (waiting, empty_since) {
            (0, None) => empty_since = Some(Instant::now()),
            (0, Some(t)) if t.elapsed() >= RETRY_AFTER * 3 => break,
            (0, Some(_)) => {}
            _ => empty_since = None,
        }
        if drain_start.elapsed() > limit {
            anyhow::bail!("soak: the queues did not drain within {limit:?} after sending");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    sampler.abort();
    flusher.abort();
    record.flush();

    // Stored states of the tasks that keep one.
    let mut checked = json!({});
    let mut wrong = Vec::new();
    if app.backend().is_some() {
        for kind in ["result", "flaky", "fail"] {
            let (mut ok, mut bad) = (0u64, 0u64);
            for (_, id, i) in kept.iter().filter(|(k, _, _)| *k == kind) {
                let meta = app.result::<Value>(id.clone()).meta().await;
                let good = match (&meta, kind) {
                    (Ok(m), "fail") => m.status == TaskState::Failure,
                    (Ok(m), _) => m.status == TaskState::Success && m.result == json!(i),
                    (Err(_), _) => false,
                };
                if good {
                    ok += 1;
                } else {
                    bad += 1;
                    if wrong.len() < 20 {
                        wrong.push(json!({
                            "kind": kind,
                            "id": id,
                            "state": meta.as_ref().map(|m| m.status.to_string()).unwrap_or_else(|e| e.to_string()),
                        }));
                    }
                }
            }
            checked[kind] = json!({"ok": ok, "wrong": bad});
        }
    }
    let depths = depths.lock().map(|d| d.clone()).unwrap_or_default();
    let report = json!({
        "role": "soak-producer",
        "broker": broker_name,
        "backend": backend_name,
        "minutes": args.minutes,
        "rate_per_s": rate,
        "short_slots": args.short_slots,
        "long_slots": args.long_slots,
        "prefetch_multiplier": args.prefetch_multiplier,
        "sent": KINDS.iter().zip(sent).map(|(k, n)| (k.to_string(), json!(n))).collect::<Map<String, Value>>(),
        "send_errors": send_errors,
        "send_secs": round3(send_secs),
        "sent_per_s": round3(sent.iter().sum::<u64>() as f64 / send_secs.max(1e-9)),
        "drain_after_send_secs": round3(drain_secs),
        "results_checked": checked,
        "results_wrong": wrong,
        "depth_fields": ["secs", "short_ready", "short_held", "long_ready", "long_held"],
        "depths": depths,
        "peak_rss_mb": round3(peak_rss_mb()),
    });
    println!("{report}");
    Ok(())
}
