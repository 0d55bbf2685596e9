//! Celery task messages, protocol v2.
//!
//! A message is the AMQP triple (headers, properties, body) plus a content type and
//! encoding: the transport-neutral [`Envelope`]. Brokers move envelopes; the worker
//! decodes an envelope into a [`TaskMessage`] (typed headers, `[args, kwargs, embed]`).
//!
//! Decoding refuses what a celeriac worker must never run, each with its own
//! [`DecodeError`]: pickle and YAML bodies, protocol v1 messages, and bodies that are not
//! a three-element `[args, kwargs, embed]` array.

use std::borrow::Cow;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};

use crate::headers::Headers;
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
///
/// Deserialized by hand (not derived): serde's derive buffers every entry of a struct
/// with a `flatten` field before reading it, which cost a received message more than
/// its headers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Properties, D::Error> {
        deserializer.deserialize_map(PropertiesVisitor)
    }
}

struct PropertiesVisitor;

impl<'de> serde::de::Visitor<'de> for PropertiesVisitor {
    type Value = Properties;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map of message properties")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Properties, A::Error> {
        let mut properties = Properties::default();
        while let Some(HeaderName(key)) = map.next_key()? {
            match key.as_ref() {
                "correlation_id" => properties.correlation_id = map.next_value()?,
                "reply_to" => properties.reply_to = map.next_value()?,
                "delivery_mode" => properties.delivery_mode = map.next_value()?,
                "expiration" => properties.expiration = map.next_value()?,
                "delivery_info" => properties.delivery_info = map.next_value()?,
                "priority" => {
                    properties.priority = match map.next_value::<Option<Value>>()? {
                        Some(Value::Number(n)) => n.as_u64().map(|p| p.min(255) as u8),
                        _ => None,
                    }
                }
                "body_encoding" => properties.body_encoding = map.next_value()?,
                "delivery_tag" => properties.delivery_tag = map.next_value()?,
                _ => {
                    let value = map.next_value::<Value>()?;
                    properties.extra.insert(key.into_owned(), value);
                }
            }
        }
        Ok(properties)
    }
}

/// A transport message: what brokers store and move.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Application headers (for tasks: the protocol v2 headers); a received
    /// envelope keeps them as JSON text until they are read as a map.
    pub headers: Headers,
    /// Message properties.
    pub properties: Properties,
    /// MIME type of the body.
    pub content_type: String,
    /// Character encoding of the body (`utf-8`, or `binary`).
    pub content_encoding: String,
    /// The serialized body bytes (not base64).
    pub body: Vec<u8>,
}

/// kombu's JSON envelope as written, borrowing from the [`Envelope`].
#[derive(Serialize)]
struct KombuEnvelopeOut<'a> {
    body: &'a str,
    #[serde(rename = "content-encoding")]
    content_encoding: &'a str,
    #[serde(rename = "content-type")]
    content_type: &'a str,
    headers: &'a Headers,
    properties: PropertiesOut<'a>,
}

/// Properties a transport sets on the copy it writes, leaving the [`Envelope`] as
/// it is (the Redis transport's delivery tag, `delivery_info` and explicit priority).
#[derive(Debug, Clone, Copy, Default)]
pub struct PropertyOverrides<'a> {
    /// Replaces `properties.delivery_tag`.
    pub delivery_tag: Option<&'a str>,
    /// Replaces `properties.delivery_info`.
    pub delivery_info: Option<&'a DeliveryInfo>,
    /// Replaces `properties.priority`.
    pub priority: Option<u8>,
}

/// [`Properties`] with overrides, serialized in the derived field order.
struct PropertiesOut<'a> {
    base: &'a Properties,
    overrides: &'a PropertyOverrides<'a>,
}

impl Serialize for PropertiesOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let base = self.base;
        let o = self.overrides;
        let mut map = serializer.serialize_map(None)?;
        if let Some(v) = &base.correlation_id {
            map.serialize_entry("correlation_id", v)?;
        }
        if let Some(v) = &base.reply_to {
            map.serialize_entry("reply_to", v)?;
        }
        if let Some(v) = &base.delivery_mode {
            map.serialize_entry("delivery_mode", v)?;
        }
        if let Some(v) = &base.expiration {
            map.serialize_entry("expiration", v)?;
        }
        if let Some(v) = o.delivery_info.or(base.delivery_info.as_ref()) {
            map.serialize_entry("delivery_info", v)?;
        }
        if let Some(v) = o.priority.or(base.priority) {
            map.serialize_entry("priority", &v)?;
        }
        map.serialize_entry("body_encoding", "base64")?;
        if let Some(v) = o.delivery_tag.or(base.delivery_tag.as_deref()) {
            map.serialize_entry("delivery_tag", v)?;
        }
        for (key, value) in &base.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// kombu's JSON envelope as read: the body stays JSON text borrowed from the input.
#[derive(Deserialize)]
struct KombuEnvelopeIn<'a> {
    #[serde(borrow)]
    body: &'a serde_json::value::RawValue,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(default)]
    headers: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    properties: Properties,
}

impl Envelope {
    /// Serializes as kombu's JSON envelope (`{"body": base64, "content-type", ...}`).
    pub fn to_kombu_json(&self) -> Vec<u8> {
        self.to_kombu_json_with(&PropertyOverrides::default())
    }

    /// Serializes as kombu's JSON envelope with some properties replaced, without
    /// copying the envelope.
    pub fn to_kombu_json_with(&self, overrides: &PropertyOverrides<'_>) -> Vec<u8> {
        let body = base64::engine::general_purpose::STANDARD.encode(&self.body);
        let envelope = KombuEnvelopeOut {
            body: &body,
            content_encoding: &self.content_encoding,
            content_type: &self.content_type,
            headers: &self.headers,
            properties: PropertiesOut {
                base: &self.properties,
                overrides,
            },
        };
        let headers_len = match self.headers.approximate_len() {
            Some(len) => len,
            None => 64 * self.headers.len(),
        };
        let mut out = Vec::with_capacity(body.len() + 512 + headers_len);
        // Writing to a Vec fails only for a non-string map key, which a
        // `Map<String, Value>` cannot hold.
        let _ = serde_json::to_writer(&mut out, &envelope);
        out
    }

    /// Reads kombu's JSON envelope. The body is base64-decoded when
    /// `properties.body_encoding` is `"base64"` and used as is otherwise.
    pub fn from_kombu_json(raw: &[u8]) -> Result<Envelope, DecodeError> {
        let envelope: KombuEnvelopeIn<'_> =
            from_json_bytes(raw).map_err(|e| DecodeError::InvalidEnvelope(e.to_string()))?;
        let invalid = |e: serde_json::Error| DecodeError::InvalidEnvelope(e.to_string());
        let body_json = envelope.body.get();
        let body = if body_json.starts_with('"') {
            // The base64 text borrows from `raw` unless it has escapes.
            let text: std::borrow::Cow<'_, str> = match serde_json::from_str::<&str>(body_json) {
                Ok(text) => text.into(),
                Err(_) => serde_json::from_str::<String>(body_json)
                    .map_err(invalid)?
                    .into(),
            };
            if envelope.properties.body_encoding.as_deref() == Some("base64") {
                base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| DecodeError::InvalidEnvelope(format!("body is not base64: {e}")))?
            } else {
                text.into_owned().into_bytes()
            }
        } else {
            let value: Value = serde_json::from_str(body_json).map_err(invalid)?;
            serde_json::to_vec(&value).unwrap_or_default()
        };
        let headers = match envelope.headers {
            Some(text) => Headers::from_json(text)?,
            None => Headers::default(),
        };
        Ok(Envelope {
            headers,
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
        if let Some(text) = self.headers.json_text() {
            return size + text.get().len();
        }
        // An explicit stack: header values may be nested (as deep as the JSON
        // parser allowed), and counting must not recurse.
        let mut pending: Vec<&Value> = Vec::new();
        for (name, value) in self.headers.iter() {
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

    /// Sorts the entries of a received message's headers into the known headers
    /// (no hashing) and the rest (`extra`, kept in their order; a repeated name keeps
    /// its last value, as a JSON map does).
    fn sort_entries<'a>(
        entries: impl IntoIterator<Item = (Cow<'a, str>, Value)>,
    ) -> (KnownHeaders, Map<String, Value>) {
        let mut known = KnownHeaders::default();
        let mut extra = Map::new();
        for (name, value) in entries {
            let slot = match name.as_ref() {
                "task" => &mut known.task,
                "id" => &mut known.id,
                "lang" => &mut known.lang,
                "shadow" => &mut known.shadow,
                "eta" => &mut known.eta,
                "expires" => &mut known.expires,
                "group" => &mut known.group,
                "group_index" => &mut known.group_index,
                "retries" => &mut known.retries,
                "timelimit" => &mut known.timelimit,
                "root_id" => &mut known.root_id,
                "parent_id" => &mut known.parent_id,
                "argsrepr" => &mut known.argsrepr,
                "kwargsrepr" => &mut known.kwargsrepr,
                "origin" => &mut known.origin,
                "ignore_result" => &mut known.ignore_result,
                "replaced_task_nesting" => &mut known.replaced_task_nesting,
                "stamped_headers" => &mut known.stamped_headers,
                "stamps" => &mut known.stamps,
                _ => {
                    extra.insert(name.into_owned(), value);
                    continue;
                }
            };
            *slot = Some(value);
        }
        (known, extra)
    }

    /// Checks the known headers in Celery's order, so the first invalid one is the
    /// error whatever the order on the wire.
    fn from_known(
        known: KnownHeaders,
        extra: Map<String, Value>,
    ) -> Result<TaskHeaders, DecodeError> {
        let task = required_string(known.task, "task")?;
        let id = required_string(known.id, "id")?;
        let lang = opt_string(known.lang, "lang")?;
        let shadow = opt_string(known.shadow, "shadow")?;
        let eta = opt_time(known.eta, "eta")?;
        let expires = opt_time(known.expires, "expires")?;
        let group = opt_string(known.group, "group")?;
        let group_index = opt_int(known.group_index, "group_index")?;
        let retries = opt_int(known.retries, "retries")?.unwrap_or(0);
        let retries = u32::try_from(retries).map_err(|_| DecodeError::InvalidHeader {
            name: "retries",
            reason: format!("{retries} is not a retry count"),
        })?;
        let timelimit = timelimit(known.timelimit)?;
        let root_id = opt_string(known.root_id, "root_id")?;
        let parent_id = opt_string(known.parent_id, "parent_id")?;
        let argsrepr = opt_string(known.argsrepr, "argsrepr")?;
        let kwargsrepr = opt_string(known.kwargsrepr, "kwargsrepr")?;
        let origin = opt_string(known.origin, "origin")?;
        let ignore_result = match known.ignore_result {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(other) => {
                return Err(DecodeError::InvalidHeader {
                    name: "ignore_result",
                    reason: format!("expected a boolean, found {other}"),
                })
            }
        };
        let replaced_task_nesting = opt_int(known.replaced_task_nesting, "replaced_task_nesting")?;
        let stamped_headers =
            match known.stamped_headers {
                None | Some(Value::Null) => None,
                Some(value) => Some(Vec::<String>::deserialize(value).map_err(|e| {
                    DecodeError::InvalidHeader {
                        name: "stamped_headers",
                        reason: e.to_string(),
                    }
                })?),
            };
        let stamps = match known.stamps {
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
            extra,
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

/// The names of the headers [`TaskHeaders`] has fields for, in Celery's order.
const KNOWN_HEADERS: [&str; 19] = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

/// Writes the headers as [`TaskHeaders::to_map`] orders them, without building the
/// map. An `extra` entry named like a known header would replace it in the map:
/// [`TaskMessage::encode`] takes the map for those.
impl Serialize for TaskHeaders {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("lang", &self.lang)?;
        map.serialize_entry("task", &self.task)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("shadow", &self.shadow)?;
        map.serialize_entry("eta", &self.eta.map(format_iso))?;
        map.serialize_entry("expires", &self.expires.map(format_iso))?;
        map.serialize_entry("group", &self.group)?;
        map.serialize_entry("group_index", &self.group_index)?;
        map.serialize_entry("retries", &self.retries)?;
        map.serialize_entry("timelimit", &self.timelimit)?;
        map.serialize_entry("root_id", &self.root_id)?;
        map.serialize_entry("parent_id", &self.parent_id)?;
        map.serialize_entry("argsrepr", &self.argsrepr)?;
        map.serialize_entry("kwargsrepr", &self.kwargsrepr)?;
        map.serialize_entry("origin", &self.origin)?;
        map.serialize_entry("ignore_result", &self.ignore_result)?;
        if let Some(nesting) = self.replaced_task_nesting {
            map.serialize_entry("replaced_task_nesting", &nesting)?;
        }
        map.serialize_entry("stamped_headers", &self.stamped_headers)?;
        if let Some(stamps) = &self.stamps {
            map.serialize_entry("stamps", stamps)?;
        }
        for (name, value) in &self.extra {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

fn seconds_to_duration(n: Option<&Number>) -> Option<std::time::Duration> {
    let secs = n?.as_f64()?;
    (secs.is_finite() && secs > 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}

/// The protocol v2 headers [`TaskHeaders`] names, as received.
#[derive(Default)]
struct KnownHeaders {
    task: Option<Value>,
    id: Option<Value>,
    lang: Option<Value>,
    shadow: Option<Value>,
    eta: Option<Value>,
    expires: Option<Value>,
    group: Option<Value>,
    group_index: Option<Value>,
    retries: Option<Value>,
    timelimit: Option<Value>,
    root_id: Option<Value>,
    parent_id: Option<Value>,
    argsrepr: Option<Value>,
    kwargsrepr: Option<Value>,
    origin: Option<Value>,
    ignore_result: Option<Value>,
    replaced_task_nesting: Option<Value>,
    stamped_headers: Option<Value>,
    stamps: Option<Value>,
}

fn required_string(value: Option<Value>, name: &'static str) -> Result<String, DecodeError> {
    match value {
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

fn opt_string(value: Option<Value>, name: &'static str) -> Result<Option<String>, DecodeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(DecodeError::InvalidHeader {
            name,
            reason: format!("expected a string, found {other}"),
        }),
    }
}

fn opt_int(value: Option<Value>, name: &'static str) -> Result<Option<i64>, DecodeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| DecodeError::InvalidHeader {
                name,
                reason: format!("expected an integer, found {n}"),
            }),
        Some(other) => Err(DecodeError::InvalidHeader {
            name,
            reason: format!("expected an integer, found {other}"),
        }),
    }
}

fn opt_time(
    value: Option<Value>,
    name: &'static str,
) -> Result<Option<DateTime<Utc>>, DecodeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            parse_iso(&s)
                .map(Some)
                .ok_or_else(|| DecodeError::InvalidHeader {
                    name,
                    reason: format!("{s:?} is not an ISO-8601 date-time"),
                })
        }
        Some(other) => Err(DecodeError::InvalidHeader {
            name,
            reason: format!("expected an ISO-8601 string, found {other}"),
        }),
    }
}

fn timelimit(value: Option<Value>) -> Result<[Option<Number>; 2], DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidHeader {
        name: "timelimit",
        reason,
    };
    match value {
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
        let (headers, (args, kwargs, embed)) = Self::decode_parts(envelope)?;
        Ok(TaskMessage {
            headers,
            properties: envelope.properties.clone(),
            args,
            kwargs,
            embed,
        })
    }

    /// Decodes an envelope as [`TaskMessage::decode`] does, moving its properties
    /// into the message instead of copying them: on success the envelope is left
    /// with default properties; on error it is unchanged.
    pub fn decode_taking_properties(envelope: &mut Envelope) -> Result<TaskMessage, DecodeError> {
        let (headers, (args, kwargs, embed)) = Self::decode_parts(envelope)?;
        Ok(TaskMessage {
            headers,
            properties: std::mem::take(&mut envelope.properties),
            args,
            kwargs,
            embed,
        })
    }

    /// The headers and the body's parts of an envelope. Inlined into both callers:
    /// they then build the message in place, not from a copy of the parts.
    #[inline(always)]
    fn decode_parts(envelope: &Envelope) -> Result<(TaskHeaders, BodyParts), DecodeError> {
        check_content_type(envelope)?;
        // Received headers are read from their JSON text (no map is built): straight
        // into their types when every known header has its usual type, else through
        // a `Value` per header, for the precise error. Headers given as a map are read
        // from it.
        let typed = envelope.headers.json_text().and_then(|text| {
            serde_json::from_str::<TypedHeaders>(text.get())
                .ok()
                .and_then(TypedHeaders::finish)
        });
        let headers = match typed {
            Some(headers) => ReadHeaders::Typed(headers),
            None => {
                let (known, extra) = match envelope.headers.json_text() {
                    Some(text) => {
                        let entries = serde_json::from_str::<HeaderEntries<'_>>(text.get())
                            .map_err(|e| DecodeError::InvalidEnvelope(format!("headers: {e}")))?;
                        TaskHeaders::sort_entries(entries.0)
                    }
                    None => TaskHeaders::sort_entries(
                        envelope
                            .headers
                            .iter()
                            .map(|(name, value)| (Cow::Borrowed(name.as_str()), value.clone())),
                    ),
                };
                ReadHeaders::Sorted(Box::new(known), extra)
            }
        };
        let extra = match &headers {
            ReadHeaders::Typed(headers) => &headers.extra,
            ReadHeaders::Sorted(_, extra) => extra,
        };
        let inflated = match extra.get(COMPRESSION_HEADER) {
            None => None,
            Some(compression) => Some(inflate_body(compression, &envelope.body)?),
        };
        let body_bytes: &[u8] = inflated.as_deref().unwrap_or(&envelope.body);
        // The common body, `[[...], {...}, {...} | null]`, straight into its parts;
        // anything else through a `Value`, for the precise error.
        let body = match from_json_bytes::<BodyFastPath>(body_bytes) {
            Ok(parts) => Ok(parts),
            Err(_) => Err(serde_json::from_slice::<Value>(body_bytes)
                .map_err(|e| DecodeError::InvalidJson(e.to_string()))?),
        };
        let mut headers = headers;
        if inflated.is_some() {
            // The decoded message holds the plain body: a copy sent on (a retry) must
            // not claim a compression it no longer has.
            match &mut headers {
                ReadHeaders::Typed(headers) => headers.extra.remove(COMPRESSION_HEADER),
                ReadHeaders::Sorted(_, extra) => extra.remove(COMPRESSION_HEADER),
            };
        }
        let headers = match headers {
            ReadHeaders::Typed(headers) => headers,
            ReadHeaders::Sorted(known, extra) => {
                if known.task.is_none() {
                    if let Err(Value::Object(fields)) = &body {
                        if let Some(task) = fields.get("task") {
                            return Err(DecodeError::ProtocolV1 {
                                task: task.as_str().unwrap_or("?").to_string(),
                            });
                        }
                    }
                    return Err(DecodeError::MissingHeader("task"));
                }
                TaskHeaders::from_known(*known, extra)?
            }
        };
        let parts = match body {
            Ok(BodyFastPath(args, kwargs, embed)) => {
                (args, kwargs.unwrap_or_default(), embed.unwrap_or_default())
            }
            Err(value) => split_body(value)?,
        };
        Ok((headers, parts))
    }

    /// Encodes as a JSON envelope. The body is always the three-element array.
    pub fn encode(&self) -> Envelope {
        let body = Value::Array(vec![
            Value::Array(self.args.clone()),
            Value::Object(self.kwargs.clone()),
            embed_to_value(&self.embed),
        ]);
        Envelope {
            headers: self.encode_headers(),
            properties: self.properties.clone(),
            content_type: CONTENT_TYPE_JSON.to_string(),
            content_encoding: "utf-8".to_string(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }
}

impl TaskMessage {
    /// The headers as JSON text, written straight from the fields (no map, no
    /// hashing); as a map when an `extra` header shadows a known one or the text
    /// would not be accepted back (nested too deep).
    fn encode_headers(&self) -> Headers {
        let extra = &self.headers.extra;
        let shadowed =
            !extra.is_empty() && KNOWN_HEADERS.iter().any(|name| extra.contains_key(*name));
        if !shadowed {
            if let Some(headers) = serde_json::value::to_raw_value(&self.headers)
                .ok()
                .and_then(|text| Headers::from_json(text).ok())
            {
                return headers;
            }
        }
        self.headers.to_map().into()
    }
}

/// `serde_json::from_slice`, with the same result and the same errors, reading
/// valid UTF-8 as text: validated once as a whole instead of string by string (a
/// call per string, keys included, was about 3,000 instructions a received
/// message).
fn from_json_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        // Read as bytes for the error, which names where the bad byte is.
        Err(_) => serde_json::from_slice(bytes),
    }
}

fn embed_to_value(embed: &Embed) -> Value {
    // All four keys are always present (Python code paths call `.get()` on them).
    serde_json::to_value(embed).unwrap_or_else(
        |_| serde_json::json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null}),
    )
}

/// The header naming a body's compression (kombu's `task_compression`).
const COMPRESSION_HEADER: &str = "compression";

/// kombu's `zlib` / `gzip` compressor (`zlib.compress`: RFC 1950, not gzip).
pub const COMPRESSION_ZLIB: &str = "application/x-gzip";

/// The header value for a compression named as Celery names it (`gzip`, `zlib`,
/// or the MIME type itself); `None` for a codec celeriac does not write.
pub fn compression_type(name: &str) -> Option<&'static str> {
    match name.trim().to_ascii_lowercase().as_str() {
        "gzip" | "zlib" | COMPRESSION_ZLIB => Some(COMPRESSION_ZLIB),
        _ => None,
    }
}

/// Compresses an encoded envelope's body with kombu's zlib codec and names it in
/// the `compression` header, as kombu does for `compression='gzip'`.
pub fn compress_body(envelope: &mut Envelope) {
    use std::io::Write as _;
    let mut encoder = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(envelope.body.len() / 2),
        flate2::Compression::default(),
    );
    // Writing to a Vec cannot fail.
    let compressed = encoder
        .write_all(&envelope.body)
        .and_then(|()| encoder.finish());
    if let Ok(compressed) = compressed {
        envelope.body = compressed;
        envelope
            .headers
            .insert(COMPRESSION_HEADER.into(), Value::from(COMPRESSION_ZLIB));
    }
}

/// Most bytes a compressed body may inflate to (a bomb is refused, not expanded).
pub const MAX_INFLATED_BODY: usize = 64 * 1024 * 1024;

/// The body of a message sent with `compression`: kombu's zlib codec is read; the
/// others (bz2, lzma, brotli, zstd) are refused by name.
fn inflate_body(compression: &Value, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    inflate_at_most(compression, body, MAX_INFLATED_BODY)
}

/// [`inflate_body`] with the limit given.
fn inflate_at_most(compression: &Value, body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read as _;
    let name = compression.as_str().unwrap_or("?");
    if !name.trim().eq_ignore_ascii_case(COMPRESSION_ZLIB) {
        return Err(DecodeError::UnsupportedCompression(name.to_string()));
    }
    let mut inflated = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    flate2::read::ZlibDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| {
            DecodeError::InvalidEnvelope(format!("body compressed as {name} does not inflate: {e}"))
        })?;
    if inflated.len() > limit {
        return Err(DecodeError::InvalidEnvelope(format!(
            "body compressed as {name} inflates beyond {limit} bytes"
        )));
    }
    Ok(inflated)
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

/// `[args, kwargs, embed]` as almost every message has it (args an array, kwargs an
/// object or null, embed an object or null), read without an intermediate `Value`.
#[derive(Deserialize)]
struct BodyFastPath(Vec<Value>, Option<Map<String, Value>>, Option<Embed>);

/// Received headers, read typed or sorted for checking.
// A temporary of `TaskMessage::decode`: boxing the common variant would cost an
// allocation per message.
#[allow(clippy::large_enum_variant)]
enum ReadHeaders {
    /// Every known header had its usual type: the headers as they are.
    Typed(TaskHeaders),
    /// Read as a `Value` per header, to be checked in Celery's order.
    Sorted(Box<KnownHeaders>, Map<String, Value>),
}

/// Received headers read straight into their types, without a `Value` per header.
/// Reading fails (and [`TaskHeaders::from_known`] then finds the precise error) as
/// soon as a known header has another type than the one it must have; what it reads
/// is what the `Value` path accepts, with the same result.
#[derive(Default)]
struct TypedHeaders {
    lang: Option<String>,
    task: Option<String>,
    id: Option<String>,
    shadow: Option<String>,
    eta: Option<String>,
    expires: Option<String>,
    group: Option<String>,
    group_index: Option<i64>,
    retries: Option<i64>,
    timelimit: Option<(Option<Number>, Option<Number>)>,
    root_id: Option<String>,
    parent_id: Option<String>,
    argsrepr: Option<String>,
    kwargsrepr: Option<String>,
    origin: Option<String>,
    ignore_result: Option<bool>,
    replaced_task_nesting: Option<i64>,
    stamped_headers: Option<Vec<String>>,
    stamps: Option<Map<String, Value>>,
    extra: Map<String, Value>,
}

impl TypedHeaders {
    /// The headers, or `None` when one needs the checks of the `Value` path (task or
    /// id missing or empty, a date that does not parse, a negative or huge retry
    /// count).
    fn finish(self) -> Option<TaskHeaders> {
        let non_empty = |value: Option<String>| value.filter(|text| !text.is_empty());
        let time = |value: Option<String>| match value {
            None => Some(None),
            Some(text) => parse_iso(&text).map(Some),
        };
        let (hard, soft) = self.timelimit.unwrap_or((None, None));
        Some(TaskHeaders {
            lang: self.lang,
            task: non_empty(self.task)?,
            id: non_empty(self.id)?,
            shadow: self.shadow,
            eta: time(self.eta)?,
            expires: time(self.expires)?,
            group: self.group,
            group_index: self.group_index,
            retries: u32::try_from(self.retries.unwrap_or(0)).ok()?,
            timelimit: [hard, soft],
            root_id: self.root_id,
            parent_id: self.parent_id,
            argsrepr: self.argsrepr,
            kwargsrepr: self.kwargsrepr,
            origin: self.origin,
            ignore_result: self.ignore_result,
            replaced_task_nesting: self.replaced_task_nesting,
            stamped_headers: self.stamped_headers,
            stamps: self.stamps,
            extra: self.extra,
        })
    }
}

impl<'de> Deserialize<'de> for TypedHeaders {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TypedVisitor;
        impl<'de> serde::de::Visitor<'de> for TypedVisitor {
            type Value = TypedHeaders;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of headers")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TypedHeaders, A::Error> {
                // A repeated name keeps its last value, as a JSON map does (`null`
                // included: it reads as absent, as on the `Value` path).
                let mut h = TypedHeaders::default();
                while let Some(HeaderName(name)) = map.next_key()? {
                    match name.as_ref() {
                        "lang" => h.lang = map.next_value()?,
                        "task" => h.task = map.next_value()?,
                        "id" => h.id = map.next_value()?,
                        "shadow" => h.shadow = map.next_value()?,
                        "eta" => h.eta = map.next_value()?,
                        "expires" => h.expires = map.next_value()?,
                        "group" => h.group = map.next_value()?,
                        "group_index" => h.group_index = map.next_value()?,
                        "retries" => h.retries = map.next_value()?,
                        "timelimit" => h.timelimit = map.next_value()?,
                        "root_id" => h.root_id = map.next_value()?,
                        "parent_id" => h.parent_id = map.next_value()?,
                        "argsrepr" => h.argsrepr = map.next_value()?,
                        "kwargsrepr" => h.kwargsrepr = map.next_value()?,
                        "origin" => h.origin = map.next_value()?,
                        "ignore_result" => h.ignore_result = map.next_value()?,
                        "replaced_task_nesting" => h.replaced_task_nesting = map.next_value()?,
                        "stamped_headers" => h.stamped_headers = map.next_value()?,
                        "stamps" => h.stamps = map.next_value()?,
                        _ => {
                            let value = map.next_value::<Value>()?;
                            h.extra.insert(name.into_owned(), value);
                        }
                    }
                }
                Ok(h)
            }
        }
        deserializer.deserialize_map(TypedVisitor)
    }
}

/// The entries of a header object in their order, names borrowed from the text
/// when they have no escapes.
struct HeaderEntries<'a>(Vec<(Cow<'a, str>, Value)>);

impl<'de> Deserialize<'de> for HeaderEntries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> serde::de::Visitor<'de> for EntriesVisitor {
            type Value = HeaderEntries<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of headers")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<HeaderEntries<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(24));
                while let Some(HeaderName(name)) = map.next_key()? {
                    entries.push((name, map.next_value::<Value>()?));
                }
                Ok(HeaderEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// A header or property name, borrowed from the text when it has no escapes.
struct HeaderName<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for HeaderName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> serde::de::Visitor<'de> for NameVisitor {
            type Value = HeaderName<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a header name")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<HeaderName<'de>, E> {
                Ok(HeaderName(Cow::Borrowed(name)))
            }

            fn visit_str<E>(self, name: &str) -> Result<HeaderName<'de>, E> {
                Ok(HeaderName(Cow::Owned(name.to_string())))
            }

            fn visit_string<E>(self, name: String) -> Result<HeaderName<'de>, E> {
                Ok(HeaderName(Cow::Owned(name)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
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
            headers: headers.as_object().cloned().unwrap_or_default().into(),
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
                .unwrap_or_default()
                .into(),
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
    fn headers_are_written_as_text_exactly_as_their_map() {
        let mut message = TaskMessage::new("tasks.add", "id-1", vec![json!(1)], Map::new());
        message.headers.eta = parse_iso("2026-11-27T07:00:00.123456+00:00");
        message.headers.timelimit = [Some(Number::from(10)), None];
        message.headers.group_index = Some(3);
        message.headers.stamped_headers = Some(vec!["s".into()]);
        message
            .headers
            .extra
            .insert("x-user".into(), json!({"nested": [1, "two"]}));
        let envelope = message.encode();
        let text = envelope.headers.json_text().expect("encoded as text").get();
        let from_map = serde_json::to_string(&message.headers.to_map()).expect("serializes");
        assert_eq!(text, from_map);
        assert_eq!(TaskMessage::decode(&envelope).expect("decodes"), message);
        // An extra header named like a known one replaces it, as in the map.
        message
            .headers
            .extra
            .insert("task".into(), json!("shadowed"));
        let envelope = message.encode();
        assert!(envelope.headers.json_text().is_none());
        assert_eq!(*envelope.headers, message.headers.to_map());
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

    #[test]
    fn properties_keep_unknown_entries_and_read_priority_leniently() {
        let properties: Properties = serde_json::from_value(json!({
            "correlation_id": "c",
            "x-custom": [1, 2],
            "priority": "high",
            "delivery_info": {"exchange": "e", "routing_key": "rk"},
        }))
        .expect("reads");
        assert_eq!(properties.correlation_id.as_deref(), Some("c"));
        assert_eq!(properties.priority, None);
        assert_eq!(properties.extra.get("x-custom"), Some(&json!([1, 2])));
        let high: Properties = serde_json::from_value(json!({"priority": 300})).expect("reads");
        assert_eq!(high.priority, Some(255));
        let wrong = serde_json::from_value::<Properties>(json!({"correlation_id": 5}));
        assert!(wrong.is_err(), "a non-string correlation_id is an error");
    }

    #[test]
    fn kombu_json_with_overrides_writes_them_and_leaves_the_envelope() {
        let mut env = envelope(
            json!({"task": "t", "id": "x"}),
            json!([[], {}, null]),
            CONTENT_TYPE_JSON,
        );
        env.properties
            .extra
            .insert("x-custom".into(), json!("kept"));
        env.properties.delivery_tag = Some("old".into());
        let info = DeliveryInfo {
            exchange: String::new(),
            routing_key: "q".into(),
            redelivered: None,
        };
        let overrides = PropertyOverrides {
            delivery_tag: Some("new"),
            delivery_info: Some(&info),
            priority: Some(3),
        };
        let written: Value =
            serde_json::from_slice(&env.to_kombu_json_with(&overrides)).expect("json");
        let properties = &written["properties"];
        assert_eq!(properties["delivery_tag"], json!("new"));
        assert_eq!(properties["delivery_info"]["routing_key"], json!("q"));
        assert_eq!(properties["priority"], json!(3));
        assert_eq!(properties["body_encoding"], json!("base64"));
        assert_eq!(properties["x-custom"], json!("kept"));
        assert_eq!(env.properties.delivery_tag.as_deref(), Some("old"));
        let keys: Vec<&str> = properties
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "delivery_info",
                "priority",
                "body_encoding",
                "delivery_tag",
                "x-custom"
            ]
        );
        let back = Envelope::from_kombu_json(&env.to_kombu_json()).expect("decodes");
        assert_eq!(back, {
            let mut expected = env.clone();
            expected.properties.body_encoding = Some("base64".into());
            expected
        });
    }

    #[test]
    fn an_escaped_or_plain_body_text_reads_like_the_plain_one() {
        let plain = br#"{"body": "W1tdLHt9LG51bGxd", "properties": {"body_encoding": "base64"}}"#;
        let escaped =
            br#"{"body": "W1tdLHt9LG51bGxd\u0020", "properties": {"body_encoding": "base64"}}"#;
        assert_eq!(
            Envelope::from_kombu_json(plain).expect("decodes").body,
            b"[[],{},null]"
        );
        // An escape forces the owned path; a space is not base64.
        assert!(Envelope::from_kombu_json(escaped).is_err());
        let escaped_ok =
            br#"{"body": "W1tdLHt9\u004cG51bGxd", "properties": {"body_encoding": "base64"}}"#;
        assert_eq!(
            Envelope::from_kombu_json(escaped_ok).expect("decodes").body,
            b"[[],{},null]"
        );
        let unencoded = br#"{"body": "[[1], {}, null]"}"#;
        assert_eq!(
            Envelope::from_kombu_json(unencoded).expect("decodes").body,
            b"[[1], {}, null]"
        );
        let object_body = br#"{"body": {"a": 1}}"#;
        assert_eq!(
            Envelope::from_kombu_json(object_body)
                .expect("decodes")
                .body,
            br#"{"a":1}"#
        );
    }

    #[test]
    fn the_fast_body_path_agrees_with_the_value_path() {
        for body in [
            json!([[1, "a"], {"k": [1]}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]),
            json!([[], null, null]),
            json!([[], {}, {"callbacks": [{"task": "t", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}], "x": 1}]),
        ] {
            let env = envelope(
                json!({"task": "t", "id": "x"}),
                body.clone(),
                CONTENT_TYPE_JSON,
            );
            let fast = TaskMessage::decode(&env).expect("decodes");
            let (args, kwargs, embed) = split_body(body).expect("splits");
            assert_eq!((fast.args, fast.kwargs, fast.embed), (args, kwargs, embed));
        }
        for (body, error) in [
            (json!([[], {}]), "expected 3 elements"),
            (json!([null, {}, null]), "args must be an array"),
            (json!([[], [], null]), "kwargs must be an object"),
            (json!([[], {}, 5]), "embed must be an object"),
        ] {
            let env = envelope(json!({"task": "t", "id": "x"}), body, CONTENT_TYPE_JSON);
            let err = TaskMessage::decode(&env).expect_err("refused");
            assert!(err.to_string().contains(error), "{err}");
        }
    }

    /// Headers read typed from their text decode exactly as the same headers read
    /// through a `Value` each (a map envelope takes that path): same message, same
    /// error.
    #[test]
    fn typed_headers_agree_with_the_value_path() {
        let cases = [
            r#"{"task": "t", "id": "x"}"#,
            r#"{"lang": "py", "task": "t", "id": "x", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "x", "parent_id": null, "argsrepr": "()", "kwargsrepr": "{}", "origin": "gen1@h", "ignore_result": true, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}"#,
            r#"{"task": "t", "id": "x", "eta": "2026-11-27T07:00:00.123456+00:00", "expires": "2026-11-27 08:00:00", "group": "g", "group_index": -3, "retries": 7, "timelimit": [10, 2.5], "stamped_headers": ["a"], "stamps": {"a": [1]}, "x-user": {"n": [1, "two"]}, "redelivered": true}"#,
            r#"{"task": "t", "id": "x", "task": "u", "zz": 1, "aa": 2, "zz": 3}"#,
            r#"{"task": "t", "id": "x", "retries": "1", "retries": 2}"#,
            r#"{"task": "t", "id": "x", "retries": 2, "retries": null}"#,
            r#"{"task": "t", "id": "x", "retries": 2, "retries": "1"}"#,
            r#"{"task": "t", "id": "x", "name": 1}"#,
            r#"{"task": "t", "id": ""}"#,
            r#"{"task": "", "id": "x"}"#,
            r#"{"id": "x"}"#,
            r#"{"task": "t"}"#,
            r#"{"task": 5, "id": "x"}"#,
            r#"{"task": "t", "id": "x", "lang": 1}"#,
            r#"{"task": "t", "id": "x", "eta": "soon"}"#,
            r#"{"task": "t", "id": "x", "expires": 5}"#,
            r#"{"task": "t", "id": "x", "retries": -1}"#,
            r#"{"task": "t", "id": "x", "retries": 1.0}"#,
            r#"{"task": "t", "id": "x", "retries": 4294967296}"#,
            r#"{"task": "t", "id": "x", "retries": 18446744073709551615}"#,
            r#"{"task": "t", "id": "x", "group_index": 1.5}"#,
            r#"{"task": "t", "id": "x", "timelimit": [1]}"#,
            r#"{"task": "t", "id": "x", "timelimit": [1, 2, 3]}"#,
            r#"{"task": "t", "id": "x", "timelimit": ["1", 2]}"#,
            r#"{"task": "t", "id": "x", "timelimit": {"a": 1}}"#,
            r#"{"task": "t", "id": "x", "ignore_result": "yes"}"#,
            r#"{"task": "t", "id": "x", "stamped_headers": [1]}"#,
            r#"{"task": "t", "id": "x", "stamps": []}"#,
            r#"{"task": "t", "id": "x", "compression": "application/x-bz2"}"#,
            r#"{"retries": "x", "id": 5, "task": "t"}"#,
        ];
        for text in cases {
            let raw = serde_json::value::RawValue::from_string(text.to_string()).expect("json");
            let typed = Envelope {
                headers: Headers::from_json(raw).expect("an object"),
                properties: Properties::default(),
                content_type: CONTENT_TYPE_JSON.into(),
                content_encoding: "utf-8".into(),
                body: b"[[1], {\"k\": 2}, null]".to_vec(),
            };
            let map: Map<String, Value> = serde_json::from_str(text).expect("json");
            let by_value = Envelope {
                headers: map.into(),
                ..typed.clone()
            };
            assert!(by_value.headers.json_text().is_none());
            assert_eq!(
                TaskMessage::decode(&typed),
                TaskMessage::decode(&by_value),
                "{text}"
            );
        }
        // A v1 body without a task header is told apart on both paths.
        let raw = serde_json::value::RawValue::from_string(r#"{"id": "x"}"#.into()).expect("json");
        let v1 = Envelope {
            headers: Headers::from_json(raw).expect("an object"),
            properties: Properties::default(),
            content_type: CONTENT_TYPE_JSON.into(),
            content_encoding: "utf-8".into(),
            body: br#"{"task": "tasks.add", "args": []}"#.to_vec(),
        };
        assert_eq!(
            TaskMessage::decode(&v1),
            Err(DecodeError::ProtocolV1 {
                task: "tasks.add".into()
            })
        );
    }

    #[test]
    fn json_bytes_read_as_from_slice_reads_them() {
        let cases: [&[u8]; 6] = [
            br#"{"body": "e30=", "headers": {"a": "\u00e9t\u00e9"}, "properties": {}}"#,
            "{\"body\": \"été\", \"headers\": {}}".as_bytes(),
            b"{\"body\": \"\xff\"}",
            b"{\"body\": \"e30=\", \"headers\": {\"k\": \"\xc3\"}}",
            br#"{"body": "e30=", "headers": [1}"#,
            br#"{"body": "#,
        ];
        for raw in cases {
            let text = String::from_utf8_lossy(raw);
            let fast = from_json_bytes::<Value>(raw).map_err(|e| e.to_string());
            let slice = serde_json::from_slice::<Value>(raw).map_err(|e| e.to_string());
            assert_eq!(fast, slice, "{text}");
            if let Err(error) = serde_json::from_slice::<KombuEnvelopeIn<'_>>(raw) {
                assert_eq!(
                    Envelope::from_kombu_json(raw).err(),
                    Some(DecodeError::InvalidEnvelope(error.to_string())),
                    "{text}"
                );
            }
        }
        let bad = b"[[\"\xff\"], {}, null]".to_vec();
        let mut env = envelope(
            json!({"task": "t", "id": "x"}),
            json!(null),
            CONTENT_TYPE_JSON,
        );
        env.body = bad.clone();
        let error = serde_json::from_slice::<Value>(&bad).expect_err("invalid UTF-8");
        assert_eq!(
            TaskMessage::decode(&env),
            Err(DecodeError::InvalidJson(error.to_string()))
        );
    }

    #[test]
    fn decoding_may_take_the_properties() {
        let mut env = envelope(
            json!({"task": "t", "id": "x"}),
            json!([[1], {}, null]),
            CONTENT_TYPE_JSON,
        );
        env.properties.correlation_id = Some("x".into());
        env.properties.priority = Some(3);
        let copied = TaskMessage::decode(&env).expect("decodes");
        let taken = TaskMessage::decode_taking_properties(&mut env).expect("decodes");
        assert_eq!(taken, copied);
        assert_eq!(env.properties, Properties::default());
        // A refused message keeps its envelope as it was.
        let mut bad = envelope(json!({"id": "x"}), json!([[], {}, null]), CONTENT_TYPE_JSON);
        bad.properties.priority = Some(3);
        let before = bad.clone();
        assert!(TaskMessage::decode_taking_properties(&mut bad).is_err());
        assert_eq!(bad, before);
    }

    #[test]
    fn header_errors_come_in_celerys_order_whatever_the_wire_order() {
        let env = envelope(
            json!({"retries": "x", "id": 5, "task": "t"}),
            json!([[], {}, null]),
            CONTENT_TYPE_JSON,
        );
        let err = TaskMessage::decode(&env).expect_err("refused");
        assert!(
            matches!(err, DecodeError::InvalidHeader { name: "id", .. }),
            "{err}"
        );
        let env = envelope(
            json!({"zz": 1, "task": "t", "aa": 2, "id": "i"}),
            json!([[], {}, null]),
            CONTENT_TYPE_JSON,
        );
        let headers = TaskMessage::decode(&env).expect("decodes").headers;
        assert_eq!(headers.extra.keys().collect::<Vec<_>>(), ["zz", "aa"]);
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("compress");
        encoder.finish().expect("compress")
    }

    #[test]
    fn a_zlib_compressed_body_is_read_and_the_header_dropped() {
        // What Python sends with task_compression='gzip' (kombu: zlib.compress).
        let mut envelope =
            TaskMessage::new("t.add", "id-1", vec![json!(2), json!(3)], Map::new()).encode();
        envelope.body = zlib(&envelope.body);
        envelope
            .headers
            .insert("compression".into(), json!("application/x-gzip"));
        let decoded = TaskMessage::decode(&envelope).expect("decodes");
        assert_eq!(decoded.args, vec![json!(2), json!(3)]);
        assert!(
            !decoded.headers.extra.contains_key("compression"),
            "the plain message must not claim compression"
        );
        // Encoded again (a retry), it is a plain message that decodes as one.
        let again = TaskMessage::decode(&decoded.encode()).expect("decodes");
        assert_eq!(again.args, decoded.args);
    }

    #[test]
    fn bad_compressed_bodies_are_refused_with_the_reason() {
        let mut envelope = TaskMessage::new("t.add", "id-2", vec![json!(1)], Map::new()).encode();
        envelope
            .headers
            .insert("compression".into(), json!("application/x-gzip"));
        // Not zlib at all.
        let error = TaskMessage::decode(&envelope).expect_err("not zlib");
        assert!(error.to_string().contains("does not inflate"), "{error}");
        // A codec celeriac does not read: named.
        envelope
            .headers
            .insert("compression".into(), json!("application/x-lzma"));
        assert!(matches!(
            TaskMessage::decode(&envelope),
            Err(DecodeError::UnsupportedCompression(name)) if name == "application/x-lzma"
        ));
        // A bomb stops at the limit instead of filling memory.
        let bomb = zlib(&vec![b' '; 10_000]);
        let error = inflate_at_most(&json!("application/x-gzip"), &bomb, 1_000)
            .expect_err("beyond the limit");
        assert!(
            error.to_string().contains("inflates beyond 1000 bytes"),
            "{error}"
        );
        assert_eq!(
            inflate_at_most(&json!("application/x-gzip"), &bomb, 10_000)
                .expect("within")
                .len(),
            10_000
        );
    }
}
