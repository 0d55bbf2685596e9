//! Per-call send options (`apply_async` options in Celery).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::Embed;

/// Options of one send; every field overrides the task's declared option.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SendOptions {
    /// Task id to use (default: a new uuid4).
    pub task_id: Option<String>,
    /// Target queue.
    pub queue: Option<String>,
    /// Exchange to publish to (with `routing_key`).
    pub exchange: Option<String>,
    /// Routing key (matched against queue bindings, topic patterns included).
    pub routing_key: Option<String>,
    /// Message priority.
    pub priority: Option<u8>,
    /// Run no earlier than this long from now.
    #[serde(with = "opt_secs", default)]
    pub countdown: Option<Duration>,
    /// Run no earlier than this time (wins over `countdown`).
    pub eta: Option<DateTime<Utc>>,
    /// Expire this long from now.
    #[serde(with = "opt_secs", default)]
    pub expires_in: Option<Duration>,
    /// Expire at this time (wins over `expires_in`).
    pub expires_at: Option<DateTime<Utc>>,
    /// Hard time limit.
    #[serde(with = "opt_secs", default)]
    pub time_limit: Option<Duration>,
    /// Soft time limit.
    #[serde(with = "opt_secs", default)]
    pub soft_time_limit: Option<Duration>,
    /// Store no result.
    pub ignore_result: Option<bool>,
    /// Display name.
    pub shadow: Option<String>,
    /// Retry count to put on the message (retries use this).
    pub retries: Option<u32>,
    /// Parent task id.
    pub parent_id: Option<String>,
    /// Workflow root id.
    pub root_id: Option<String>,
    /// Group id.
    pub group_id: Option<String>,
    /// Position within the group.
    pub group_index: Option<i64>,
    /// Extra headers (visible to the task).
    pub headers: Map<String, Value>,
    /// Workflow continuations to carry.
    #[serde(skip)]
    pub embed: Option<Embed>,
}

impl SendOptions {
    /// Empty options.
    pub fn new() -> SendOptions {
        SendOptions::default()
    }
    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
    /// Sets the routing key.
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }
    /// Sets the exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }
    /// Sets the priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }
    /// Sets a countdown.
    pub fn countdown(mut self, countdown: Duration) -> Self {
        self.countdown = Some(countdown);
        self
    }
    /// Sets an ETA.
    pub fn eta(mut self, eta: DateTime<Utc>) -> Self {
        self.eta = Some(eta);
        self
    }
    /// Expires this long after sending.
    pub fn expires_in(mut self, expires: Duration) -> Self {
        self.expires_in = Some(expires);
        self
    }
    /// Expires at this time.
    pub fn expires_at(mut self, expires: DateTime<Utc>) -> Self {
        self.expires_at = Some(expires);
        self
    }
    /// Sets the task id.
    pub fn task_id(mut self, id: impl Into<String>) -> Self {
        self.task_id = Some(id.into());
        self
    }
    /// Sets the hard time limit.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }
    /// Sets the soft time limit.
    pub fn soft_time_limit(mut self, limit: Duration) -> Self {
        self.soft_time_limit = Some(limit);
        self
    }
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: Value) -> Self {
        self.headers.insert(name.into(), value);
        self
    }
    /// Do not store the result.
    pub fn ignore_result(mut self, ignore: bool) -> Self {
        self.ignore_result = Some(ignore);
        self
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let secs = Option::<f64>::deserialize(d)?;
        match secs {
            Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s))),
            Some(s) => Err(serde::de::Error::custom(format!("invalid duration {s}"))),
            None => Ok(None),
        }
    }
}
