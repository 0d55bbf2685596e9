//! Celery task messages, protocol v2.
//!
//! A message is the AMQP triple (headers, properties, body) plus a content type and
//! encoding: the transport-neutral [`Envelope`]. Brokers move envelopes; the worker
//! decodes an envelope into a [`TaskMessage`] (typed headers, `[args, kwargs, embed]`).
//!
//! Decoding refuses what a celeriac worker must never run, each with its own
//! [`DecodeError`]: pickle and YAML bodies, protocol v1 messages, and bodies that are not
//! a three-element `[args, kwargs, embed]` array.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};

use crate::time::{format_iso, parse_iso};

/// Content type of JSON bodies, the only serializer celeriac runs.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of pickle bodies: always refused.
pub const CONTENT_TYPE_PICKLE: &str = "application/x-python-serialize";
/// Content type of YAML bodies: refused.
pub const CONTENT_TYPE_YAML: &str = "application/x-yaml";
/// Content type of msgpack bodies: not supported yet.
pub const CONTENT_TYPE_MSGPACK: &str = "application/x-msgpack";

/// Why an envelope could not be turned into a runnable task message.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The serializer is dangerous and is never deserialized (pickle, YAML).
    #[error("refused content type {content_type:?}: {reason}")]
    RefusedContentType {
        /// The content type found on the message.
        content_type: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The serializer is not supported.
    #[error("unsupported content type {0:?}; celeriac accepts application/json")]
    UnsupportedContentType(String),
    /// The body is compressed with a codec celeriac does not read.
    #[error("unsupported body compression {0:?}")]
    UnsupportedCompression(String),
    /// A Celery protocol v1 message (no `task` header, the body is a dict).
    #[error("protocol v1 message for task {task:?} refused: celeriac speaks Celery protocol v2 only (set task_protocol=2 on the sender)")]
    ProtocolV1 {
        /// The task name found in the v1 body.
        task: String,
    },
    /// A required header is missing.
    #[error("missing header {0:?}")]
    MissingHeader(&'static str),
    /// A header has the wrong type or an unparsable value.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader {
        /// Header name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The body is not `[args, kwargs, embed]`.
    #[error("invalid body: {0}")]
    InvalidBody(String),
    /// The body is not valid JSON.
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The transport envelope itself could not be read.
    #[error("invalid envelope: {0}")]
    InvalidEnvelope(String),
    /// The message is larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
}

/// Where a message was published, as kombu records it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    /// Exchange name (`""` is the anonymous exchange).
    #[serde(default)]
    pub exchange: String,
    /// Routing key used at publish.
    #[serde(default)]
    pub routing_key: String,
    /// Set by kombu when a message is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<bool>,
}

/// Message properties (AMQP basic properties plus kombu's Redis extras).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Properties {
    /// Equals the task id for task messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Reply queue of the RPC result backend; may be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// 2 = persistent (tasks), 1 = transient (events, control replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_mode: Option<u8>,
    /// AMQP per-message TTL in milliseconds, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// Where the message was published (Redis transport).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_info: Option<DeliveryInfo>,
    /// Message priority. Its direction depends on the broker (see the broker docs).
    #[serde(
        default,
        deserialize_with = "lenient_priority",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<u8>,
    /// `"base64"` when the body is base64 text inside a JSON envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_encoding: Option<String>,
    /// Publisher-chosen tag (Redis transport: a uuid4 kept across restores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_tag: Option<String>,
    /// Properties celeriac does not interpret, kept as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn lenient_priority<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    Ok(match value {
        Some(Value::Number(n)) => n.as_u64().map(|p| p.min(255) as u8),
        _ => None,
    })
}

/// A transport message: what brokers store and move.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Application headers (for tasks: the protocol v2 headers).
    pub headers: Map<String, Value>,
    /// Message properties.
    pub properties: Properties,
    /// MIME type of the body.
    pub content_type: String,
    /// Character encoding of the body (`utf-8`, or `binary`).
    pub content_encoding: String,
    /// The serialized body bytes (not base64).
    pub body: Vec<u8>,
}

/// kombu's JSON envelope, as stored in Redis lists and in celeriac's SQLite broker.
#[derive(Serialize, Deserialize)]
struct KombuEnvelope {
    body: Value,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    properties: Properties,
}

impl Envelope {
    /// Serializes as kombu's JSON envelope (`{"body": base64, "content-type", ...}`).
    pub fn to_kombu_json(&self) -> Vec<u8> {
        let mut properties = self.properties.clone();
        properties.body_encoding = Some("base64".to_string());
        let envelope = KombuEnvelope {
            body: Value::String(base64::engine::general_purpose::STANDARD.encode(&self.body)),
            content_encoding: Some(self.content_encoding.clone()),
            content_type: Some(self.content_type.clone()),
            headers: self.headers.clone(),
            properties,
        };
        serde_json::to_vec(&envelope).unwrap_or_default()
    }

    /// Reads kombu's JSON envelope. The body is base64-decoded when
    /// `properties.body_encoding` is `"base64"` and used as is otherwise.
    pub fn from_kombu_json(raw: &[u8]) -> Result<Envelope, DecodeError> {
        let envelope: KombuEnvelope =
            serde_json::from_slice(raw).map_err(|e| DecodeError::InvalidEnvelope(e.to_string()))?;
        let body = match (&envelope.body, envelope.properties.body_encoding.as_deref()) {
            (Value::String(text), Some("base64")) => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| DecodeError::InvalidEnvelope(format!("body is not base64: {e}")))?,
            (Value::String(text), _) => text.as_bytes().to_vec(),
            (other, _) => serde_json::to_vec(other).unwrap_or_default(),
        };
        Ok(Envelope {
            headers: envelope.headers,
            properties: envelope.properties,
            content_type: envelope
                .content_type
                .unwrap_or_else(|| CONTENT_TYPE_JSON.to_string()),
            content_encoding: envelope
                .content_encoding
                .unwrap_or_else(|| "utf-8".to_string()),
            body,
        })
    }

    /// The task id, if the headers carry one (used to record a failure for a message
    /// that cannot be decoded further).
    pub fn task_id_hint(&self) -> Option<&str> {
        self.headers.get("id").and_then(Value::as_str)
    }

    /// The task name, if the headers carry one.
    pub fn task_name_hint(&self) -> Option<&str> {
        self.headers.get("task").and_then(Value::as_str)
    }

    /// Size in bytes of the body plus the headers (names and string values counted
    /// in full, other values roughly), for the `task_max_message_bytes` limit: a
    /// huge header counts as much as a huge body.
    pub fn approximate_size(&self) -> usize {
        let mut size = self.body.len();
        // An explicit stack: header values may be nested (as deep as the JSON
        // parser allowed), and counting must not recurse.
        let mut pending: Vec<&Value> = Vec::new();
        for (name, value) in &self.headers {
            size += name.len() + 8;
            pending.push(value);
        }
        while let Some(value) = pending.pop() {
            size += match value {
                Value::String(text) => text.len() + 2,
                Value::Array(items) => {
                    pending.extend(items);
                    2 + items.len()
                }
                Value::Object(map) => {
                    for (key, inner) in map {
                        size += key.len() + 4;
                        pending.push(inner);
                    }
                    2
                }
                _ => 8,
            };
        }
        size
    }
}

/// A task signature: a task name with arguments and options, as Celery encodes it in
/// `embed` and in canvas objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    /// Registered task name.
    pub task: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// `apply_async` options (`task_id`, `queue`, `countdown`, ...).
    #[serde(default)]
    pub options: Map<String, Value>,
    /// `null` for a plain task; `"chain"`, `"group"`, `"chord"`, ... for canvas objects.
    #[serde(default)]
    pub subtask_type: Option<String>,
    /// When true the parent's result is not prepended to `args`.
    #[serde(default)]
    pub immutable: bool,
    /// Fields celeriac does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Signature {
    /// A plain signature of `task` with positional arguments.
    pub fn new(task: impl Into<String>, args: Vec<Value>) -> Signature {
        Signature {
            task: task.into(),
            args,
            kwargs: Map::new(),
            options: Map::new(),
            subtask_type: None,
            immutable: false,
            extra: Map::new(),
        }
    }
}

/// The third element of the body: workflow continuations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Embed {
    /// Signatures to call with the result on success (`link`).
    #[serde(default)]
    pub callbacks: Option<Vec<Signature>>,
    /// Signatures to call with the task id on failure (`link_error`).
    #[serde(default)]
    pub errbacks: Option<Vec<Signature>>,
    /// Remaining chain steps, **reversed**: the next step is the last element.
    #[serde(default)]
    pub chain: Option<Vec<Signature>>,
    /// Chord body to call when the group completes.
    #[serde(default)]
    pub chord: Option<Signature>,
    /// Fields celeriac does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The protocol v2 task headers, in the order Celery 5.7 emits them.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskHeaders {
    /// Sender language (`"py"`, `"rust"`).
    pub lang: Option<String>,
    /// Registered task name.
    pub task: String,
    /// Task id.
    pub id: String,
    /// Display name, when set.
    pub shadow: Option<String>,
    /// Earliest start time.
    pub eta: Option<DateTime<Utc>>,
    /// After this time the task is not run (REVOKED, expired).
    pub expires: Option<DateTime<Utc>>,
    /// Group id of group and chord members.
    pub group: Option<String>,
    /// Position within the group.
    pub group_index: Option<i64>,
    /// How many times this task was retried.
    pub retries: u32,
    /// `[hard, soft]` time limits in seconds (hard first, as Celery's code does).
    pub timelimit: [Option<Number>; 2],
    /// Id of the first task of the workflow.
    pub root_id: Option<String>,
    /// Id of the task that sent this one.
    pub parent_id: Option<String>,
    /// `repr` of the arguments, for logs and events.
    pub argsrepr: Option<String>,
    /// `repr` of the keyword arguments.
    pub kwargsrepr: Option<String>,
    /// Sender node name.
    pub origin: Option<String>,
    /// `Some(true)`: store no result; `None`: the task's default.
    pub ignore_result: Option<bool>,
    /// `Task.replace` depth.
    pub replaced_task_nesting: Option<i64>,
    /// Stamping API header names.
    pub stamped_headers: Option<Vec<String>>,
    /// Stamps.
    pub stamps: Option<Map<String, Value>>,
    /// Any other header (user headers, `redelivered`, ...), kept in order.
    pub extra: Map<String, Value>,
}

impl TaskHeaders {
    /// Headers for a new task with Python's defaults for everything else.
    pub fn new(task: impl Into<String>, id: impl Into<String>) -> TaskHeaders {
        let id = id.into();
        TaskHeaders {
            lang: Some("rust".to_string()),
            task: task.into(),
            root_id: Some(id.clone()),
            id,
            shadow: None,
            eta: None,
            expires: None,
            group: None,
            group_index: None,
            retries: 0,
            timelimit: [None, None],
            parent_id: None,
            argsrepr: None,
            kwargsrepr: None,
            origin: None,
            ignore_result: Some(false),
            replaced_task_nesting: Some(0),
            stamped_headers: None,
            stamps: Some(Map::new()),
            extra: Map::new(),
        }
    }

    /// The hard time limit from the `timelimit` header, if set.
    pub fn hard_time_limit(&self) -> Option<std::time::Duration> {
        seconds_to_duration(self.timelimit[0].as_ref())
    }

    /// The soft time limit from the `timelimit` header, if set.
    pub fn soft_time_limit(&self) -> Option<std::time::Duration> {
        seconds_to_duration(self.timelimit[1].as_ref())
    }

    fn from_map(mut map: Map<String, Value>) -> Result<TaskHeaders, DecodeError> {
        let task = take_required_string(&mut map, "task")?;
        let id = take_required_string(&mut map, "id")?;
        let lang = take_opt_string(&mut map, "lang")?;
        let shadow = take_opt_string(&mut map, "shadow")?;
        let eta = take_opt_time(&mut map, "eta")?;
        let expires = take_opt_time(&mut map, "expires")?;
        let group = take_opt_string(&mut map, "group")?;
        let group_index = take_opt_int(&mut map, "group_index")?;
        let retries = take_opt_int(&mut map, "retries")?.unwrap_or(0);
        let retries = u32::try_from(retries).map_err(|_| DecodeError::InvalidHeader {
            name: "retries",
            reason: format!("{retries} is not a retry count"),
        })?;
        let timelimit = take_timelimit(&mut map)?;
        let root_id = take_opt_string(&mut map, "root_id")?;
        let parent_id = take_opt_string(&mut map, "parent_id")?;
        let argsrepr = take_opt_string(&mut map, "argsrepr")?;
        let kwargsrepr = take_opt_string(&mut map, "kwargsrepr")?;
        let origin = take_opt_string(&mut map, "origin")?;
        let ignore_result = match map.remove("ignore_result") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(other) => {
                return Err(DecodeError::InvalidHeader {
                    name: "ignore_result",
                    reason: format!("expected a boolean, found {other}"),
                })
            }
        };
        let replaced_task_nesting = take_opt_int(&mut map, "replaced_task_nesting")?;
        let stamped_headers = match map.remove("stamped_headers") {
            None | Some(Value::Null) => None,
            Some(value) => {
                Some(
                    serde_json::from_value(value).map_err(|e| DecodeError::InvalidHeader {
                        name: "stamped_headers",
                        reason: e.to_string(),
                    })?,
                )
            }
        };
        let stamps = match map.remove("stamps") {
            None | Some(Value::Null) => None,
            Some(Value::Object(stamps)) => Some(stamps),
            Some(other) => {
                return Err(DecodeError::InvalidHeader {
                    name: "stamps",
                    reason: format!("expected an object, found {other}"),
                })
            }
        };
        Ok(TaskHeaders {
            lang,
            task,
            id,
            shadow,
            eta,
            expires,
            group,
            group_index,
            retries,
            timelimit,
            root_id,
            parent_id,
            argsrepr,
            kwargsrepr,
            origin,
            ignore_result,
            replaced_task_nesting,
            stamped_headers,
            stamps,
            extra: map,
        })
    }

    /// The headers as a JSON map in Celery's order; unknown headers follow.
    pub fn to_map(&self) -> Map<String, Value> {
        let opt_str = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
        let opt_time = |v: &Option<DateTime<Utc>>| {
            v.map(|t| Value::String(format_iso(t)))
                .unwrap_or(Value::Null)
        };
        let mut map = Map::new();
        map.insert("lang".into(), opt_str(&self.lang));
        map.insert("task".into(), Value::String(self.task.clone()));
        map.insert("id".into(), Value::String(self.id.clone()));
        map.insert("shadow".into(), opt_str(&self.shadow));
        map.insert("eta".into(), opt_time(&self.eta));
        map.insert("expires".into(), opt_time(&self.expires));
        map.insert("group".into(), opt_str(&self.group));
        map.insert(
            "group_index".into(),
            self.group_index.map(Value::from).unwrap_or(Value::Null),
        );
        map.insert("retries".into(), Value::from(self.retries));
        map.insert(
            "timelimit".into(),
            Value::Array(
                self.timelimit
                    .iter()
                    .map(|n| n.clone().map(Value::Number).unwrap_or(Value::Null))
                    .collect(),
            ),
        );
        map.insert("root_id".into(), opt_str(&self.root_id));
        map.insert("parent_id".into(), opt_str(&self.parent_id));
        map.insert("argsrepr".into(), opt_str(&self.argsrepr));
        map.insert("kwargsrepr".into(), opt_str(&self.kwargsrepr));
        map.insert("origin".into(), opt_str(&self.origin));
        map.insert(
            "ignore_result".into(),
            self.ignore_result.map(Value::Bool).unwrap_or(Value::Null),
        );
        if let Some(nesting) = self.replaced_task_nesting {
            map.insert("replaced_task_nesting".into(), Value::from(nesting));
        }
        map.insert(
            "stamped_headers".into(),
            self.stamped_headers
                .as_ref()
                .map(|h| Value::from(h.clone()))
                .unwrap_or(Value::Null),
        );
        if let Some(stamps) = &self.stamps {
            map.insert("stamps".into(), Value::Object(stamps.clone()));
        }
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        map
    }
}

fn seconds_to_duration(n: Option<&Number>) -> Option<std::time::Duration> {
    let secs = n?.as_f64()?;
    (secs.is_finite() && secs > 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}

fn take_required_string(
    map: &mut Map<String, Value>,
    name: &'static str,
) -> Result<String, DecodeError> {
    match map.remove(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(DecodeError::InvalidHeader {
            name,
            reason: "empty".into(),
        }),
        None | Some(Value::Null) => Err(DecodeError::MissingHeader(name)),
        Some(other) => Err(DecodeError::InvalidHeader {
            name,
            reason: format!("expected a string, found {other}"),
        }),
    }
}

fn take_opt_string(
    map: &mut Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, DecodeError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(DecodeError::InvalidHeader {
            name,
            reason: format!("expected a string, found {other}"),
        }),
    }
}

fn take_opt_int(
    map: &mut Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, DecodeError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(DecodeError::InvalidHeader {
            name,
            reason: format!("expected an integer, found {n}"),
        }),
        Some(other) => Err(DecodeError::InvalidHeader {
            name,
            reason: format!("expected an integer, found {other}"),
        }),
    }
}

fn take_opt_time(
    map: &mut Map<String, Value>,
    name: &'static str,
) -> Result<Option<DateTime<Utc>>, DecodeError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_iso(&s).map(Some).ok_or(DecodeError::InvalidHeader {
            name,
            reason: format!("{s:?} is not an ISO-8601 date-time"),
        }),
        Some(other) => Err(DecodeError::InvalidHeader {
            name,
            reason: format!("expected an ISO-8601 string, found {other}"),
        }),
    }
}

fn take_timelimit(map: &mut Map<String, Value>) -> Result<[Option<Number>; 2], DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidHeader {
        name: "timelimit",
        reason,
    };
    match map.remove("timelimit") {
        None | Some(Value::Null) => Ok([None, None]),
        Some(Value::Array(items)) if items.len() == 2 => {
            let mut out: [Option<Number>; 2] = [None, None];
            for (slot, item) in out.iter_mut().zip(items) {
                *slot = match item {
                    Value::Null => None,
                    Value::Number(n) => Some(n),
                    other => {
                        return Err(invalid(format!("expected a number or null, found {other}")))
                    }
                };
            }
            Ok(out)
        }
        Some(other) => Err(invalid(format!("expected [hard, soft], found {other}"))),
    }
}

/// A decoded protocol v2 task message.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Task headers.
    pub headers: TaskHeaders,
    /// Message properties.
    pub properties: Properties,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Workflow continuations.
    pub embed: Embed,
}

impl TaskMessage {
    /// A new message for `task` with id `id`, Python's default headers and properties.
    pub fn new(
        task: impl Into<String>,
        id: impl Into<String>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> TaskMessage {
        let headers = TaskHeaders::new(task, id);
        let properties = Properties {
            correlation_id: Some(headers.id.clone()),
            reply_to: Some(String::new()),
            delivery_mode: Some(2),
            priority: Some(0),
            ..Properties::default()
        };
        TaskMessage {
            headers,
            properties,
            args,
            kwargs,
            embed: Embed::default(),
        }
    }

    /// Decodes an envelope, refusing pickle/YAML, protocol v1 and malformed bodies.
    pub fn decode(envelope: &Envelope) -> Result<TaskMessage, DecodeError> {
        check_content_type(envelope)?;
        if let Some(compression) = envelope.headers.get("compression") {
            return Err(DecodeError::UnsupportedCompression(
                compression.as_str().unwrap_or("?").to_string(),
            ));
        }
        let body: Value = serde_json::from_slice(&envelope.body)
            .map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
        if !envelope.headers.contains_key("task") {
            if let Value::Object(fields) = &body {
                if let Some(task) = fields.get("task") {
                    return Err(DecodeError::ProtocolV1 {
                        task: task.as_str().unwrap_or("?").to_string(),
                    });
                }
            }
            return Err(DecodeError::MissingHeader("task"));
        }
        let headers = TaskHeaders::from_map(envelope.headers.clone())?;
        let (args, kwargs, embed) = split_body(body)?;
        Ok(TaskMessage {
            headers,
            properties: envelope.properties.clone(),
            args,
            kwargs,
            embed,
        })
    }

    /// Encodes as a JSON envelope. The body is always the three-element array.
    pub fn encode(&self) -> Envelope {
        let body = Value::Array(vec![
            Value::Array(self.args.clone()),
            Value::Object(self.kwargs.clone()),
            embed_to_value(&self.embed),
        ]);
        Envelope {
            headers: self.headers.to_map(),
            properties: self.properties.clone(),
            content_type: CONTENT_TYPE_JSON.to_string(),
            content_encoding: "utf-8".to_string(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }
}

fn embed_to_value(embed: &Embed) -> Value {
    // All four keys are always present (Python code paths call `.get()` on them).
    serde_json::to_value(embed).unwrap_or_else(
        |_| serde_json::json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null}),
    )
}

fn check_content_type(envelope: &Envelope) -> Result<(), DecodeError> {
    let content_type = envelope.content_type.trim().to_ascii_lowercase();
    match content_type.as_str() {
        CONTENT_TYPE_JSON | "" => Ok(()),
        CONTENT_TYPE_PICKLE => Err(DecodeError::RefusedContentType {
            content_type,
            reason: "pickle can execute arbitrary code and is never deserialized",
        }),
        CONTENT_TYPE_YAML | "application/yaml" => Err(DecodeError::RefusedContentType {
            content_type,
            reason: "YAML bodies are not accepted; send JSON",
        }),
        _ => Err(DecodeError::UnsupportedContentType(content_type)),
    }
}

/// `[args, kwargs, embed]` taken apart.
type BodyParts = (Vec<Value>, Map<String, Value>, Embed);

fn split_body(body: Value) -> Result<BodyParts, DecodeError> {
    let Value::Array(mut parts) = body else {
        return Err(DecodeError::InvalidBody(
            "expected a JSON array [args, kwargs, embed]".into(),
        ));
    };
    if parts.len() != 3 {
        return Err(DecodeError::InvalidBody(format!(
            "expected 3 elements [args, kwargs, embed], found {}",
            parts.len()
        )));
    }
    let embed = parts.pop().unwrap_or(Value::Null);
    let kwargs = parts.pop().unwrap_or(Value::Null);
    let args = parts.pop().unwrap_or(Value::Null);
    let args = match args {
        Value::Array(args) => args,
        other => {
            return Err(DecodeError::InvalidBody(format!(
                "args must be an array, found {other}"
            )))
        }
    };
    let kwargs = match kwargs {
        Value::Object(kwargs) => kwargs,
        Value::Null => Map::new(),
        other => {
            return Err(DecodeError::InvalidBody(format!(
                "kwargs must be an object, found {other}"
            )))
        }
    };
    let embed = match embed {
        Value::Null => Embed::default(),
        value @ Value::Object(_) => serde_json::from_value(value)
            .map_err(|e| DecodeError::InvalidBody(format!("invalid embed: {e}")))?,
        other => {
            return Err(DecodeError::InvalidBody(format!(
                "embed must be an object, found {other}"
            )))
        }
    };
    Ok((args, kwargs, embed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(headers: Value, body: Value, content_type: &str) -> Envelope {
        Envelope {
            headers: headers.as_object().cloned().unwrap_or_default(),
            properties: Properties::default(),
            content_type: content_type.into(),
            content_encoding: "utf-8".into(),
            body: serde_json::to_vec(&body).expect("json"),
        }
    }

    #[test]
    fn minimal_headers_decode() {
        let env = envelope(
            json!({"task": "tasks.add", "id": "x"}),
            json!([[1, 2], {}, null]),
            CONTENT_TYPE_JSON,
        );
        let msg = TaskMessage::decode(&env).expect("decodes");
        assert_eq!(msg.headers.task, "tasks.add");
        assert_eq!(msg.args, vec![json!(1), json!(2)]);
        assert_eq!(msg.headers.retries, 0);
    }

    #[test]
    fn pickle_and_yaml_are_refused() {
        let env = envelope(
            json!({"task": "t", "id": "x"}),
            json!([[], {}, {}]),
            CONTENT_TYPE_PICKLE,
        );
        let err = TaskMessage::decode(&env).expect_err("pickle refused");
        assert!(matches!(err, DecodeError::RefusedContentType { .. }));
        assert!(err.to_string().contains("pickle"));
        let env = envelope(
            json!({"task": "t", "id": "x"}),
            json!([[], {}, {}]),
            CONTENT_TYPE_YAML,
        );
        assert!(matches!(
            TaskMessage::decode(&env),
            Err(DecodeError::RefusedContentType { .. })
        ));
    }

    #[test]
    fn protocol_v1_is_detected() {
        let env = envelope(
            json!({}),
            json!({"task": "tasks.add", "id": "x", "args": [1, 2], "kwargs": {}}),
            CONTENT_TYPE_JSON,
        );
        let err = TaskMessage::decode(&env).expect_err("v1 refused");
        assert_eq!(
            err,
            DecodeError::ProtocolV1 {
                task: "tasks.add".into()
            }
        );
        assert!(err.to_string().contains("protocol v1"));
    }

    #[test]
    fn two_element_body_is_invalid() {
        let env = envelope(
            json!({"task": "t", "id": "x"}),
            json!([[], {}]),
            CONTENT_TYPE_JSON,
        );
        assert!(matches!(
            TaskMessage::decode(&env),
            Err(DecodeError::InvalidBody(_))
        ));
    }

    #[test]
    fn bad_eta_is_an_invalid_header() {
        let env = envelope(
            json!({"task": "t", "id": "x", "eta": "soon"}),
            json!([[], {}, null]),
            CONTENT_TYPE_JSON,
        );
        assert!(matches!(
            TaskMessage::decode(&env),
            Err(DecodeError::InvalidHeader { name: "eta", .. })
        ));
    }

    #[test]
    fn encoded_body_always_has_three_elements_and_all_embed_keys() {
        let msg = TaskMessage::new("t", "id-1", vec![json!(1)], Map::new());
        let env = msg.encode();
        let body: Value = serde_json::from_slice(&env.body).expect("json");
        assert_eq!(
            body,
            json!([[1], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
        );
        assert_eq!(TaskMessage::decode(&env).expect("round trip"), msg);
    }

    #[test]
    fn approximate_size_counts_large_headers() {
        let small = envelope(
            json!({"task": "t", "id": "x"}),
            json!([[], {}, null]),
            CONTENT_TYPE_JSON,
        );
        let big = envelope(
            json!({"task": "t", "id": "x", "argsrepr": "a".repeat(100_000),
                   "stamps": {"k": ["b".repeat(50_000)]}}),
            json!([[], {}, null]),
            CONTENT_TYPE_JSON,
        );
        assert!(
            small.approximate_size() < 200,
            "{}",
            small.approximate_size()
        );
        assert!(
            big.approximate_size() > 150_000,
            "{}",
            big.approximate_size()
        );
    }

    #[test]
    fn deeply_nested_json_is_refused_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let env = Envelope {
            headers: json!({"task": "t", "id": "x"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            properties: Properties::default(),
            content_type: CONTENT_TYPE_JSON.into(),
            content_encoding: "utf-8".into(),
            body: format!("[{deep}, {{}}, null]").into_bytes(),
        };
        match TaskMessage::decode(&env) {
            Err(DecodeError::InvalidJson(reason)) => {
                assert!(reason.contains("recursion limit"), "{reason}")
            }
            other => panic!("expected InvalidJson, got {other:?}"),
        }
        let raw = format!(r#"{{"body": "", "headers": {{"a": {deep}}}}}"#);
        assert!(matches!(
            Envelope::from_kombu_json(raw.as_bytes()),
            Err(DecodeError::InvalidEnvelope(_))
        ));
    }

    #[test]
    fn timelimit_is_hard_then_soft() {
        let env = envelope(
            json!({"task": "t", "id": "x", "timelimit": [10, 5]}),
            json!([[], {}, null]),
            CONTENT_TYPE_JSON,
        );
        let msg = TaskMessage::decode(&env).expect("decodes");
        assert_eq!(
            msg.headers.hard_time_limit(),
            Some(std::time::Duration::from_secs(10))
        );
        assert_eq!(
            msg.headers.soft_time_limit(),
            Some(std::time::Duration::from_secs(5))
        );
    }
}
