//! The worker's lifecycle: consumers, lease renewer, rescuer, completer, shutdown.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{DeliveryTag, FetchParams, WorkerInfo};
use celeriac_core::{CancelReason, RateLimit, TaskContext, TaskRegistry, TaskSender};
use celeriac_lock::LockManager;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::completer::{self, Completion, CompletionSender};
use crate::config::{QueueSettings, WorkerConfig};
use crate::executor;
use crate::rate::RateLimiters;
use crate::stats::{StatsSnapshot, WorkerStats};
use crate::{Broker, ResultBackend};

/// Most messages asked for in one fetch.
const FETCH_BATCH: usize = 64;
/// How long one fetch waits for a first message.
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// A running task that can be terminated.
pub(crate) struct Running {
    pub ctx: TaskContext,
    pub terminate: CancellationToken,
}

/// State shared by the worker's services.
pub(crate) struct Shared {
    pub config: WorkerConfig,
    pub registry: TaskRegistry,
    pub broker: Arc<dyn Broker>,
    pub backend: Option<Arc<dyn ResultBackend>>,
    pub sender: Option<Arc<dyn TaskSender>>,
    pub stats: Arc<WorkerStats>,
    pub held: Arc<Mutex<HashSet<DeliveryTag>>>,
    pub running: Mutex<HashMap<String, Running>>,
    pub revoked: Mutex<crate::revoked::RevokedSet>,
    pub rate: Arc<RateLimiters>,
    pub completions: CompletionSender,
    /// Single-instance and unique-enqueue locks; `None` when the broker has no lock
    /// store (single-instance tasks then fail with `LockUnavailable`).
    pub locks: Option<Arc<dyn LockManager>>,
    /// Woken whenever this worker releases a single-instance lock, so runs waiting for
    /// one (`on_conflict = wait`) in this process try again at once.
    pub lock_released: Notify,
    /// Celery events: task events on or off, the Lamport clock, the publisher's channel.
    pub events: crate::events::Events,
    /// Messages held now, for `inspect active / reserved / scheduled`.
    pub requests: crate::control::Requests,
    /// When the worker was made (`inspect stats` uptime).
    pub started: std::time::Instant,
}

impl Shared {
    pub fn complete(&self, completion: Completion) {
        // The receiver lives until every job has finished, so this cannot fail while
        // a job runs; if it somehow does, the message is redelivered (not lost).
        if self.completions.send(completion).is_err() {
            tracing::error!("completer is gone; completion dropped, message will be redelivered");
        }
    }
}

/// A worker, ready to run.
pub struct Worker {
    shared: Arc<Shared>,
    completions: mpsc::UnboundedReceiver<Completion>,
    events: mpsc::Receiver<crate::events::Pending>,
}

/// Controls a running worker from outside: counters, revoke, rate limits.
#[derive(Clone)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
}

impl Worker {
    /// A worker running `registry`'s tasks from `broker`, storing results in `backend`.
    pub fn new(
        config: WorkerConfig,
        registry: TaskRegistry,
        broker: Arc<dyn Broker>,
        backend: Option<Arc<dyn ResultBackend>>,
    ) -> Worker {
        let (tx, rx) = mpsc::unbounded_channel();
        let registry = crate::builtins::with_builtins(registry);
        let (events, events_rx) =
            crate::events::Events::new(&config.hostname, config.send_task_events);
        Worker {
            shared: Arc::new(Shared {
                config,
                registry,
                broker,
                backend,
                sender: None,
                stats: Arc::new(WorkerStats::default()),
                held: Arc::new(Mutex::new(HashSet::new())),
                running: Mutex::new(HashMap::new()),
                revoked: Mutex::new(crate::revoked::RevokedSet::default()),
                rate: RateLimiters::new(),
                completions: tx,
                locks: None,
                lock_released: Notify::new(),
                events,
                requests: crate::control::Requests::default(),
                started: std::time::Instant::now(),
            }),
            completions: rx,
            events: events_rx,
        }
    }

    /// Lets running tasks send follow-up tasks through `sender`.
    pub fn with_sender(mut self, sender: Arc<dyn TaskSender>) -> Worker {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.sender = Some(sender);
        }
        self
    }

    /// Uses `locks` for single-instance tasks (taken around each run) and to release
    /// unique-enqueue locks when their task reaches a final outcome.
    pub fn with_locks(mut self, locks: Arc<dyn LockManager>) -> Worker {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.locks = Some(locks);
        }
        self
    }

    /// A handle for counters and control.
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs until `shutdown` completes, then shuts down gracefully: stops fetching,
    /// returns unstarted messages, lets running tasks finish for up to
    /// `shutdown_timeout`, cancels the rest (returning their late-ack messages), and
    /// flushes results and acks. Returns the final counters.
    pub async fn run_until<F: Future<Output = ()> + Send>(self, shutdown: F) -> StatsSnapshot {
        let shared = self.shared;
        let stop_fetching = CancellationToken::new();
        let cancel_running = CancellationToken::new();
        let stop_completer = CancellationToken::new();
        let stop_maintenance = CancellationToken::new();
        let jobs = TaskTracker::new();

        let completer = tokio::spawn(completer::run(
            self.completions,
            shared.broker.clone(),
            shared.backend.clone(),
            shared.held.clone(),
            shared.config.result_expires,
            stop_completer.clone(),
        ));
        let renewer = tokio::spawn(renew_leases(shared.clone(), stop_maintenance.clone()));
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), stop_maintenance.clone()));
        let rescuer = tokio::spawn(rescue_expired(shared.clone(), stop_fetching.clone()));
        let events = tokio::spawn(crate::events::run(
            shared.clone(),
            self.events,
            stop_maintenance.clone(),
        ));
        let remote_shutdown = CancellationToken::new();
        let control = tokio::spawn(crate::control::run(
            shared.clone(),
            remote_shutdown.clone(),
            stop_maintenance.clone(),
        ));

        if shared.locks.is_none() {
            let single: Vec<String> = shared
                .registry
                .names()
                .into_iter()
                .filter(|name| {
                    shared
                        .registry
                        .get(name)
                        .is_some_and(|task| task.options().single_instance.is_some())
                })
                .collect();
            if !single.is_empty() {
                tracing::error!(
                    tasks = ?single,
                    broker = %shared.broker.describe(),
                    "single-instance tasks cannot run here: this worker has no lock store (the broker's SQLite file or Redis database, or lock_store / CELERIAC_LOCK_STORE naming a sqlite://, redis:// or postgres:// store); their runs will fail with LockUnavailable"
                );
            }
        }
        tracing::info!(
            hostname = %shared.config.hostname,
            broker = %shared.broker.describe(),
            queues = ?shared.config.queues.iter().map(|q| format!("{}(c={},prefetch={})", q.name, q.concurrency, q.window())).collect::<Vec<_>>(),
            tasks = shared.registry.len(),
            "worker ready"
        );
        let consumers: Vec<_> = shared
            .config
            .queues
            .clone()
            .into_iter()
            .map(|queue| {
                tokio::spawn(consume(
                    shared.clone(),
                    queue,
                    jobs.clone(),
                    stop_fetching.clone(),
                    cancel_running.clone(),
                ))
            })
            .collect();

        tokio::select! {
            _ = shutdown => {}
            _ = remote_shutdown.cancelled() => {}
        }
        tracing::info!("shutting down: no new messages; returning unstarted ones");
        stop_fetching.cancel();
        for consumer in consumers {
            let _ = consumer.await;
        }
        jobs.close();
        let grace = shared.config.shutdown_timeout;
        if tokio::time::timeout(grace, jobs.wait()).await.is_err() {
            tracing::warn!(
                ?grace,
                "tasks still running after the shutdown timeout; cancelling them"
            );
            for running in shared.running.lock().values() {
                running.ctx.cancel(CancelReason::Shutdown);
            }
            cancel_running.cancel();
            jobs.wait().await;
        }
        let _ = rescuer.await;
        stop_completer.cancel();
        let _ = completer.await;
        stop_maintenance.cancel();
        let _ = renewer.await;
        let _ = heartbeat.await;
        let _ = control.await;
        let _ = events.await;
        let report = shared.stats.snapshot();
        tracing::info!(?report, "worker stopped");
        report
    }
}

impl WorkerHandle {
    /// Live counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Shared counters (for observers that poll often).
    pub fn stats_ref(&self) -> Arc<WorkerStats> {
        self.shared.stats.clone()
    }

    /// Revokes task ids: they will not start here. With `terminate`, a running one is
    /// cancelled and stopped.
    pub fn revoke(&self, task_ids: &[String], terminate: bool) {
        let mut revoked = self.shared.revoked.lock();
        for id in task_ids {
            revoked.insert(id.clone());
        }
        drop(revoked);
        if terminate {
            let running = self.shared.running.lock();
            for id in task_ids {
                if let Some(task) = running.get(id) {
                    task.ctx.cancel(CancelReason::Revoked);
                    task.terminate.cancel();
                }
            }
        }
    }

    /// Sets (or clears) a runtime rate limit for a task name.
    pub fn set_rate_limit(&self, task: &str, limit: Option<RateLimit>) {
        self.shared.rate.set(task, limit);
    }

    /// Ids of the tasks running now.
    pub fn active(&self) -> Vec<String> {
        self.shared.running.lock().keys().cloned().collect()
    }
}

/// One queue's consumer: reserves messages while the prefetch window has room and
/// hands each to a job that waits for one of the queue's slots.
async fn consume(
    shared: Arc<Shared>,
    queue: QueueSettings,
    jobs: TaskTracker,
    stop: CancellationToken,
    cancel_running: CancellationToken,
) {
    let window = Arc::new(Semaphore::new(queue.window()));
    let slots = executor::Slots::new(queue.concurrency);
    let queue = Arc::new(queue);
    let consumer = format!(
        "{}/{}/{}/{}",
        shared.config.hostname,
        std::process::id(),
        queue.name,
        uuid::Uuid::new_v4().simple()
    );
    let fetchers = shared
        .broker
        .concurrent_fetches()
        .min(queue.window() / FETCH_BATCH)
        .max(1);
    let fetcher = Fetcher {
        shared: &shared,
        queue: &queue,
        window: &window,
        slots: &slots,
        consumer: &consumer,
        jobs: &jobs,
        stop: &stop,
        cancel_running: &cancel_running,
    };
    if fetchers > 1 {
        // Two fetches in flight: the broker claims the next batch while this
        // process runs the previous one (see `Broker::concurrent_fetches`).
        tokio::join!(fetcher.run(), fetcher.run());
    } else {
        fetcher.run().await;
    }
}

/// What a consumer's fetch loop works with (one or more loops per queue share it).
struct Fetcher<'a> {
    shared: &'a Arc<Shared>,
    queue: &'a Arc<QueueSettings>,
    window: &'a Arc<Semaphore>,
    slots: &'a Arc<executor::Slots>,
    consumer: &'a str,
    jobs: &'a TaskTracker,
    stop: &'a CancellationToken,
    cancel_running: &'a CancellationToken,
}

impl Fetcher<'_> {
    /// Fetches while the window has room and spawns a job per delivery, until
    /// `stop`.
    async fn run(&self) {
        let Fetcher {
            shared,
            queue,
            window,
            slots,
            consumer,
            jobs,
            stop,
            cancel_running,
        } = *self;
        let mut backoff = Duration::from_millis(100);
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                permit = window.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let mut permits = vec![first];
            while permits.len() < FETCH_BATCH {
                match window.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let params = FetchParams {
                queues: vec![queue.name.clone()],
                max: permits.len(),
                wait: FETCH_WAIT,
                consumer: consumer.to_string(),
                lease: shared.config.lease,
            };
            match shared.broker.fetch(&params).await {
                Ok(deliveries) => {
                    backoff = Duration::from_millis(100);
                    for delivery in deliveries {
                        let Some(permit) = permits.pop() else {
                            // The broker returned more than asked: keep it held anyway.
                            tracing::warn!("broker returned more messages than requested");
                            break;
                        };
                        shared.held.lock().insert(delivery.tag.clone());
                        // Boxed: the job's future is large (kilobytes), and tokio moves a
                        // task's future several times (into its cell, each stage change);
                        // boxed, those moves copy a pointer (≈ 100,000 instructions less
                        // per message, measured with callgrind).
                        jobs.spawn(Box::pin(executor::process(
                            shared.clone(),
                            delivery,
                            queue.clone(),
                            permit,
                            slots.ticket(),
                            stop.clone(),
                            cancel_running.clone(),
                        )));
                    }
                }
                Err(error) => {
                    drop(permits);
                    tracing::warn!(%error, queue = %queue.name, ?backoff, "fetch failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Renews the lease of every held message every third of the lease.
async fn renew_leases(shared: Arc<Shared>, stop: CancellationToken) {
    let lease = shared.config.lease;
    let every = (lease / 3).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let tags: Vec<DeliveryTag> = shared.held.lock().iter().cloned().collect();
        if tags.is_empty() {
            continue;
        }
        if let Err(error) = shared.broker.renew_leases(&tags, lease).await {
            tracing::warn!(%error, count = tags.len(), "renewing leases failed");
        }
    }
}

/// Records this worker's liveness and load every `heartbeat_interval`, and marks it
/// offline when it stops.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let started_at = chrono::Utc::now();
    let every = shared
        .config
        .heartbeat_interval
        .max(Duration::from_millis(100));
    let info = |online: bool| {
        let stats = shared.stats.snapshot();
        WorkerInfo {
            hostname: shared.config.hostname.clone(),
            pid: std::process::id(),
            queues: shared
                .config
                .queues
                .iter()
                .map(|q| q.name.clone())
                .collect(),
            active: stats.active,
            processed: stats.processed,
            started_at,
            last_heartbeat: chrono::Utc::now(),
            freq: every.as_secs_f64(),
            online,
        }
    };
    loop {
        match shared.broker.worker_heartbeat(&info(true)).await {
            Ok(()) => {}
            Err(celeriac_broker::BrokerError::Unsupported { .. }) => {
                tracing::debug!("the broker keeps no worker registry; heartbeats off");
                return;
            }
            Err(error) => tracing::warn!(%error, "recording the heartbeat failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    if let Err(error) = shared.broker.worker_heartbeat(&info(false)).await {
        tracing::warn!(%error, "recording the shutdown failed");
    }
}

/// How often expired results are deleted (Celery's `celery.backend_cleanup`).
const RESULT_CLEANUP_EVERY: Duration = Duration::from_secs(300);

/// Restores messages whose lease lapsed (their worker died), and now and then deletes
/// expired results.
async fn rescue_expired(shared: Arc<Shared>, stop: CancellationToken) {
    let every =
        (shared.config.lease / 2).clamp(Duration::from_millis(100), Duration::from_secs(15));
    let mut next_cleanup = tokio::time::Instant::now();
    loop {
        if let (Some(backend), true) =
            (&shared.backend, tokio::time::Instant::now() >= next_cleanup)
        {
            next_cleanup += RESULT_CLEANUP_EVERY;
            match backend.cleanup_expired().await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "deleted expired results"),
                Err(error) => tracing::warn!(%error, "deleting expired results failed"),
            }
        }
        match shared.broker.restore_expired().await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "restored messages whose lease lapsed"),
            Err(error) => tracing::warn!(%error, "restoring expired leases failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
