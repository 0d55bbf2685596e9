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
    /// Refuse this send while an identical task is queued or running (unique enqueue).
    #[serde(default)]
    pub unique: Option<Unique>,
    /// Idempotent publish: the broker remembers the task id for this long and drops a
    /// re-send of the same id in that window, atomically with the first publish
    /// (SQLite and Redis brokers; others publish every time). Beat uses it so a run
    /// re-sent after a replica died mid-send is not queued twice.
    #[serde(with = "opt_secs", default)]
    pub publish_once: Option<Duration>,
    /// Compress the body: `gzip` or `zlib` (kombu's zlib codec; Celery's
    /// `compression=`); overrides the `task_compression` setting for this send.
    #[serde(default)]
    pub compression: Option<String>,
}

/// Unique enqueue: a send is refused while an identical one is queued or running.
///
/// The sender takes the lock `unique:<key>` for `ttl` before publishing and refuses
/// with `Error::Duplicate` if it is held. The worker releases it when the task reaches
/// a final outcome (success, failure, revoked, skipped; a retry keeps it); otherwise
/// it lapses after `ttl`. Pick a `ttl` longer than the task may wait and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Unique {
    /// The uniqueness key; `None` = the task name plus a hash of its arguments.
    #[serde(default)]
    pub key: Option<String>,
    /// The longest the key is held.
    #[serde(with = "secs")]
    pub ttl: Duration,
}

impl Unique {
    /// Unique by task name and arguments, for at most `ttl`.
    pub fn new(ttl: Duration) -> Unique {
        Unique { key: None, ttl }
    }
    /// Unique by an explicit key (shared by every send that names it).
    pub fn key(mut self, key: impl Into<String>) -> Unique {
        self.key = Some(key.into());
        self
    }
}

impl SendOptions {
    /// Empty options.
    pub fn new() -> SendOptions {
        SendOptions::default()
    }
    /// Compresses the body (`gzip` or `zlib`: kombu's zlib codec, which Python
    /// workers read).
    pub fn compression(mut self, compression: impl Into<String>) -> Self {
        self.compression = Some(compression.into());
        self
    }
    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
    /// Publishes at most once per task id within `window` (see
    /// [`SendOptions::publish_once`]); pair it with an explicit task id.
    pub fn publish_once(mut self, window: Duration) -> Self {
        self.publish_once = Some(window);
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
    /// Refuses the send while an identical task is queued or running.
    pub fn unique(mut self, unique: Unique) -> Self {
        self.unique = Some(unique);
        self
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(value.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs)
            .map_err(|_| serde::de::Error::custom(format!("invalid duration {secs}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_round_trips_with_seconds() {
        let options = SendOptions::new().unique(Unique::new(Duration::from_millis(1500)).key("k"));
        let json = serde_json::to_value(&options).expect("serialize");
        assert_eq!(json["unique"], serde_json::json!({"key": "k", "ttl": 1.5}));
        let back: SendOptions = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back.unique, options.unique);
        let without: SendOptions = serde_json::from_str(r#"{"headers": {}}"#).expect("defaults");
        assert_eq!(without.unique, None);
    }
}
