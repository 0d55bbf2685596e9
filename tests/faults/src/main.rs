//! celeriac's fault-injection suite: workers SIGKILLed and SIGTERMed under load,
//! brokers restarted and stalled, beat replicas killed mid-send — on the embedded
//! SQLite broker, a private Redis and RabbitMQ (the machine's node, or a private one
//! for restarts) — with every execution counted from an append-only log the tasks
//! write ([`record`]).
//!
//! ```text
//! cargo run --release -p celeriac-faults -- run                  # everything
//! cargo run --release -p celeriac-faults -- run --brokers redis --scenarios stall
//! ```
//!
//! Each scenario asserts exact counts: no task whose publish returned `Ok` is lost,
//! and every duplicate execution is explained by the fault (a task that was running
//! in the killed worker, or held across a broker restart). The run ends with a table
//! and `faults: N scenarios, M tasks, 0 lost, D duplicates (all explained)`, and exits
//! non-zero when anything was lost or a duplicate is unexplained.
//!
//! Workers and beat replicas are this binary re-executed (`faults worker`, `faults
//! beat`). A missing service skips its scenarios with the reason printed, unless
//! `CELERIAC_REQUIRE_SERVICES=1`.

mod env;
mod procs;
mod record;
mod scenarios;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use celeriac::beat::{Beat, BeatConfig, SystemClock};
use celeriac::core::{FnTask, Map, Queue, TaskContext, TaskOptions, Value};
use celeriac::App;
use clap::{Parser, Subcommand};

use crate::env::BrokerKind;
use crate::scenarios::{Outcome, Scenario, Settings};

#[derive(Debug, Parser)]
#[command(name = "faults", about = "celeriac's fault-injection suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the scenarios and prints the summary.
    Run {
        /// Brokers, comma-separated (sqlite, redis, amqp).
        #[arg(long, default_value = "sqlite,redis,amqp", value_delimiter = ',')]
        brokers: Vec<String>,
        /// Scenarios, comma-separated (default: all): kill, restart, stall, beat, term.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Rounds of the worker-kill scenario.
        #[arg(long, default_value_t = 10)]
        rounds: u64,
        /// Tasks per round of the worker-kill scenario.
        #[arg(long, default_value_t = 500)]
        tasks: u64,
    },
    /// A worker process (started by `run`).
    Worker(WorkerArgs),
    /// A beat process (started by `run`).
    Beat {
        /// Broker URL.
        #[arg(long)]
        broker: String,
        /// Schedule store URL.
        #[arg(long)]
        store: String,
        /// Claim lease in seconds.
        #[arg(long, default_value_t = 5.0)]
        lease: f64,
        /// The queue the entry sends to (the app's default queue).
        #[arg(long)]
        queue: String,
    },
}

/// How a worker process runs.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Broker URL.
    #[arg(long)]
    pub broker: String,
    /// The queue it consumes.
    #[arg(long)]
    pub queue: String,
    /// The execution log.
    #[arg(long)]
    pub record: PathBuf,
    /// Task slots.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Prefetch multiplier.
    #[arg(long, default_value_t = 4)]
    pub prefetch: usize,
    /// Message lease in seconds (SQLite, Redis).
    #[arg(long, default_value_t = 2.0)]
    pub lease: f64,
}

impl WorkerArgs {
    /// The command line of `faults worker` with these settings.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "worker".into(),
            "--broker".into(),
            self.broker.clone(),
            "--queue".into(),
            self.queue.clone(),
            "--record".into(),
            self.record.display().to_string(),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "--prefetch".into(),
            self.prefetch.to_string(),
            "--lease".into(),
            self.lease.to_string(),
        ]
    }
}

/// The task every scenario runs: `faults.work(id, ms)`, late ack; logs its start,
/// sleeps `ms`, logs its end.
pub const WORK_TASK: &str = "faults.work";

fn work_task(record: PathBuf) -> impl celeriac::core::Task {
    let mut options = TaskOptions::default();
    options.acks_late = Some(true);
    options.ignore_result = true;
    FnTask::new(
        WORK_TASK,
        options,
        move |_ctx: TaskContext, args: Vec<Value>, _kwargs: Map<String, Value>| {
            let record = record.clone();
            async move {
                let id = args.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
                let ms = args.get(1).and_then(Value::as_u64).unwrap_or(0);
                record::append(&record, "start", id)?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                record::append(&record, "done", id)?;
                Ok(Value::from(id))
            }
        },
    )
}

/// The app a worker process runs (and the suite sends with).
pub fn app_builder(broker: &str, queue: &str, args: Option<&WorkerArgs>) -> celeriac::AppBuilder {
    let mut q = Queue::new(queue);
    let default_queue = queue.to_string();
    let mut builder = App::builder("faults")
        .without_environment()
        .broker(broker.to_string())
        .backend(String::new())
        // No `celery` queue: on the shared RabbitMQ it exists with other arguments.
        .configure(move |s| s.task_default_queue = default_queue);
    if let Some(args) = args {
        q = q
            .concurrency(args.concurrency)
            .prefetch_multiplier(args.prefetch);
        let lease = args.lease;
        builder = builder
            .configure(move |s| {
                s.broker_transport_options.lease = lease;
                s.worker_shutdown_timeout = 20.0;
            })
            .task(work_task(args.record.clone()));
    }
    builder.queue(q)
}

async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let app = app_builder(&args.broker, &args.queue, Some(&args))
        .build()
        .await
        .context("worker app")?;
    let mut config = app.worker_config();
    config.queues.retain(|q| q.name == args.queue);
    config.hostname = format!("faults-{}@localhost", std::process::id());
    app.worker(config)
        .run_until(celeriac::cli::shutdown_signal())
        .await;
    Ok(())
}

async fn run_beat(broker: &str, store: &str, lease: f64, queue: &str) -> anyhow::Result<()> {
    let app = app_builder(broker, queue, None)
        .build()
        .await
        .context("beat app")?;
    let store = celeriac::beat::connect(store).await.context("beat store")?;
    let mut config = BeatConfig::default();
    config.claimer = format!("faults-beat-{}", std::process::id());
    config.claim_lease = Duration::from_secs_f64(lease);
    Beat::new(store, Arc::new(app), Arc::new(SystemClock))
        .with_config(config)
        .run_until(celeriac::cli::shutdown_signal())
        .await;
    Ok(())
}

async fn run_suite(
    brokers: Vec<String>,
    scenarios: Vec<String>,
    settings: Settings,
) -> anyhow::Result<bool> {
    let brokers = brokers
        .iter()
        .map(|b| BrokerKind::parse(b.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let chosen = if scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        scenarios
            .iter()
            .map(|s| Scenario::parse(s.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let mut outcomes: Vec<Outcome> = Vec::new();
    for scenario in chosen {
        for &broker in &brokers {
            if !scenario.applies_to(broker) {
                continue;
            }
            eprintln!("--> {} on {broker}", scenario.title());
            let outcome = scenario.run(broker, &settings).await;
            eprintln!("    {}", outcome.line());
            outcomes.push(outcome);
        }
    }
    Ok(scenarios::print_summary(&outcomes))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    match cli.command {
        Command::Worker(args) => runtime.block_on(run_worker(args)),
        Command::Beat {
            broker,
            store,
            lease,
            queue,
        } => runtime.block_on(run_beat(&broker, &store, lease, &queue)),
        Command::Run {
            brokers,
            scenarios,
            rounds,
            tasks,
        } => {
            let ok = runtime.block_on(run_suite(
                brokers,
                scenarios,
                Settings {
                    kill_rounds: rounds,
                    kill_tasks: tasks,
                },
            ))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
