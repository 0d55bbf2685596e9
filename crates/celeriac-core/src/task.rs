//! The task trait, its options, the context a running task sees, and typed outcomes.
//!
//! `#[task]` implements [`Task`] for a plain Rust function; nothing here requires the
//! macro. A task's wire name is stable and independent of its Rust path.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::limits::{Backoff, RateLimit};
use crate::options::SendOptions;
use crate::result::ExceptionInfo;

/// The future a task invocation returns: the JSON result or a typed outcome.
pub type TaskFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send + 'static>>;

/// What a task function returns: `Ok(value)` or a [`TaskError`]. Any
/// `std::error::Error` converts into a failure with `?`.
pub type TaskResult<T> = Result<T, TaskError>;

/// A task type: a name, options, and a way to run it on JSON arguments.
pub trait Task: Send + Sync + 'static {
    /// The registered (wire) name, e.g. `"notify.send"`.
    fn name(&self) -> &str;

    /// Declared options (queue, acks_late, retries, limits, ...).
    fn options(&self) -> &TaskOptions;

    /// Runs the task. Argument binding errors are reported as
    /// [`TaskError::InvalidArguments`].
    fn run(&self, ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskFuture;

    /// Checks that `args` and `kwargs` fit the task's parameters without running it.
    /// The worker calls this before acknowledging, so a message whose arguments do not
    /// fit is dead-lettered instead of lost. The default accepts everything (binding
    /// errors then surface from [`Task::run`]).
    fn check_args(&self, args: &[Value], kwargs: &Map<String, Value>) -> Result<(), TaskError> {
        let _ = (args, kwargs);
        Ok(())
    }

    /// Whether a failure should be retried automatically (`autoretry_for`). The default
    /// matches the failure's `exc_type` against [`TaskOptions::autoretry_for`].
    fn should_autoretry(&self, failure: &TaskFailure) -> bool {
        self.options()
            .autoretry_for
            .iter()
            .any(|name| name == "*" || *name == failure.exc_type)
    }
}

/// Declared options of a task type. Per-call [`SendOptions`] and message headers
/// override them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TaskOptions {
    /// Default queue.
    pub queue: Option<String>,
    /// Default routing key.
    pub routing_key: Option<String>,
    /// Default exchange.
    pub exchange: Option<String>,
    /// Default priority.
    pub priority: Option<u8>,
    /// Acknowledge after the task finished instead of when it starts; `None` = the
    /// queue's or app's setting.
    pub acks_late: Option<bool>,
    /// Store no result on success.
    pub ignore_result: bool,
    /// Maximum retries (`None` = unlimited; Celery's default is 3).
    pub max_retries: Option<u32>,
    /// Delay of a retry that gives no countdown (Celery: 180 s).
    pub default_retry_delay: Duration,
    /// Exponential backoff for automatic retries.
    pub retry_backoff: Option<Backoff>,
    /// Error kinds that are retried automatically (`exc_type` names; `"*"` = all).
    pub autoretry_for: Vec<String>,
    /// Cancellation is signalled after this long; the task may clean up.
    pub soft_time_limit: Option<Duration>,
    /// The task is stopped after this long and fails with `TimeLimitExceeded`.
    pub time_limit: Option<Duration>,
    /// At most this many starts per window, per worker.
    pub rate_limit: Option<RateLimit>,
    /// Messages older than this are not run (REVOKED, expired).
    pub expires: Option<Duration>,
    /// The function is blocking code run on a blocking thread.
    pub blocking: bool,
    /// Ack a redelivered message whose task id already succeeded without running it.
    pub skip_if_succeeded: bool,
    /// At most one run at a time per lock key (`#[task(single_instance)]`); `None` =
    /// runs may overlap.
    pub single_instance: Option<SingleInstance>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            queue: None,
            routing_key: None,
            exchange: None,
            priority: None,
            acks_late: None,
            ignore_result: false,
            max_retries: Some(3),
            default_retry_delay: Duration::from_secs(180),
            retry_backoff: None,
            autoretry_for: Vec::new(),
            soft_time_limit: None,
            time_limit: None,
            rate_limit: None,
            expires: None,
            blocking: false,
            skip_if_succeeded: false,
            single_instance: None,
        }
    }
}

/// Single-instance execution: at most one run of the task at a time per lock key.
///
/// The worker takes the lock right before running (once a slot is free), renews it
/// every third of [`lease`](SingleInstance::lease) while the task runs, and releases it
/// as soon as the task ends, whatever the outcome. A worker that dies stops renewing,
/// so its lock lapses by itself within one lease: no deploy script, no manual step.
/// The running task can read its lock and fencing number with
/// [`TaskContext::lock_key`] and [`TaskContext::lock_fencing`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SingleInstance {
    /// What one lock covers: the task, or the task plus some argument values.
    pub key: LockKey,
    /// What a run does when another run holds the lock.
    pub on_conflict: OnConflict,
    /// Lease of the lock, renewed every third of it while the task runs (default 10 s).
    /// A dead worker's lock is free again after at most this long.
    pub lease: Duration,
}

impl SingleInstance {
    /// Default lease of a single-instance lock.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
    /// Default countdown of a run sent again after a lock conflict.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

    /// One lock for the task name, skip on conflict, a 10 s lease.
    pub fn new() -> SingleInstance {
        SingleInstance::default()
    }
    /// Sets what one lock covers.
    pub fn key(mut self, key: LockKey) -> Self {
        self.key = key;
        self
    }
    /// Sets the conflict policy.
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.on_conflict = on_conflict;
        self
    }
    /// Sets the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
}

impl Default for SingleInstance {
    fn default() -> Self {
        SingleInstance {
            key: LockKey::Task,
            on_conflict: OnConflict::Skip,
            lease: SingleInstance::DEFAULT_LEASE,
        }
    }
}

/// What one single-instance lock covers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockKey {
    /// One lock for the task name: one run at a time of the task.
    Task,
    /// One lock per combination of these arguments' values: one run at a time per
    /// customer, say. A missing argument counts as `null`.
    Args(Vec<KeyArg>),
}

/// An argument that is part of a lock key: found by keyword name, or by position
/// when it was passed positionally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyArg {
    /// The parameter name (the keyword on the wire).
    pub name: String,
    /// Its position among the positional arguments, if it can be passed positionally.
    pub position: Option<usize>,
}

impl KeyArg {
    /// The argument called `name` at `position`.
    pub fn new(name: impl Into<String>, position: Option<usize>) -> KeyArg {
        KeyArg {
            name: name.into(),
            position,
        }
    }

    /// Its value in a call: the keyword argument if given, else the positional one.
    pub fn value<'a>(
        &self,
        args: &'a [Value],
        kwargs: &'a Map<String, Value>,
    ) -> Option<&'a Value> {
        kwargs
            .get(&self.name)
            .or_else(|| self.position.and_then(|i| args.get(i)))
    }
}

/// What a single-instance run does when another run holds its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnConflict {
    /// Do not run. The message is acked and the result records `REVOKED` with reason
    /// `"locked"` (a ready state, so a caller waiting on the result is not left hanging).
    Skip,
    /// Run later: the message is sent again with this countdown. A conflict is not a
    /// failure, so it does not count against `max_retries`.
    Retry {
        /// Delay before the next attempt.
        countdown: Duration,
    },
    /// Wait up to `up_to` for the lock (holding the slot), then as [`OnConflict::Retry`]
    /// with `then_retry_after`.
    Wait {
        /// Longest wait for the lock.
        up_to: Duration,
        /// Countdown of the retry when the wait ran out.
        then_retry_after: Duration,
    },
}

/// Why a running task was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReason {
    /// The soft time limit passed.
    SoftTimeLimit = 1,
    /// The task was revoked with `terminate`.
    Revoked = 2,
    /// The worker is shutting down and the grace period ended.
    Shutdown = 3,
}

/// Sends tasks by name: implemented by the app, handed to running tasks so they can
/// enqueue follow-up work.
pub trait TaskSender: Send + Sync + 'static {
    /// Publishes `name(args, kwargs)` and returns the task id.
    fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// What a running task knows about itself.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    id: String,
    name: String,
    retries: u32,
    delivery_count: u32,
    eta: Option<DateTime<Utc>>,
    expires: Option<DateTime<Utc>>,
    root_id: Option<String>,
    parent_id: Option<String>,
    group: Option<String>,
    queue: String,
    hostname: String,
    headers: Map<String, Value>,
    cancel: CancellationToken,
    cancel_reason: AtomicU8,
    sender: Option<Arc<dyn TaskSender>>,
    lock: Option<(String, u64)>,
}

/// Builds a [`TaskContext`] (used by the worker and by tests).
pub struct TaskContextBuilder {
    inner: ContextInner,
}

impl TaskContextBuilder {
    /// Retry count of the message.
    pub fn retries(mut self, retries: u32) -> Self {
        self.inner.retries = retries;
        self
    }
    /// How many times the broker has delivered this message (1 = first delivery).
    pub fn delivery_count(mut self, count: u32) -> Self {
        self.inner.delivery_count = count;
        self
    }
    /// ETA of the message.
    pub fn eta(mut self, eta: Option<DateTime<Utc>>) -> Self {
        self.inner.eta = eta;
        self
    }
    /// Expiry of the message.
    pub fn expires(mut self, expires: Option<DateTime<Utc>>) -> Self {
        self.inner.expires = expires;
        self
    }
    /// Workflow ids.
    pub fn lineage(
        mut self,
        root_id: Option<String>,
        parent_id: Option<String>,
        group: Option<String>,
    ) -> Self {
        self.inner.root_id = root_id;
        self.inner.parent_id = parent_id;
        self.inner.group = group;
        self
    }
    /// Queue the message was delivered from.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.inner.queue = queue.into();
        self
    }
    /// Node name of the worker.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.inner.hostname = hostname.into();
        self
    }
    /// Extra message headers (user headers).
    pub fn headers(mut self, headers: Map<String, Value>) -> Self {
        self.inner.headers = headers;
        self
    }
    /// The cancellation token the worker triggers.
    pub fn cancellation(mut self, token: CancellationToken) -> Self {
        self.inner.cancel = token;
        self
    }
    /// A sender for follow-up tasks.
    pub fn sender(mut self, sender: Arc<dyn TaskSender>) -> Self {
        self.inner.sender = Some(sender);
        self
    }
    /// The single-instance lock the run holds: its key and fencing number.
    pub fn lock(mut self, key: impl Into<String>, fencing: u64) -> Self {
        self.inner.lock = Some((key.into(), fencing));
        self
    }
    /// Finishes the context.
    pub fn build(self) -> TaskContext {
        TaskContext {
            inner: Arc::new(self.inner),
        }
    }
}

impl TaskContext {
    /// Starts a context for task `name` with id `id`.
    pub fn builder(id: impl Into<String>, name: impl Into<String>) -> TaskContextBuilder {
        TaskContextBuilder {
            inner: ContextInner {
                id: id.into(),
                name: name.into(),
                retries: 0,
                delivery_count: 1,
                eta: None,
                expires: None,
                root_id: None,
                parent_id: None,
                group: None,
                queue: String::new(),
                hostname: String::new(),
                headers: Map::new(),
                cancel: CancellationToken::new(),
                cancel_reason: AtomicU8::new(0),
                sender: None,
                lock: None,
            },
        }
    }

    /// The task id: stable across retries and redeliveries.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
    /// The registered task name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// How many times this task has been retried.
    pub fn retries(&self) -> u32 {
        self.inner.retries
    }
    /// How many times the broker delivered this message (1 on first delivery).
    pub fn delivery_count(&self) -> u32 {
        self.inner.delivery_count
    }
    /// True when this message was delivered before (a worker died or a lease lapsed).
    pub fn is_redelivered(&self) -> bool {
        self.inner.delivery_count > 1
    }
    /// The ETA the message carried.
    pub fn eta(&self) -> Option<DateTime<Utc>> {
        self.inner.eta
    }
    /// When the message expires.
    pub fn expires(&self) -> Option<DateTime<Utc>> {
        self.inner.expires
    }
    /// Id of the first task of the workflow.
    pub fn root_id(&self) -> Option<&str> {
        self.inner.root_id.as_deref()
    }
    /// Id of the task that sent this one.
    pub fn parent_id(&self) -> Option<&str> {
        self.inner.parent_id.as_deref()
    }
    /// Group id, for group members.
    pub fn group(&self) -> Option<&str> {
        self.inner.group.as_deref()
    }
    /// The queue the message came from.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }
    /// The worker's node name.
    pub fn hostname(&self) -> &str {
        &self.inner.hostname
    }
    /// Extra headers of the message (Celery's `task.request.<name>`).
    pub fn headers(&self) -> &Map<String, Value> {
        &self.inner.headers
    }
    /// The key of the single-instance lock this run holds (`None` for other tasks).
    pub fn lock_key(&self) -> Option<&str> {
        self.inner.lock.as_ref().map(|(key, _)| key.as_str())
    }
    /// The fencing number of this run's single-instance lock: larger than that of
    /// every earlier holder of the key. Hand it to a downstream store that keeps the
    /// largest number it has seen and refuses writes with a smaller one, and a run
    /// whose lock lapsed (a paused process) can no longer overwrite its successor.
    pub fn lock_fencing(&self) -> Option<u64> {
        self.inner.lock.as_ref().map(|(_, fencing)| *fencing)
    }

    /// Completes when the task is asked to stop (soft time limit, revoke with
    /// terminate, or shutdown after the grace period).
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }
    /// Whether the task was asked to stop; blocking tasks should poll this.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }
    /// Why the task was asked to stop.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        match self.inner.cancel_reason.load(Ordering::Acquire) {
            1 => Some(CancelReason::SoftTimeLimit),
            2 => Some(CancelReason::Revoked),
            3 => Some(CancelReason::Shutdown),
            _ => None,
        }
    }
    /// Asks the task to stop (used by the worker).
    pub fn cancel(&self, reason: CancelReason) {
        let _ = self.inner.cancel_reason.compare_exchange(
            0,
            reason as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.inner.cancel.cancel();
    }

    /// A retry request: `return Err(ctx.retry_after(Duration::from_secs(10)))`.
    pub fn retry_after(&self, countdown: Duration) -> TaskError {
        TaskError::Retry(RetryRequest {
            countdown: Some(countdown),
            ..RetryRequest::default()
        })
    }

    /// Sends a follow-up task by name; the new task's `parent_id` is this task.
    pub async fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        mut options: SendOptions,
    ) -> Result<String, TaskError> {
        let sender = self.inner.sender.as_ref().ok_or_else(|| {
            TaskError::fail("RuntimeError", "this task context cannot send tasks")
        })?;
        options
            .parent_id
            .get_or_insert_with(|| self.inner.id.clone());
        if options.root_id.is_none() {
            options.root_id = Some(
                self.inner
                    .root_id
                    .clone()
                    .unwrap_or_else(|| self.inner.id.clone()),
            );
        }
        sender
            .send_task(name, args, kwargs, options)
            .await
            .map_err(|e| TaskError::fail("PublishError", e))
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("retries", &self.inner.retries)
            .field("delivery_count", &self.inner.delivery_count)
            .finish()
    }
}

/// Python's built-in exception classes a task may name as its failure kind.
const PYTHON_BUILTIN_EXCEPTIONS: &[&str] = &[
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BufferError",
    "ConnectionError",
    "EOFError",
    "Exception",
    "FileExistsError",
    "FileNotFoundError",
    "IndexError",
    "KeyError",
    "LookupError",
    "MemoryError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PermissionError",
    "RecursionError",
    "RuntimeError",
    "TimeoutError",
    "TypeError",
    "UnicodeError",
    "ValueError",
    "ZeroDivisionError",
];

/// A task's failure: an error kind (`exc_type`) and a message, with the original error
/// kept for `autoretry_for` matching.
#[derive(Clone)]
pub struct TaskFailure {
    /// Error kind, e.g. `"Error"` for `std::io::Error`, or a Python class name.
    pub exc_type: String,
    /// Module of the error kind (`"rust"` for Rust errors).
    pub exc_module: String,
    /// Human-readable message.
    pub message: String,
    /// The error chain or traceback.
    pub traceback: Option<String>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl TaskFailure {
    /// A failure of kind `exc_type` with `message`. A Python built-in exception name
    /// (`ValueError`, `KeyError`, ...) gets the module `builtins`, so a Python client
    /// re-raises the real built-in class (`except ValueError` works); any other kind
    /// gets the module `rust`.
    pub fn new(exc_type: impl Into<String>, message: impl Into<String>) -> TaskFailure {
        let exc_type = exc_type.into();
        let exc_module = if PYTHON_BUILTIN_EXCEPTIONS.contains(&exc_type.as_str()) {
            "builtins"
        } else {
            "rust"
        };
        TaskFailure {
            exc_type,
            exc_module: exc_module.into(),
            message: message.into(),
            traceback: None,
            source: None,
        }
    }

    /// Wraps any error; its kind is the last segment of its type name.
    pub fn from_error<E: std::error::Error + Send + Sync + 'static>(error: E) -> TaskFailure {
        let type_name = std::any::type_name::<E>();
        let short = type_name
            .split('<')
            .next()
            .unwrap_or(type_name)
            .rsplit("::")
            .next()
            .unwrap_or(type_name);
        let mut chain = Vec::new();
        let mut source = error.source();
        while let Some(cause) = source {
            chain.push(format!("caused by: {cause}"));
            source = cause.source();
        }
        TaskFailure {
            exc_type: short.to_string(),
            exc_module: "rust".into(),
            message: error.to_string(),
            traceback: (!chain.is_empty())
                .then(|| format!("{type_name}: {error}\n{}", chain.join("\n"))),
            source: Some(Arc::new(error)),
        }
    }

    /// The original error, when the failure came from a Rust error value.
    pub fn source_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    /// Whether the original error is of type `E` (used for `autoretry_for`).
    pub fn is<E: std::error::Error + 'static>(&self) -> bool {
        self.source
            .as_deref()
            .is_some_and(|e| (e as &(dyn std::error::Error + 'static)).is::<E>())
    }

    /// The failure as Celery's exception dict.
    pub fn to_exception(&self) -> ExceptionInfo {
        ExceptionInfo::new(
            self.exc_type.clone(),
            self.exc_module.clone(),
            self.message.clone(),
        )
    }
}

impl fmt::Debug for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message)
    }
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message)
    }
}

/// A request to run the task again later, as a new message with `retries + 1`.
#[derive(Debug, Clone, Default)]
pub struct RetryRequest {
    /// Delay before the retry (default: backoff or `default_retry_delay`).
    pub countdown: Option<Duration>,
    /// Absolute time of the retry (wins over `countdown`).
    pub eta: Option<DateTime<Utc>>,
    /// The error that caused the retry (recorded in the RETRY state).
    pub cause: Option<Box<TaskFailure>>,
    /// Overrides the task's `max_retries` for this decision.
    pub max_retries: Option<u32>,
}

/// The typed outcomes of a task other than success.
#[derive(Debug, Clone)]
pub enum TaskError {
    /// The task failed.
    Failed(TaskFailure),
    /// Run again later (Celery's `self.retry()`).
    Retry(RetryRequest),
    /// Reject the message: requeue it, or dead-letter it with the reason.
    Reject {
        /// Put the message back in its queue.
        requeue: bool,
        /// Why.
        reason: String,
    },
    /// Ack without storing any state (Celery's `Ignore`).
    Ignore,
    /// The arguments do not fit the task's signature.
    InvalidArguments(String),
}

impl TaskError {
    /// A failure of kind `exc_type`.
    pub fn fail(exc_type: &str, message: impl Into<String>) -> TaskError {
        TaskError::Failed(TaskFailure::new(exc_type, message))
    }

    /// A retry after `countdown` (or the task's default delay when `None`).
    pub fn retry(countdown: Option<Duration>) -> TaskError {
        TaskError::Retry(RetryRequest {
            countdown,
            ..RetryRequest::default()
        })
    }

    /// Binding error for argument `name`.
    pub fn invalid_argument(name: &str, reason: impl fmt::Display) -> TaskError {
        TaskError::InvalidArguments(format!("argument {name:?}: {reason}"))
    }

    /// Serializes a return value; a value that cannot be serialized is a failure.
    pub fn serialize_result<T: serde::Serialize>(value: T) -> Result<Value, TaskError> {
        serde_json::to_value(value).map_err(|e| TaskError::fail("EncodeError", e.to_string()))
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(failure) => write!(f, "{failure}"),
            TaskError::Retry(request) => match &request.cause {
                Some(cause) => write!(f, "retry requested: {cause}"),
                None => write!(f, "retry requested"),
            },
            TaskError::Reject { requeue, reason } => {
                write!(f, "rejected (requeue={requeue}): {reason}")
            }
            TaskError::Ignore => write!(f, "ignored"),
            TaskError::InvalidArguments(reason) => write!(f, "invalid arguments: {reason}"),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(error: E) -> Self {
        TaskError::Failed(TaskFailure::from_error(error))
    }
}

/// The tasks a worker can run, by name.
#[derive(Clone, Default)]
pub struct TaskRegistry {
    tasks: HashMap<String, Arc<dyn Task>>,
}

impl TaskRegistry {
    /// An empty registry.
    pub fn new() -> TaskRegistry {
        TaskRegistry::default()
    }
    /// Registers a task; a later registration of the same name replaces the earlier.
    pub fn register(&mut self, task: Arc<dyn Task>) {
        self.tasks.insert(task.name().to_string(), task);
    }
    /// Looks a task up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Task>> {
        self.tasks.get(name)
    }
    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tasks.keys().cloned().collect();
        names.sort();
        names
    }
    /// Number of registered tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }
    /// Whether no task is registered.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Binds positional and keyword arguments to parameters, as Celery's callers send
/// both. Used by `#[task]`; public so hand-written tasks can use it too.
pub struct ArgBinder {
    args: std::vec::IntoIter<Value>,
    kwargs: Map<String, Value>,
    positional_left: usize,
}

impl ArgBinder {
    /// Starts binding `args` and `kwargs`.
    pub fn new(args: Vec<Value>, kwargs: Map<String, Value>) -> ArgBinder {
        let positional_left = args.len();
        ArgBinder {
            args: args.into_iter(),
            kwargs,
            positional_left,
        }
    }

    /// Takes the next parameter `name`: positionally if any are left, otherwise by
    /// keyword; a missing `Option` parameter is `None`.
    pub fn next<T: serde::de::DeserializeOwned>(&mut self, name: &str) -> Result<T, TaskError> {
        let value = if self.positional_left > 0 {
            self.positional_left -= 1;
            if self.kwargs.contains_key(name) {
                return Err(TaskError::invalid_argument(
                    name,
                    "given both positionally and by keyword",
                ));
            }
            self.args.next().unwrap_or(Value::Null)
        } else {
            match self.kwargs.remove(name) {
                Some(value) => value,
                None => {
                    return serde_json::from_value(Value::Null)
                        .map_err(|_| TaskError::invalid_argument(name, "missing"))
                }
            }
        };
        serde_json::from_value(value).map_err(|e| TaskError::invalid_argument(name, e))
    }

    /// Fails if arguments are left over.
    pub fn finish(self) -> Result<(), TaskError> {
        if self.positional_left > 0 {
            return Err(TaskError::InvalidArguments(format!(
                "{} unexpected positional argument(s)",
                self.positional_left
            )));
        }
        if let Some(name) = self.kwargs.keys().next() {
            return Err(TaskError::InvalidArguments(format!(
                "unexpected keyword argument {name:?}"
            )));
        }
        Ok(())
    }
}

/// A task made from a closure over raw JSON arguments: for dynamic tasks, adapters
/// and tests. Most code uses `#[task]` instead.
pub struct FnTask<F> {
    name: String,
    options: TaskOptions,
    function: F,
}

impl<F, Fut> FnTask<F>
where
    F: Fn(TaskContext, Vec<Value>, Map<String, Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    /// A task called `name` running `function`.
    pub fn new(name: impl Into<String>, options: TaskOptions, function: F) -> FnTask<F> {
        FnTask {
            name: name.into(),
            options,
            function,
        }
    }
}

impl<F, Fut> Task for FnTask<F>
where
    F: Fn(TaskContext, Vec<Value>, Map<String, Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn options(&self) -> &TaskOptions {
        &self.options
    }
    fn run(&self, ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskFuture {
        Box::pin((self.function)(ctx, args, kwargs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_builtin_kinds_travel_as_builtins() {
        assert_eq!(TaskFailure::new("ValueError", "x").exc_module, "builtins");
        assert_eq!(TaskFailure::new("KeyError", "x").exc_module, "builtins");
        assert_eq!(TaskFailure::new("PaymentDeclined", "x").exc_module, "rust");
    }

    #[test]
    fn binder_takes_positional_then_keyword() {
        let mut kwargs = Map::new();
        kwargs.insert("text".into(), json!("hi"));
        let mut binder = ArgBinder::new(vec![json!(7)], kwargs);
        let user: u64 = binder.next("user_id").expect("positional");
        let text: String = binder.next("text").expect("keyword");
        let extra: Option<u32> = binder.next("extra").expect("optional");
        binder.finish().expect("nothing left");
        assert_eq!((user, text.as_str(), extra), (7, "hi", None));
    }

    #[test]
    fn binder_reports_missing_wrong_and_extra() {
        let mut binder = ArgBinder::new(vec![], Map::new());
        assert!(
            matches!(binder.next::<u64>("x"), Err(TaskError::InvalidArguments(m)) if m.contains("missing"))
        );
        let mut binder = ArgBinder::new(vec![json!("nope")], Map::new());
        assert!(matches!(
            binder.next::<u64>("x"),
            Err(TaskError::InvalidArguments(_))
        ));
        let binder = ArgBinder::new(vec![json!(1)], Map::new());
        assert!(binder.finish().is_err());
    }

    #[test]
    fn errors_convert_with_their_kind_and_can_be_matched() {
        fn fails() -> TaskResult<()> {
            Err(std::io::Error::other("disk on fire"))?;
            Ok(())
        }
        let Err(TaskError::Failed(failure)) = fails() else {
            panic!("expected a failure")
        };
        assert_eq!(failure.exc_type, "Error");
        assert!(failure.is::<std::io::Error>());
        assert!(!failure.is::<std::fmt::Error>());
        assert_eq!(failure.message, "disk on fire");
    }

    #[test]
    fn cancel_records_the_first_reason() {
        let ctx = TaskContext::builder("id", "t").build();
        assert!(!ctx.is_cancelled());
        ctx.cancel(CancelReason::SoftTimeLimit);
        ctx.cancel(CancelReason::Shutdown);
        assert!(ctx.is_cancelled());
        assert_eq!(ctx.cancel_reason(), Some(CancelReason::SoftTimeLimit));
    }
}
