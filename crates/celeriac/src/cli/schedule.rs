//! `beat` and `schedule add | list | show | enable | disable | remove | run-now`.
//!
//! The schedule store is `--store URL`, else `CELERIAC_BEAT_STORE`, else the broker's
//! own store (its SQLite file, or its Redis):
//!
//! - `sqlite://PATH`: a SQLite file (normally the broker's);
//! - `redis://HOST[:PORT][/DB][?global_keyprefix=P]` (also `rediss://`,
//!   `redis+socket://`): Redis, for beats on several machines;
//! - `django+postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME`: django-celery-beat's own
//!   tables, so periodic tasks made in the Django admin run here.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use celeriac_beat::schedule::parse_timezone;
use celeriac_beat::{
    Beat, BeatConfig, CatchUp, Clocked, Crontab, Entry, Interval, ListParams, RunsParams, Schedule,
    ScheduleStore, Solar, SolarEvent, SystemClock,
};
use celeriac_core::limits::parse_duration;
use celeriac_core::{Map, Value};
use chrono::{DateTime, NaiveDateTime, Utc};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;

use crate::app::App;

/// `beat` flags.
#[derive(Debug, Args)]
pub struct BeatArgs {
    /// Schedule store URL: sqlite://PATH, redis://HOST[:PORT][/DB] or
    /// django+postgres://USER@HOST/DBNAME (default: the broker's SQLite file or Redis).
    #[arg(
        long,
        env = "CELERIAC_BEAT_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub store: Option<String>,
    /// How often the store is checked for edits (the longest an edit takes to apply).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", default_value = "250ms")]
    pub poll: Duration,
    /// How long a claimed run is reserved for this beat to publish it before another
    /// beat may take it over.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", default_value = "30s")]
    pub claim_lease: Duration,
}

/// `schedule` flags.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Schedule store URL: sqlite://PATH, redis://HOST[:PORT][/DB] or
    /// django+postgres://USER@HOST/DBNAME (default: the broker's SQLite file or Redis).
    #[arg(
        long,
        global = true,
        env = "CELERIAC_BEAT_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub store: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: ScheduleCommand,
}

/// The `schedule` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add an entry, or replace the configuration of an existing one (its run
    /// history is kept).
    Add(Box<AddArgs>),
    /// List entries: enabled, schedule, task, next and last run, run count.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one entry with its next run and its latest runs.
    Show {
        /// The entry's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enable an entry.
    Enable {
        /// The entry's name.
        name: String,
    },
    /// Disable an entry (no run is sent until it is enabled again).
    Disable {
        /// The entry's name.
        name: String,
    },
    /// Delete an entry and its run history.
    Remove {
        /// The entry's name.
        name: String,
    },
    /// Send the entry's task now, with its arguments and options (its schedule and
    /// run state are not changed). Prints the task id.
    RunNow {
        /// The entry's name.
        name: String,
    },
}

/// `schedule add` flags.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("when").required(true).args(["every", "crontab", "at", "solar"])))]
pub struct AddArgs {
    /// Unique entry name.
    pub name: String,
    /// Task name, e.g. notify.digest.
    #[arg(long)]
    pub task: String,
    /// Positional arguments as a JSON array.
    #[arg(long, default_value = "[]", value_name = "JSON")]
    pub args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}", value_name = "JSON")]
    pub kwargs: String,
    /// Run every DURATION (30s, 5m, 1h), counted from the previous run.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub every: Option<Duration>,
    /// Celery crontab `minute hour day_of_month month_of_year day_of_week`, e.g.
    /// "*/5 * * * *" or "0 9 * * mon-fri" (0 = Sunday; a day must match both day fields).
    #[arg(long, value_name = "SPEC")]
    pub crontab: Option<String>,
    /// Run once at this date-time (ISO 8601; without an offset it is in --tz, else UTC).
    #[arg(long, value_name = "DATETIME")]
    pub at: Option<String>,
    /// Run at a solar event at --lat/--lon, as Celery's `solar`: sunrise, sunset,
    /// solar_noon, dawn_civil, dawn_nautical, dawn_astronomical, dusk_civil,
    /// dusk_nautical or dusk_astronomical.
    #[arg(long, value_name = "EVENT", requires_all = ["lat", "lon"])]
    pub solar: Option<String>,
    /// Latitude of --solar in degrees (north positive).
    #[arg(long, value_name = "DEGREES", allow_hyphen_values = true)]
    pub lat: Option<f64>,
    /// Longitude of --solar in degrees (east positive).
    #[arg(long, value_name = "DEGREES", allow_hyphen_values = true)]
    pub lon: Option<f64>,
    /// IANA time zone of --crontab and of an --at without offset, e.g. Asia/Seoul.
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
    /// Target queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Routing key.
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Exchange.
    #[arg(long)]
    pub exchange: Option<String>,
    /// Message priority.
    #[arg(long)]
    pub priority: Option<u8>,
    /// Extra message header (repeatable); VALUE is JSON, else a string.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, Value)>,
    /// Each run expires this long after its due time, e.g. 10m.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub expires: Option<Duration>,
    /// Runs missed while beat was down: once (one run for all), all, or skip.
    #[arg(long, default_value = "once", value_parser = parse_catch_up)]
    pub catch_up: CatchUp,
    /// No run before this date-time.
    #[arg(long, value_name = "DATETIME")]
    pub start: Option<String>,
    /// No run after this date-time.
    #[arg(long, value_name = "DATETIME")]
    pub end: Option<String>,
    /// Disable the entry after its first run (implied by --at).
    #[arg(long)]
    pub one_off: bool,
    /// Store the entry disabled.
    #[arg(long)]
    pub disabled: bool,
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
}

/// `KEY=VALUE`: VALUE as JSON when it parses (`3`, `true`, `{"a": 1}`), else as a
/// string.
fn parse_header(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("empty header name in {text:?}"));
    }
    let value =
        serde_json::from_str::<Value>(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

fn parse_catch_up(text: &str) -> Result<CatchUp, String> {
    text.parse::<CatchUp>().map_err(|e| e.to_string())
}

/// Opens the schedule store: `url`, else the broker's own store when the broker is
/// SQLite or Redis.
pub async fn open_schedule_store(
    app: &App,
    url: Option<&str>,
) -> anyhow::Result<Arc<dyn ScheduleStore>> {
    let url = match url {
        Some(url) => url.to_string(),
        None => {
            let broker = &app.settings().broker_url;
            let doubles = ["sqlite://", "redis://", "rediss://", "redis+socket://"];
            if !doubles.iter().any(|scheme| broker.starts_with(scheme)) {
                bail!(
                    "no schedule store: pass --store URL or set CELERIAC_BEAT_STORE \
                     (sqlite://PATH, redis://HOST/DB or django+postgres://USER@HOST/DBNAME; \
                     only SQLite and Redis brokers double as schedule stores)"
                );
            }
            broker.clone()
        }
    };
    celeriac_beat::connect(&url)
        .await
        .with_context(|| format!("opening the schedule store {}", redact(&url)))
}

/// `url` with a password hidden.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => match url[start + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..start + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// Runs beat until SIGTERM / Ctrl-C.
pub(crate) async fn run_beat(app: App, args: BeatArgs) -> anyhow::Result<()> {
    let store = open_schedule_store(&app, args.store.as_deref()).await?;
    let mut config = BeatConfig::default();
    config.poll_interval = args.poll.max(Duration::from_millis(1));
    config.claim_lease = args.claim_lease.max(Duration::from_millis(1));
    let entries = store.list(&ListParams::all()).await?.len();
    eprintln!(
        "celeriac beat {} | store {} | broker {} | {entries} entries",
        config.claimer,
        store.describe(),
        app.broker().describe()
    );
    let report = Beat::new(store, Arc::new(app), Arc::new(SystemClock))
        .with_config(config)
        .run_until(crate::cli::shutdown_signal())
        .await;
    eprintln!(
        "beat stopped: {} sent ({} taken over from stopped beats), {} runs sent by other beats, {} errors",
        report.sent, report.taken_over, report.claims_lost, report.errors
    );
    Ok(())
}

/// Runs a `schedule` subcommand.
pub(crate) async fn run_schedule(app: App, args: ScheduleArgs) -> anyhow::Result<()> {
    let store = open_schedule_store(&app, args.store.as_deref()).await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        ScheduleCommand::Add(add) => {
            let entry = entry_from_args(*add, Utc::now())?;
            let existed = store.get(&entry.name).await?.is_some();
            store.upsert(&entry).await?;
            writeln!(
                out,
                "{} {}: {} -> {}",
                if existed { "updated" } else { "added" },
                entry.name,
                entry.schedule,
                entry.task
            )?;
        }
        ScheduleCommand::List { json } => {
            let entries = store.list(&ListParams::all()).await?;
            let now = Utc::now();
            if json {
                let rows: Vec<Value> = entries.iter().map(|e| entry_json(e, now)).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                out.write_all(table(&entries, now).as_bytes())?;
            }
        }
        ScheduleCommand::Show { name, json } => {
            let entry = require(&*store, &name).await?;
            let runs = store.runs(&RunsParams::of(name.clone(), 10)).await?;
            let now = Utc::now();
            if json {
                let mut value = entry_json(&entry, now);
                value["runs"] = serde_json::to_value(&runs)?;
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                out.write_all(details(&entry, &runs, now).as_bytes())?;
            }
        }
        ScheduleCommand::Enable { name } => {
            if !store.set_enabled(&name, true).await? {
                bail!("no schedule entry {name:?} in {}", store.describe());
            }
            writeln!(out, "enabled {name}")?;
        }
        ScheduleCommand::Disable { name } => {
            if !store.set_enabled(&name, false).await? {
                bail!("no schedule entry {name:?} in {}", store.describe());
            }
            writeln!(out, "disabled {name}")?;
        }
        ScheduleCommand::Remove { name } => {
            if !store.remove(&name).await? {
                bail!("no schedule entry {name:?} in {}", store.describe());
            }
            writeln!(out, "removed {name}")?;
        }
        ScheduleCommand::RunNow { name } => {
            let entry = require(&*store, &name).await?;
            let id = uuid::Uuid::new_v4().to_string();
            let options = entry.send_options(Utc::now(), &id);
            let result = app
                .send_task(
                    &entry.task,
                    entry.args.clone(),
                    entry.kwargs.clone(),
                    options,
                )
                .await?;
            writeln!(out, "{}", result.id())?;
        }
    }
    Ok(())
}

async fn require(store: &dyn ScheduleStore, name: &str) -> anyhow::Result<Entry> {
    store
        .get(name)
        .await?
        .with_context(|| format!("no schedule entry {name:?} in {}", store.describe()))
}

/// The entry `schedule add` describes.
fn entry_from_args(args: AddArgs, now: DateTime<Utc>) -> anyhow::Result<Entry> {
    let positional: Vec<Value> = serde_json::from_str(&args.args)
        .with_context(|| format!("--args must be a JSON array, got {:?}", args.args))?;
    let keywords: Map<String, Value> = serde_json::from_str(&args.kwargs)
        .with_context(|| format!("--kwargs must be a JSON object, got {:?}", args.kwargs))?;
    let tz = args.tz.as_deref().map(parse_timezone).transpose()?;
    let schedule: Schedule = match (&args.every, &args.crontab, &args.at) {
        (None, None, None) if args.solar.is_some() => {
            let (Some(event), Some(lat), Some(lon)) = (&args.solar, args.lat, args.lon) else {
                bail!("--solar needs --lat and --lon");
            };
            Solar::new(event.parse::<SolarEvent>()?, lat, lon)?.into()
        }
        (Some(every), None, None) => Interval::new(*every)?.into(),
        (None, Some(spec), None) => {
            let crontab = Crontab::parse(spec)?;
            match tz {
                Some(tz) => crontab.with_timezone(tz).into(),
                None => crontab.into(),
            }
        }
        (None, None, Some(at)) => Clocked::new(parse_time("--at", at, tz)?).into(),
        _ => bail!("give exactly one of --every, --crontab, --at and --solar"),
    };
    let one_off = args.one_off || matches!(schedule, Schedule::Clocked(_));
    let mut entry = Entry::new(args.name, args.task, schedule)
        .args(positional)
        .kwargs(keywords)
        .catch_up(args.catch_up)
        .enabled(!args.disabled)
        .one_off(one_off)
        .description(args.description)
        .created_at(now);
    entry.queue = args.queue;
    entry.routing_key = args.routing_key;
    entry.exchange = args.exchange;
    entry.priority = args.priority;
    entry.headers = args.headers.into_iter().collect();
    entry.expires = args.expires;
    entry.start_time = args
        .start
        .as_deref()
        .map(|s| parse_time("--start", s, tz))
        .transpose()?;
    entry.end_time = args
        .end
        .as_deref()
        .map(|s| parse_time("--end", s, tz))
        .transpose()?;
    entry.validate()?;
    Ok(entry)
}

/// An ISO 8601 date-time; one without an offset is wall-clock time in `tz` (UTC when
/// absent), resolved by the DST policy of crontabs.
fn parse_time(flag: &str, text: &str, tz: Option<chrono_tz::Tz>) -> anyhow::Result<DateTime<Utc>> {
    let trimmed = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(trimmed, format) {
            let tz = tz.unwrap_or(chrono_tz::Tz::UTC);
            return celeriac_beat::schedule::resolve_local(&tz, naive)
                .with_context(|| format!("{flag} {text:?} cannot be placed in {tz}"));
        }
    }
    bail!("{flag} {text:?} is not an ISO 8601 date-time (e.g. 2026-05-01T09:00:00+09:00 or 2026-05-01 09:00 with --tz)")
}

fn entry_json(entry: &Entry, now: DateTime<Utc>) -> Value {
    let mut value = serde_json::to_value(entry).unwrap_or_else(|_| json!({}));
    value["schedule_text"] = json!(entry.schedule.to_string());
    value["next_run_at"] = json!(entry.next_due(now, Duration::ZERO));
    value
}

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_string(),
        |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// The entry listing as a table (or a line saying there are none).
fn table(entries: &[Entry], now: DateTime<Utc>) -> String {
    if entries.is_empty() {
        return "no schedule entries\n".to_string();
    }
    let name_width = entries
        .iter()
        .map(|e| e.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let schedule_width = entries
        .iter()
        .map(|e| e.schedule.to_string().chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut text = format!(
        "{:<name_width$}  {:<3}  {:<schedule_width$}  {:<23}  {:<23}  {:>6}  TASK\n",
        "NAME", "ON", "SCHEDULE", "NEXT RUN", "LAST RUN", "RUNS"
    );
    for entry in entries {
        text.push_str(&format!(
            "{:<name_width$}  {:<3}  {:<schedule_width$}  {:<23}  {:<23}  {:>6}  {}\n",
            entry.name,
            if entry.enabled { "yes" } else { "no" },
            entry.schedule.to_string(),
            when(entry.next_due(now, Duration::ZERO)),
            when(entry.last_run_at),
            entry.total_run_count,
            entry.task
        ));
    }
    text
}

/// One entry in detail, with its latest runs.
fn details(entry: &Entry, runs: &[celeriac_beat::Run], now: DateTime<Utc>) -> String {
    let mut text = String::new();
    let mut line = |key: &str, value: String| text.push_str(&format!("{key:<14}{value}\n"));
    line("name", entry.name.clone());
    line("task", entry.task.clone());
    line(
        "args",
        serde_json::to_string(&entry.args).unwrap_or_default(),
    );
    line(
        "kwargs",
        serde_json::to_string(&entry.kwargs).unwrap_or_default(),
    );
    line("schedule", entry.schedule.to_string());
    line("enabled", entry.enabled.to_string());
    line("one_off", entry.one_off.to_string());
    line("catch_up", entry.catch_up.to_string());
    line("queue", entry.queue.clone().unwrap_or_else(|| "-".into()));
    if let Some(key) = &entry.routing_key {
        line("routing_key", key.clone());
    }
    if let Some(exchange) = &entry.exchange {
        line("exchange", exchange.clone());
    }
    if let Some(priority) = entry.priority {
        line("priority", priority.to_string());
    }
    if !entry.headers.is_empty() {
        line(
            "headers",
            serde_json::to_string(&entry.headers).unwrap_or_default(),
        );
    }
    if let Some(expires) = entry.expires {
        line("expires", celeriac_beat::schedule::format_duration(expires));
    }
    if entry.start_time.is_some() {
        line("start", when(entry.start_time));
    }
    if entry.end_time.is_some() {
        line("end", when(entry.end_time));
    }
    if !entry.description.is_empty() {
        line("description", entry.description.clone());
    }
    line("next run", when(entry.next_due(now, Duration::ZERO)));
    line("last run", when(entry.last_run_at));
    line("runs", entry.total_run_count.to_string());
    if !runs.is_empty() {
        text.push_str("\nlatest runs (due, sent, task id, beat):\n");
        for run in runs {
            text.push_str(&format!(
                "  {}  {}  {}  {}\n",
                when(Some(run.due_at)),
                run.sent_at
                    .map_or_else(|| "not sent".to_string(), |s| when(Some(s))),
                run.task_id,
                run.claimer
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        add: AddArgs,
    }

    fn add(args: &[&str]) -> anyhow::Result<Entry> {
        let parsed = Wrapper::try_parse_from(std::iter::once("add").chain(args.iter().copied()))?;
        entry_from_args(parsed.add, Utc::now())
    }

    #[test]
    fn add_builds_each_kind_of_entry() {
        let every = add(&["tick", "--task", "t", "--every", "30s", "--queue", "q"]).expect("every");
        assert_eq!(every.schedule.to_string(), "every 30s");
        assert_eq!(every.queue.as_deref(), Some("q"));
        assert!(!every.one_off);
        let cron = add(&[
            "c",
            "--task",
            "t",
            "--crontab",
            "*/5 * * * *",
            "--tz",
            "Asia/Seoul",
        ])
        .expect("crontab");
        assert_eq!(
            cron.schedule.to_string(),
            "crontab */5 * * * * (Asia/Seoul)"
        );
        let at = add(&[
            "o",
            "--task",
            "t",
            "--at",
            "2026-05-01 09:00",
            "--tz",
            "Asia/Seoul",
        ])
        .expect("at");
        assert!(at.one_off, "--at is one-off");
        assert_eq!(at.schedule.to_string(), "at 2026-05-01T00:00:00Z");
        let solar = add(&[
            "dusk",
            "--task",
            "t",
            "--solar",
            "dusk_civil",
            "--lat",
            "-33.87",
            "--lon",
            "151.21",
        ])
        .expect("solar");
        assert_eq!(
            solar.schedule.to_string(),
            "solar dusk_civil at latitude -33.87, longitude 151.21"
        );
        assert!(
            add(&["x", "--task", "t", "--solar", "moonrise", "--lat", "0", "--lon", "0"])
                .is_err_and(|e| e.to_string().contains("unknown solar event"))
        );
        assert!(add(&["x", "--task", "t", "--solar", "sunrise", "--lat", "0"]).is_err());
        let with_args = add(&[
            "a",
            "--task",
            "t",
            "--every",
            "1m",
            "--args",
            "[1, 2]",
            "--kwargs",
            "{\"k\": true}",
            "--catch-up",
            "skip",
            "--expires",
            "10m",
            "--disabled",
            "--header",
            "x-tenant=acme",
            "--header",
            "x-retries=3",
        ])
        .expect("args");
        assert_eq!(with_args.headers["x-tenant"], json!("acme"));
        assert_eq!(with_args.headers["x-retries"], json!(3));
        assert_eq!(with_args.args, vec![json!(1), json!(2)]);
        assert_eq!(with_args.kwargs["k"], json!(true));
        assert_eq!(with_args.catch_up, CatchUp::Skip);
        assert_eq!(with_args.expires, Some(Duration::from_secs(600)));
        assert!(!with_args.enabled);
    }

    #[test]
    fn bad_add_arguments_get_clear_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["x", "--task", "t"], "--every"),
            (
                &[
                    "x",
                    "--task",
                    "t",
                    "--every",
                    "1s",
                    "--crontab",
                    "* * * * *",
                ],
                "cannot be used with",
            ),
            (
                &["x", "--task", "t", "--crontab", "* * * *"],
                "expected 5 fields",
            ),
            (
                &["x", "--task", "t", "--crontab", "0 0 * * 7"],
                "day_of_week",
            ),
            (
                &[
                    "x",
                    "--task",
                    "t",
                    "--crontab",
                    "* * * * *",
                    "--tz",
                    "Nowhere/City",
                ],
                "unknown time zone",
            ),
            (&["x", "--task", "t", "--at", "tomorrow"], "not an ISO 8601"),
            (
                &["x", "--task", "t", "--every", "1s", "--args", "{}"],
                "--args must be a JSON array",
            ),
            (&["x", "--task", "t", "--every", "0s"], "at least 1 ms"),
            (
                &["x", "--task", "t", "--every", "1s", "--header", "novalue"],
                "expected KEY=VALUE",
            ),
            (
                &["x", "--task", "t", "--every", "1s", "--catch-up", "never"],
                "once, all or skip",
            ),
        ];
        for (args, expected) in cases {
            let error = format!("{:#}", add(args).expect_err("refused"));
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn the_table_shows_schedule_next_and_last_run() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:30Z")
            .expect("now")
            .with_timezone(&Utc);
        let mut entry = Entry::new(
            "digest",
            "notify.digest",
            Interval::new(Duration::from_secs(60))
                .expect("1m")
                .anchored(now - chrono::Duration::seconds(30)),
        )
        .created_at(now);
        entry.total_run_count = 3;
        let text = table(&[entry], now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].ends_with("TASK"),
            "{text}"
        );
        assert!(lines[1].starts_with("digest  yes"), "{text}");
        assert!(lines[1].contains("2026-01-01 00:01:00 UTC"), "{text}");
        assert!(lines[1].ends_with("3  notify.digest"), "{text}");
        assert_eq!(table(&[], now), "no schedule entries\n");
    }
}
