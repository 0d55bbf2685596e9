//! What happens to one delivered message, from decoding to its outcome.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_broker::{Delivery, DeliveryTag, Publish, RejectAction};
use celeriac_core::event::{self, EventKind};
use celeriac_core::message::DecodeError;
use celeriac_core::task::RetryRequest;
use celeriac_core::{
    ExceptionInfo, Task, TaskContext, TaskError, TaskFailure, TaskMessage, TaskMeta, TaskState,
    Value,
};
use chrono::Utc;
use futures::future::OptionFuture;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::canvas;
use crate::completer::Completion;
use crate::config::QueueSettings;
use crate::control::RequestState;
use crate::locks::{self, release_unique, Admission};
use crate::stats::WorkerStats;
use crate::worker::{Running, Shared};

/// How a run ended, before the outcome is applied.
enum RunEnd {
    Finished(Result<Value, TaskError>),
    HardTimeLimit(Duration),
    Terminated,
    Shutdown,
}

/// Processes one delivery end to end. Holds the queue's window permit until done.
/// `ticket` is the delivery's place in the queue's [`Slots`] line.
pub(crate) async fn process(
    shared: Arc<Shared>,
    mut delivery: Delivery,
    queue: Arc<QueueSettings>,
    window_permit: OwnedSemaphorePermit,
    ticket: Ticket,
    stop: CancellationToken,
    cancel_running: CancellationToken,
) {
    WorkerStats::bump(&shared.stats.received);
    let slots = Arc::clone(&ticket.slots);
    // Dropped (the turn given up) by every path that does not queue for a slot now.
    let mut ticket = Some(ticket);
    let Some((message, task)) = admit(&shared, &mut delivery).await else {
        return;
    };
    // Shared with the request tracking behind `inspect` (no copy of its fields).
    let message = Arc::new(message);
    let _tracked = crate::control::Requests::track(&shared, &delivery, &message);
    shared.events.task(|| received_event(&message));
    let mut window_permit = Some(window_permit);

    // Wait for the ETA while holding the (renewed) lease. ETA messages do not count
    // against the prefetch window, as in Celery.
    if let Some(eta) = message.headers.eta {
        let wait = (eta - Utc::now()).to_std().unwrap_or_default();
        if !wait.is_zero() {
            window_permit = None;
            ticket = None;
            let id = &message.headers.id;
            shared
                .requests
                .set_state(id, RequestState::Scheduled, false);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return release(&shared, &delivery.tag).await,
                _ = tokio::time::sleep(wait) => {}
            }
            shared.requests.set_state(id, RequestState::Reserved, false);
        }
    }
    if let Some(start) = shared
        .rate
        .reserve(&message.headers.task, task.options().rate_limit)
    {
        if start > tokio::time::Instant::now() {
            ticket = None;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return release(&shared, &delivery.tag).await,
            _ = tokio::time::sleep_until(start) => {}
        }
    }
    if let Some(ticket) = &ticket {
        if unless_stopped(&stop, ticket.turn()).await.is_none() {
            return release(&shared, &delivery.tag).await;
        }
    }
    let slot = match unless_stopped(&stop, Arc::clone(&slots.slots).acquire_owned()).await {
        Some(Ok(slot)) => slot,
        Some(Err(_)) | None => return release(&shared, &delivery.tag).await,
    };
    drop(ticket);
    if expired_or_revoked(&shared, &delivery, &message).await {
        return;
    }
    execute(
        &shared,
        &delivery,
        &queue,
        &message,
        task,
        &stop,
        cancel_running,
    )
    .await;
    drop(slot);
    drop(window_permit);
}

/// `future`'s output, or `None` when `stop` is cancelled first. Decides as a select
/// biased towards `stop` does (a stop set by the time the future completes wins),
/// but polls the future first, so the stop's waiter is registered (and removed)
/// only when the future has to wait: most turns and slots are free at once.
async fn unless_stopped<F: Future>(stop: &CancellationToken, future: F) -> Option<F::Output> {
    if stop.is_cancelled() {
        return None;
    }
    let output = tokio::select! {
        biased;
        output = future => output,
        _ = stop.cancelled() => return None,
    };
    (!stop.is_cancelled()).then_some(output)
}

/// A queue's execution slots, handed out in delivery order. Each delivery takes a
/// [`Ticket`] when it is fetched and waits for its turn before it waits for a slot,
/// so messages fetched together start in the order the broker gave them (priority,
/// then age) however the runtime schedules their jobs. A delivery that does not
/// queue for a slot at once (ETA in the future, rate limited, settled without
/// running, stopped) gives its turn up.
pub(crate) struct Slots {
    slots: Arc<Semaphore>,
    turns: parking_lot::Mutex<Turns>,
}

/// The line of tickets: `next` is served; `passed` are later tickets already done;
/// `waiting` the tickets waiting for their turn, each woken alone when its turn
/// comes (waking every waiter at each step of the line woke, with a prefetch window
/// of 128, up to a hundred jobs per message that only went back to sleep).
#[derive(Default)]
struct Turns {
    issued: u64,
    next: u64,
    passed: std::collections::BTreeSet<u64>,
    waiting: std::collections::BTreeMap<u64, std::task::Waker>,
}

/// A delivery's place in the line of a [`Slots`]; gives the turn up when dropped.
pub(crate) struct Ticket {
    slots: Arc<Slots>,
    number: u64,
}

impl Slots {
    /// `concurrency` slots, nobody in line.
    pub(crate) fn new(concurrency: usize) -> Arc<Slots> {
        Arc::new(Slots {
            slots: Arc::new(Semaphore::new(concurrency)),
            turns: parking_lot::Mutex::new(Turns::default()),
        })
    }

    /// The next place in line (take them in delivery order).
    pub(crate) fn ticket(self: &Arc<Slots>) -> Ticket {
        let mut turns = self.turns.lock();
        let number = turns.issued;
        turns.issued += 1;
        Ticket {
            slots: Arc::clone(self),
            number,
        }
    }
}

impl Ticket {
    /// Completes when every earlier ticket has taken its slot or given up its turn.
    async fn turn(&self) {
        std::future::poll_fn(|cx| {
            let mut turns = self.slots.turns.lock();
            if turns.next == self.number {
                turns.waiting.remove(&self.number);
                std::task::Poll::Ready(())
            } else {
                turns.waiting.insert(self.number, cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut turns = self.slots.turns.lock();
        if !turns.waiting.is_empty() {
            turns.waiting.remove(&self.number);
        }
        // Usually the ticket being served: the line moves on without storing it
        // (a set node allocated and freed per message).
        if turns.next != self.number {
            turns.passed.insert(self.number);
            return;
        }
        turns.next += 1;
        loop {
            let next = turns.next;
            if !turns.passed.remove(&next) {
                break;
            }
            turns.next += 1;
        }
        // Only the ticket whose turn it is now is woken.
        let next = turns.next;
        let waker = if turns.waiting.is_empty() {
            None
        } else {
            turns.waiting.remove(&next)
        };
        drop(turns);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Decodes and validates; anything that cannot run is settled here.
/// A decoded message takes the envelope's properties (the envelope is not read
/// again).
async fn admit(
    shared: &Arc<Shared>,
    delivery: &mut Delivery,
) -> Option<(TaskMessage, Arc<dyn Task>)> {
    let envelope = &mut delivery.envelope;
    let size = envelope.approximate_size();
    // With signing on, a message is trusted only once its signature checks out: an
    // unverified one is dead-lettered without writing any result for its task id (a
    // forged message must not overwrite another task's result).
    let mut trusted = shared.config.signing_key.is_none();
    let decoded = if size > shared.config.max_message_bytes {
        Err(DecodeError::TooLarge {
            size,
            limit: shared.config.max_message_bytes,
        })
    } else {
        if let Some(key) = &shared.config.signing_key {
            if let Err(error) = key.verify(envelope) {
                dead_letter(
                    shared,
                    &delivery.tag,
                    format!("signature check failed: {error}"),
                )
                .await;
                return None;
            }
            trusted = true;
        }
        TaskMessage::decode_taking_properties(envelope)
    };
    let envelope = &delivery.envelope;
    let delivery = &*delivery;
    let message = match decoded {
        Ok(message) => message,
        Err(error) => {
            let exception = match &error {
                DecodeError::RefusedContentType { .. } | DecodeError::UnsupportedContentType(_) => {
                    ExceptionInfo::new("ContentDisallowed", "kombu.exceptions", error.to_string())
                }
                _ => ExceptionInfo::new("DecodeError", "kombu.exceptions", error.to_string()),
            };
            // Dead letter first, then the FAILURE a caller may be waiting on: whoever
            // sees the failure can already find the message and its reason.
            dead_letter(
                shared,
                &delivery.tag,
                format!("undecodable message: {error}"),
            )
            .await;
            if let Some(id) = envelope.task_id_hint().filter(|_| trusted) {
                store_failure_direct(shared, id, exception).await;
            }
            return None;
        }
    };
    let Some(task) = shared.registry.get(&message.headers.task).cloned() else {
        let name = message.headers.task.clone();
        tracing::error!(task = %name, id = %message.headers.id, "received unregistered task");
        let meta = failure_meta(
            shared,
            &message,
            &delivery.queue,
            ExceptionInfo::not_registered(&name),
            None,
        );
        release_unique(shared, &message).await;
        dead_letter(
            shared,
            &delivery.tag,
            format!(
                "task {name:?} is not registered on worker {}",
                shared.config.hostname
            ),
        )
        .await;
        store_now(shared, meta).await;
        return None;
    };
    if let Err(error) = task.check_args(&message.args, &message.kwargs) {
        let reason = error.to_string();
        let meta = failure_meta(
            shared,
            &message,
            &delivery.queue,
            ExceptionInfo::new("TypeError", "builtins", reason.clone()),
            None,
        );
        release_unique(shared, &message).await;
        dead_letter(
            shared,
            &delivery.tag,
            format!("task {}: {reason}", message.headers.task),
        )
        .await;
        store_now(shared, meta).await;
        return None;
    }
    if expired_or_revoked(shared, delivery, &message).await {
        return None;
    }
    Some((message, task))
}

/// Settles an expired or revoked message (ack + REVOKED); returns whether it did.
async fn expired_or_revoked(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    message: &TaskMessage,
) -> bool {
    let reason = if shared.revoked.lock().contains(&message.headers.id) {
        "revoked"
    } else if message.headers.expires.is_some_and(|at| at <= Utc::now()) {
        "expired"
    } else {
        return false;
    };
    tracing::info!(id = %message.headers.id, task = %message.headers.task, reason, "not running task");
    shared.events.task(|| EventKind::TaskRevoked {
        uuid: message.headers.id.clone(),
        terminated: false,
        signum: None,
        expired: reason == "expired",
    });
    release_unique(shared, message).await;
    WorkerStats::bump(&shared.stats.revoked);
    let mut meta = base_meta(
        shared,
        message,
        &delivery.queue,
        TaskState::Revoked,
        ExceptionInfo::revoked(reason).to_value(),
    );
    meta.traceback = None;
    shared.complete(Completion::Store(Box::new(meta)));
    shared.complete(Completion::Ack(delivery.tag.clone()));
    true
}

/// Runs the task and applies its outcome.
async fn execute(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    queue: &QueueSettings,
    message: &TaskMessage,
    task: Arc<dyn Task>,
    stop: &CancellationToken,
    cancel_running: CancellationToken,
) {
    let options = task.options();
    let id = message.headers.id.clone();
    if options.skip_if_succeeded && already_succeeded(shared, &id).await {
        tracing::info!(%id, "task already succeeded; acking the redelivered message without running it");
        release_unique(shared, message).await;
        shared.complete(Completion::Ack(delivery.tag.clone()));
        return;
    }
    // Boxed, and only for single-instance tasks: the lock dance is a large future.
    let lock = if task.options().single_instance.is_some() {
        match Box::pin(locks::admit_single_instance(
            shared,
            delivery,
            message,
            task.as_ref(),
            stop,
        ))
        .await
        {
            Admission::Run(lock) => lock,
            Admission::Settled => return,
        }
    } else {
        None
    };
    let acks_late = options
        .acks_late
        .or(queue.acks_late)
        .unwrap_or(shared.config.acks_late);
    if !acks_late {
        shared.complete(Completion::Ack(delivery.tag.clone()));
    }
    if shared.config.track_started && !ignores_result(message, task.as_ref()) {
        let started = json!({"pid": std::process::id(), "hostname": shared.config.hostname});
        let meta = base_meta(
            shared,
            message,
            &delivery.queue,
            TaskState::Started,
            started,
        );
        shared.complete(Completion::Store(Box::new(meta)));
    }

    let terminate = CancellationToken::new();
    let mut builder = TaskContext::builder(id.clone(), message.headers.task.clone())
        .retries(message.headers.retries)
        .delivery_count(delivery.delivery_count)
        .eta(message.headers.eta)
        .expires(message.headers.expires)
        .lineage(
            message.headers.root_id.clone(),
            message.headers.parent_id.clone(),
            message.headers.group.clone(),
        )
        .queue(delivery.queue.clone())
        .hostname(shared.config.hostname.clone())
        .headers(message.headers.extra.clone());
    if let Some(sender) = &shared.sender {
        builder = builder.sender(sender.clone());
    }
    if let Some(lock) = &lock {
        builder = builder.lock(lock.key(), lock.fencing());
    }
    let ctx = builder.build();
    shared.running.lock().insert(
        id.clone(),
        Running {
            ctx: ctx.clone(),
            terminate: terminate.clone(),
        },
    );
    shared
        .stats
        .active
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared
        .requests
        .set_state(&id, RequestState::Active, !acks_late);
    shared
        .events
        .task(|| EventKind::TaskStarted { uuid: id.clone() });
    let soft = message
        .headers
        .soft_time_limit()
        .or(options.soft_time_limit);
    let hard = message.headers.hard_time_limit().or(options.time_limit);
    let started = Instant::now();
    let future = task.run(ctx.clone(), message.args.clone(), message.kwargs.clone());
    let end = run_with_limits(future, &ctx, soft, hard, &terminate, &cancel_running).await;
    let runtime = started.elapsed();
    // Released before the outcome is recorded: whoever sees the result can take the
    // lock at once.
    if let Some(lock) = lock {
        lock.release(shared).await;
    }
    shared.running.lock().remove(&id);
    shared
        .stats
        .active
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    WorkerStats::bump(&shared.stats.processed);
    tracing::debug!(%id, task = %message.headers.task, ?runtime, "task finished");

    let outcome = match end {
        RunEnd::Finished(outcome) => outcome,
        RunEnd::HardTimeLimit(limit) => {
            tracing::error!(%id, task = %message.headers.task, ?limit, blocking = options.blocking, "hard time limit exceeded; task stopped");
            let failure = TaskFailure::new(
                "TimeLimitExceeded",
                format!("hard time limit ({}s) exceeded", limit.as_secs_f64()),
            );
            let mut failure = failure;
            failure.exc_module = "billiard.exceptions".into();
            Err(TaskError::Failed(failure))
        }
        RunEnd::Terminated => {
            shared.events.task(|| EventKind::TaskRevoked {
                uuid: id.clone(),
                terminated: true,
                signum: Some(15),
                expired: false,
            });
            release_unique(shared, message).await;
            WorkerStats::bump(&shared.stats.revoked);
            let meta = base_meta(
                shared,
                message,
                &delivery.queue,
                TaskState::Revoked,
                ExceptionInfo::revoked("terminated").to_value(),
            );
            shared.complete(Completion::Store(Box::new(meta)));
            if acks_late {
                shared.complete(Completion::Ack(delivery.tag.clone()));
            }
            return;
        }
        RunEnd::Shutdown => {
            if acks_late {
                // Not finished: another worker runs it again.
                release(shared, &delivery.tag).await;
            } else {
                release_unique(shared, message).await;
                let failure = ExceptionInfo::new(
                    "WorkerLostError",
                    "billiard.exceptions",
                    "the worker shut down before the task finished",
                );
                let meta = failure_meta(shared, message, &delivery.queue, failure, None);
                shared.complete(Completion::Store(Box::new(meta)));
            }
            return;
        }
    };
    let outcome = match outcome {
        Err(TaskError::Failed(failure)) if task.should_autoretry(&failure) => {
            let countdown = options
                .retry_backoff
                .map(|b| b.delay(message.headers.retries))
                .unwrap_or(options.default_retry_delay);
            Err(TaskError::Retry(RetryRequest {
                countdown: Some(countdown),
                cause: Some(Box::new(failure)),
                ..RetryRequest::default()
            }))
        }
        Err(TaskError::Failed(mut failure))
            if ctx.cancel_reason() == Some(celeriac_core::CancelReason::SoftTimeLimit) =>
        {
            failure.message = format!("soft time limit exceeded: {}", failure.message);
            Err(TaskError::Failed(failure))
        }
        other => other,
    };
    if shared.events.task_events() {
        outcome_event(shared, &id, &outcome, runtime);
    }
    settle(shared, delivery, message, task.as_ref(), acks_late, outcome).await;
}

/// Applies a task's outcome: results, retries, acks.
async fn settle(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    message: &TaskMessage,
    task: &dyn Task,
    acks_late: bool,
    outcome: Result<Value, TaskError>,
) {
    let ignore = ignores_result(message, task);
    let ack_if_late = |shared: &Arc<Shared>| {
        if acks_late {
            shared.complete(Completion::Ack(delivery.tag.clone()));
        }
    };
    match outcome {
        Ok(value) => {
            release_unique(shared, message).await;
            WorkerStats::bump(&shared.stats.succeeded);
            // Callbacks and the next chain step are sent before the result is stored,
            // as Celery does, so the result can list them as children.
            let children = canvas::on_success(shared, message, &value).await;
            if !ignore {
                let mut meta =
                    base_meta(shared, message, &delivery.queue, TaskState::Success, value);
                meta.children = children;
                shared.complete(Completion::Store(Box::new(meta)));
            }
            ack_if_late(shared);
        }
        Err(TaskError::Retry(request)) => {
            // Boxed: retrying is rare and its future large.
            Box::pin(retry(shared, delivery, message, task, acks_late, request)).await;
        }
        Err(TaskError::Failed(failure)) => {
            let requeue = acks_late && shared.config.reject_on_failure;
            if !requeue {
                release_unique(shared, message).await;
            }
            WorkerStats::bump(&shared.stats.failed);
            tracing::warn!(id = %message.headers.id, task = %message.headers.task, error = %failure, "task failed");
            let exception = failure.to_exception();
            if !ignore {
                let meta = failure_meta(
                    shared,
                    message,
                    &delivery.queue,
                    exception.clone(),
                    failure.traceback.clone(),
                );
                shared.complete(Completion::Store(Box::new(meta)));
            }
            if !requeue {
                canvas::on_failure(shared, message, &exception, failure.traceback.as_deref()).await;
            }
            if requeue {
                reject(shared, &delivery.tag, RejectAction::Requeue).await;
            } else {
                ack_if_late(shared);
            }
        }
        Err(TaskError::Reject { requeue, reason }) => {
            if requeue {
                reject(shared, &delivery.tag, RejectAction::Requeue).await;
            } else {
                release_unique(shared, message).await;
                let meta = base_meta(
                    shared,
                    message,
                    &delivery.queue,
                    TaskState::Rejected,
                    ExceptionInfo::new("Reject", "celery.exceptions", reason.clone()).to_value(),
                );
                shared.complete(Completion::Store(Box::new(meta)));
                if acks_late {
                    dead_letter(shared, &delivery.tag, format!("rejected by task: {reason}")).await;
                }
            }
        }
        Err(TaskError::Ignore) => {
            release_unique(shared, message).await;
            ack_if_late(shared)
        }
        Err(TaskError::InvalidArguments(reason)) => {
            release_unique(shared, message).await;
            WorkerStats::bump(&shared.stats.failed);
            let exception = ExceptionInfo::new("TypeError", "builtins", reason.clone());
            let meta = failure_meta(shared, message, &delivery.queue, exception.clone(), None);
            shared.complete(Completion::Store(Box::new(meta)));
            canvas::on_failure(shared, message, &exception, None).await;
            if acks_late {
                dead_letter(
                    shared,
                    &delivery.tag,
                    format!("task {}: invalid arguments: {reason}", message.headers.task),
                )
                .await;
            }
        }
    }
}

/// Sends the task again as a new message with `retries + 1`, or fails it when
/// retries are exhausted.
async fn retry(
    shared: &Arc<Shared>,
    delivery: &Delivery,
    message: &TaskMessage,
    task: &dyn Task,
    acks_late: bool,
    request: RetryRequest,
) {
    let options = task.options();
    let max = request.max_retries.or(options.max_retries);
    if max.is_some_and(|max| message.headers.retries >= max) {
        let exception = match &request.cause {
            Some(cause) => cause.to_exception(),
            None => ExceptionInfo::new(
                "MaxRetriesExceededError",
                "celery.exceptions",
                format!(
                    "Can't retry {}[{}] args:{:?} kwargs:{:?}",
                    message.headers.task, message.headers.id, message.args, message.kwargs
                ),
            ),
        };
        release_unique(shared, message).await;
        WorkerStats::bump(&shared.stats.failed);
        let traceback = request.cause.as_ref().and_then(|c| c.traceback.clone());
        shared.events.task(|| EventKind::TaskFailed {
            uuid: message.headers.id.clone(),
            exception: exception_repr(&exception),
            traceback: traceback.clone().unwrap_or_default(),
        });
        if !ignores_result(message, task) {
            let meta = failure_meta(
                shared,
                message,
                &delivery.queue,
                exception.clone(),
                traceback.clone(),
            );
            shared.complete(Completion::Store(Box::new(meta)));
        }
        canvas::on_failure(shared, message, &exception, traceback.as_deref()).await;
        if acks_late {
            shared.complete(Completion::Ack(delivery.tag.clone()));
        }
        return;
    }
    let eta = request.eta.unwrap_or_else(|| {
        let countdown = request.countdown.unwrap_or(options.default_retry_delay);
        Utc::now() + chrono::Duration::from_std(countdown).unwrap_or_default()
    });
    let mut next = message.clone();
    next.headers.retries += 1;
    next.headers.eta = Some(eta);
    next.headers.parent_id = Some(message.headers.id.clone());
    next.headers.extra.remove("redelivered");
    next.properties.delivery_tag = Some(uuid::Uuid::new_v4().to_string());
    if let Some(info) = next.properties.delivery_info.as_mut() {
        info.redelivered = None;
    }
    let mut envelope = next.encode();
    if let Some(key) = &shared.config.signing_key {
        key.sign(&mut envelope);
    }
    let publish = Publish {
        queue: delivery.queue.clone(),
        envelope,
        not_before: Some(eta),
    };
    if let Err(error) = shared.broker.publish(vec![publish]).await {
        // Could not send the retry: keep the original message (requeue) so the task
        // is not lost.
        tracing::error!(%error, id = %message.headers.id, "publishing the retry failed; requeueing the original");
        if acks_late {
            reject(shared, &delivery.tag, RejectAction::Requeue).await;
        }
        return;
    }
    WorkerStats::bump(&shared.stats.retried);
    tracing::info!(id = %message.headers.id, task = %message.headers.task, retries = next.headers.retries, %eta, "retry scheduled");
    shared.events.task(|| {
        let (exception, traceback) = match &request.cause {
            Some(cause) => (
                exception_repr(&cause.to_exception()),
                cause.traceback.clone().unwrap_or_default(),
            ),
            None => (format!("Retry('Retry in {eta}')"), String::new()),
        };
        EventKind::TaskRetried {
            uuid: message.headers.id.clone(),
            exception,
            traceback,
        }
    });
    if !ignores_result(message, task) {
        let exception = request
            .cause
            .as_ref()
            .map(|cause| cause.to_exception())
            .unwrap_or_else(|| {
                ExceptionInfo::new("Retry", "celery.exceptions", format!("Retry in {}", eta))
            });
        let mut meta = base_meta(
            shared,
            message,
            &delivery.queue,
            TaskState::Retry,
            exception.to_value(),
        );
        meta.traceback = request.cause.as_ref().and_then(|c| c.traceback.clone());
        meta.children = vec![json!([[message.headers.id, null], null])];
        shared.complete(Completion::Store(Box::new(meta)));
    }
    if acks_late {
        shared.complete(Completion::Ack(delivery.tag.clone()));
    }
}

async fn run_with_limits(
    future: celeriac_core::TaskFuture,
    ctx: &TaskContext,
    soft: Option<Duration>,
    hard: Option<Duration>,
    terminate: &CancellationToken,
    cancel_running: &CancellationToken,
) -> RunEnd {
    // Timers only for the limits that are set (each made timer cost every run a
    // clock read and a runtime lookup).
    let soft_sleep = OptionFuture::from(soft.map(tokio::time::sleep));
    let hard_sleep = OptionFuture::from(hard.map(tokio::time::sleep));
    tokio::pin!(future, soft_sleep, hard_sleep);
    let mut soft_armed = soft.is_some();
    loop {
        tokio::select! {
            biased;
            result = &mut future => return RunEnd::Finished(result),
            _ = terminate.cancelled() => return RunEnd::Terminated,
            _ = cancel_running.cancelled() => return RunEnd::Shutdown,
            _ = &mut hard_sleep, if hard.is_some() => return RunEnd::HardTimeLimit(hard.unwrap_or_default()),
            _ = &mut soft_sleep, if soft_armed => {
                soft_armed = false;
                tracing::warn!(id = %ctx.id(), task = %ctx.name(), "soft time limit exceeded; cancelling");
                ctx.cancel(celeriac_core::CancelReason::SoftTimeLimit);
            }
        }
    }
}

/// `task-received` for a message about to be held.
fn received_event(message: &TaskMessage) -> EventKind {
    let headers = &message.headers;
    EventKind::TaskReceived {
        uuid: headers.id.clone(),
        name: headers.task.clone(),
        args: headers
            .argsrepr
            .clone()
            .unwrap_or_else(|| event::py_repr_args(&message.args)),
        kwargs: headers
            .kwargsrepr
            .clone()
            .unwrap_or_else(|| event::py_repr_kwargs(&message.kwargs)),
        root_id: headers.root_id.clone(),
        parent_id: headers.parent_id.clone(),
        retries: headers.retries,
        eta: headers.eta.map(celeriac_core::time::format_iso),
        expires: headers.expires.map(celeriac_core::time::format_iso),
    }
}

/// An exception as Python prints it: `ValueError('kaboom')`.
fn exception_repr(exception: &ExceptionInfo) -> String {
    let args: Vec<String> = exception.exc_message.iter().map(event::py_repr).collect();
    format!("{}({})", exception.exc_type, args.join(", "))
}

/// The event of a run's outcome (retries send theirs when the retry is sent).
fn outcome_event(shared: &Shared, id: &str, outcome: &Result<Value, TaskError>, runtime: Duration) {
    let uuid = id.to_string();
    let kind = match outcome {
        Ok(value) => EventKind::TaskSucceeded {
            uuid,
            result: event::py_repr(value),
            runtime: runtime.as_secs_f64(),
        },
        Err(TaskError::Failed(failure)) => EventKind::TaskFailed {
            uuid,
            exception: exception_repr(&failure.to_exception()),
            traceback: failure.traceback.clone().unwrap_or_default(),
        },
        Err(TaskError::InvalidArguments(reason)) => EventKind::TaskFailed {
            uuid,
            exception: exception_repr(&ExceptionInfo::new("TypeError", "builtins", reason.clone())),
            traceback: String::new(),
        },
        Err(TaskError::Reject { requeue, .. }) => EventKind::TaskRejected {
            uuid,
            requeue: *requeue,
        },
        Err(TaskError::Retry(_)) | Err(TaskError::Ignore) => return,
    };
    shared.events.task(|| kind);
}

pub(crate) fn ignores_result(message: &TaskMessage, task: &dyn Task) -> bool {
    message.headers.ignore_result == Some(true) || task.options().ignore_result
}

async fn already_succeeded(shared: &Arc<Shared>, id: &str) -> bool {
    let Some(backend) = &shared.backend else {
        return false;
    };
    matches!(backend.get(id).await, Ok(Some(meta)) if meta.status == TaskState::Success)
}

pub(crate) fn base_meta(
    shared: &Shared,
    message: &TaskMessage,
    queue: &str,
    status: TaskState,
    result: Value,
) -> TaskMeta {
    let mut meta = TaskMeta::new(message.headers.id.clone(), status, result);
    meta.group_id = message.headers.group.clone();
    meta.parent_id = message.headers.parent_id.clone();
    if shared.config.result_extended {
        meta.name = Some(message.headers.task.clone());
        meta.args = Some(Value::Array(message.args.clone()));
        meta.kwargs = Some(Value::Object(message.kwargs.clone()));
        meta.worker = Some(shared.config.hostname.clone());
        meta.retries = Some(message.headers.retries);
        meta.queue = Some(queue.to_string());
    }
    meta
}

pub(crate) fn failure_meta(
    shared: &Shared,
    message: &TaskMessage,
    queue: &str,
    exception: ExceptionInfo,
    traceback: Option<String>,
) -> TaskMeta {
    let mut meta = base_meta(
        shared,
        message,
        queue,
        TaskState::Failure,
        exception.to_value(),
    );
    meta.traceback = traceback;
    meta
}

/// Stores a result right away (paths that dead-letter the message next).
async fn store_now(shared: &Shared, meta: TaskMeta) {
    if let Some(backend) = &shared.backend {
        if let Err(error) = backend.store(&meta, shared.config.result_expires).await {
            tracing::error!(%error, id = %meta.task_id, "storing the failure failed");
        }
    }
}

async fn store_failure_direct(shared: &Shared, id: &str, exception: ExceptionInfo) {
    let meta = TaskMeta::new(id.to_string(), TaskState::Failure, exception.to_value());
    store_now(shared, meta).await;
}

async fn dead_letter(shared: &Shared, tag: &DeliveryTag, reason: String) {
    tracing::error!(%tag, %reason, "dead-lettering message");
    WorkerStats::bump(&shared.stats.dead_lettered);
    reject(shared, tag, RejectAction::DeadLetter { reason }).await;
}

pub(crate) async fn release(shared: &Shared, tag: &DeliveryTag) {
    WorkerStats::bump(&shared.stats.released);
    reject(shared, tag, RejectAction::Release).await;
}

pub(crate) async fn reject(shared: &Shared, tag: &DeliveryTag, action: RejectAction) {
    let rejected =
        crate::completer::with_retries("reject", || shared.broker.reject(tag, action.clone()))
            .await;
    if let Err(error) = rejected {
        // The message stays leased until its lease lapses, then is redelivered.
        tracing::error!(%error, %tag, "giving up rejecting; the message will be redelivered");
    }
    shared.held.lock().remove(tag);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unless_stopped_lets_a_stop_win_as_a_biased_select_does() {
        let stop = CancellationToken::new();
        assert_eq!(unless_stopped(&stop, async { 1 }).await, Some(1));
        // Stopped while waiting.
        let waiting = unless_stopped(&stop, std::future::pending::<()>());
        let stopper = async {
            tokio::task::yield_now().await;
            stop.cancel();
        };
        let (outcome, ()) = tokio::join!(waiting, stopper);
        assert_eq!(outcome, None);
        // Stopped before, and stopped by the time the future completes.
        assert_eq!(unless_stopped(&stop, async { 1 }).await, None);
        let later = CancellationToken::new();
        let stop_on_completion = async {
            later.cancel();
            2
        };
        assert_eq!(unless_stopped(&later, stop_on_completion).await, None);
    }

    /// A ticket that is served and dropped in order moves the line on without
    /// being stored; one dropped out of order waits in `passed`.
    #[test]
    fn tickets_dropped_in_any_order_advance_the_line() {
        let slots = Slots::new(1);
        let tickets: Vec<Ticket> = (0..4).map(|_| slots.ticket()).collect();
        let mut tickets = tickets.into_iter();
        let (t0, t1, t2, t3) = (
            tickets.next().expect("t0"),
            tickets.next().expect("t1"),
            tickets.next().expect("t2"),
            tickets.next().expect("t3"),
        );
        drop(t2);
        assert_eq!(slots.turns.lock().next, 0);
        drop(t0);
        assert_eq!(slots.turns.lock().next, 1);
        drop(t1);
        assert_eq!(slots.turns.lock().next, 3);
        assert!(slots.turns.lock().passed.is_empty());
        drop(t3);
        assert_eq!(slots.turns.lock().next, 4);
        assert!(slots.turns.lock().passed.is_empty());
    }

    /// A step of the line wakes the ticket whose turn it is, and no other; a waiting
    /// ticket that is dropped leaves no waker behind.
    #[test]
    fn only_the_ticket_whose_turn_comes_is_woken() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let woken = |count: &Arc<Count>| count.0.load(std::sync::atomic::Ordering::SeqCst);
        let slots = Slots::new(1);
        let (t0, t1, t2, t3) = (
            slots.ticket(),
            slots.ticket(),
            slots.ticket(),
            slots.ticket(),
        );
        let counts: Vec<Arc<Count>> = (0..3)
            .map(|_| Arc::new(Count(std::sync::atomic::AtomicUsize::new(0))))
            .collect();
        fn pending<F: Future>(wait: std::pin::Pin<&mut F>, count: &Arc<Count>) -> bool {
            let waker = std::task::Waker::from(Arc::clone(count));
            wait.poll(&mut std::task::Context::from_waker(&waker))
                .is_pending()
        }
        let mut w1 = Box::pin(t1.turn());
        let mut w2 = Box::pin(t2.turn());
        let mut w3 = Box::pin(t3.turn());
        assert!(pending(w1.as_mut(), &counts[0]));
        assert!(pending(w2.as_mut(), &counts[1]));
        assert!(pending(w3.as_mut(), &counts[2]));
        assert_eq!(slots.turns.lock().waiting.len(), 3);
        drop(t0);
        assert_eq!(counts.iter().map(woken).collect::<Vec<_>>(), [1, 0, 0]);
        // Ticket 2 gives up while waiting: its waker goes with it.
        drop(w2);
        drop(t2);
        // Left waiting: ticket 3 (ticket 1's waker went when it was woken).
        assert_eq!(slots.turns.lock().waiting.len(), 1);
        drop(w1);
        drop(t1);
        // The line passes ticket 2 (given up) and wakes ticket 3.
        assert_eq!(counts.iter().map(woken).collect::<Vec<_>>(), [1, 0, 1]);
        assert_eq!(slots.turns.lock().next, 3);
        drop(w3);
        drop(t3);
        assert!(slots.turns.lock().waiting.is_empty());
    }

    /// Jobs that reach their slot in any order take it in ticket order, and a ticket
    /// given up does not hold the line.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_are_taken_in_ticket_order() {
        const JOBS: usize = 20;
        let slots = Slots::new(1);
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let tickets: Vec<Ticket> = (0..JOBS).map(|_| slots.ticket()).collect();
        let mut jobs = Vec::new();
        // Spawned last ticket first, each after a different pause; ticket 5 gives up.
        for (i, ticket) in tickets.into_iter().enumerate().rev() {
            let order = Arc::clone(&order);
            let slots = Arc::clone(&slots);
            jobs.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(((JOBS - i) % 7) as u64)).await;
                if i == 5 {
                    return;
                }
                ticket.turn().await;
                let slot = Arc::clone(&slots.slots)
                    .acquire_owned()
                    .await
                    .expect("semaphore open");
                drop(ticket);
                order.lock().push(i);
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(slot);
            }));
        }
        for job in jobs {
            job.await.expect("job");
        }
        let expected: Vec<usize> = (0..JOBS).filter(|i| *i != 5).collect();
        assert_eq!(*order.lock(), expected);
    }
}
