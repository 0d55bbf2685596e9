//! Celery's monitoring events (PROTOCOL.md §5.1, §7.6): task events (`task-received`,
//! `task-started`, `task-succeeded`, ...) and worker events (`worker-online`,
//! `worker-heartbeat`, `worker-offline`), with Celery's field names and types, so
//! Flower, `celery events` and Python's `EventReceiver` read celeriac's events.
//!
//! Events are published on the `celeryev` exchange (topic; fanout over Redis
//! PUB/SUB) with the event type's `-` replaced by `.` as routing key
//! (`task-succeeded` → `task.succeeded`); a batch of task events goes as one message
//! with routing key `task.multi` whose body is a JSON array.

use serde_json::{json, Map, Value};

use crate::message::{Envelope, Properties};

/// The default event exchange (`event_exchange`).
pub const EVENT_EXCHANGE: &str = "celeryev";

/// Routing key of a batch of task events.
pub const TASK_MULTI: &str = "task.multi";

/// Celery's default heartbeat interval in seconds (`freq`).
pub const HEARTBEAT_FREQ: f64 = 2.0;

/// What identifies the sender in every event (the common fields besides `clock`,
/// `timestamp` and `type`).
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// Node name (`name@host`).
    pub hostname: String,
    /// Offset of local time from UTC in hours (Celery: `utcoffset()`), 0 for UTC.
    pub utcoffset: f64,
    /// Process id.
    pub pid: u32,
}

/// Load and identity a worker reports in its `worker-*` events.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    /// Heartbeat interval in seconds.
    pub freq: f64,
    /// Tasks running now.
    pub active: u64,
    /// Tasks finished since start.
    pub processed: u64,
    /// 1, 5 and 15 minute load averages.
    pub loadavg: [f64; 3],
    /// Software name (`py-celery` for Python workers, `celeriac` here).
    pub sw_ident: String,
    /// Software version.
    pub sw_ver: String,
    /// Operating system (`Linux`, `Darwin`, ...).
    pub sw_sys: String,
}

/// One event, without the common fields ([`EventKind::to_body`] adds them).
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A client published a task (`task_send_sent_event`).
    TaskSent {
        /// Task id.
        uuid: String,
        /// Task name.
        name: String,
        /// Positional arguments as Python would print them (`"(2, 3)"`).
        args: String,
        /// Keyword arguments as Python would print them (`"{}"`).
        kwargs: String,
        /// Workflow root id.
        root_id: Option<String>,
        /// Parent task id.
        parent_id: Option<String>,
        /// Retries so far.
        retries: u32,
        /// ETA (ISO-8601).
        eta: Option<String>,
        /// Expiry (ISO-8601).
        expires: Option<String>,
        /// Queue.
        queue: String,
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// A worker received the task.
    TaskReceived {
        /// Task id.
        uuid: String,
        /// Task name.
        name: String,
        /// Positional arguments as Python would print them.
        args: String,
        /// Keyword arguments as Python would print them.
        kwargs: String,
        /// Workflow root id.
        root_id: Option<String>,
        /// Parent task id.
        parent_id: Option<String>,
        /// Retries so far.
        retries: u32,
        /// ETA (ISO-8601).
        eta: Option<String>,
        /// Expiry (ISO-8601).
        expires: Option<String>,
    },
    /// The task started running.
    TaskStarted {
        /// Task id.
        uuid: String,
    },
    /// The task returned.
    TaskSucceeded {
        /// Task id.
        uuid: String,
        /// The result as Python would print it (`"5"`).
        result: String,
        /// Run time in seconds.
        runtime: f64,
    },
    /// The task failed.
    TaskFailed {
        /// Task id.
        uuid: String,
        /// The exception as Python would print it (`"ValueError('kaboom')"`).
        exception: String,
        /// Traceback text.
        traceback: String,
    },
    /// The task will be retried.
    TaskRetried {
        /// Task id.
        uuid: String,
        /// The exception that caused the retry.
        exception: String,
        /// Traceback text.
        traceback: String,
    },
    /// The task was revoked, expired or terminated.
    TaskRevoked {
        /// Task id.
        uuid: String,
        /// It was running and was stopped.
        terminated: bool,
        /// Signal number used to stop it (`None` when not terminated).
        signum: Option<i32>,
        /// Not run because it expired.
        expired: bool,
    },
    /// The task rejected its message.
    TaskRejected {
        /// Task id.
        uuid: String,
        /// The message went back to the queue.
        requeue: bool,
    },
    /// The worker started.
    WorkerOnline(WorkerStatus),
    /// The worker is alive (every `freq` seconds).
    WorkerHeartbeat(WorkerStatus),
    /// The worker stopped.
    WorkerOffline(WorkerStatus),
}

impl EventKind {
    /// Celery's event type (`task-succeeded`, `worker-heartbeat`).
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::TaskSent { .. } => "task-sent",
            EventKind::TaskReceived { .. } => "task-received",
            EventKind::TaskStarted { .. } => "task-started",
            EventKind::TaskSucceeded { .. } => "task-succeeded",
            EventKind::TaskFailed { .. } => "task-failed",
            EventKind::TaskRetried { .. } => "task-retried",
            EventKind::TaskRevoked { .. } => "task-revoked",
            EventKind::TaskRejected { .. } => "task-rejected",
            EventKind::WorkerOnline(_) => "worker-online",
            EventKind::WorkerHeartbeat(_) => "worker-heartbeat",
            EventKind::WorkerOffline(_) => "worker-offline",
        }
    }

    /// The routing key of this event sent on its own (`task.succeeded`).
    pub fn routing_key(&self) -> String {
        routing_key(self.type_name())
    }

    /// Whether this is a `task-*` event (sent only with task events on).
    pub fn is_task_event(&self) -> bool {
        !matches!(
            self,
            EventKind::WorkerOnline(_)
                | EventKind::WorkerHeartbeat(_)
                | EventKind::WorkerOffline(_)
        )
    }

    /// The event body Celery sends: the origin's fields, this event's fields,
    /// `clock`, `timestamp` (Unix seconds) and `type`.
    pub fn to_body(&self, origin: &Origin, clock: u64, timestamp: f64) -> Value {
        let mut body = Map::new();
        body.insert("hostname".into(), json!(origin.hostname));
        body.insert("utcoffset".into(), json!(origin.utcoffset));
        body.insert("pid".into(), json!(origin.pid));
        body.insert("clock".into(), json!(clock));
        let fields = match self {
            EventKind::TaskSent {
                uuid,
                name,
                args,
                kwargs,
                root_id,
                parent_id,
                retries,
                eta,
                expires,
                queue,
                exchange,
                routing_key,
            } => json!({
                "uuid": uuid, "root_id": root_id, "parent_id": parent_id, "name": name,
                "args": args, "kwargs": kwargs, "retries": retries, "eta": eta,
                "expires": expires, "queue": queue, "exchange": exchange,
                "routing_key": routing_key,
            }),
            EventKind::TaskReceived {
                uuid,
                name,
                args,
                kwargs,
                root_id,
                parent_id,
                retries,
                eta,
                expires,
            } => json!({
                "uuid": uuid, "name": name, "args": args, "kwargs": kwargs,
                "root_id": root_id, "parent_id": parent_id, "retries": retries,
                "eta": eta, "expires": expires,
            }),
            EventKind::TaskStarted { uuid } => json!({ "uuid": uuid }),
            EventKind::TaskSucceeded {
                uuid,
                result,
                runtime,
            } => json!({ "uuid": uuid, "result": result, "runtime": runtime }),
            EventKind::TaskFailed {
                uuid,
                exception,
                traceback,
            }
            | EventKind::TaskRetried {
                uuid,
                exception,
                traceback,
            } => json!({ "uuid": uuid, "exception": exception, "traceback": traceback }),
            EventKind::TaskRevoked {
                uuid,
                terminated,
                signum,
                expired,
            } => json!({
                "uuid": uuid, "terminated": terminated, "signum": signum, "expired": expired,
            }),
            EventKind::TaskRejected { uuid, requeue } => {
                json!({ "uuid": uuid, "requeue": requeue })
            }
            EventKind::WorkerOnline(status)
            | EventKind::WorkerHeartbeat(status)
            | EventKind::WorkerOffline(status) => json!({
                "freq": status.freq, "active": status.active, "processed": status.processed,
                "loadavg": status.loadavg, "sw_ident": status.sw_ident,
                "sw_ver": status.sw_ver, "sw_sys": status.sw_sys,
            }),
        };
        if let Value::Object(fields) = fields {
            body.extend(fields);
        }
        body.insert("timestamp".into(), json!(timestamp));
        body.insert("type".into(), json!(self.type_name()));
        Value::Object(body)
    }
}

/// Offset of local time from UTC in hours as Celery's `utcoffset()` computes it
/// (positive west of UTC; 0 on a UTC machine).
pub fn local_utcoffset() -> f64 {
    let east = chrono::Local::now().offset().local_minus_utc();
    f64::from(-east) / 3600.0
}

/// `task-sent` for a message published to `queue`.
pub fn task_sent(message: &crate::TaskMessage, queue: &str) -> EventKind {
    let headers = &message.headers;
    let info = message.properties.delivery_info.as_ref();
    EventKind::TaskSent {
        uuid: headers.id.clone(),
        name: headers.task.clone(),
        args: headers
            .argsrepr
            .clone()
            .unwrap_or_else(|| py_repr_args(&message.args)),
        kwargs: headers
            .kwargsrepr
            .clone()
            .unwrap_or_else(|| py_repr_kwargs(&message.kwargs)),
        root_id: headers.root_id.clone(),
        parent_id: headers.parent_id.clone(),
        retries: headers.retries,
        eta: headers.eta.map(crate::time::format_iso),
        expires: headers.expires.map(crate::time::format_iso),
        queue: queue.to_string(),
        exchange: info.map(|i| i.exchange.clone()).unwrap_or_default(),
        routing_key: info
            .map(|i| i.routing_key.clone())
            .unwrap_or_else(|| queue.to_string()),
    }
}

/// The routing key of an event type: `-` becomes `.` (`task-succeeded` →
/// `task.succeeded`).
pub fn routing_key(event_type: &str) -> String {
    event_type.replace('-', ".")
}

/// The message carrying `body` (one event, or an array for `task.multi`) as Celery's
/// event dispatcher sends it: JSON, header `hostname`, transient (delivery mode 1).
pub fn event_envelope(hostname: &str, body: &Value) -> Envelope {
    let mut headers = Map::new();
    headers.insert("hostname".into(), json!(hostname));
    Envelope {
        headers: headers.into(),
        properties: Properties {
            delivery_mode: Some(1),
            ..Properties::default()
        },
        content_type: crate::message::CONTENT_TYPE_JSON.to_string(),
        content_encoding: "utf-8".to_string(),
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

/// The events in a received event message: one object, or the array of a
/// `task.multi` batch. Anything else gives no events.
pub fn events_in(envelope: &Envelope) -> Vec<Map<String, Value>> {
    match serde_json::from_slice::<Value>(&envelope.body) {
        Ok(Value::Object(event)) => vec![event],
        Ok(Value::Array(events)) => events
            .into_iter()
            .filter_map(|e| match e {
                Value::Object(event) => Some(event),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A JSON value as Python's `repr` prints the equivalent Python value (`None`,
/// `True`, `'text'`, `[1, 2]`, `{'a': 1}`), as Celery's events show arguments and
/// results.
pub fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

/// Positional arguments as Python prints a tuple: `(2, 3)`, `('a',)`, `()`.
pub fn py_repr_args(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_repr(&mut out, arg);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    out
}

/// Keyword arguments as Python prints a dict: `{'x': 1}`.
pub fn py_repr_kwargs(kwargs: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_map(&mut out, kwargs);
    out
}

fn write_repr(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_map(out, map),
    }
}

fn write_map(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str(out, key);
        out.push_str(": ");
        write_repr(out, value);
    }
    out.push('}');
}

/// Python's string repr: single quotes unless the text has `'` and no `"`.
fn write_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reprs_look_like_python() {
        assert_eq!(py_repr_args(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(py_repr_args(&[json!("a")]), "('a',)");
        assert_eq!(py_repr_args(&[]), "()");
        assert_eq!(
            py_repr(&json!({"x": [null, true, 1.5]})),
            "{'x': [None, True, 1.5]}"
        );
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_repr(&json!("a'b\"c\n")), "'a\\'b\"c\\n'");
    }

    #[test]
    fn routing_keys_replace_dashes() {
        assert_eq!(routing_key("task-succeeded"), "task.succeeded");
        assert_eq!(
            EventKind::TaskStarted { uuid: "x".into() }.routing_key(),
            "task.started"
        );
        assert!(!EventKind::WorkerOffline(WorkerStatus {
            freq: 2.0,
            active: 0,
            processed: 0,
            loadavg: [0.0; 3],
            sw_ident: String::new(),
            sw_ver: String::new(),
            sw_sys: String::new(),
        })
        .is_task_event());
    }
}
