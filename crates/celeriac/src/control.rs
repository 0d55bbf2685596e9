//! Remote control of workers, celeriac's and Python Celery's alike: `ping`, `inspect`
//! and `control` commands over kombu's pidbox ([`celeriac_core::pidbox`]).
//!
//! ```no_run
//! # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
//! use celeriac::control::BroadcastOptions;
//! let control = app.control();
//! for (node, reply) in control.ping(&BroadcastOptions::default()).await? {
//!     println!("{node}: {reply}");
//! }
//! control.revoke(&["3f6c...".into()], true, &BroadcastOptions::default()).await?;
//! # Ok(()) }
//! ```
//!
//! A request is broadcast on `<control_exchange>.pidbox`; replies are collected from
//! a reply queue of this caller's own, `<oid>.reply.<control_exchange>.pidbox`, bound
//! (on Redis in `_kombu.binding.reply.celery.pidbox`, as kombu does) so Python
//! workers' replies reach it too. Collection ends after `timeout`, or as soon as
//! every node named in `destination` (or `limit` nodes) answered.
//!
//! Known gap: on Redis the reply queue's binding (a member of
//! `_kombu.binding.reply.<namespace>.pidbox`, and its name in `celeriac.queues`)
//! stays after the call, because the broker seam has no queue deletion yet (kombu
//! removes it in `after_reply_message_received`). Its list is purged.

use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{Broadcast, Broker, FetchParams};
use celeriac_core::pidbox::{self, ControlRequest, ReplyTo};
use celeriac_core::routing::{Exchange, ExchangeKind};
use celeriac_core::{Map, Queue, Value};
use serde_json::json;

use crate::{App, Error};

/// Which nodes to ask and how long to wait.
#[derive(Debug, Clone)]
pub struct BroadcastOptions {
    /// Only these nodes (`name@host`); `None` = every node.
    pub destination: Option<Vec<String>>,
    /// How long to collect replies.
    pub timeout: Duration,
    /// Stop after this many replies (default: the number of destinations).
    pub limit: Option<usize>,
}

impl Default for BroadcastOptions {
    fn default() -> Self {
        BroadcastOptions {
            destination: None,
            timeout: Duration::from_secs(1),
            limit: None,
        }
    }
}

/// Sends remote-control commands through an app's broker.
#[derive(Clone)]
pub struct Control {
    broker: Arc<dyn Broker>,
    namespace: String,
}

impl App {
    /// Remote control of the workers on this app's broker.
    pub fn control(&self) -> Control {
        Control {
            broker: self.broker().clone(),
            namespace: self.settings().control_exchange.clone(),
        }
    }
}

impl Control {
    /// Remote control through `broker` in `namespace` (`celery`).
    pub fn new(broker: Arc<dyn Broker>, namespace: impl Into<String>) -> Control {
        Control {
            broker,
            namespace: namespace.into(),
        }
    }

    /// Sends `method` with `arguments` and collects the replies, as `(node, reply)`
    /// pairs in the order they arrived.
    pub async fn broadcast(
        &self,
        method: &str,
        arguments: Map<String, Value>,
        options: &BroadcastOptions,
    ) -> Result<Vec<(String, Value)>, Error> {
        let oid = uuid::Uuid::new_v4().to_string();
        let ticket = uuid::Uuid::new_v4().to_string();
        let reply_exchange = pidbox::reply_exchange(&self.namespace);
        let reply_queue = pidbox::reply_queue(&reply_exchange, &oid);
        let mut queue = Queue::new(reply_queue.clone());
        queue.exchange = Exchange {
            name: reply_exchange.clone(),
            kind: ExchangeKind::Direct,
        };
        queue.routing_key = oid.clone();
        // The binding is how kombu (Python workers, on Redis) finds the reply queue.
        // On the embedded broker only celeriac workers reply, straight to the queue,
        // and a declared queue would stay listed by `queues` after this call.
        if !self.broker.describe().starts_with("sqlite") {
            self.broker.declare_queue(&queue).await?;
        }

        let mut request = ControlRequest::new(method, arguments);
        request.destination = options.destination.clone();
        request.ticket = Some(ticket.clone());
        request.reply_to = Some(ReplyTo {
            exchange: reply_exchange,
            routing_key: oid.clone(),
        });
        let expires = celeriac_core::time::unix_now() + options.timeout.as_secs_f64();
        self.broker
            .broadcast(Broadcast {
                exchange: pidbox::exchange(&self.namespace),
                routing_key: String::new(),
                envelope: request.to_envelope(1, expires),
            })
            .await?;

        let limit = options
            .limit
            .or_else(|| options.destination.as_ref().map(Vec::len))
            .filter(|n| *n > 0);
        let deadline = tokio::time::Instant::now() + options.timeout;
        let mut replies = Vec::new();
        let result = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || limit.is_some_and(|n| replies.len() >= n) {
                break Ok(());
            }
            let params = FetchParams {
                queues: vec![reply_queue.clone()],
                max: 64,
                wait: left.min(Duration::from_millis(250)),
                consumer: format!("control/{oid}"),
                lease: Duration::from_secs(30),
            };
            let deliveries = match self.broker.fetch(&params).await {
                Ok(deliveries) => deliveries,
                Err(error) => break Err(error),
            };
            if deliveries.is_empty() {
                continue;
            }
            let tags: Vec<_> = deliveries.iter().map(|d| d.tag.clone()).collect();
            if let Err(error) = self.broker.ack(&tags).await {
                tracing::debug!(%error, "acking control replies failed");
            }
            for delivery in deliveries {
                match pidbox::parse_reply(&delivery.envelope) {
                    Ok((got, body)) if got == ticket => replies.extend(body),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "ignoring a malformed control reply"),
                }
            }
        };
        if let Err(error) = self.broker.purge(&reply_queue).await {
            tracing::debug!(%error, "purging the reply queue failed");
        }
        result?;
        Ok(replies)
    }

    /// `ping`: every live node answers `{"ok": "pong"}`.
    pub async fn ping(&self, options: &BroadcastOptions) -> Result<Vec<(String, Value)>, Error> {
        self.broadcast("ping", Map::new(), options).await
    }

    /// An inspect command without arguments: `active`, `reserved`, `scheduled`,
    /// `registered`, `stats`, `revoked`, `active_queues`.
    pub async fn inspect(
        &self,
        method: &str,
        options: &BroadcastOptions,
    ) -> Result<Vec<(String, Value)>, Error> {
        self.broadcast(method, Map::new(), options).await
    }

    /// `revoke`: the tasks will not start on any worker that hears it; with
    /// `terminate`, running ones are stopped.
    pub async fn revoke(
        &self,
        task_ids: &[String],
        terminate: bool,
        options: &BroadcastOptions,
    ) -> Result<Vec<(String, Value)>, Error> {
        let task_id = match task_ids {
            [one] => json!(one),
            many => json!(many),
        };
        let arguments = json!({"task_id": task_id, "terminate": terminate, "signal": "SIGTERM"});
        self.broadcast("revoke", object(arguments), options).await
    }

    /// `rate_limit`: a new rate limit for a task type (`"10/m"`; `"0"` removes it).
    pub async fn rate_limit(
        &self,
        task: &str,
        rate: &str,
        options: &BroadcastOptions,
    ) -> Result<Vec<(String, Value)>, Error> {
        let arguments = json!({"task_name": task, "rate_limit": rate});
        self.broadcast("rate_limit", object(arguments), options)
            .await
    }

    /// `shutdown`: the workers shut down gracefully.
    pub async fn shutdown(
        &self,
        options: &BroadcastOptions,
    ) -> Result<Vec<(String, Value)>, Error> {
        self.broadcast("shutdown", Map::new(), options).await
    }
}

/// Lamport clock of this process's `task-sent` events.
static SENT_CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The `task-sent` events of `publishes` when the app sends them
/// (`task_send_sent_event`); nothing is built otherwise.
pub(crate) fn sent_events(app: &App, publishes: &[celeriac_broker::Publish]) -> Vec<Broadcast> {
    let settings = app.settings();
    if !settings.task_send_sent_event {
        return Vec::new();
    }
    let origin = celeriac_core::event::Origin {
        hostname: app.hostname().to_string(),
        utcoffset: celeriac_core::event::local_utcoffset(),
        pid: std::process::id(),
    };
    publishes
        .iter()
        .filter_map(|p| {
            let message = celeriac_core::TaskMessage::decode(&p.envelope).ok()?;
            let kind = celeriac_core::event::task_sent(&message, &p.queue);
            let clock = SENT_CLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let body = kind.to_body(&origin, clock, celeriac_core::time::unix_now());
            Some(Broadcast {
                exchange: settings.event_exchange.clone(),
                routing_key: kind.routing_key(),
                envelope: celeriac_core::event::event_envelope(&origin.hostname, &body),
            })
        })
        .collect()
}

/// Sends `task-sent` events; a failure is logged, never fails the send.
pub(crate) async fn send_events(app: &App, events: Vec<Broadcast>) {
    for event in events {
        if let Err(error) = app.broker().broadcast(event).await {
            tracing::debug!(%error, "sending task-sent failed");
            return;
        }
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[async_trait::async_trait]
impl celeriac_dashboard::Controller for Control {
    async fn command(
        &self,
        method: &str,
        arguments: Map<String, Value>,
        destination: Option<Vec<String>>,
    ) -> Result<Vec<(String, Value)>, String> {
        let options = BroadcastOptions {
            destination,
            ..BroadcastOptions::default()
        };
        self.broadcast(method, arguments, &options)
            .await
            .map_err(|e| e.to_string())
    }
}
