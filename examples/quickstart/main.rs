//! The quickstart: the seed's scenario on the embedded default (one SQLite file).
//!
//! Two queues, as a Django + Celery team would split them by task length:
//! - `short-task` (routing `short.#`): quick notifications, 4 slots, prefetch 4;
//! - `long-task` (routing `long.#`): slow file processing, 2 slots, prefetch 1,
//!   late acks (idempotent work that must survive a worker crash).
//!
//! One worker process serves both queues with their own settings, so the slow
//! file tasks never hold back notifications. The example sends a mixed workload,
//! shows a progress bar and prints a summary. Meanwhile beat sends a periodic
//! `notify.digest` every 2 s (a single-instance task: a slow digest is never
//! overlapped by the next one); its entry lives in the same SQLite file
//! (`celeriac schedule list`). The dashboard serves http://127.0.0.1:5555 while it
//! runs (`--dashboard off` to skip it).
//!
//! ```text
//! cargo run --release --example quickstart                     # serve until Ctrl-C
//! cargo run --release --example quickstart -- --exit-when-done # run the workload, exit
//! CELERIAC_BROKER_URL=sqlite:///tmp/other.db cargo run --release --example quickstart
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::beat::{Beat, Entry, Interval, SystemClock};
use celeriac::prelude::*;
use celeriac::Route;
use clap::Parser;

/// Sends a notification (a short task).
#[task(
    name = "notify.send",
    queue = "short-task",
    max_retries = 3,
    default_retry_delay = "200ms"
)]
async fn send_notification(ctx: TaskContext, user_id: u64, text: String) -> TaskResult<String> {
    // Every 50th user's mail server is flaky on the first attempt: retried.
    if user_id.is_multiple_of(50) && ctx.retries() == 0 {
        return Err(ctx.retry_after(Duration::from_millis(200)));
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(format!("sent {text:?} to user {user_id}"))
}

/// Sends the digest of recent notifications; beat runs it every 2 s. At most one runs
/// at a time (a run that finds another one running is skipped).
#[task(name = "notify.digest", queue = "short-task", single_instance)]
async fn send_digest() -> TaskResult<String> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok("digest sent".to_string())
}

/// Processes an uploaded file (a long, blocking task).
#[task(
    name = "files.process",
    queue = "long-task",
    acks_late = true,
    soft_time_limit = "30s",
    time_limit = "60s"
)]
fn process_large_file(ctx: TaskContext, path: String, size_kb: u64) -> TaskResult<u64> {
    if path.ends_with(".corrupt") {
        return Err(TaskError::fail(
            "CorruptFile",
            format!("{path} is not a valid archive"),
        ));
    }
    // Simulate work in small steps so a soft time limit can stop it cleanly.
    for _ in 0..(size_kb / 50).max(1) {
        if ctx.is_cancelled() {
            return Err(TaskError::fail("Cancelled", "stopped by the worker"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(size_kb * 1024)
}

#[derive(Debug, Parser)]
#[command(about = "celeriac quickstart: worker + mixed workload on one SQLite file")]
struct Args {
    /// Run the workload, print the summary and exit (0 when every task is accounted for).
    #[arg(long)]
    exit_when_done: bool,
    /// Notifications to send.
    #[arg(long, default_value_t = 300)]
    notifications: u64,
    /// Files to process.
    #[arg(long, default_value_t = 12)]
    files: u64,
    /// Where the dashboard listens (`off` for none).
    #[arg(long, default_value = "127.0.0.1:5555")]
    dashboard: String,
}

fn main() -> anyhow::Result<()> {
    // A worker runs fastest on one runtime thread (see `celeriac::runtime`); the
    // tasks below that compute are plain functions, run on the blocking pool.
    celeriac::runtime::worker_runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    celeriac::cli::init_logging("warn");
    let app = App::builder("quickstart")
        .broker("sqlite://celeriac.db")
        .queue(
            Queue::new("short-task")
                .routing_key("short.#")
                .concurrency(4)
                .prefetch_multiplier(4),
        )
        .queue(
            Queue::new("long-task")
                .routing_key("long.#")
                .concurrency(2)
                .prefetch_multiplier(1)
                .acks_late(true),
        )
        .route(Route::to_routing_key("notify.*", "short.notify"))
        .route(Route::to_routing_key("files.*", "long.files"))
        .task(send_notification)
        .task(process_large_file)
        .task(send_digest)
        .build()
        .await?;
    println!(
        "celeriac quickstart | broker {} | queues: short-task (short.#, 4 slots), long-task (long.#, 2 slots, prefetch 1, acks_late)",
        app.broker().describe()
    );

    // The worker runs in this process until the workload is done (with
    // --exit-when-done) or until Ctrl-C / SIGTERM.
    let worker = app.worker(app.worker_config());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker.run_until(async move {
        tokio::select! {
            _ = stop_rx => {}
            _ = celeriac::cli::shutdown_signal() => {}
        }
    }));

    // The dashboard, in this process too: workers, tasks, queues, schedules and
    // locks, live (a busy port only costs the dashboard, not the quickstart).
    let dashboard_stop = tokio_util::sync::CancellationToken::new();
    if args.dashboard != "off" {
        match args.dashboard.parse::<std::net::SocketAddr>() {
            Ok(addr) => {
                let state = celeriac::cli::dashboard_state(
                    &app,
                    None,
                    celeriac::dashboard::history::DEFAULT_CAPACITY,
                )
                .await;
                match celeriac::dashboard::Dashboard::bind(addr, state).await {
                    Ok(server) => {
                        println!(
                            "dashboard on http://{}",
                            server.local_addr().unwrap_or(addr)
                        );
                        let stop = dashboard_stop.clone();
                        tokio::spawn(async move {
                            if let Err(error) = server.serve(stop).await {
                                eprintln!("dashboard stopped: {error}");
                            }
                        });
                    }
                    Err(error) => println!("dashboard not started: {error}"),
                }
            }
            Err(error) => println!(
                "dashboard not started: --dashboard {:?}: {error}",
                args.dashboard
            ),
        }
    }

    // Beat, in this process too: the digest entry is stored in the broker's file
    // (edit it at runtime with `celeriac schedule ...`; run more beats anywhere).
    let (beat_stop_tx, beat_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let beat_task = match celeriac::beat::connect(&app.settings().broker_url).await {
        Ok(schedules) => {
            let every = Interval::new(Duration::from_secs(2))?;
            schedules
                .upsert(
                    &Entry::new("digest", "notify.digest", every)
                        .description("the quickstart's periodic digest"),
                )
                .await?;
            let beat = Beat::new(schedules, Arc::new(app.clone()), Arc::new(SystemClock));
            Some(tokio::spawn(beat.run_until(async move {
                tokio::select! {
                    _ = beat_stop_rx => {}
                    _ = celeriac::cli::shutdown_signal() => {}
                }
            })))
        }
        Err(error) => {
            println!("beat not started: {error}");
            None
        }
    };

    // The workload: files first (so long-task slots are busy), then notifications.
    let started = Instant::now();
    let mut sent: Vec<(String, &'static str, AsyncResult)> = Vec::new();
    for i in 0..args.files {
        let path = if i % 6 == 5 {
            format!("upload-{i}.corrupt")
        } else {
            format!("upload-{i}.zip")
        };
        let r = process_large_file::delay(&app, path, 200 + (i % 4) * 100).await?;
        sent.push((r.id().to_string(), "long-task", app.result(r.id())));
    }
    for user in 1..=args.notifications {
        let r =
            send_notification::delay(&app, user, format!("your report #{user} is ready")).await?;
        sent.push((r.id().to_string(), "short-task", app.result(r.id())));
    }
    let total = sent.len();
    println!(
        "sent {total} tasks ({} notifications, {} files)",
        args.notifications, args.files
    );

    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{bar:40}] {pos}/{len} tasks done ({elapsed})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut waits = tokio::task::JoinSet::new();
    for (id, queue, result) in sent {
        waits.spawn(async move {
            let outcome = result.get(Duration::from_secs(300)).await;
            (id, queue, outcome, Instant::now())
        });
    }
    let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut by_queue: BTreeMap<&'static str, (u64, Duration)> = BTreeMap::new();
    let (mut succeeded, mut failed) = (0u64, 0u64);
    while let Some(joined) = waits.join_next().await {
        let (_id, queue, outcome, at) = joined?;
        let state = match outcome {
            Ok(_) => {
                succeeded += 1;
                "SUCCESS"
            }
            Err(celeriac::Error::TaskFailed { .. }) => {
                failed += 1;
                "FAILURE"
            }
            Err(celeriac::Error::Revoked { .. }) => {
                failed += 1;
                "REVOKED"
            }
            Err(other) => {
                failed += 1;
                eprintln!("lost track of a task: {other}");
                "UNKNOWN"
            }
        };
        *by_state.entry(state).or_default() += 1;
        let entry = by_queue.entry(queue).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(at - started);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let stats = app.broker().queue_stats(&[]).await?;
    println!("done in {:.2?}", started.elapsed());
    for (state, count) in &by_state {
        println!("  {state:<8} {count}");
    }
    for (queue, (count, last)) in &by_queue {
        println!("  {queue:<10} {count} tasks, last finished after {last:.2?}");
    }
    for q in stats
        .iter()
        .filter(|q| q.name == "short-task" || q.name == "long-task")
    {
        println!(
            "  queue {:<10} ready {} scheduled {} held {} dead letters {}",
            q.name, q.ready, q.scheduled, q.held, q.dead_letters
        );
    }
    println!("summary: {succeeded} succeeded, {failed} failed");
    if args.exit_when_done {
        let _ = beat_stop_tx.send(());
        let _ = stop_tx.send(());
    } else {
        println!("worker still serving on {} — send tasks with `celeriac call notify.send --args '[1, \"hi\"]'`; Ctrl-C to stop", app.broker().describe());
    }
    if let Some(beat_task) = beat_task {
        let report = beat_task.await?;
        println!("beat stopped after sending {} digest runs", report.sent);
    }
    let report = worker_task.await?;
    dashboard_stop.cancel();
    println!("worker stopped after {} tasks", report.processed);
    if succeeded + failed != total as u64 {
        anyhow::bail!(
            "only {} of {total} tasks were accounted for",
            succeeded + failed
        );
    }
    Ok(())
}
