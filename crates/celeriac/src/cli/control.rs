//! `inspect ...` and `control ...`: remote control of running workers (celeriac's and
//! Python Celery's) over the broker, as `celery inspect` / `celery control` do.

use std::time::Duration;

use anyhow::bail;
use celeriac_core::limits::parse_duration;
use celeriac_core::{Map, Value};
use clap::{Args, Subcommand, ValueEnum};

use crate::app::App;
use crate::control::BroadcastOptions;

/// Flags every remote-control command takes.
#[derive(Debug, Args)]
pub struct Target {
    /// Only this node (`name@host`); repeat for several. Default: every node.
    #[arg(short = 'd', long = "destination", value_name = "NODE", global = true)]
    pub destination: Vec<String>,
    /// How long to wait for replies.
    #[arg(short = 't', long, default_value = "1s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    /// Print the replies as one JSON object `{node: reply}`.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `inspect` flags.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// What to ask.
    #[arg(value_enum)]
    pub what: InspectWhat,
    /// Task ids (for `query_task`).
    pub ids: Vec<String>,
    /// Nodes, timeout, output.
    #[command(flatten)]
    pub target: Target,
}

/// The inspect commands.
#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum InspectWhat {
    /// Is anyone there? (`{"ok": "pong"}`)
    Ping,
    /// Tasks running now.
    Active,
    /// Tasks reserved, waiting for a slot.
    Reserved,
    /// Tasks waiting for their ETA.
    Scheduled,
    /// Registered task names.
    Registered,
    /// Worker statistics.
    Stats,
    /// Revoked task ids.
    Revoked,
    /// Queues consumed.
    ActiveQueues,
    /// Where given task ids are (`active`, `reserved`, `scheduled`).
    QueryTask,
}

impl InspectWhat {
    fn method(self) -> &'static str {
        match self {
            InspectWhat::Ping => "ping",
            InspectWhat::Active => "active",
            InspectWhat::Reserved => "reserved",
            InspectWhat::Scheduled => "scheduled",
            InspectWhat::Registered => "registered",
            InspectWhat::Stats => "stats",
            InspectWhat::Revoked => "revoked",
            InspectWhat::ActiveQueues => "active_queues",
            InspectWhat::QueryTask => "query_task",
        }
    }
}

/// `control` flags.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The command.
    #[command(subcommand)]
    pub command: ControlCommand,
    /// Nodes, timeout, output.
    #[command(flatten)]
    pub target: Target,
}

/// The control commands.
#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Revoke tasks: they will not start; with --terminate running ones are stopped.
    Revoke {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Also stop the tasks if they are running.
        #[arg(long)]
        terminate: bool,
    },
    /// Set a task type's rate limit (`10/m`; `0` removes it).
    #[command(name = "rate_limit", alias = "rate-limit")]
    RateLimit {
        /// Task name.
        task: String,
        /// Rate, e.g. 10/s, 100/m, 1000/h.
        rate: String,
    },
    /// Shut the workers down gracefully.
    Shutdown,
    /// Turn task events on.
    #[command(name = "enable_events", alias = "enable-events")]
    EnableEvents,
    /// Turn task events off.
    #[command(name = "disable_events", alias = "disable-events")]
    DisableEvents,
}

fn options(target: &Target) -> BroadcastOptions {
    BroadcastOptions {
        destination: (!target.destination.is_empty()).then(|| target.destination.clone()),
        timeout: target.timeout,
        limit: None,
    }
}

/// Runs `inspect`.
pub async fn inspect(app: App, args: InspectArgs) -> anyhow::Result<()> {
    let mut arguments = Map::new();
    if matches!(args.what, InspectWhat::QueryTask) {
        if args.ids.is_empty() {
            bail!("query_task needs task ids");
        }
        arguments.insert("ids".into(), serde_json::json!(args.ids));
    }
    let replies = app
        .control()
        .broadcast(args.what.method(), arguments, &options(&args.target))
        .await?;
    print_replies(&replies, &args.target)
}

/// Runs `control`.
pub async fn control(app: App, args: ControlArgs) -> anyhow::Result<()> {
    let control = app.control();
    let opts = options(&args.target);
    let replies = match &args.command {
        ControlCommand::Revoke { ids, terminate } => control.revoke(ids, *terminate, &opts).await?,
        ControlCommand::RateLimit { task, rate } => control.rate_limit(task, rate, &opts).await?,
        ControlCommand::Shutdown => control.shutdown(&opts).await?,
        ControlCommand::EnableEvents => {
            control
                .broadcast("enable_events", Map::new(), &opts)
                .await?
        }
        ControlCommand::DisableEvents => {
            control
                .broadcast("disable_events", Map::new(), &opts)
                .await?
        }
    };
    print_replies(&replies, &args.target)
}

fn print_replies(replies: &[(String, Value)], target: &Target) -> anyhow::Result<()> {
    if target.json {
        let object: Map<String, Value> = replies.iter().cloned().collect();
        println!("{}", serde_json::to_string_pretty(&Value::Object(object))?);
    } else {
        for (node, reply) in replies {
            let error = reply.get("error").is_some();
            println!("-> {node}: {}", if error { "ERROR" } else { "OK" });
            let text = match reply {
                Value::Object(map) if map.len() == 1 && map.values().all(Value::is_string) => map
                    .values()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(""),
                Value::Array(items) if items.is_empty() => "- empty -".into(),
                other => serde_json::to_string_pretty(other)?,
            };
            for line in text.lines() {
                println!("    {line}");
            }
        }
        let n = replies.len();
        println!();
        println!("{n} node{} online.", if n == 1 { "" } else { "s" });
    }
    if replies.is_empty() {
        bail!("no nodes replied within {:?}", target.timeout);
    }
    Ok(())
}
