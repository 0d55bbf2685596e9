//! Locks in the worker: the single-instance lock held around a run, and the
//! unique-enqueue lock released when a task reaches a final outcome.
//!
//! # Single-instance runs
//!
//! Once a message has a free slot, `admit_single_instance` takes the task's lock
//! (key from [`celeriac_lock::keys::single_instance`]) with the task's lease. While the
//! run lasts, a ticker renews the lease every third of it (`RunLock`); when the run
//! ends, whatever the outcome, the ticker stops and the lock is released before the
//! outcome is recorded, so whoever sees the result can take the lock at once. If the
//! worker dies the ticker dies with it and the lock lapses within one lease.
//!
//! On conflict the task's [`OnConflict`] decides:
//!
//! - `Skip`: ack, record `REVOKED` with reason `locked` (a ready state: a caller
//!   waiting on the result gets `Error::Revoked { reason: "locked" }` at once, where
//!   Celery's `IGNORED` would leave it waiting forever).
//! - `Retry { countdown }`: send the message again with an ETA `countdown` away, ack
//!   the original and record `RETRY`. The task did not run, so `retries` is unchanged
//!   and `max_retries` does not apply; `expires` still does.
//! - `Wait { up_to, then_retry_after }`: keep the slot and try again (woken at once
//!   by releases in this process, every 250 ms at most for other processes) until
//!   `up_to` passes, then as `Retry { countdown: then_retry_after }`.
//!
//! A lock store error defers the message by [`STORE_ERROR_RETRY`]: a run never starts
//! without its lock. A worker without a lock store fails single-instance runs with
//! `LockUnavailable` instead of running them unprotected.

use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::Delivery;
use celeriac_core::task::OnConflict;
use celeriac_core::{ExceptionInfo, Task, TaskMessage, TaskState};
use celeriac_lock::{keys, AcquireParams, Lease, LockManager};
use chrono::Utc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::completer::Completion;
use crate::executor;
use crate::stats::WorkerStats;
use crate::worker::Shared;

/// Countdown of a run deferred because the lock store failed.
pub const STORE_ERROR_RETRY: Duration = Duration::from_secs(1);
/// Longest pause between attempts of a waiting run.
const WAIT_POLL_MAX: Duration = Duration::from_millis(250);

/// A single-instance lock held by a running task, renewed until released. Dropping
/// it without [`RunLock::release`] stops the renewals, so the lock lapses.
pub(crate) struct RunLock {
    manager: Arc<dyn LockManager>,
    lease: Lease,
    stop: CancellationToken,
    renewer: Option<JoinHandle<()>>,
}

impl RunLock {
    fn start(manager: Arc<dyn LockManager>, lease: Lease, ttl: Duration) -> RunLock {
        let stop = CancellationToken::new();
        let renewer = tokio::spawn(renew(manager.clone(), lease.clone(), ttl, stop.clone()));
        RunLock {
            manager,
            lease,
            stop,
            renewer: Some(renewer),
        }
    }

    /// The lock's key.
    pub(crate) fn key(&self) -> &str {
        &self.lease.key
    }

    /// The lock's fencing number.
    pub(crate) fn fencing(&self) -> u64 {
        self.lease.fencing
    }

    /// Stops renewing, releases the lock and wakes this process's waiters.
    pub(crate) async fn release(mut self, shared: &Shared) {
        self.stop.cancel();
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.await;
        }
        match self.manager.release(&self.lease).await {
            Ok(true) => tracing::debug!(key = %self.lease.key, "single-instance lock released"),
            Ok(false) => {
                tracing::warn!(key = %self.lease.key, "the single-instance lock was no longer held at release (lapsed or force-released)")
            }
            Err(error) => {
                tracing::warn!(%error, key = %self.lease.key, "releasing the single-instance lock failed; it lapses within its lease")
            }
        }
        shared.lock_released.notify_waiters();
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Renews `lease` every third of `ttl` until stopped or the lock is lost.
async fn renew(
    manager: Arc<dyn LockManager>,
    lease: Lease,
    ttl: Duration,
    stop: CancellationToken,
) {
    let every = celeriac_lock::renew_interval(ttl);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match manager.renew(&lease, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(
                    key = %lease.key,
                    fencing = lease.fencing,
                    "single-instance lock lost while the task runs (its lease lapsed or it was force-released); another run may start, and downstream stores should refuse this run's fencing number"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(%error, key = %lease.key, "renewing the single-instance lock failed; trying again")
            }
        }
    }
}

/// Whether a single-instance message may run.
pub(crate) enum Admission {
    /// Run it (holding this lock, if the task is single-instance).
    Run(Option<RunLock>),
    /// The message was settled here (skipped, deferred, failed or returned).
    Settled,
}

/// Takes the task's single-instance lock, applying its conflict policy. Tasks that
/// are not single-instance are admitted at once.
pub(crate) async fn admit_single_instance(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    message: &TaskMessage,
    task: &dyn Task,
    stop: &CancellationToken,
) -> Admission {
    let Some(single) = task.options().single_instance.clone() else {
        return Admission::Run(None);
    };
    let Some(manager) = shared.locks.clone() else {
        fail_unavailable(shared, delivery, message).await;
        return Admission::Settled;
    };
    let key = keys::single_instance(
        &message.headers.task,
        &single.key,
        &message.args,
        &message.kwargs,
    );
    let params = AcquireParams::new(
        key.clone(),
        single.lease,
        format!(
            "{} pid={} task={}",
            shared.config.hostname,
            std::process::id(),
            message.headers.id
        ),
    );
    let countdown = match try_acquire(&manager, &params).await {
        Ok(Some(lock)) => return Admission::Run(Some(lock)),
        Ok(None) => match single.on_conflict {
            OnConflict::Retry { countdown } => countdown,
            OnConflict::Wait {
                up_to,
                then_retry_after,
            } => {
                let deadline = Instant::now() + up_to;
                let mut pause = Duration::from_millis(10);
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        break then_retry_after;
                    }
                    let woken = shared.lock_released.notified();
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => {
                            executor::release(shared, &delivery.tag).await;
                            return Admission::Settled;
                        }
                        _ = woken => {}
                        _ = tokio::time::sleep(pause.min(deadline - now)) => {}
                    }
                    pause = (pause * 2).min(WAIT_POLL_MAX);
                    match try_acquire(&manager, &params).await {
                        Ok(Some(lock)) => return Admission::Run(Some(lock)),
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(%error, %key, "taking the single-instance lock failed; deferring the run");
                            break STORE_ERROR_RETRY;
                        }
                    }
                }
            }
            // `Skip`, and any policy this version does not know.
            _ => {
                skip(shared, delivery, message, &key).await;
                return Admission::Settled;
            }
        },
        Err(error) => {
            tracing::warn!(%error, %key, "taking the single-instance lock failed; deferring the run");
            STORE_ERROR_RETRY
        }
    };
    defer(shared, delivery, message, task, countdown, &key).await;
    Admission::Settled
}

/// One attempt; on success the lease is renewed from now on.
async fn try_acquire(
    manager: &Arc<dyn LockManager>,
    params: &AcquireParams,
) -> Result<Option<RunLock>, celeriac_lock::LockError> {
    Ok(manager
        .acquire(params)
        .await?
        .map(|lease| RunLock::start(manager.clone(), lease, params.ttl)))
}

/// `on_conflict = skip`: ack and record REVOKED with reason `locked`.
async fn skip(shared: &Arc<Shared>, delivery: &Delivery, message: &TaskMessage, key: &str) {
    tracing::info!(id = %message.headers.id, task = %message.headers.task, %key, "single-instance lock is held; skipping this run");
    release_unique(shared, message).await;
    WorkerStats::bump(&shared.stats.revoked);
    let mut meta = executor::base_meta(
        shared,
        message,
        &delivery.queue,
        TaskState::Revoked,
        ExceptionInfo::revoked("locked").to_value(),
    );
    meta.traceback = None;
    shared.complete(Completion::Store(Box::new(meta)));
    shared.complete(Completion::Ack(delivery.tag.clone()));
}

/// Sends the message again with an ETA `countdown` away (same id, same retry count),
/// records RETRY and acks the original. If the new message cannot be published the
/// original is requeued instead, so nothing is lost.
async fn defer(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    message: &TaskMessage,
    task: &dyn Task,
    countdown: Duration,
    key: &str,
) {
    let eta = Utc::now() + chrono::Duration::from_std(countdown).unwrap_or_default();
    let mut next = message.clone();
    next.headers.eta = Some(eta);
    next.headers.extra.remove("redelivered");
    next.properties.delivery_tag = Some(uuid::Uuid::new_v4().to_string());
    if let Some(info) = next.properties.delivery_info.as_mut() {
        info.redelivered = None;
    }
    let mut envelope = next.encode();
    if let Some(key) = &shared.config.signing_key {
        key.sign(&mut envelope);
    }
    let publish = celeriac_broker::Publish {
        queue: delivery.queue.clone(),
        envelope,
        not_before: Some(eta),
    };
    if let Err(error) = shared.broker.publish(vec![publish]).await {
        tracing::error!(%error, id = %message.headers.id, "publishing the deferred run failed; requeueing the original");
        executor::reject(
            shared,
            &delivery.tag,
            celeriac_broker::RejectAction::Requeue,
        )
        .await;
        return;
    }
    WorkerStats::bump(&shared.stats.retried);
    tracing::info!(id = %message.headers.id, task = %message.headers.task, %key, ?countdown, "single-instance lock is held; run deferred");
    if !executor::ignores_result(message, task) {
        let exception = ExceptionInfo::new(
            "Retry",
            "celery.exceptions",
            format!(
                "Retry in {}s: single-instance lock {key} is held",
                countdown.as_secs_f64()
            ),
        );
        let meta = executor::base_meta(
            shared,
            message,
            &delivery.queue,
            TaskState::Retry,
            exception.to_value(),
        );
        shared.complete(Completion::Store(Box::new(meta)));
    }
    shared.complete(Completion::Ack(delivery.tag.clone()));
}

/// A single-instance task on a worker without a lock store: FAILURE, never an
/// unprotected run.
async fn fail_unavailable(shared: &Arc<Shared>, delivery: &Delivery, message: &TaskMessage) {
    let reason = format!(
        "task {} is single-instance, but this worker has no lock store: locks need a supported store (sqlite://, redis://, postgres://; setting lock_store or CELERIAC_LOCK_STORE), and the broker {} has none",
        message.headers.task,
        shared.broker.describe()
    );
    tracing::error!(id = %message.headers.id, "{reason}");
    release_unique(shared, message).await;
    WorkerStats::bump(&shared.stats.failed);
    let meta = executor::failure_meta(
        shared,
        message,
        &delivery.queue,
        ExceptionInfo::new("LockUnavailable", "celeriac", reason),
        None,
    );
    shared.complete(Completion::Store(Box::new(meta)));
    shared.complete(Completion::Ack(delivery.tag.clone()));
}

/// Releases the unique-enqueue lock named by the message's
/// [`keys::UNIQUE_HEADER`], if any: the task reached a final outcome. Called before
/// the outcome is recorded, so a sender that saw the result can send again at once.
/// Compare-and-delete on the sender's token: a lock that lapsed and was taken by a
/// newer send is left alone.
pub(crate) async fn release_unique(shared: &Shared, message: &TaskMessage) {
    let Some(value) = message.headers.extra.get(keys::UNIQUE_HEADER) else {
        return;
    };
    let Some((key, token)) = keys::parse_unique_header(value) else {
        tracing::warn!(id = %message.headers.id, header = %value, "malformed {} header; its lock lapses at its TTL", keys::UNIQUE_HEADER);
        return;
    };
    let Some(manager) = &shared.locks else {
        tracing::debug!(id = %message.headers.id, %key, "no lock store here; the unique lock lapses at its TTL");
        return;
    };
    match manager
        .release(&Lease::new(key.clone(), token, 0, Utc::now()))
        .await
    {
        Ok(true) => tracing::debug!(id = %message.headers.id, %key, "unique lock released"),
        Ok(false) => {
            tracing::debug!(id = %message.headers.id, %key, "unique lock already lapsed or released")
        }
        Err(error) => {
            tracing::warn!(%error, id = %message.headers.id, %key, "releasing the unique lock failed; it lapses at its TTL")
        }
    }
}
