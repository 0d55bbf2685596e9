//! `bench`: enqueue rate (batched and one call at a time), drain rate, send→start
//! latency and send→result round trip of no-op tasks, measured in this process
//! against any broker. The last line of output is one JSON object.
//!
//! Phases, in order:
//! 1. `--tasks` no-op tasks published in batches of `--batch` (`App::send_batch`);
//! 2. `--single-sends` no-op tasks published one `send_task` call at a time, to a
//!    second queue nobody consumes (purged afterwards): first with each send
//!    waiting for the broker (`PublishConfirms::Each`, `enqueue_single_per_s`), then
//!    again with deferred confirms (`PublishConfirms::Deferred`,
//!    `enqueue_single_deferred_per_s`, timed up to the end of the final
//!    `App::flush`, so every message is stored);
//! 3. a worker (`-c`, `--prefetch-multiplier`) drains the batched tasks: time from
//!    its start until it has run them all;
//! 4. `--latency-samples` sequential sends, each timed from send to task start;
//! 5. `--round-trips` sequential send → `AsyncResult::get` of a task whose result is
//!    stored (needs a result backend; skipped without one), from a client app with
//!    connections of its own on a server backend, so the result comes by Redis
//!    pub/sub as it does to another process.
//!
//! `--mixed` runs the mixed workload instead (issue 9): `--mixed-tasks` tasks sent
//! one at a time at a steady rate, 90 % of them 1 ms tasks on the queue `short-task`
//! and every 10th a 200 ms task on `long-task`. One worker serves both queues with
//! slots of their own (`--short-slots`, `--long-slots`); the default rate (50 ×
//! long slots per second) keeps every long-task slot busy. Reported: the wait of
//! the short tasks (send → start) and how busy the long-task slots were.
//!
//! `--soak` / `--soak-worker` are the two processes of `bench/soak.sh` (see
//! `bench/soak.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use celeriac_core::{Map, Queue, SendOptions, Task, TaskContext, TaskFuture, TaskOptions, Value};
use clap::Args;
use parking_lot_free::Samples;
use serde_json::json;

use crate::app::{App, TaskCall};

/// Name of the no-op task the benchmark registers.
pub const NOOP_TASK: &str = "celeriac.bench.noop";
/// Name of the no-op task whose (null) result is always stored (round trips).
pub const ECHO_TASK: &str = "celeriac.bench.echo";

/// `bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Number of tasks to enqueue and drain.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,
    /// Worker slots.
    #[arg(short = 'c', long, default_value_t = 2)]
    pub concurrency: usize,
    /// Messages reserved per slot. At 128 (a window of 256 for `-c 2`) there is
    /// room beyond the fetches in flight, so every claim is a full batch: at 64 a
    /// Redis drain's claims averaged 37 messages and it ran at a median 60k/s
    /// against 76k/s (BENCHMARKS.md).
    #[arg(long, default_value_t = 128)]
    pub prefetch_multiplier: usize,
    /// Messages per batched publish.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Sequential sends measured for send→start latency.
    #[arg(long, default_value_t = 1000)]
    pub latency_samples: usize,
    /// Tasks published one `send_task` call at a time (default: as many as --tasks);
    /// 0 skips this phase.
    #[arg(long)]
    pub single_sends: Option<usize>,
    /// Sequential send → result get round trips (needs a result backend; 0 skips).
    #[arg(long, default_value_t = 500)]
    pub round_trips: usize,
    /// Queue to use (default: a fresh `celeriac-bench-<uuid>`); purged at the end.
    #[arg(long)]
    pub queue: Option<String>,
    /// Store results while draining (default: results ignored).
    #[arg(long)]
    pub with_results: bool,
    /// Print only the JSON line on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Run the mixed workload (short 1 ms and long 200 ms tasks) instead of the
    /// enqueue / drain / latency phases.
    #[arg(long)]
    pub mixed: bool,
    /// Tasks sent in the mixed workload (every 10th is a long task).
    #[arg(long, default_value_t = 2000)]
    pub mixed_tasks: usize,
    /// Slots of the `short-task` queue in the mixed workload.
    #[arg(long, default_value_t = 2)]
    pub short_slots: usize,
    /// Slots of the `long-task` queue in the mixed workload.
    #[arg(long, default_value_t = 2)]
    pub long_slots: usize,
    /// Tasks sent per second in the mixed workload (default: 50 × --long-slots, which
    /// keeps every long-task slot busy: a tenth of them take 200 ms each).
    #[arg(long)]
    pub mixed_rate: Option<f64>,
    /// Only enqueue `--tasks` no-op tasks (batched) into `--queue` and leave them there
    /// (for drains by other processes: bench/scaling.py).
    #[arg(long, requires = "queue", conflicts_with = "drain_only")]
    pub enqueue_only: bool,
    /// Only drain `--queue` (filled by `--enqueue-only`): run a worker until the queue
    /// has no ready and no held message; reports what this process ran, its time
    /// window and its resident memory sampled every 100 ms.
    #[arg(long, requires = "queue")]
    pub drain_only: bool,
    /// Run the soak's producer (bench/soak.sh): for --minutes, send --mixed-rate
    /// (default 100) tasks a second, a mix of short, long, failing, retried and
    /// result-storing tasks on `short-task` / `long-task`, then wait for the worker
    /// to run them and check the stored results.
    #[arg(long, requires = "record", conflicts_with_all = ["mixed", "soak_worker", "drain_only", "enqueue_only"])]
    pub soak: bool,
    /// Run the soak's worker (bench/soak.sh) until SIGTERM, writing one line per
    /// task run to --record.
    #[arg(long, requires = "record", conflicts_with_all = ["mixed", "drain_only", "enqueue_only"])]
    pub soak_worker: bool,
    /// How long the soak's producer sends.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// The soak's record file: one line per send (--soak) or per task run
    /// (--soak-worker).
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,
}

mod soak;

mod parking_lot_free {
    use std::sync::Mutex;

    /// Latency samples in milliseconds.
    #[derive(Default)]
    pub struct Samples(Mutex<Vec<f64>>);

    impl Samples {
        pub fn push(&self, value: f64) {
            if let Ok(mut v) = self.0.lock() {
                v.push(value);
            }
        }
        pub fn take(&self) -> Vec<f64> {
            self.0
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default()
        }
        pub fn len(&self) -> usize {
            self.0.lock().map(|v| v.len()).unwrap_or(0)
        }
    }
}

/// The no-op task: records send→start latency when the message carries
/// `bench_sent_at` (Unix seconds).
struct Noop {
    name: &'static str,
    options: TaskOptions,
    samples: Arc<Samples>,
}

impl Task for Noop {
    fn name(&self) -> &str {
        self.name
    }
    fn options(&self) -> &TaskOptions {
        &self.options
    }
    fn run(&self, ctx: TaskContext, _args: Vec<Value>, _kwargs: Map<String, Value>) -> TaskFuture {
        if let Some(sent) = ctx.headers().get("bench_sent_at").and_then(Value::as_f64) {
            self.samples
                .push((celeriac_core::time::unix_now() - sent) * 1000.0);
        }
        Box::pin(async { Ok(Value::Null) })
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn wait_until(
    what: &str,
    mut done: impl FnMut() -> bool,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            anyhow::bail!("benchmark stalled: {what} did not finish within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Runs the benchmark.
pub async fn run(app: App, args: BenchArgs) -> anyhow::Result<()> {
    if args.mixed {
        return mixed::run(app, args).await;
    }
    if args.soak {
        return soak::producer(app, args).await;
    }
    if args.soak_worker {
        return soak::worker(app, args).await;
    }
    if args.tasks == 0 {
        anyhow::bail!("--tasks must be at least 1");
    }
    let samples = Arc::new(Samples::default());
    let mut options = TaskOptions::default();
    options.ignore_result = !args.with_results;
    let mut echo_options = TaskOptions::default();
    echo_options.ignore_result = false;
    let queue_name = args
        .queue
        .clone()
        .unwrap_or_else(|| format!("celeriac-bench-{}", uuid::Uuid::new_v4().simple()));
    let single_queue = format!("{queue_name}-single");
    let single_sends = args.single_sends.unwrap_or(args.tasks);
    let app = app
        .to_builder()
        .queue(
            Queue::new(queue_name.clone())
                .concurrency(args.concurrency)
                .prefetch_multiplier(args.prefetch_multiplier),
        )
        .queue(Queue::new(single_queue.clone()))
        .task(Noop {
            name: NOOP_TASK,
            options,
            samples: samples.clone(),
        })
        .task(Noop {
            name: ECHO_TASK,
            options: echo_options,
            samples: Arc::new(Samples::default()),
        })
        // The one-at-a-time phase measures each confirm mode on purpose.
        .override_settings(json!({"task_publish_confirms": "each"}))
        .build()
        .await
        .context("connecting for the benchmark")?;
    let broker_name = app.broker().describe();
    let backend_name = app.backend().map(|b| b.describe());
    let send_options = || SendOptions::new().queue(queue_name.clone());

    if args.drain_only {
        return drain_only(&app, &queue_name, &args).await;
    }

    // 1. Enqueue, batched.
    let bar = progress(args.tasks as u64, "enqueue");
    let start = Instant::now();
    let mut left = args.tasks;
    while left > 0 {
        let n = left.min(args.batch.max(1));
        let calls = (0..n)
            .map(|_| TaskCall::new(NOOP_TASK, Vec::new()).options(send_options()))
            .collect();
        app.send_batch(calls).await?;
        left -= n;
        bar.inc(n as u64);
    }
    let enqueue_secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if args.enqueue_only {
        println!(
            "{}",
            json!({
                "queue": queue_name,
                "tasks": args.tasks,
                "enqueue_per_s": (args.tasks as f64 / enqueue_secs).round(),
            })
        );
        return Ok(());
    }

    // 2. Enqueue, one call at a time (to a queue nobody consumes; purged after).
    let mut enqueue_single_per_s = None;
    if single_sends > 0 {
        enqueue_single_per_s =
            Some(send_one_at_a_time(&app, single_sends, &single_queue, "single").await?);
    }
    let _ = app.broker().purge(&single_queue).await;

    // 2b. The same with deferred publish confirms, up to the final flush.
    let mut enqueue_single_deferred_per_s = None;
    if single_sends > 0 {
        let deferred = app
            .to_builder()
            .override_settings(json!({"task_publish_confirms": "deferred"}))
            .build()
            .await
            .context("connecting for the deferred-confirm sends")?;
        enqueue_single_deferred_per_s =
            Some(send_one_at_a_time(&deferred, single_sends, &single_queue, "deferred").await?);
        let stored = app
            .broker()
            .queue_stats(std::slice::from_ref(&single_queue))
            .await
            .ok()
            .and_then(|stats| stats.first().map(|s| s.ready));
        if let Some(stored) = stored {
            if stored < single_sends as u64 {
                anyhow::bail!(
                    "deferred-confirm sends: {stored} of {single_sends} messages stored after flush"
                );
            }
        }
    }
    let _ = app.broker().purge(&single_queue).await;

    // 3. Drain with one worker.
    let mut config = app.worker_config();
    config.queues.retain(|q| q.name == queue_name);
    let worker = app.worker(config);
    let handle = worker.handle();
    let stats = handle.stats_ref();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stop_rx.await;
    }));
    let processed = || stats.processed.load(std::sync::atomic::Ordering::Relaxed) as usize;
    let bar = progress(args.tasks as u64, "drain");
    let start = Instant::now();
    let limit = Duration::from_secs(600);
    wait_until(
        "draining",
        || {
            bar.set_position(processed() as u64);
            processed() >= args.tasks
        },
        limit,
    )
    .await?;
    let drain_secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // 4. Latency: sequential sends, each timed from send to task start.
    let bar = progress(args.latency_samples as u64, "latency");
    for i in 0..args.latency_samples {
        let options =
            send_options().header("bench_sent_at", json!(celeriac_core::time::unix_now()));
        app.send_task(NOOP_TASK, Vec::new(), Map::new(), options)
            .await?;
        wait_until(
            "latency sample",
            || samples.len() > i,
            Duration::from_secs(30),
        )
        .await?;
        bar.inc(1);
    }
    bar.finish_and_clear();

    // 5. Round trips: send, then wait for the stored result (like Celery's
    // `delay().get()`).
    let mut round_trips = Vec::new();
    if args.round_trips > 0 && app.backend().is_some() {
        let client = round_trip_client(&app).await?;
        let bar = progress(args.round_trips as u64, "roundtrip");
        for _ in 0..args.round_trips {
            let start = Instant::now();
            let result = client
                .send_task(ECHO_TASK, Vec::new(), Map::new(), send_options())
                .await?;
            result
                .get(Duration::from_secs(30))
                .await
                .context("round trip: waiting for the result")?;
            round_trips.push(start.elapsed().as_secs_f64() * 1000.0);
            let _ = result.forget().await;
            bar.inc(1);
        }
        bar.finish_and_clear();
    } else if args.round_trips > 0 {
        eprintln!("bench: no result backend configured (--backend); round trips skipped");
    }
    let _ = stop_tx.send(());
    running.await.context("worker task")?;
    let _ = app.broker().purge(&queue_name).await;

    let mut latencies = samples.take();
    latencies.sort_by(|a, b| a.total_cmp(b));
    round_trips.sort_by(|a, b| a.total_cmp(b));
    let round_trip_json = if round_trips.is_empty() {
        Value::Null
    } else {
        json!({
            "samples": round_trips.len(),
            "p50": round3(percentile(&round_trips, 50.0)),
            "p90": round3(percentile(&round_trips, 90.0)),
            "p99": round3(percentile(&round_trips, 99.0)),
        })
    };
    let report = json!({
        "broker": broker_name,
        "backend": backend_name,
        "queue": queue_name,
        "tasks": args.tasks,
        "concurrency": args.concurrency,
        "prefetch_multiplier": args.prefetch_multiplier,
        "batch": args.batch,
        "results": args.with_results,
        "enqueue_per_s": (args.tasks as f64 / enqueue_secs).round(),
        "single_sends": single_sends,
        "enqueue_single_per_s": enqueue_single_per_s,
        "enqueue_single_deferred_per_s": enqueue_single_deferred_per_s,
        "drain_per_s": (args.tasks as f64 / drain_secs).round(),
        "latency_ms": {
            "p50": round3(percentile(&latencies, 50.0)),
            "p90": round3(percentile(&latencies, 90.0)),
            "p99": round3(percentile(&latencies, 99.0)),
        },
        "round_trip_ms": round_trip_json,
        "peak_rss_mb": round3(peak_rss_mb()),
    });
    if !args.json {
        eprintln!(
            "broker {broker_name}: enqueue {:.0}/s batched, {} one at a time ({} with deferred confirms), drain {:.0}/s, latency p50 {:.3} ms p99 {:.3} ms, round trip p50 {}, peak RSS {:.1} MiB",
            args.tasks as f64 / enqueue_secs,
            enqueue_single_per_s.map_or("-".to_string(), |r| format!("{r:.0}/s")),
            enqueue_single_deferred_per_s.map_or("-".to_string(), |r| format!("{r:.0}/s")),
            args.tasks as f64 / drain_secs,
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            if round_trips.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3} ms", percentile(&round_trips, 50.0))
            },
            peak_rss_mb()
        );
    }
    println!("{report}");
    Ok(())
}

/// Resident set size of this process now, in MiB (Linux `VmRSS`).
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// This process's `VmRSS`, `RssAnon`, `RssFile` and `RssShmem` in MiB (Linux): the
/// resident memory, split into heap and stacks, mapped files, and shared memory
/// (SQLite's mapped WAL index, for one).
fn rss_parts_mb() -> [f64; 4] {
    let mut parts = [0.0; 4];
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            let slot = match line.split(':').next() {
                Some("VmRSS") => 0,
                Some("RssAnon") => 1,
                Some("RssFile") => 2,
                Some("RssShmem") => 3,
                _ => continue,
            };
            if let Some(kb) = line
                .split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
            {
                parts[slot] = kb / 1024.0;
            }
        }
    }
    parts
}

/// The app that sends the round trips and waits for their results. On a server
/// backend (Redis, ...), an app of its own, with its own connections, as a separate
/// client process would be: its result arrives by the backend's notification
/// (Redis pub/sub), not through the worker's handle, which tells waiters in its
/// own process directly. On the embedded SQLite backend, the worker's app: one
/// process is how it is run, and another process would poll the file.
async fn round_trip_client(app: &App) -> anyhow::Result<App> {
    let embedded = app
        .settings()
        .effective_result_backend()
        .is_some_and(|url| url.starts_with("sqlite:"));
    if embedded {
        return Ok(app.clone());
    }
    app.to_builder()
        .build()
        .await
        .context("connecting the round trips' client")
}

/// `--drain-only`: a worker on `queue` until it has no ready and no held message.
///
/// Every 100 ms it samples this process's resident memory and the worker's
/// processed count (the `series` of the report: seconds since the worker started,
/// tasks run, RSS, and its anonymous, file and shared-memory parts in MiB). The queue's depth is read only when this worker has run
/// what was waiting at its start, or every 2 s (other workers may share the queue):
/// counting a queue of a million rows is not free on SQLite, and the reader would
/// compete with the worker it measures. The rate is taken up to the last sample
/// that saw progress, so a worker that waits for its next depth check does not
/// lower it.
async fn drain_only(app: &App, queue: &str, args: &BenchArgs) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    const STATS_EVERY: Duration = Duration::from_secs(2);
    let names = [queue.to_string()];
    let waiting =
        |stats: &[celeriac_broker::QueueStats]| stats.iter().map(|s| s.ready + s.held).sum::<u64>();
    let rss_before = rss_mb();
    let ready_at_start = waiting(&app.broker().queue_stats(&names).await?);
    let mut config = app.worker_config();
    config.queues.retain(|q| q.name == queue);
    let worker = app.worker(config);
    let handle = worker.handle();
    let stats = handle.stats_ref();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started_unix = celeriac_core::time::unix_now();
    let start = Instant::now();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stop_rx.await;
    }));
    let parts = rss_parts_mb();
    let mut rss = vec![parts[0]];
    let mut series = vec![json!([
        0.0,
        0,
        round3(parts[0]),
        round3(parts[1]),
        round3(parts[2]),
        round3(parts[3])
    ])];
    let mut depths = Vec::new();
    let mut last_progress = (0u64, 0.0f64, celeriac_core::time::unix_now());
    let mut last_stats = Instant::now();
    let limit = Duration::from_secs(3600);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = start.elapsed().as_secs_f64();
        let processed = stats.processed.load(Ordering::Relaxed);
        let parts = rss_parts_mb();
        rss.push(parts[0]);
        series.push(json!([
            round3(now),
            processed,
            round3(parts[0]),
            round3(parts[1]),
            round3(parts[2]),
            round3(parts[3])
        ]));
        if processed > last_progress.0 {
            last_progress = (processed, now, celeriac_core::time::unix_now());
        }
        if processed >= ready_at_start || last_stats.elapsed() >= STATS_EVERY {
            last_stats = Instant::now();
            let depth = waiting(&app.broker().queue_stats(&names).await?);
            depths.push(json!([round3(now), depth]));
            if depth == 0 {
                break;
            }
        }
        if start.elapsed() > limit {
            anyhow::bail!("benchmark stalled: {queue} not drained within {limit:?}");
        }
    }
    let processed = stats.processed.load(Ordering::Relaxed);
    if processed > last_progress.0 {
        last_progress = (
            processed,
            start.elapsed().as_secs_f64(),
            celeriac_core::time::unix_now(),
        );
    }
    let secs = last_progress.1.max(1e-9);
    let _ = stop_tx.send(());
    running.await.context("worker task")?;
    let max = rss.iter().copied().fold(0.0, f64::max);
    let report = json!({
        "queue": queue,
        "waiting_at_start": ready_at_start,
        "processed": processed,
        "concurrency": args.concurrency,
        "prefetch_multiplier": args.prefetch_multiplier,
        "secs": round3(secs),
        "drain_per_s": (processed as f64 / secs).round(),
        "started_unix": started_unix,
        "ended_unix": last_progress.2,
        "rss_mb": {
            "before_worker": round3(rss_before),
            "first": round3(rss.first().copied().unwrap_or(0.0)),
            "max": round3(max),
            "last": round3(rss.last().copied().unwrap_or(0.0)),
            "samples": rss.len(),
        },
        "peak_rss_mb": round3(peak_rss_mb()),
        "series_fields": ["secs", "processed", "rss_mb", "anon_mb", "file_mb", "shmem_mb"],
        "series": series,
        "depths": depths,
    });
    println!("{report}");
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn progress(len: u64, label: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} ({per_sec})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label);
    bar
}

mod mixed {
    //! The mixed workload: short tasks must not wait behind long ones.

    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use celeriac_core::{
        Map, Queue, SendOptions, Task, TaskContext, TaskFuture, TaskOptions, Value,
    };
    use serde_json::json;

    use super::{peak_rss_mb, percentile, progress, round3, wait_until, BenchArgs, Samples};
    use crate::app::App;

    /// Queue of the 1 ms tasks.
    pub const SHORT_QUEUE: &str = "short-task";
    /// Queue of the 200 ms tasks.
    pub const LONG_QUEUE: &str = "long-task";
    const SHORT_TASK: &str = "celeriac.bench.short";
    const LONG_TASK: &str = "celeriac.bench.long";
    const SHORT_RUN: Duration = Duration::from_millis(1);
    const LONG_RUN: Duration = Duration::from_millis(200);

    /// When the long tasks ran: first start, last end, total run time (µs since the
    /// benchmark's start) and how many ran.
    #[derive(Default)]
    struct LongRuns {
        first_start: AtomicU64,
        last_end: AtomicU64,
        busy: AtomicU64,
        done: AtomicUsize,
    }

    /// A task that sleeps (without holding a thread) for `run`; records its wait
    /// (send → start) when the message carries `bench_sent_at`.
    struct Sleeper {
        name: &'static str,
        options: TaskOptions,
        run: Duration,
        waits: Arc<Samples>,
        long: Option<(Arc<LongRuns>, Instant)>,
    }

    impl Task for Sleeper {
        fn name(&self) -> &str {
            self.name
        }
        fn options(&self) -> &TaskOptions {
            &self.options
        }
        fn run(
            &self,
            ctx: TaskContext,
            _args: Vec<Value>,
            _kwargs: Map<String, Value>,
        ) -> TaskFuture {
            if let Some(sent) = ctx.headers().get("bench_sent_at").and_then(Value::as_f64) {
                self.waits
                    .push((celeriac_core::time::unix_now() - sent) * 1000.0);
            }
            let run = self.run;
            let long = self.long.clone();
            Box::pin(async move {
                let started = Instant::now();
                tokio::time::sleep(run).await;
                if let Some((runs, epoch)) = long {
                    let start_us = started.duration_since(epoch).as_micros() as u64;
                    let end_us = epoch.elapsed().as_micros() as u64;
                    let _ = runs.first_start.compare_exchange(
                        0,
                        start_us.max(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    runs.last_end.fetch_max(end_us, Ordering::Relaxed);
                    runs.busy.fetch_add(end_us - start_us, Ordering::Relaxed);
                    runs.done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Value::Null)
            })
        }
    }

    /// Runs the mixed workload and prints its JSON line.
    pub async fn run(app: App, args: BenchArgs) -> anyhow::Result<()> {
        if args.mixed_tasks == 0 {
            anyhow::bail!("--mixed-tasks must be at least 1");
        }
        let rate = args.mixed_rate.unwrap_or(50.0 * args.long_slots as f64);
        if !(rate > 0.0 && rate.is_finite()) {
            anyhow::bail!("--mixed-rate must be a positive number");
        }
        let epoch = Instant::now();
        let waits = Arc::new(Samples::default());
        let long_waits = Arc::new(Samples::default());
        let runs = Arc::new(LongRuns::default());
        let mut options = TaskOptions::default();
        options.ignore_result = true;
        let app = app
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
            )
            .task(Sleeper {
                name: SHORT_TASK,
                options: options.clone(),
                run: SHORT_RUN,
                waits: waits.clone(),
                long: None,
            })
            .task(Sleeper {
                name: LONG_TASK,
                options,
                run: LONG_RUN,
                waits: long_waits.clone(),
                long: Some((runs.clone(), epoch)),
            })
            .build()
            .await
            .context("connecting for the benchmark")?;
        let broker_name = app.broker().describe();
        let _ = app.broker().purge(SHORT_QUEUE).await;
        let _ = app.broker().purge(LONG_QUEUE).await;

        let mut config = app.worker_config();
        config
            .queues
            .retain(|q| q.name == SHORT_QUEUE || q.name == LONG_QUEUE);
        let worker = app.worker(config);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(worker.run_until(async {
            let _ = stop_rx.await;
        }));
        // Let the worker connect before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let longs = args.mixed_tasks / 10;
        let shorts = args.mixed_tasks - longs;
        let bar = progress(args.mixed_tasks as u64, "mixed");
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let send_start = Instant::now();
        for i in 0..args.mixed_tasks {
            tick.tick().await;
            let (name, queue) = if i % 10 == 9 {
                (LONG_TASK, LONG_QUEUE)
            } else {
                (SHORT_TASK, SHORT_QUEUE)
            };
            let options = SendOptions::new()
                .queue(queue)
                .header("bench_sent_at", json!(celeriac_core::time::unix_now()));
            app.send_task(name, Vec::new(), Map::new(), options).await?;
            bar.inc(1);
        }
        let send_secs = send_start.elapsed().as_secs_f64();
        let limit =
            Duration::from_secs(60) + LONG_RUN * (longs as u32 / args.long_slots.max(1) as u32);
        wait_until(
            "the mixed workload",
            || waits.len() >= shorts && runs.done.load(Ordering::Relaxed) >= longs,
            limit,
        )
        .await?;
        bar.finish_and_clear();
        let _ = stop_tx.send(());
        running.await.context("worker task")?;
        let _ = app.broker().purge(SHORT_QUEUE).await;
        let _ = app.broker().purge(LONG_QUEUE).await;

        let mut short = waits.take();
        short.sort_by(|a, b| a.total_cmp(b));
        let mut long = long_waits.take();
        long.sort_by(|a, b| a.total_cmp(b));
        let first = runs.first_start.load(Ordering::Relaxed);
        let last = runs.last_end.load(Ordering::Relaxed);
        let window_us = last.saturating_sub(first).max(1) as f64;
        let busy = runs.busy.load(Ordering::Relaxed) as f64 / (window_us * args.long_slots as f64);
        let summary = |v: &[f64]| {
            json!({
                "samples": v.len(),
                "p50": round3(percentile(v, 50.0)),
                "p90": round3(percentile(v, 90.0)),
                "p99": round3(percentile(v, 99.0)),
                "max": round3(v.last().copied().unwrap_or(0.0)),
            })
        };
        let report = json!({
            "broker": broker_name,
            "workload": "mixed",
            "tasks": args.mixed_tasks,
            "short_tasks": shorts,
            "long_tasks": longs,
            "short_slots": args.short_slots,
            "long_slots": args.long_slots,
            "rate_per_s": rate,
            "send_secs": round3(send_secs),
            "short_wait_ms": summary(&short),
            "long_wait_ms": summary(&long),
            "long_slots_busy": round3(busy),
            "peak_rss_mb": round3(peak_rss_mb()),
        });
        if !args.json {
            eprintln!(
                "mixed on {broker_name}: {shorts} short + {longs} long at {rate}/s; short wait p50 {:.3} ms p99 {:.3} ms max {:.3} ms; long slots busy {:.0} %",
                percentile(&short, 50.0),
                percentile(&short, 99.0),
                short.last().copied().unwrap_or(0.0),
                busy * 100.0
            );
        }
        println!("{report}");
        Ok(())
    }
}

/// Sends `count` no-op tasks into `queue` one `send_task` call at a time, then
/// flushes (a no-op unless the app defers its publish confirms, whose sends are
/// timed until they are stored); returns the rate per second.
async fn send_one_at_a_time(
    app: &App,
    count: usize,
    queue: &str,
    label: &'static str,
) -> anyhow::Result<f64> {
    let bar = progress(count as u64, label);
    let start = Instant::now();
    for _ in 0..count {
        app.send_task(
            NOOP_TASK,
            Vec::new(),
            Map::new(),
            SendOptions::new().queue(queue.to_string()),
        )
        .await?;
        bar.inc(1);
    }
    app.flush()
        .await
        .with_context(|| format!("{label} sends: flush"))?;
    let rate = (count as f64 / start.elapsed().as_secs_f64()).round();
    bar.finish_and_clear();
    Ok(rate)
}
