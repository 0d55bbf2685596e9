//! The command line every celeriac binary gets: `celeriac::cli::run(app).await`.
//!
//! ```text
//! myapp worker -Q short-task:c=8,prefetch=4 -Q long-task:c=2,prefetch=1,acks_late
//! myapp call notify.send --args '[7, "hi"]' --wait 5
//! myapp result <task-id>
//! myapp queues            # depth, scheduled, held, dead letters
//! myapp queues --dead-letters short-task
//! myapp purge -Q short-task --force
//! myapp workers           # alive / lost / offline, heartbeat age, load
//! myapp bench --tasks 100000 --json
//! myapp beat              # send scheduled tasks (any number of beats: each run once)
//! myapp schedule add digest --task notify.digest --every 30s
//! myapp schedule add report --task reports.daily --crontab "0 9 * * mon-fri" --tz Asia/Seoul
//! myapp schedule list | show NAME | enable NAME | disable NAME | remove NAME | run-now NAME
//! ```
//!
//! Global flags (`--broker`, `--backend`, `--config`) win over `CELERIAC_*`
//! variables, which win over `celeriac.toml`, which wins over the code.

mod bench;
mod control;
mod locks;
mod schedule;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use celeriac_broker::DeadLetterQuery;
use celeriac_core::limits::parse_duration;
use celeriac_core::{Map, SendOptions, Value};
use celeriac_worker::QueueSettings;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{App, AppBuilder};

pub use schedule::{open_schedule_store, AddArgs, BeatArgs, ScheduleArgs, ScheduleCommand};

/// celeriac: a task queue that speaks Celery's protocol.
#[derive(Debug, Parser)]
#[command(name = "celeriac", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Broker URL (overrides CELERIAC_BROKER_URL and celeriac.toml), e.g. sqlite://celeriac.db.
    #[arg(long, global = true, value_name = "URL")]
    pub broker: Option<String>,
    /// Result backend URL (overrides CELERIAC_RESULT_BACKEND).
    #[arg(long, global = true, value_name = "URL")]
    pub backend: Option<String>,
    /// Config file to read instead of ./celeriac.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Log filter (RUST_LOG syntax), e.g. info or celeriac_worker=debug.
    #[arg(long, global = true, default_value = "info", value_name = "FILTER")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker until SIGTERM / Ctrl-C, then shut down gracefully.
    Worker(WorkerArgs),
    /// Send a task by name and print its id (and its result with --wait).
    Call(CallArgs),
    /// Send a workflow given as a Celery signature in JSON (a task, chain, group or
    /// chord, as Python's `json.dumps(sig)` writes it) and print its result id (and
    /// its result with --wait).
    Apply(ApplyArgs),
    /// Print the stored state and result of a task.
    Result(ResultArgs),
    /// Show queue depths, scheduled, held and dead-lettered counts.
    Queues(QueuesArgs),
    /// Delete every waiting message of queues.
    Purge(PurgeArgs),
    /// List workers: alive or gone, heartbeat age, active and processed tasks, queues.
    Workers(WorkersArgs),
    /// Measure enqueue and drain rates and latency of no-op tasks.
    Bench(bench::BenchArgs),
    /// List or release locks (single-instance runs, unique enqueue).
    Locks(locks::LocksArgs),
    /// Send scheduled tasks until SIGTERM / Ctrl-C. Run as many as you like on one
    /// store: each due run is sent exactly once.
    Beat(BeatArgs),
    /// Add, list, show, enable, disable, remove or run schedule entries.
    Schedule(ScheduleArgs),
    /// Serve the web dashboard and its REST API (default http://127.0.0.1:5555).
    Dashboard(DashboardArgs),
    /// Ask running workers (celeriac or Python Celery): ping, active, reserved,
    /// scheduled, registered, stats, revoked, active_queues, query_task.
    Inspect(control::InspectArgs),
    /// Command running workers: revoke, rate_limit, shutdown, enable/disable_events.
    Control(control::ControlArgs),
}

/// `dashboard` flags.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to listen on.
    #[arg(long, default_value = celeriac_dashboard::DEFAULT_ADDR, value_name = "HOST:PORT")]
    pub addr: std::net::SocketAddr,
    /// Schedule store URL (default: CELERIAC_BEAT_STORE, else the SQLite broker's file).
    #[arg(
        long,
        env = "CELERIAC_BEAT_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub store: Option<String>,
    /// Basic-auth user (with --password). Needed off loopback and for control actions.
    #[arg(long, env = "CELERIAC_DASHBOARD_USER", requires = "password")]
    pub user: Option<String>,
    /// Basic-auth password (with --user).
    #[arg(
        long,
        env = "CELERIAC_DASHBOARD_PASSWORD",
        requires = "user",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Tasks kept in the dashboard's history, built from task events (workers
    /// send them with `-E`); 0 turns the history off.
    #[arg(long, default_value_t = celeriac_dashboard::history::DEFAULT_CAPACITY, value_name = "TASKS")]
    pub history: usize,
    /// SQLite file that keeps the task history across dashboard restarts (Flower's
    /// --db), `PATH` or `sqlite://PATH`. Default: the SQLite broker's own file; with
    /// other brokers the history is kept in memory unless this is given.
    #[arg(long, env = "CELERIAC_DASHBOARD_DB", value_name = "FILE")]
    pub db: Option<String>,
    /// Keep the task history across restarts (Flower's --persistent);
    /// --persistent=false keeps it in memory only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub persistent: bool,
    /// Bearer token (`Authorization: Bearer TOKEN`), instead of --user/--password.
    #[arg(
        long,
        env = "CELERIAC_DASHBOARD_TOKEN",
        conflicts_with = "user",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// `worker` flags.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Queues to consume, each `name` or `name:c=N,prefetch=N,acks_late[=false]`;
    /// repeat or separate with spaces. Default: every declared queue.
    #[arg(short = 'Q', long = "queues", value_name = "QUEUE[:OPTIONS]", num_args = 1..)]
    pub queues: Vec<String>,
    /// Slots per queue unless the queue says otherwise (default: CPUs).
    #[arg(short = 'c', long)]
    pub concurrency: Option<usize>,
    /// Messages reserved per slot (worker_prefetch_multiplier).
    #[arg(long)]
    pub prefetch_multiplier: Option<usize>,
    /// Ack after the task finishes, for tasks and queues that do not say.
    #[arg(long)]
    pub acks_late: bool,
    /// Node name (default: `<app>@<host>`).
    #[arg(short = 'n', long)]
    pub hostname: Option<String>,
    /// Seconds running tasks get to finish at shutdown.
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_timeout: Option<f64>,
    /// Lease of held messages in seconds (broker_transport_options.lease); a dead
    /// worker's messages come back after at most this long.
    #[arg(long, value_name = "SECONDS")]
    pub lease: Option<f64>,
    /// Send task events (worker_send_task_events; worker events are always sent).
    #[arg(short = 'E', long = "task-events")]
    pub task_events: bool,
}

/// `call` flags.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// Task name, e.g. notify.send.
    pub name: String,
    /// Positional arguments as a JSON array.
    #[arg(long, default_value = "[]", value_name = "JSON")]
    pub args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}", value_name = "JSON")]
    pub kwargs: String,
    /// Target queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Routing key (matched against queue bindings).
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Exchange.
    #[arg(long)]
    pub exchange: Option<String>,
    /// Priority.
    #[arg(long)]
    pub priority: Option<u8>,
    /// Delay before running, e.g. 10s or 5m.
    #[arg(long, value_parser = parse_duration)]
    pub countdown: Option<Duration>,
    /// Run at this ISO-8601 time.
    #[arg(long)]
    pub eta: Option<String>,
    /// Expire this long after sending, e.g. 1h.
    #[arg(long, value_parser = parse_duration)]
    pub expires: Option<Duration>,
    /// Use this task id.
    #[arg(long)]
    pub id: Option<String>,
    /// Wait up to this long for the result and print it.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
}

/// `apply` flags.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The signature as JSON, or `@PATH` to read it from a file.
    pub signature: String,
    /// Wait up to this long for the result and print it (a group prints the list
    /// of its members' results).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
}

/// `result` flags.
#[derive(Debug, Args)]
pub struct ResultArgs {
    /// Task id.
    pub id: String,
    /// Wait up to this long for a ready state.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Option<Duration>,
}

/// `queues` flags.
#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// List dead-lettered messages (of QUEUE, or of all queues).
    #[arg(long, value_name = "QUEUE", num_args = 0..=1, default_missing_value = "")]
    pub dead_letters: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `workers` flags.
#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `purge` flags.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Queues to purge (default: every declared queue).
    #[arg(short = 'Q', long = "queues", num_args = 1..)]
    pub queues: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

/// Parses the process arguments and runs the command against `app` (rebuilt with
/// the global flags, if any were given).
pub async fn run(app: App) -> anyhow::Result<()> {
    run_with_args(app, std::env::args_os()).await
}

/// Like [`run`] with explicit arguments (the first is the program name).
pub async fn run_with_args<I, T>(app: App, args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    init_logging(&cli.log);
    let app = if has_overrides(&cli) {
        apply_global_flags(app.to_builder(), &cli)
            .build()
            .await
            .context("applying command-line settings")?
    } else {
        app
    };
    dispatch(app, cli.command).await
}

/// Parses the process arguments, applies the global flags to `builder`, connects and
/// runs the command. Nothing is opened before the flags are known.
pub async fn run_builder(builder: AppBuilder) -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let builder = apply_global_flags(builder, &cli);
    // Name what we connect to (passwords redacted), so the error says which store.
    let target = match builder.resolve_settings() {
        Ok(settings) => format!(
            " (broker {}, result backend {})",
            celeriac_broker::redact(&settings.broker_url),
            settings
                .effective_result_backend()
                .map(|url| celeriac_broker::redact(&url))
                .unwrap_or_else(|| "none".into())
        ),
        Err(_) => String::new(),
    };
    let app = builder
        .build()
        .await
        .with_context(|| format!("connecting to the broker and result backend{target}"))?;
    dispatch(app, cli.command).await
}

async fn dispatch(app: App, command: Command) -> anyhow::Result<()> {
    let publisher = app.clone();
    let outcome = run_command(app, command).await;
    // With deferred publish confirms a command's last sends may still be buffered:
    // store them before exiting, and fail the command if they could not be.
    publisher
        .flush()
        .await
        .context("publishing the command's buffered sends failed")?;
    outcome
}

async fn run_command(app: App, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Worker(args) => worker(app, args).await,
        Command::Call(args) => call(app, args).await,
        Command::Apply(args) => apply(app, args).await,
        Command::Result(args) => result(app, args).await,
        Command::Queues(args) => queues(app, args).await,
        Command::Purge(args) => purge(app, args).await,
        Command::Workers(args) => workers(app, args).await,
        Command::Bench(args) => bench::run(app, args).await,
        Command::Locks(args) => locks::run(app, args).await,
        Command::Beat(args) => schedule::run_beat(app, args).await,
        Command::Schedule(args) => schedule::run_schedule(app, args).await,
        Command::Dashboard(args) => dashboard(app, args).await,
        Command::Inspect(args) => control::inspect(app, args).await,
        Command::Control(args) => control::control(app, args).await,
    }
}

/// Installs a `tracing` subscriber with `filter` unless `RUST_LOG` is set; a second
/// call is a no-op.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn flag_overlay(cli: &Cli) -> Map<String, Value> {
    let mut overlay = Map::new();
    if let Some(broker) = &cli.broker {
        overlay.insert("broker_url".into(), json!(broker));
    }
    if let Some(backend) = &cli.backend {
        overlay.insert("result_backend".into(), json!(backend));
    }
    if let Command::Worker(w) = &cli.command {
        if let Some(c) = w.concurrency {
            overlay.insert("worker_concurrency".into(), json!(c));
        }
        if let Some(p) = w.prefetch_multiplier {
            overlay.insert("worker_prefetch_multiplier".into(), json!(p));
        }
        if w.acks_late {
            overlay.insert("task_acks_late".into(), json!(true));
        }
        if let Some(h) = &w.hostname {
            overlay.insert("worker_hostname".into(), json!(h));
        }
        if let Some(t) = w.shutdown_timeout {
            overlay.insert("worker_shutdown_timeout".into(), json!(t));
        }
        if let Some(v) = w.lease {
            overlay.insert("broker_transport_options".into(), json!({"lease": v}));
        }
    }
    overlay
}

fn has_overrides(cli: &Cli) -> bool {
    cli.config.is_some() || !flag_overlay(cli).is_empty()
}

fn apply_global_flags(builder: AppBuilder, cli: &Cli) -> AppBuilder {
    let mut builder = builder.override_settings(Value::Object(flag_overlay(cli)));
    if let Some(path) = &cli.config {
        builder = builder.config_file(path);
    }
    builder
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The worker config for `args` (queue specs over the app's declared queues).
pub fn worker_config(
    app: &App,
    args: &WorkerArgs,
) -> anyhow::Result<celeriac_worker::WorkerConfig> {
    let mut config = app.worker_config();
    if !args.queues.is_empty() {
        let specs: Vec<&str> = args
            .queues
            .iter()
            .flat_map(|s| s.split_whitespace())
            .collect();
        let mut queues = Vec::new();
        for spec in specs {
            let name = spec.split(':').next().unwrap_or(spec);
            let defaults = config
                .queues
                .iter()
                .find(|q| q.name == name)
                .cloned()
                .unwrap_or_else(|| QueueSettings {
                    name: name.to_string(),
                    concurrency: app.settings().default_concurrency(),
                    prefetch_multiplier: app.settings().worker_prefetch_multiplier.max(1),
                    acks_late: None,
                });
            queues.push(QueueSettings::parse(spec, &defaults).map_err(anyhow::Error::msg)?);
        }
        config.queues = queues;
    }
    if args.task_events {
        config.send_task_events = true;
    }
    Ok(config)
}

async fn worker(app: App, args: WorkerArgs) -> anyhow::Result<()> {
    let config = worker_config(&app, &args)?;
    for queue in &config.queues {
        if app.router().queue(&queue.name).is_none() {
            app.broker()
                .declare_queue(&celeriac_core::Queue::new(queue.name.clone()))
                .await?;
        }
    }
    eprintln!(
        "celeriac worker {} | broker {} | tasks: {}",
        config.hostname,
        app.broker().describe(),
        app.registry().names().join(", ")
    );
    let report = app.worker(config).run_until(shutdown_signal()).await;
    eprintln!(
        "worker stopped: {} processed, {} succeeded, {} failed, {} retried, {} returned to the broker",
        report.processed, report.succeeded, report.failed, report.retried, report.released
    );
    Ok(())
}

async fn call(app: App, args: CallArgs) -> anyhow::Result<()> {
    let positional: Vec<Value> = serde_json::from_str(&args.args)
        .with_context(|| format!("--args must be a JSON array, got {:?}", args.args))?;
    let keywords: Map<String, Value> = serde_json::from_str(&args.kwargs)
        .with_context(|| format!("--kwargs must be a JSON object, got {:?}", args.kwargs))?;
    let mut options = SendOptions::new();
    options.queue = args.queue;
    options.routing_key = args.routing_key;
    options.exchange = args.exchange;
    options.priority = args.priority;
    options.countdown = args.countdown;
    options.expires_in = args.expires;
    options.task_id = args.id;
    if let Some(eta) = &args.eta {
        options.eta = Some(
            celeriac_core::time::parse_iso(eta)
                .with_context(|| format!("--eta {eta:?} is not an ISO-8601 date-time"))?,
        );
    }
    let result = app
        .send_task(&args.name, positional, keywords, options)
        .await?;
    println!("{}", result.id());
    if let Some(wait) = args.wait {
        let value = result.get(wait).await?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}

async fn apply(app: App, args: ApplyArgs) -> anyhow::Result<()> {
    let text = match args.signature.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the signature file {path}"))?,
        None => args.signature.clone(),
    };
    let signature: celeriac_core::Signature = serde_json::from_str(&text)
        .context("the signature must be a JSON object like Celery's (task, args, kwargs, options, subtask_type)")?;
    if signature.subtask_type.as_deref() == Some("group") {
        let group = app.apply_group(signature).await?;
        println!("{}", group.id());
        if let Some(wait) = args.wait {
            let values = group.get(wait).await?;
            println!("{}", serde_json::to_string_pretty(&values)?);
        }
        return Ok(());
    }
    let result = app.apply(signature).await?;
    println!("{}", result.id());
    if let Some(wait) = args.wait {
        let value = result.get(wait).await?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}

/// Where the dashboard keeps its task history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HistoryDb {
    /// The SQLite broker's file; in memory on other brokers.
    #[default]
    Default,
    /// This SQLite file (`PATH` or `sqlite://PATH`).
    File(String),
    /// In memory only: a restart starts empty.
    Memory,
}

/// What the dashboard of `app` reads: its broker, backend and lock store, the
/// schedule store at `store` (else the SQLite broker's file; without one the
/// schedules screen says so), a history of the last `history` tasks built from
/// task events (0: none), kept in the SQLite broker's file across restarts, and
/// per-queue in / out rates. This call starts following the events, sampling the
/// queues and saving the history.
pub async fn dashboard_state(
    app: &App,
    store: Option<&str>,
    history: usize,
) -> celeriac_dashboard::DashboardState {
    dashboard_state_with(app, store, history, HistoryDb::Default).await
}

/// [`dashboard_state`] with the history kept where `db` says.
pub async fn dashboard_state_with(
    app: &App,
    store: Option<&str>,
    history: usize,
    db: HistoryDb,
) -> celeriac_dashboard::DashboardState {
    use celeriac_dashboard::history::{HistoryStore, TaskHistory};
    use celeriac_dashboard::rates::QueueRates;

    let routing = app.clone();
    let rates = Arc::new(QueueRates::new(Some(Arc::new(move |name: &str| {
        let task = routing.registry().get(name).map(|task| task.options());
        routing
            .router()
            .resolve(name, task, &SendOptions::default())
            .ok()
            .and_then(|destinations| destinations.into_iter().next())
            .map(|destination| destination.queue)
    }))));
    tokio::spawn(celeriac_dashboard::rates::sample_queues(
        rates.clone(),
        app.broker().clone(),
        CancellationToken::new(),
    ));
    let history = if history == 0 {
        None
    } else {
        let file = match db {
            HistoryDb::File(file) => Some(file),
            HistoryDb::Default => {
                Some(app.settings().broker_url.clone()).filter(|url| url.starts_with("sqlite://"))
            }
            HistoryDb::Memory => None,
        };
        let kept = match file {
            Some(file) => {
                let opened = tokio::task::spawn_blocking(move || HistoryStore::open_url(&file))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|opened| opened.map_err(|e| e.to_string()));
                match opened {
                    Ok(store) => match TaskHistory::persistent(history, store).await {
                        Ok(kept) => Some(kept),
                        Err(error) => {
                            tracing::warn!(
                                "the dashboard keeps its task history in memory only: {error}"
                            );
                            None
                        }
                    },
                    Err(error) => {
                        tracing::warn!(
                            "the dashboard keeps its task history in memory only: {error}"
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let history = Arc::new(kept.unwrap_or_else(|| TaskHistory::new(history)));
        tokio::spawn(celeriac_dashboard::history::follow(
            history.clone(),
            Some(rates.clone()),
            app.broker().clone(),
            CancellationToken::new(),
        ));
        tokio::spawn(celeriac_dashboard::history::persist(
            history.clone(),
            CancellationToken::new(),
        ));
        Some(history)
    };
    let schedules = match open_schedule_store(app, store).await {
        Ok(store) => Some(store),
        Err(error) => {
            tracing::warn!("the dashboard shows no schedules: {error:#}");
            None
        }
    };
    celeriac_dashboard::DashboardState {
        broker: app.broker().clone(),
        backend: app.backend().cloned(),
        schedules,
        locks: app.locks().cloned(),
        sender: Some(Arc::new(app.clone())),
        control: Some(Arc::new(app.control())),
        credentials: None,
        history,
        rates: Some(rates),
    }
}

async fn dashboard(app: App, args: DashboardArgs) -> anyhow::Result<()> {
    let db = match (args.persistent, args.db) {
        (false, _) => HistoryDb::Memory,
        (true, Some(file)) => HistoryDb::File(file),
        (true, None) => HistoryDb::Default,
    };
    let mut state = dashboard_state_with(&app, args.store.as_deref(), args.history, db).await;
    let history = state.history.clone();
    state.credentials = match (args.user, args.password, args.token) {
        (Some(user), Some(password), _) => {
            Some(celeriac_dashboard::Credentials::basic(user, password))
        }
        (_, _, Some(token)) => Some(celeriac_dashboard::Credentials::bearer(token)),
        _ => None,
    };
    let server = celeriac_dashboard::Dashboard::bind(args.addr, state).await?;
    let addr = server.local_addr().unwrap_or(args.addr);
    println!("celeriac dashboard on http://{addr}");
    if let Some(file) = history.as_ref().and_then(|h| h.store()) {
        // On stderr: stdout carries only the address line, which scripts read (a
        // reader that closes the pipe after it must not make a second line fail).
        eprintln!("task history kept in {}", file.path().display());
    }
    let stop = CancellationToken::new();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal_stop.cancel();
    });
    server.serve(stop).await?;
    if let Some(history) = history {
        // What changed since the last periodic save.
        history.flush().await?;
    }
    Ok(())
}

async fn result(app: App, args: ResultArgs) -> anyhow::Result<()> {
    let backend = app.backend().context("no result backend is configured")?;
    let meta = match args.wait {
        Some(wait) => backend.wait(&args.id, wait).await?,
        None => backend.get(&args.id).await?,
    };
    let meta = meta.unwrap_or_else(|| celeriac_core::TaskMeta::pending(args.id.clone()));
    println!("{}", serde_json::to_string_pretty(&meta)?);
    Ok(())
}

async fn queues(app: App, args: QueuesArgs) -> anyhow::Result<()> {
    if let Some(queue) = args.dead_letters {
        let query = DeadLetterQuery {
            queue: (!queue.is_empty()).then_some(queue),
            limit: 100,
        };
        let letters = app.broker().dead_letters(&query).await?;
        if args.json {
            let rows: Vec<Value> = letters
                .iter()
                .map(|d| {
                    json!({"id": d.id, "queue": d.queue, "reason": d.reason, "at": d.at.to_rfc3339(),
                           "payload": String::from_utf8_lossy(&d.payload)})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else if letters.is_empty() {
            println!("no dead letters");
        } else {
            for d in letters {
                println!(
                    "{}  {}  {}  {}",
                    d.at.format("%Y-%m-%d %H:%M:%S"),
                    d.queue,
                    d.id,
                    d.reason
                );
            }
        }
        return Ok(());
    }
    let stats = app.broker().queue_stats(&[]).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>10} {:>12}",
        "QUEUE", "READY", "SCHEDULED", "HELD", "DEAD LETTERS"
    )?;
    for q in stats {
        writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>10} {:>12}",
            q.name, q.ready, q.scheduled, q.held, q.dead_letters
        )?;
    }
    Ok(())
}

async fn workers(app: App, args: WorkersArgs) -> anyhow::Result<()> {
    let workers = app.broker().workers().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&workers)?);
        return Ok(());
    }
    if workers.is_empty() {
        println!("no workers have reported to {}", app.broker().describe());
        return Ok(());
    }
    let now = chrono::Utc::now();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<32} {:<8} {:>10} {:>8} {:>10}  QUEUES",
        "WORKER", "STATE", "HEARTBEAT", "ACTIVE", "PROCESSED"
    )?;
    for w in workers {
        let state = if w.is_alive(now) {
            "online"
        } else if w.online {
            "lost"
        } else {
            "offline"
        };
        let age = (now - w.last_heartbeat).num_milliseconds() as f64 / 1000.0;
        writeln!(
            out,
            "{:<32} {:<8} {:>9.1}s {:>8} {:>10}  {}",
            w.hostname,
            state,
            age,
            w.active,
            w.processed,
            w.queues.join(",")
        )?;
    }
    Ok(())
}

async fn purge(app: App, args: PurgeArgs) -> anyhow::Result<()> {
    let queues: Vec<String> = if args.queues.is_empty() {
        app.router()
            .queues()
            .iter()
            .map(|q| q.name.clone())
            .collect()
    } else {
        args.queues
    };
    if !args.force {
        eprint!(
            "Delete every waiting message of {}? [y/N] ",
            queues.join(", ")
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("purge cancelled");
        }
    }
    let bar = indicatif::ProgressBar::new(queues.len() as u64);
    let mut total = 0;
    for queue in &queues {
        bar.set_message(queue.clone());
        total += app.broker().purge(queue).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("purged {total} message(s) from {}", queues.join(", "));
    Ok(())
}
