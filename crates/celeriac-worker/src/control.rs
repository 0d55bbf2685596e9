//! Remote control over kombu's pidbox (PROTOCOL.md §5.2): the **control** service and
//! the request tracking behind `inspect active / reserved / scheduled`.
//!
//! The service subscribes to the `<control_exchange>.pidbox` fanout exchange, handles
//! every request addressed to this node (no destination, or one naming it), and
//! replies `{hostname: reply}` with the request's ticket to the caller's reply queue
//! (`<reply_to.routing_key>.<reply_to.exchange>`, the queue kombu binds for it), so
//! `celery inspect` / `celery control` and `celeriac inspect` / `celeriac control`
//! both work. A malformed or expired request is logged and ignored.
//!
//! Commands: `ping`, `active` (`safe`), `reserved`, `scheduled`, `registered`,
//! `stats`, `revoked`, `active_queues`, `query_task`, `clock`, `conf`, `revoke` (`terminate`),
//! `terminate`, `rate_limit`, `enable_events`, `disable_events`, `shutdown`. `add_consumer` and
//! `cancel_consumer` answer `{"error": ...}`: a celeriac worker's queues (each with its
//! own slots and prefetch window) are fixed when it starts. Unknown commands answer
//! `{"error": "KeyError('<name>')"}` as Celery's workers do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{BrokerError, Delivery, Publish, SubscribeParams};
use celeriac_core::pidbox::{self, ControlRequest};
use celeriac_core::{
    CancelReason, ExceptionInfo, Map, RateLimit, TaskMessage, TaskMeta, TaskState, Value,
};
use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::worker::Shared;

/// Where a tracked request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestState {
    /// Reserved, waiting for a slot (or its rate limit).
    Reserved,
    /// Waiting for its ETA.
    Scheduled,
    /// Running.
    Active,
}

/// What `inspect` tells about a message this worker holds: the message itself
/// (shared with its job, read only when someone inspects) and where it is.
pub(crate) struct RequestInfo {
    message: Arc<TaskMessage>,
    /// The routing key reported when the message records no `delivery_info` (the
    /// queue it came from); `None` when it does.
    queue: Option<String>,
    redelivered: bool,
    state: RequestState,
    time_start: Option<f64>,
    acknowledged: bool,
}

impl RequestInfo {
    fn priority(&self) -> u8 {
        self.message.properties.priority.unwrap_or(0)
    }

    /// kombu's `delivery_info` of the request.
    fn delivery_info(&self) -> Value {
        let info = self.message.properties.delivery_info.as_ref();
        json!({
            "exchange": info.map(|i| i.exchange.as_str()).unwrap_or(""),
            "routing_key": info
                .map(|i| i.routing_key.as_str())
                .or(self.queue.as_deref())
                .unwrap_or(""),
            "priority": self.priority(),
            "redelivered": self.redelivered,
        })
    }
}

/// The messages this worker holds, by task id.
#[derive(Default)]
pub(crate) struct Requests {
    by_id: Mutex<HashMap<String, RequestInfo>>,
}

/// Forgets its request when dropped (whatever way the message was settled).
pub(crate) struct Tracked {
    shared: Arc<Shared>,
    message: Arc<TaskMessage>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.shared
            .requests
            .by_id
            .lock()
            .remove(&self.message.headers.id);
    }
}

impl Requests {
    /// Starts tracking a reserved message until the returned guard is dropped.
    pub(crate) fn track(
        shared: &Arc<Shared>,
        delivery: &Delivery,
        message: &Arc<TaskMessage>,
    ) -> Tracked {
        let request = RequestInfo {
            message: Arc::clone(message),
            queue: match message.properties.delivery_info {
                Some(_) => None,
                None => Some(delivery.queue.clone()),
            },
            redelivered: delivery.delivery_count > 1,
            state: RequestState::Reserved,
            time_start: None,
            acknowledged: false,
        };
        shared
            .requests
            .by_id
            .lock()
            .insert(message.headers.id.clone(), request);
        Tracked {
            shared: shared.clone(),
            message: Arc::clone(message),
        }
    }

    /// Moves a tracked request to `state` (`Active` records its start time).
    pub(crate) fn set_state(&self, id: &str, state: RequestState, acknowledged: bool) {
        if let Some(request) = self.by_id.lock().get_mut(id) {
            request.state = state;
            request.acknowledged = acknowledged;
            if state == RequestState::Active {
                request.time_start = Some(celeriac_core::time::unix_now());
            }
        }
    }

    fn info(hostname: &str, id: &str, request: &RequestInfo, safe: bool) -> Value {
        let message = &request.message;
        let headers = &message.headers;
        let (args, kwargs) = if safe {
            (
                json!(headers
                    .argsrepr
                    .clone()
                    .unwrap_or_else(|| celeriac_core::event::py_repr_args(&message.args))),
                json!(headers
                    .kwargsrepr
                    .clone()
                    .unwrap_or_else(|| celeriac_core::event::py_repr_kwargs(&message.kwargs))),
            )
        } else {
            (json!(message.args), json!(message.kwargs))
        };
        json!({
            "id": id,
            "name": headers.task,
            "args": args,
            "kwargs": kwargs,
            "type": headers.task,
            "hostname": hostname,
            "time_start": request.time_start,
            "acknowledged": request.acknowledged,
            "delivery_info": request.delivery_info(),
            "worker_pid": std::process::id(),
        })
    }

    fn list(&self, hostname: &str, state: RequestState, safe: bool) -> Vec<Value> {
        self.by_id
            .lock()
            .iter()
            .filter(|(_, r)| r.state == state)
            .map(|(id, r)| {
                let info = Requests::info(hostname, id, r, safe);
                if state == RequestState::Scheduled {
                    json!({
                        "eta": r.message.headers.eta.map(|eta| eta.to_rfc3339()),
                        "priority": r.priority(),
                        "request": info,
                    })
                } else {
                    info
                }
            })
            .collect()
    }
}

/// The control service: listens until `stop`; a `shutdown` command cancels
/// `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken, stop: CancellationToken) {
    let params = SubscribeParams {
        exchange: pidbox::exchange(&shared.config.control_exchange),
        routing_key: None,
    };
    let mut backoff = Duration::from_millis(200);
    let mut subscription = loop {
        match shared.broker.subscribe(&params).await {
            Ok(subscription) => break subscription,
            Err(BrokerError::Unsupported { .. }) => {
                tracing::info!(broker = %shared.broker.describe(), "the broker has no broadcasts; remote control is off");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, ?backoff, "subscribing to remote control failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    tracing::debug!(exchange = %params.exchange, "listening for remote control");
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = subscription.recv() => match message {
                Some(message) => message,
                None => {
                    tracing::warn!("the remote-control subscription ended");
                    return;
                }
            },
        };
        handle(&shared, &shutdown, &message.envelope).await;
    }
}

/// Handles one received request (see the module docs).
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    envelope: &celeriac_core::Envelope,
) {
    let request = match ControlRequest::from_envelope(envelope) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%error, "ignoring a remote-control message");
            return;
        }
    };
    shared.events.adjust(pidbox::message_clock(envelope));
    if !request.is_for(&shared.config.hostname) {
        return;
    }
    if let Some(expires) = pidbox::request_expires(envelope) {
        if celeriac_core::time::unix_now() > expires {
            tracing::debug!(method = %request.method, "ignoring an expired remote-control request");
            return;
        }
    }
    tracing::info!(method = %request.method, arguments = ?request.arguments, "remote control");
    let reply = dispatch(shared, shutdown, &request).await;
    let (Some(ticket), Some(reply_to)) = (&request.ticket, &request.reply_to) else {
        return;
    };
    let envelope = pidbox::reply_envelope(
        &shared.config.hostname,
        reply,
        ticket,
        shared.events.forward(),
    );
    let publish = Publish {
        queue: pidbox::reply_queue(&reply_to.exchange, &reply_to.routing_key),
        envelope,
        not_before: None,
    };
    if let Err(error) = shared.broker.publish(vec![publish]).await {
        tracing::warn!(%error, method = %request.method, "sending a remote-control reply failed");
    }
}

/// Task ids from a `task_id` / `ids` argument: one id or a list of them.
fn ids(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(id)) => vec![id.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn python_set(ids: &[String]) -> String {
    if ids.is_empty() {
        return "set()".into();
    }
    let items: Vec<String> = ids
        .iter()
        .map(|id| celeriac_core::event::py_repr(&json!(id)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

async fn dispatch(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    request: &ControlRequest,
) -> Value {
    let args = &request.arguments;
    let hostname = shared.config.hostname.as_str();
    let flag = |name: &str| args.get(name).and_then(Value::as_bool).unwrap_or(false);
    match request.method.as_str() {
        "ping" => pidbox::ok("pong"),
        "active" | "dump_active" => json!(shared.requests.list(hostname, RequestState::Active, flag("safe"))),
        "reserved" | "dump_reserved" => json!(shared.requests.list(hostname, RequestState::Reserved, false)),
        "scheduled" | "dump_schedule" => json!(shared.requests.list(hostname, RequestState::Scheduled, false)),
        "registered" | "dump_tasks" => {
            let builtins = flag("builtins");
            let mut names: Vec<String> = shared
                .registry
                .names()
                .into_iter()
                .filter(|n| builtins || !n.starts_with("celery."))
                .collect();
            names.sort();
            json!(names)
        }
        "revoked" | "dump_revoked" => {
            json!(shared.revoked.lock().ids())
        }
        "stats" => stats(shared),
        "active_queues" => active_queues(shared),
        "query_task" => {
            let wanted = ids(args.get("ids").or_else(|| args.get("task_id")));
            let by_id = shared.requests.by_id.lock();
            let mut found = Map::new();
            for id in wanted {
                if let Some(request) = by_id.get(&id) {
                    let state = match request.state {
                        RequestState::Active => "active",
                        RequestState::Reserved => "reserved",
                        RequestState::Scheduled => "scheduled",
                    };
                    found.insert(
                        id.clone(),
                        json!([state, Requests::info(hostname, &id, request, false)]),
                    );
                }
            }
            Value::Object(found)
        }
        "clock" => json!({ "clock": shared.events.clock() }),
        "conf" => conf(shared),
        "time_limit" => pidbox::error(
            "time_limit is not supported: set soft_time_limit / time_limit on the task",
        ),
        "revoke" => revoke(shared, ids(args.get("task_id")), flag("terminate")).await,
        // `celery control terminate SIGNAL ID...`: revoke with terminate.
        "terminate" => revoke(shared, ids(args.get("task_id")), true).await,
        "rate_limit" => rate_limit(shared, args),
        "enable_events" => {
            if shared.events.set_task_events(true) {
                pidbox::ok("task events already enabled")
            } else {
                tracing::info!("task events enabled by remote control");
                pidbox::ok("task events enabled")
            }
        }
        "disable_events" => {
            if shared.events.set_task_events(false) {
                tracing::info!("task events disabled by remote control");
                pidbox::ok("task events disabled")
            } else {
                pidbox::ok("task events already disabled")
            }
        }
        "shutdown" => {
            tracing::warn!("Got shutdown from remote");
            shutdown.cancel();
            pidbox::ok("shutting down")
        }
        "add_consumer" | "cancel_consumer" => pidbox::error(format!(
            "{} is not supported: a celeriac worker's queues (each with its own slots and prefetch window) are fixed at start; restart it with -Q",
            request.method
        )),
        other => pidbox::error(format!(
            "KeyError({})",
            celeriac_core::event::py_repr(&json!(other))
        )),
    }
}

/// Celery's `revoke`: remembered so the tasks never start here; with `terminate`, a
/// running one is stopped. Celery 5.7 also stores REVOKED for a task still PENDING,
/// RECEIVED, RETRY or REJECTED and not running here, so callers see it at once.
async fn revoke(shared: &Arc<Shared>, task_ids: Vec<String>, terminate: bool) -> Value {
    if task_ids.is_empty() {
        return pidbox::error("revoke needs task_id (an id or a list of ids)");
    }
    shared.revoked.lock().extend(task_ids.iter().cloned());
    let mut terminated = Vec::new();
    let mut running_here = Vec::new();
    {
        let running = shared.running.lock();
        for id in &task_ids {
            if let Some(task) = running.get(id) {
                running_here.push(id.clone());
                if terminate {
                    task.ctx.cancel(CancelReason::Revoked);
                    task.terminate.cancel();
                    terminated.push(id.clone());
                }
            }
        }
    }
    if let Some(backend) = &shared.backend {
        for id in task_ids.iter().filter(|id| !running_here.contains(id)) {
            let state = match backend.get(id).await {
                Ok(meta) => meta.map(|m| m.status).unwrap_or(TaskState::Pending),
                Err(error) => {
                    tracing::warn!(%error, %id, "reading the state of a revoked task failed");
                    continue;
                }
            };
            if matches!(
                state,
                TaskState::Pending | TaskState::Received | TaskState::Retry | TaskState::Rejected
            ) {
                let meta = TaskMeta::new(
                    id.clone(),
                    TaskState::Revoked,
                    ExceptionInfo::revoked("revoked").to_value(),
                );
                if let Err(error) = backend.store(&meta, shared.config.result_expires).await {
                    tracing::warn!(%error, %id, "storing REVOKED failed");
                }
            }
        }
    }
    tracing::info!(ids = ?task_ids, terminate, "tasks flagged as revoked");
    if terminate {
        if terminated.is_empty() {
            return pidbox::ok("terminate: tasks unknown");
        }
        return pidbox::ok(format!("terminate: {}", terminated.join(", ")));
    }
    pidbox::ok(format!(
        "tasks {} flagged as revoked",
        python_set(&task_ids)
    ))
}

fn rate_limit(shared: &Arc<Shared>, args: &Map<String, Value>) -> Value {
    let Some(task) = args.get("task_name").and_then(Value::as_str) else {
        return pidbox::error("rate_limit needs task_name");
    };
    if shared.registry.get(task).is_none() {
        return pidbox::error("unknown task");
    }
    let text = match args.get("rate_limit") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => other.to_string(),
    };
    if text.is_empty() || text == "0" || text == "0.0" {
        shared.rate.set(task, None);
        return pidbox::ok("rate limit disabled successfully");
    }
    match RateLimit::parse(&text) {
        Ok(limit) => {
            shared.rate.set(task, Some(limit));
            tracing::info!(%task, rate_limit = %text, "new rate limit");
            pidbox::ok("new rate limit set successfully")
        }
        Err(error) => pidbox::error(format!("Invalid rate limit string: {error}")),
    }
}

fn stats(shared: &Arc<Shared>) -> Value {
    let counters = shared.stats.snapshot();
    let concurrency: usize = shared.config.queues.iter().map(|q| q.concurrency).sum();
    let prefetch: usize = shared.config.queues.iter().map(|q| q.window()).sum();
    json!({
        "pid": std::process::id(),
        "clock": shared.events.clock().to_string(),
        "uptime": shared.started.elapsed().as_secs(),
        "total": {},
        "pool": {
            "implementation": "celeriac:tokio",
            "max-concurrency": concurrency,
            "processes": [std::process::id()],
            "queues": shared.config.queues.iter().map(|q| json!({
                "name": q.name, "concurrency": q.concurrency, "prefetch": q.window(),
            })).collect::<Vec<_>>(),
        },
        "prefetch_count": prefetch,
        "broker": { "transport": shared.broker.describe() },
        "sw_ident": "celeriac",
        "sw_ver": env!("CARGO_PKG_VERSION"),
        "celeriac": counters,
        "rusage": "N/A",
    })
}

/// Celery's `inspect conf`: the worker's settings that matter to a monitor (no URLs,
/// so nothing secret).
fn conf(shared: &Arc<Shared>) -> Value {
    let config = &shared.config;
    json!({
        "task_acks_late": config.acks_late,
        "task_reject_on_failure": config.reject_on_failure,
        "task_track_started": config.track_started,
        "task_ignore_result": config.ignore_result,
        "result_extended": config.result_extended,
        "result_expires": config.result_expires.map(|d| d.as_secs_f64()),
        "worker_send_task_events": shared.events.task_events(),
        "worker_shutdown_timeout": config.shutdown_timeout.as_secs_f64(),
        "event_exchange": config.event_exchange,
        "control_exchange": config.control_exchange,
        "task_queues": config.queues.iter().map(|q| q.name.clone()).collect::<Vec<_>>(),
    })
}

fn active_queues(shared: &Arc<Shared>) -> Value {
    let queues: Vec<Value> = shared
        .config
        .queues
        .iter()
        .map(|q| {
            json!({
                "name": q.name,
                "exchange": {
                    "name": q.name, "type": "direct", "arguments": null, "durable": true,
                    "passive": false, "auto_delete": false, "delivery_mode": null,
                    "no_declare": false,
                },
                "routing_key": q.name,
                "queue_arguments": null, "binding_arguments": null, "consumer_arguments": null,
                "durable": true, "exclusive": false, "auto_delete": false, "no_ack": false,
                "alias": null, "bindings": [], "no_declare": null, "expires": null,
                "message_ttl": null, "max_length": null, "max_length_bytes": null,
                "max_priority": null,
            })
        })
        .collect();
    json!(queues)
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_core::message::DeliveryInfo;

    fn request(message: TaskMessage, queue: Option<&str>, redelivered: bool) -> RequestInfo {
        RequestInfo {
            message: Arc::new(message),
            queue: queue.map(str::to_string),
            redelivered,
            state: RequestState::Active,
            time_start: Some(12.5),
            acknowledged: true,
        }
    }

    /// What inspect tells is read from the shared message when asked, as it was
    /// when copied at reservation: kombu's delivery_info (or the queue when the
    /// message has none), the arguments or their reprs.
    #[test]
    fn inspect_info_is_read_from_the_shared_message() {
        let mut message = TaskMessage::new(
            "tasks.add",
            "id-1",
            vec![json!(1), json!("a")],
            json!({"k": 2}).as_object().cloned().unwrap_or_default(),
        );
        message.properties.priority = Some(4);
        message.properties.delivery_info = Some(DeliveryInfo {
            exchange: "ex".into(),
            routing_key: "rk".into(),
            redelivered: None,
        });
        message.headers.kwargsrepr = Some("{'k': 2}".into());
        let info = Requests::info("w@h", "id-1", &request(message.clone(), None, true), false);
        assert_eq!(
            info,
            json!({
                "id": "id-1",
                "name": "tasks.add",
                "args": [1, "a"],
                "kwargs": {"k": 2},
                "type": "tasks.add",
                "hostname": "w@h",
                "time_start": 12.5,
                "acknowledged": true,
                "delivery_info": {"exchange": "ex", "routing_key": "rk", "priority": 4, "redelivered": true},
                "worker_pid": std::process::id(),
            })
        );
        let safe = Requests::info("w@h", "id-1", &request(message.clone(), None, true), true);
        assert_eq!(safe["args"], json!("(1, 'a')"));
        assert_eq!(safe["kwargs"], json!("{'k': 2}"));
        // Without kombu's delivery_info: the queue it came from, priority 0.
        message.properties.delivery_info = None;
        message.properties.priority = None;
        let bare = Requests::info("w@h", "id-1", &request(message, Some("q1"), false), false);
        assert_eq!(
            bare["delivery_info"],
            json!({"exchange": "", "routing_key": "q1", "priority": 0, "redelivered": false})
        );
    }
}
