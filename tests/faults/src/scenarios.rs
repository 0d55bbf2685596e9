//! The scenarios, their counting rules and the summary.
//!
//! | scenario | brokers | fault | a duplicate is explained when |
//! |---|---|---|---|
//! | `kill` | all | SIGKILL of a worker at a random point of each round of late-ack tasks | the task ran (or was running) in the killed worker: late ack redelivers it |
//! | `restart` | Redis: the private server SIGKILLed and restarted (durable AOF); RabbitMQ: a private node SIGKILLed and started again on its port and database | twice, during publish and consume | its executions straddle an outage (its ack could not land) |
//! | `stall` | Redis, RabbitMQ (a private node) | the server SIGSTOPped for longer than the client's timeouts, while work and publishes are in flight | its executions straddle the stall |
//! | `beat` | all | one of three beat processes SIGKILLed while they send a 1-second entry | never on SQLite and Redis (publish-once); on RabbitMQ, by the documented window (no publish-once) |
//! | `term` | all | SIGTERM of a busy worker | never: running tasks finish, reserved ones go back |

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use celeriac::beat::{CatchUp, Entry, Interval, BEAT_HEADER};
use celeriac::broker::FetchParams;
use celeriac::core::{Map, Queue, SendOptions, TaskMessage};
use celeriac::{App, TaskCall};
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::env::{BrokerKind, Env};
use crate::procs::Proc;
use crate::record::{Execution, Log};
use crate::{app_builder, WorkerArgs, WORK_TASK};

/// Knobs of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rounds of the worker-kill scenario.
    pub kill_rounds: u64,
    /// Tasks per round.
    pub kill_tasks: u64,
}

/// One fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Worker SIGKILL under load.
    Kill,
    /// Broker restart (SIGKILL, then started again) during publish and consume.
    Restart,
    /// Broker stalled with SIGSTOP.
    Stall,
    /// A beat replica killed while sending.
    Beat,
    /// Graceful worker shutdown on SIGTERM.
    Term,
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 5] = [
        Scenario::Kill,
        Scenario::Restart,
        Scenario::Stall,
        Scenario::Beat,
        Scenario::Term,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill",
            Scenario::Restart => "restart",
            Scenario::Stall => "stall",
            Scenario::Beat => "beat",
            Scenario::Term => "term",
        }
    }

    /// What it does, for the table.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::Kill => "worker SIGKILL under load",
            Scenario::Restart => "broker restart (SIGKILL)",
            Scenario::Stall => "broker stalled (SIGSTOP)",
            Scenario::Beat => "beat replica SIGKILL",
            Scenario::Term => "worker SIGTERM (graceful)",
        }
    }

    /// The scenario called `name`.
    pub fn parse(name: &str) -> anyhow::Result<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .with_context(|| {
                format!("unknown scenario {name:?} (kill, restart, stall, beat, term)")
            })
    }

    /// Whether it makes sense on `broker` (the embedded broker has no server to
    /// restart or stall; the shared RabbitMQ node is never stopped, a private one
    /// is restarted).
    pub fn applies_to(self, broker: BrokerKind) -> bool {
        match self {
            Scenario::Kill | Scenario::Beat | Scenario::Term => true,
            Scenario::Restart => broker != BrokerKind::Sqlite,
            Scenario::Stall => broker != BrokerKind::Sqlite,
        }
    }

    /// Runs it on a fresh broker of `kind`.
    pub async fn run(self, kind: BrokerKind, settings: &Settings) -> Outcome {
        let started = Instant::now();
        let test = format!("faults {} on {kind}", self.name());
        let private = matches!(self, Scenario::Restart | Scenario::Stall);
        let mut env = match open_env(kind, self == Scenario::Restart, private, &test) {
            Ok(Some(env)) => env,
            Ok(None) => return Outcome::skipped(self, kind, "the service does not answer"),
            Err(error) => return Outcome::failed(self, kind, started, format!("{error:#}")),
        };
        let counted = match self {
            Scenario::Kill => kill(&env, settings).await,
            Scenario::Restart => restart(&mut env).await,
            Scenario::Stall => stall(&env).await,
            Scenario::Beat => beat(&env).await,
            Scenario::Term => term(&env).await,
        };
        match counted {
            Ok(counts) => Outcome::counted(self, kind, started, counts),
            Err(error) => Outcome::failed(self, kind, started, format!("{error:#}")),
        }
    }
}

/// [`Env::open`], turning a required-but-missing service into an error (not a panic).
fn open_env(
    kind: BrokerKind,
    durable: bool,
    private: bool,
    test: &str,
) -> anyhow::Result<Option<Env>> {
    match std::panic::catch_unwind(|| Env::open(kind, durable, private, test)) {
        Ok(opened) => opened,
        Err(_) => bail!("{kind} is required (CELERIAC_REQUIRE_SERVICES=1) and not available"),
    }
}

/// What a scenario counted.
#[derive(Debug, Default)]
struct Counts {
    /// Tasks (or runs) that had to arrive.
    tasks: usize,
    /// Those that never did.
    lost: BTreeSet<u64>,
    /// Extra executions.
    duplicates: usize,
    /// Duplicates the fault does not explain, described.
    unexplained: Vec<String>,
    /// What happened, for the table.
    note: String,
}

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Counted, nothing lost, every duplicate explained.
    Passed,
    /// Lost tasks, unexplained duplicates or an error.
    Failed(String),
    /// Not run (the service is missing and not required).
    Skipped(String),
}

/// One scenario on one broker.
#[derive(Debug, Clone)]
pub struct Outcome {
    scenario: Scenario,
    broker: BrokerKind,
    tasks: usize,
    lost: usize,
    duplicates: usize,
    seconds: f64,
    note: String,
    /// How it ended.
    pub status: Status,
}

impl Outcome {
    fn skipped(scenario: Scenario, broker: BrokerKind, why: &str) -> Outcome {
        Outcome {
            scenario,
            broker,
            tasks: 0,
            lost: 0,
            duplicates: 0,
            seconds: 0.0,
            note: String::new(),
            status: Status::Skipped(why.into()),
        }
    }

    fn failed(scenario: Scenario, broker: BrokerKind, started: Instant, why: String) -> Outcome {
        Outcome {
            seconds: started.elapsed().as_secs_f64(),
            status: Status::Failed(why),
            ..Outcome::skipped(scenario, broker, "")
        }
    }

    fn counted(
        scenario: Scenario,
        broker: BrokerKind,
        started: Instant,
        counts: Counts,
    ) -> Outcome {
        let mut problems = Vec::new();
        if !counts.lost.is_empty() {
            let sample: Vec<String> = counts.lost.iter().take(10).map(u64::to_string).collect();
            problems.push(format!(
                "{} lost (e.g. {})",
                counts.lost.len(),
                sample.join(", ")
            ));
        }
        if !counts.unexplained.is_empty() {
            let sample: Vec<&str> = counts
                .unexplained
                .iter()
                .take(5)
                .map(String::as_str)
                .collect();
            problems.push(format!(
                "{} unexplained duplicates: {}",
                counts.unexplained.len(),
                sample.join("; ")
            ));
        }
        Outcome {
            scenario,
            broker,
            tasks: counts.tasks,
            lost: counts.lost.len(),
            duplicates: counts.duplicates,
            seconds: started.elapsed().as_secs_f64(),
            note: counts.note,
            status: if problems.is_empty() {
                Status::Passed
            } else {
                Status::Failed(problems.join("; "))
            },
        }
    }

    /// One line for the progress log.
    pub fn line(&self) -> String {
        match &self.status {
            Status::Skipped(why) => format!("skipped: {why}"),
            Status::Failed(why) => format!(
                "FAILED after {:.1} s: {why} ({} tasks, {} duplicates; {})",
                self.seconds, self.tasks, self.duplicates, self.note
            ),
            Status::Passed => format!(
                "ok in {:.1} s: {} tasks, 0 lost, {} duplicates (explained); {}",
                self.seconds, self.tasks, self.duplicates, self.note
            ),
        }
    }
}

/// Prints the table and the summary line; returns whether every scenario passed
/// (skips pass unless services are required, which turns them into failures).
pub fn print_summary(outcomes: &[Outcome]) -> bool {
    println!();
    println!(
        "{:<34} {:<7} {:>6} {:>5} {:>5} {:>7}  result",
        "scenario", "broker", "tasks", "lost", "dup", "time"
    );
    for o in outcomes {
        let result = match &o.status {
            Status::Passed => format!("ok: {}", o.note),
            Status::Failed(why) => format!("FAILED: {why}"),
            Status::Skipped(why) => format!("skipped: {why}"),
        };
        println!(
            "{:<34} {:<7} {:>6} {:>5} {:>5} {:>6.1}s  {result}",
            o.scenario.title(),
            o.broker,
            o.tasks,
            o.lost,
            o.duplicates,
            o.seconds
        );
    }
    let ran: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !matches!(o.status, Status::Skipped(_)))
        .collect();
    let failed = ran
        .iter()
        .filter(|o| matches!(o.status, Status::Failed(_)))
        .count();
    let tasks: usize = ran.iter().map(|o| o.tasks).sum();
    let lost: usize = ran.iter().map(|o| o.lost).sum();
    let duplicates: usize = ran.iter().map(|o| o.duplicates).sum();
    let skipped = outcomes.len() - ran.len();
    let explained = if failed == 0 {
        "all explained".to_string()
    } else {
        format!("{failed} scenarios FAILED")
    };
    println!(
        "faults: {} scenarios, {tasks} tasks, {lost} lost, {duplicates} duplicates ({explained}){}",
        ran.len(),
        if skipped > 0 {
            format!(", {skipped} skipped")
        } else {
            String::new()
        }
    );
    failed == 0 && !ran.is_empty()
}

// ---- helpers ------------------------------------------------------------------------

fn unique(what: &str) -> String {
    format!(
        "faults-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

async fn sender(env: &Env, queue: &str) -> anyhow::Result<App> {
    let app = app_builder(env.url(), queue, None)
        .build()
        .await
        .context("the suite's app")?;
    app.broker()
        .declare_queue(&Queue::new(queue))
        .await
        .context("declare the queue")?;
    Ok(app)
}

/// Publishes `faults.work(id, ms)` for each pair, in batches.
async fn publish(app: &App, queue: &str, tasks: &[(u64, u64)]) -> anyhow::Result<()> {
    for chunk in tasks.chunks(500) {
        let calls = chunk
            .iter()
            .map(|(id, ms)| {
                let mut call = TaskCall::new(WORK_TASK, vec![json!(id), json!(ms)]);
                call.options = SendOptions::new().queue(queue);
                call
            })
            .collect();
        app.send_batch(calls).await.context("publish a batch")?;
    }
    Ok(())
}

/// Publishes one task; whether its publish returned `Ok`.
async fn publish_one(app: &App, queue: &str, id: u64, ms: u64) -> bool {
    app.send_task(
        WORK_TASK,
        vec![json!(id), json!(ms)],
        Map::new(),
        SendOptions::new().queue(queue),
    )
    .await
    .is_ok()
}

fn worker_args(env: &Env, queue: &str, record: &std::path::Path) -> WorkerArgs {
    WorkerArgs {
        broker: env.url().to_string(),
        queue: queue.to_string(),
        record: record.to_path_buf(),
        concurrency: 8,
        prefetch: 4,
        lease: 2.0,
    }
}

fn spawn_worker(env: &Env, args: &WorkerArgs) -> anyhow::Result<Proc> {
    Proc::spawn_self("worker", &args.to_args(), &env.path("processes.log"))
}

/// Polls `ready` every 50 ms for up to `limit`.
async fn wait_until(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Lost tasks and duplicates of `expected`; `explain` says whether one task's
/// executions are explained by the fault.
fn count(
    log: &Log,
    expected: &BTreeSet<u64>,
    explain: impl Fn(&[Execution]) -> bool,
    note: String,
) -> Counts {
    let duplicates: BTreeMap<u64, Vec<Execution>> = log
        .duplicates()
        .into_iter()
        .filter(|(id, _)| expected.contains(id))
        .collect();
    Counts {
        tasks: expected.len(),
        lost: log.lost(expected),
        duplicates: duplicates.values().map(|runs| runs.len() - 1).sum(),
        unexplained: duplicates
            .iter()
            .filter(|(_, runs)| !explain(runs))
            .map(|(id, runs)| format!("task {id}: {runs:?}"))
            .collect(),
        note,
    }
}

/// Whether a task's executions straddle one of the outages `(down, up)` (Unix ms):
/// one started before the outage ended, another after it began.
fn straddles(runs: &[Execution], outages: &[(i64, i64)]) -> bool {
    outages.iter().any(|(down, up)| {
        runs.iter().any(|r| r.started_ms <= *up) && runs.iter().any(|r| r.started_ms >= *down)
    })
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

// ---- scenarios ----------------------------------------------------------------------

/// Rounds of late-ack tasks; in each, a worker is SIGKILLed after a random share of
/// the round finished, and a second worker finishes it.
async fn kill(env: &Env, settings: &Settings) -> anyhow::Result<Counts> {
    let queue = unique("kill");
    let record = env.path("kill.log");
    let app = sender(env, &queue).await?;
    let args = worker_args(env, &queue, &record);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let n = settings.kill_tasks.max(10);
    let mut expected = BTreeSet::new();
    // Killed worker pid -> when it was killed (Unix ms).
    let mut killed: BTreeMap<u32, i64> = BTreeMap::new();
    for round in 0..settings.kill_rounds {
        let tasks: Vec<(u64, u64)> = (0..n)
            .map(|i| (round * n + i, rng.gen_range(1..=8)))
            .collect();
        let ids: BTreeSet<u64> = tasks.iter().map(|(id, _)| *id).collect();
        publish(&app, &queue, &tasks).await?;
        expected.extend(ids.iter().copied());
        let finished_before = Log::read(&record).finished();
        let target = finished_before + rng.gen_range(n / 10..=n * 9 / 10) as usize;
        let mut first = spawn_worker(env, &args)?;
        wait_until(
            "the first worker to run part of the round",
            Duration::from_secs(60),
            || Log::read(&record).finished() >= target,
        )
        .await?;
        first.sigkill();
        killed.insert(first.pid, now_ms());
        let mut second = spawn_worker(env, &args)?;
        wait_until(
            "the second worker to finish the round",
            Duration::from_secs(120),
            || Log::read(&record).lost(&ids).is_empty(),
        )
        .await?;
        if second.terminate(Duration::from_secs(30)).is_none() {
            bail!("the second worker did not exit within 30 s of SIGTERM");
        }
    }
    // A re-run is explained when the killed worker was running the task at the kill,
    // or had finished it so shortly before that its ack could not have landed yet.
    const ACK_WINDOW_MS: i64 = 2_000;
    let in_killed = |run: &Execution| -> Option<bool> {
        let kill_ms = *killed.get(&run.pid)?;
        match run.done_ms {
            None => Some(true),
            Some(done) if done >= kill_ms - ACK_WINDOW_MS => Some(false),
            Some(_) => None,
        }
    };
    let log = Log::read(&record);
    let counts = count(
        &log,
        &expected,
        |runs| runs.iter().any(|r| in_killed(r).is_some()),
        String::new(),
    );
    let (mut running, mut unacked) = (0, 0);
    for runs in log.duplicates().values() {
        match runs.iter().find_map(in_killed) {
            Some(true) => running += 1,
            Some(false) => unacked += 1,
            None => {}
        }
    }
    let note = format!(
        "{} rounds, {} kills; re-run: {running} running at a kill, {unacked} finished < {} s before it (ack not yet written)",
        settings.kill_rounds,
        killed.len(),
        ACK_WINDOW_MS / 1000
    );
    Ok(Counts { note, ..counts })
}

/// Publishes 1,000 tasks one by one while a worker consumes; the broker is
/// SIGKILLed and started again twice, the second time after 4 s down (Redis: the
/// private durable server; RabbitMQ: the private node, on the same port and
/// database, which takes a few seconds more to boot).
async fn restart(env: &mut Env) -> anyhow::Result<Counts> {
    const TASKS: u64 = 1_000;
    let queue = unique("restart");
    let record = env.path("restart.log");
    let app = sender(env, &queue).await?;
    let mut args = worker_args(env, &queue, &record);
    // Longer than the outages: no lease lapses while the broker is away.
    args.lease = 20.0;
    args.concurrency = 4;
    let worker = spawn_worker(env, &args)?;

    let published = Arc::new(Mutex::new(BTreeSet::new()));
    let failed = Arc::new(Mutex::new(0u64));
    let publisher = {
        let (app, queue) = (app.clone(), queue.clone());
        let (published, failed) = (Arc::clone(&published), Arc::clone(&failed));
        tokio::spawn(async move {
            for id in 0..TASKS {
                if publish_one(&app, &queue, id, 2).await {
                    published.lock().expect("lock").insert(id);
                } else {
                    *failed.lock().expect("lock") += 1;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let published_count = || published.lock().expect("lock").len() as u64;
    let mut outages = Vec::new();
    for (at, down_for) in [
        (300, Duration::from_millis(300)),
        (650, Duration::from_secs(4)),
    ] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while published_count() < at {
            if Instant::now() > deadline {
                bail!("publishing stalled at {} tasks", published_count());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let down = now_ms();
        match env.kind {
            BrokerKind::Redis => {
                let server = env.redis.as_mut().context("the private Redis")?;
                server.kill();
                tokio::time::sleep(down_for).await;
                server.launch()?;
            }
            BrokerKind::Amqp => {
                let node = env.rabbit.as_mut().context("the private RabbitMQ")?;
                node.kill();
                tokio::time::sleep(down_for).await;
                tokio::task::block_in_place(|| node.start_again())
                    .map_err(|e| anyhow::anyhow!("start RabbitMQ again: {e}"))?;
            }
            BrokerKind::Sqlite => bail!("the embedded broker has no server to restart"),
        }
        outages.push((down, now_ms()));
    }
    publisher.await.context("the publisher task")?;
    let expected = published.lock().expect("lock").clone();
    let errors = *failed.lock().expect("lock");
    wait_until(
        "the worker to run every published task",
        Duration::from_secs(120),
        || Log::read(&record).lost(&expected).is_empty(),
    )
    .await
    .ok();
    let mut worker = worker;
    let exited = worker.terminate(Duration::from_secs(30));
    let log = Log::read(&record);
    let mut counts = count(
        &log,
        &expected,
        |runs| straddles(runs, &outages),
        format!(
            "{} publishes returned Ok, {errors} returned an error; 2 outages; the same worker carried on",
            expected.len()
        ),
    );
    if exited.is_none() {
        counts
            .unexplained
            .push("the worker did not exit within 30 s of SIGTERM".into());
    }
    Ok(counts)
}

/// SIGSTOPs the private Redis (or RabbitMQ node) for 10 s while a worker runs tasks
/// and publishes are under way; after SIGCONT the same worker and publisher finish
/// everything.
async fn stall(env: &Env) -> anyhow::Result<Counts> {
    let queue = unique("stall");
    let record = env.path("stall.log");
    let app = sender(env, &queue).await?;
    let mut args = worker_args(env, &queue, &record);
    args.lease = 30.0;
    args.concurrency = 4;
    let mut worker = spawn_worker(env, &args)?;
    let first: Vec<(u64, u64)> = (0..200).map(|id| (id, 5)).collect();
    publish(&app, &queue, &first).await?;
    wait_until("60 tasks to finish", Duration::from_secs(60), || {
        Log::read(&record).finished() >= 60
    })
    .await?;
    let pause = |signal: &str| -> anyhow::Result<()> {
        match (&env.redis, &env.rabbit) {
            (Some(redis), _) => {
                let pid = redis.pid().context("the private Redis runs")?;
                crate::procs::send_signal(pid, signal)
            }
            (None, Some(rabbit)) if signal == "STOP" => {
                rabbit.pause();
                Ok(())
            }
            (None, Some(rabbit)) => {
                rabbit.resume();
                Ok(())
            }
            (None, None) => bail!("no private broker to stall"),
        }
    };
    pause("STOP")?;
    let stopped = now_ms();
    // Published while the server is frozen: they wait (and retry) until it is back.
    let during = {
        let (app, queue) = (app.clone(), queue.clone());
        tokio::spawn(async move {
            let mut ok = BTreeSet::new();
            for id in 200..220 {
                if publish_one(&app, &queue, id, 5).await {
                    ok.insert(id);
                }
            }
            ok
        })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    pause("CONT")?;
    let resumed = now_ms();
    let stalled_publishes = during.await.context("the stalled publisher")?;
    let after: Vec<(u64, u64)> = (220..300).map(|id| (id, 5)).collect();
    publish(&app, &queue, &after).await?;
    let mut expected: BTreeSet<u64> = (0..200).chain(220..300).collect();
    expected.extend(stalled_publishes.iter().copied());
    let recovered = wait_until(
        "the worker to finish every task after the stall",
        Duration::from_secs(90),
        || Log::read(&record).lost(&expected).is_empty(),
    )
    .await;
    let recovery_secs = (now_ms() - resumed) as f64 / 1000.0;
    let exited = worker.terminate(Duration::from_secs(30));
    let log = Log::read(&record);
    let mut counts = count(
        &log,
        &expected,
        |runs| straddles(runs, &[(stopped, resumed)]),
        format!(
            "stalled 10 s; {} of 20 publishes made during the stall returned Ok; the same worker finished everything {recovery_secs:.1} s after SIGCONT",
            stalled_publishes.len()
        ),
    );
    if stalled_publishes.len() != 20 {
        counts
            .unexplained
            .push("a publish made during the stall failed instead of waiting".into());
    }
    if let Err(error) = recovered {
        counts.note = format!("{error:#}; {}", counts.note);
    }
    // Back to work within seconds, not after the 30 s lease of a lost claim.
    if recovery_secs > 10.0 {
        counts.unexplained.push(format!(
            "the worker needed {recovery_secs:.1} s after SIGCONT to finish"
        ));
    }
    if exited.is_none() {
        counts
            .unexplained
            .push("the worker did not exit within 30 s of SIGTERM".into());
    }
    Ok(counts)
}

/// Three beat processes send a 1-second entry for about 14 s; one is SIGKILLed at a
/// random moment. Every due time must be in the queue exactly once, with no gap.
async fn beat(env: &Env) -> anyhow::Result<Counts> {
    let queue = unique("beat");
    let app = sender(env, &queue).await?;
    let store_url = match env.kind {
        BrokerKind::Amqp => format!("sqlite://{}", env.path("beat.db").display()),
        _ => env.url().to_string(),
    };
    let store = celeriac::beat::connect(&store_url)
        .await
        .context("the schedule store")?;
    let anchor = DateTime::from_timestamp(Utc::now().timestamp() + 2, 0).context("anchor")?;
    let every = Interval::new(Duration::from_secs(1))?.anchored(anchor);
    store
        .upsert(
            &Entry::new("tick", "faults.tick", every)
                .queue(queue.as_str())
                .catch_up(CatchUp::All)
                .created_at(anchor - chrono::Duration::milliseconds(1)),
        )
        .await
        .context("upsert the entry")?;
    let beat_args = vec![
        "beat".to_string(),
        "--broker".into(),
        env.url().to_string(),
        "--store".into(),
        store_url.clone(),
        "--lease".into(),
        "4".into(),
        "--queue".into(),
        queue.clone(),
    ];
    let log = env.path("processes.log");
    let mut beats = (0..3)
        .map(|_| Proc::spawn_self("beat", &beat_args, &log))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let kill_after =
        Duration::from_millis(rand::rngs::StdRng::from_entropy().gen_range(3_000..7_000));
    tokio::time::sleep(kill_after).await;
    let mut victim = beats.remove(0);
    victim.sigkill();
    // Runs for ~14 s in all, then long enough for a run the victim claimed and did
    // not send to be taken over (the 4 s lease).
    tokio::time::sleep(Duration::from_secs(14).saturating_sub(kill_after)).await;
    let last_due = Utc::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    for beat in &mut beats {
        if beat.terminate(Duration::from_secs(20)).is_none() {
            bail!("a beat did not exit within 20 s of SIGTERM");
        }
    }
    let counts = drain_beat_queue(&app, &queue).await?;
    // Every due time from the anchor to the last one sent (and at least to the moment
    // the beats were told to stop, minus the lease grace) must be there once.
    let end = counts
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0)
        .max(last_due.timestamp() as u64);
    let expected: BTreeSet<u64> = (anchor.timestamp() as u64..=end).collect();
    let lost: BTreeSet<u64> = expected
        .iter()
        .filter(|due| !counts.contains_key(due))
        .copied()
        .collect();
    let duplicates: usize = counts.values().map(|n| n.saturating_sub(1) as usize).sum();
    let explained_by_broker = env.kind == BrokerKind::Amqp;
    let unexplained = if explained_by_broker {
        Vec::new()
    } else {
        counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(due, n)| format!("due {due} sent {n} times"))
            .collect()
    };
    Ok(Counts {
        tasks: expected.len(),
        lost,
        duplicates,
        unexplained,
        note: format!(
            "3 beats, one SIGKILLed after {:.1} s; {} due runs each sent once{}",
            kill_after.as_secs_f64(),
            counts.len(),
            if explained_by_broker && duplicates > 0 {
                " (RabbitMQ has no publish-once: a kill between publish and record resends)"
            } else {
                ""
            }
        ),
    })
}

/// Takes every message out of the beat queue; due time (Unix s) → message count.
async fn drain_beat_queue(app: &App, queue: &str) -> anyhow::Result<BTreeMap<u64, u32>> {
    let mut counts = BTreeMap::new();
    let params = FetchParams {
        queues: vec![queue.to_string()],
        max: 100,
        wait: Duration::from_millis(500),
        consumer: "faults-drain".into(),
        ..FetchParams::default()
    };
    loop {
        let batch = app.broker().fetch(&params).await.context("fetch")?;
        if batch.is_empty() {
            return Ok(counts);
        }
        let tags: Vec<_> = batch.iter().map(|d| d.tag.clone()).collect();
        for delivery in &batch {
            let message = TaskMessage::decode(&delivery.envelope).context("a task message")?;
            let due = message.headers.extra[BEAT_HEADER]["due_at"]
                .as_str()
                .and_then(celeriac::core::time::parse_iso)
                .context("the beat header names the due time")?;
            *counts.entry(due.timestamp() as u64).or_insert(0) += 1;
        }
        app.broker().ack(&tags).await.context("ack")?;
    }
}

/// A busy worker gets SIGTERM: it must exit by itself after finishing what runs,
/// give back what it reserved, and a second worker runs the rest: every task
/// exactly once.
async fn term(env: &Env) -> anyhow::Result<Counts> {
    const TASKS: u64 = 120;
    let queue = unique("term");
    let record = env.path("term.log");
    let app = sender(env, &queue).await?;
    let tasks: Vec<(u64, u64)> = (0..TASKS).map(|id| (id, 150)).collect();
    publish(&app, &queue, &tasks).await?;
    let mut args = worker_args(env, &queue, &record);
    args.concurrency = 4;
    let mut first = spawn_worker(env, &args)?;
    wait_until("12 tasks to finish", Duration::from_secs(60), || {
        Log::read(&record).finished() >= 12
    })
    .await?;
    let status = first.terminate(Duration::from_secs(30));
    let after_first = Log::read(&record);
    let mut counts = Counts::default();
    match status {
        Some(status) if status.success() => {}
        Some(status) => counts
            .unexplained
            .push(format!("the worker exited with {status} on SIGTERM")),
        None => counts
            .unexplained
            .push("the worker did not exit within 30 s of SIGTERM".into()),
    }
    let abandoned: Vec<u64> = after_first
        .executions
        .iter()
        .filter(|(_, runs)| {
            runs.iter()
                .any(|r| r.pid == first.pid && r.done_ms.is_none())
        })
        .map(|(id, _)| *id)
        .collect();
    if !abandoned.is_empty() {
        counts.unexplained.push(format!(
            "tasks running at SIGTERM were not finished: {abandoned:?}"
        ));
    }
    let ran_first = after_first.finished();
    let mut second = spawn_worker(env, &args)?;
    let expected: BTreeSet<u64> = (0..TASKS).collect();
    wait_until(
        "the second worker to run the rest",
        Duration::from_secs(90),
        || Log::read(&record).lost(&expected).is_empty(),
    )
    .await
    .ok();
    second.terminate(Duration::from_secs(30));
    let log = Log::read(&record);
    let counted = count(&log, &expected, |_| false, String::new());
    counts.tasks = counted.tasks;
    counts.lost = counted.lost;
    counts.duplicates = counted.duplicates;
    counts.unexplained.extend(counted.unexplained);
    counts.note = format!(
        "the first worker finished the {ran_first} it ran and gave back the rest; exactly once"
    );
    Ok(counts)
}
