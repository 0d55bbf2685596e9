//! The `Broker` seam: how task messages are stored, handed out under a lease,
//! acknowledged, rejected, restored and counted.
//!
//! # Layout
//!
//! - this module: the [`Broker`] trait, its parameter and result types, [`connect`].
//! - [`sqlite`] (feature `sqlite`, on by default): the embedded broker, one SQLite file
//!   in WAL mode, safe for several worker processes on one machine.
//! - [`redis`] (feature `redis`, on by default): kombu's Redis transport, shared with
//!   Python Celery clients and workers, with leases that end duplicate runs.
//! - [`amqp`] (feature `amqp`): RabbitMQ over AMQP 0-9-1 with Celery's exchanges,
//!   queues and bindings, publisher confirms and per-queue prefetch.
//! - `testing` (feature `testing`): the conformance suite every implementation runs
//!   from its own `tests/`.
//!
//! # Semantics every broker keeps
//!
//! - **Leases.** [`Broker::fetch`] hands messages to a consumer with a lease. While the
//!   consumer holds a message it renews the lease ([`Broker::renew_leases`]), so a long
//!   task is never delivered twice. When a consumer dies, its leases lapse and
//!   [`Broker::restore_expired`] (run by every worker) puts the messages back.
//! - **Delivery tags are per delivery.** A tag names one delivery of one message; an
//!   ack or reject with a stale tag (the lease lapsed and the message went to someone
//!   else) is a no-op, never a loss.
//! - **Nothing vanishes.** A message that cannot be used goes to the dead-letter store
//!   with a reason ([`RejectAction::DeadLetter`]).
//! - **Capabilities are declared** ([`Capabilities`]); unsupported operations return
//!   [`BrokerError::Unsupported`], never a silent no-op.
//! - **Broadcasts are fire-and-forget.** [`Broker::broadcast`] hands a message to every
//!   [`Subscription`] of its exchange whose binding key matches its routing key
//!   (events, remote control). Nothing is stored for subscribers that come later or
//!   that were disconnected at the time (kombu's fanout over Redis PUB/SUB behaves so).

use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::routing::Queue;
use celeriac_core::Envelope;
use chrono::{DateTime, Utc};

/// The header in which a broker that puts a message back in a queue itself (AMQP's
/// requeue, Redis's restore, requeue and release) records how many deliveries the
/// message had before: the next delivery counts on from it
/// ([`Delivery::delivery_count`]).
pub const PRIOR_DELIVERIES_HEADER: &str = "x-celeriac-prior-deliveries";

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

/// Errors of broker operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The URL cannot be used.
    #[error("invalid broker URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (passwords redacted).
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// This broker does not support the operation.
    #[error("the {broker} broker does not support {operation}")]
    Unsupported {
        /// Broker kind.
        broker: &'static str,
        /// Operation name.
        operation: &'static str,
    },
    /// The broker cannot be reached.
    #[error("broker connection failed: {0}")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The broker's store failed.
    #[error("broker storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BrokerError {
    /// Wraps a storage error.
    pub fn storage<E: std::error::Error + Send + Sync + 'static>(error: E) -> BrokerError {
        BrokerError::Storage(Box::new(error))
    }
}

/// The order in which priorities are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriorityOrder {
    /// Higher numbers first (AMQP, celeriac's SQLite broker).
    HigherFirst,
    /// Lower numbers first (kombu's Redis transport: 0 is served first).
    LowerFirst,
    /// Priorities are ignored.
    None,
}

/// What a broker can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages with a future `not_before` stay in the broker until due.
    pub delayed_delivery: bool,
    /// Held messages have leases that consumers renew.
    pub leases: bool,
    /// How priorities are ordered.
    pub priority: PriorityOrder,
    /// Rejected messages can be dead-lettered and inspected.
    pub dead_letters: bool,
    /// [`Broker::publish_once`] drops a second publish under the same key, atomically
    /// with the first one's store (otherwise it publishes every time).
    pub idempotent_publish: bool,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Queue that stores it.
    pub queue: String,
    /// The message.
    pub envelope: Envelope,
    /// Hold the message until this time (ETA), where the broker supports it.
    pub not_before: Option<DateTime<Utc>>,
}

/// Parameters of [`Broker::fetch`].
#[derive(Debug, Clone)]
pub struct FetchParams {
    /// Queues to take from, in the order to try them. A broker may rotate the starting
    /// queue from one fetch to the next so that a busy queue cannot starve the others
    /// (kombu's round-robin cycle; the SQLite broker does).
    pub queues: Vec<String>,
    /// At most this many messages.
    pub max: usize,
    /// Wait this long for a first message before returning an empty batch.
    pub wait: Duration,
    /// The consumer taking the messages (unique per worker process and queue).
    pub consumer: String,
    /// Lease of the fetched messages.
    pub lease: Duration,
}

impl Default for FetchParams {
    fn default() -> Self {
        FetchParams {
            queues: vec!["celery".into()],
            max: 1,
            wait: Duration::from_secs(1),
            consumer: String::new(),
            lease: Duration::from_secs(30),
        }
    }
}

/// Names one delivery of one message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryTag(pub String);

impl std::fmt::Display for DeliveryTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Tag for ack / reject / renew.
    pub tag: DeliveryTag,
    /// Queue it came from.
    pub queue: String,
    /// The message.
    pub envelope: Envelope,
    /// How many times this message has been delivered, this delivery included.
    pub delivery_count: u32,
}

/// What to do with a rejected message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectAction {
    /// Back to the end of its queue (counts as a delivery).
    Requeue,
    /// Back to the front of its queue, as if never taken (unstarted messages at
    /// shutdown).
    Release,
    /// To the dead-letter store, with the reason.
    DeadLetter {
        /// Why it could not be processed.
        reason: String,
    },
}

/// Counts of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Queue name.
    pub name: String,
    /// Messages ready to be delivered now.
    pub ready: u64,
    /// Messages waiting for their ETA.
    pub scheduled: u64,
    /// Messages held by consumers (unacked).
    pub held: u64,
    /// Messages in the dead-letter store for this queue.
    pub dead_letters: u64,
}

/// A dead-lettered message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Id in the dead-letter store.
    pub id: String,
    /// Queue it came from.
    pub queue: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The raw stored payload (kombu JSON envelope, or whatever bytes arrived).
    pub payload: Vec<u8>,
}

/// Parameters of [`Broker::dead_letters`].
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    /// Only this queue.
    pub queue: Option<String>,
    /// At most this many, newest first (0 = 100).
    pub limit: usize,
}

/// What a worker reports about itself with every heartbeat.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    /// Node name (`name@host`).
    pub hostname: String,
    /// Process id.
    pub pid: u32,
    /// Queues it consumes.
    pub queues: Vec<String>,
    /// Tasks running now.
    pub active: u64,
    /// Tasks finished since start.
    pub processed: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its latest heartbeat.
    pub last_heartbeat: DateTime<Utc>,
    /// Heartbeat interval in seconds; a worker silent for 2 × freq is gone.
    pub freq: f64,
    /// False once it shut down cleanly.
    pub online: bool,
}

impl WorkerInfo {
    /// Whether the worker is running: online and heard from within 2 × freq.
    pub fn is_alive(&self, now: DateTime<Utc>) -> bool {
        let silence = (now - self.last_heartbeat).num_milliseconds() as f64 / 1000.0;
        self.online && silence <= self.freq * 2.0
    }
}

/// A message broadcast on a fanout or topic exchange (events on `celeryev`, remote
/// control on `celery.pidbox`).
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// Exchange name (`celeryev`, `celery.pidbox`).
    pub exchange: String,
    /// Routing key (`worker.heartbeat`, `task.multi`; empty for pidbox requests).
    pub routing_key: String,
    /// The message; its `delivery_info` and delivery tag are set by the broker.
    pub envelope: Envelope,
}

impl Broadcast {
    /// kombu's JSON envelope of this message as its `basic_publish` writes it for a
    /// fanout exchange: `delivery_info` naming the exchange and routing key, a fresh
    /// uuid4 `delivery_tag`, an explicit priority (0 when unset), base64 body.
    pub fn to_kombu_json(&self) -> Vec<u8> {
        let mut envelope = self.envelope.clone();
        let properties = &mut envelope.properties;
        properties.delivery_tag = Some(uuid::Uuid::new_v4().to_string());
        properties.delivery_info = Some(celeriac_core::message::DeliveryInfo {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            redelivered: None,
        });
        properties.priority.get_or_insert(0);
        envelope.to_kombu_json()
    }
}

/// Parameters of [`Broker::subscribe`].
#[derive(Debug, Clone, Default)]
pub struct SubscribeParams {
    /// The exchange to listen to.
    pub exchange: String,
    /// AMQP-style binding key: `None` receives every message of the exchange;
    /// `Some(pattern)` only those whose routing key matches it as a topic pattern
    /// (`*` one word, `#` zero or more; `Some("")` only an empty routing key, as a
    /// kombu fanout queue bound without a key).
    pub routing_key: Option<String>,
}

/// A broadcast message received by a [`Subscription`].
#[derive(Debug, Clone)]
pub struct BroadcastMessage {
    /// Exchange it was published to.
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// The message.
    pub envelope: Envelope,
}

/// A live subscription to an exchange ([`Broker::subscribe`]). It keeps listening
/// (reconnecting by itself where the store needs connections) until dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use celeriac_broker::{Broadcast, SubscribeParams};
///
/// let dir = tempfile::tempdir()?;
/// let url = format!("sqlite://{}", dir.path().join("broker.db").display());
/// let broker = celeriac_broker::connect(&url).await?;
/// // Subscribe first: broadcasts are not stored for later subscribers.
/// let mut workers = broker
///     .subscribe(&SubscribeParams {
///         exchange: "celeryev".into(),
///         routing_key: Some("worker.#".into()),
///     })
///     .await?;
/// let envelope =
///     celeriac_core::TaskMessage::new("demo", "id-1", vec![], Default::default()).encode();
/// broker
///     .broadcast(Broadcast {
///         exchange: "celeryev".into(),
///         routing_key: "worker.heartbeat".into(),
///         envelope,
///     })
///     .await?;
/// let heartbeat = workers.recv().await.expect("the subscription is alive");
/// assert_eq!(heartbeat.routing_key, "worker.heartbeat");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Subscription {
    messages: tokio::sync::mpsc::Receiver<BroadcastMessage>,
}

impl Subscription {
    /// Wraps the receiving end of a channel fed by a broker's subscription task (for
    /// broker implementations). The task should end when the receiver is dropped.
    pub fn from_receiver(messages: tokio::sync::mpsc::Receiver<BroadcastMessage>) -> Self {
        Subscription { messages }
    }

    /// The next message; `None` once the subscription ended (its broker task stopped).
    pub async fn recv(&mut self) -> Option<BroadcastMessage> {
        self.messages.recv().await
    }

    /// A message if one is waiting now, without waiting.
    pub fn try_recv(&mut self) -> Option<BroadcastMessage> {
        self.messages.try_recv().ok()
    }
}

/// How many received broadcast messages a [`Subscription`] buffers before its broker
/// task waits for the reader.
pub const SUBSCRIPTION_BUFFER: usize = 1024;

/// A message store with leases. See the crate docs for the contract.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// What this broker supports.
    fn capabilities(&self) -> Capabilities;

    /// A short description for logs (`sqlite:///path/to/file.db`), without secrets.
    fn describe(&self) -> String;

    /// How many [`Broker::fetch`] calls one consumer of a queue may keep in flight
    /// (1 by default). A broker whose fetch is a round trip to a server that does
    /// the claiming (Redis runs `claim.lua`) says 2: while the server claims the
    /// next batch, the worker runs the previous one, instead of each waiting for
    /// the other. The consumer's window of held messages bounds both together.
    fn concurrent_fetches(&self) -> usize {
        1
    }

    /// Declares a queue and its binding (idempotent).
    async fn declare_queue(&self, queue: &Queue) -> Result<(), BrokerError>;

    /// Publishes messages; all are stored when this returns `Ok`.
    async fn publish(&self, messages: Vec<Publish>) -> Result<(), BrokerError>;

    /// Publishes `messages` unless a publish under `key` was stored within the last
    /// `window`: the key is recorded in the same atomic step as the messages, so a
    /// sender that re-sends after a crash (beat taking over a run its dead replica
    /// may have sent) never duplicates. Returns `true` when the messages were stored
    /// now, `false` when the key was already there (nothing stored; this includes a
    /// retried call whose first attempt landed but whose reply was lost).
    ///
    /// Brokers without [`Capabilities::idempotent_publish`] publish every time and
    /// return `true`.
    async fn publish_once(
        &self,
        key: &str,
        window: Duration,
        messages: Vec<Publish>,
    ) -> Result<bool, BrokerError> {
        let _ = (key, window);
        self.publish(messages).await.map(|()| true)
    }

    /// Takes up to `max` messages under a lease, waiting up to `wait` for the first.
    /// Messages are served by priority (per [`Capabilities::priority`]), then in
    /// publish order; messages whose `not_before` is in the future are not served.
    async fn fetch(&self, params: &FetchParams) -> Result<Vec<Delivery>, BrokerError>;

    /// Acknowledges deliveries: the messages are gone. Stale tags are ignored.
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError>;

    /// Rejects one delivery.
    async fn reject(&self, tag: &DeliveryTag, action: RejectAction) -> Result<(), BrokerError>;

    /// Extends the leases of held deliveries to `lease` from now.
    async fn renew_leases(&self, tags: &[DeliveryTag], lease: Duration) -> Result<(), BrokerError>;

    /// Puts messages whose lease lapsed back in their queues; returns how many.
    async fn restore_expired(&self) -> Result<u64, BrokerError>;

    /// Deletes every ready message of a queue; returns how many.
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;

    /// Counts for the given queues (all known queues when empty).
    async fn queue_stats(&self, queues: &[String]) -> Result<Vec<QueueStats>, BrokerError>;

    /// Lists dead-lettered messages.
    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, BrokerError>;

    /// Records a worker's heartbeat (liveness, load). Brokers without a worker
    /// registry return [`BrokerError::Unsupported`].
    async fn worker_heartbeat(&self, info: &WorkerInfo) -> Result<(), BrokerError> {
        let _ = info;
        Err(BrokerError::Unsupported {
            broker: "this",
            operation: "worker heartbeats",
        })
    }

    /// Workers known to the registry, latest heartbeat first (gone ones included,
    /// see [`WorkerInfo::is_alive`]).
    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        Err(BrokerError::Unsupported {
            broker: "this",
            operation: "listing workers",
        })
    }

    /// Broadcasts a message to the current subscribers of its exchange whose binding
    /// key matches its routing key (fire-and-forget: no subscriber, no delivery).
    /// Brokers without broadcasts return [`BrokerError::Unsupported`].
    async fn broadcast(&self, message: Broadcast) -> Result<(), BrokerError> {
        let _ = message;
        Err(BrokerError::Unsupported {
            broker: "this",
            operation: "broadcasts",
        })
    }

    /// Subscribes to an exchange. Messages broadcast after this returns are
    /// received (while the subscription is connected); earlier ones are not.
    async fn subscribe(&self, params: &SubscribeParams) -> Result<Subscription, BrokerError> {
        let _ = params;
        Err(BrokerError::Unsupported {
            broker: "this",
            operation: "broadcast subscriptions",
        })
    }
}

/// Settings that apply when opening a broker (Celery's `broker_transport_options`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// How often an idle consumer checks for messages written by other processes
    /// (SQLite: `polling_interval`).
    pub poll_interval: Duration,
    /// kombu's visibility timeout: messages held by consumers that do not renew
    /// leases (Python workers on Redis) are restored after this long.
    pub visibility_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            poll_interval: Duration::from_millis(10),
            visibility_timeout: Duration::from_secs(3600),
        }
    }
}

/// Opens the broker named by `url` (`sqlite://path`) with default options.
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn Broker>, BrokerError> {
    connect_with(url, &ConnectOptions::default()).await
}

/// Opens the broker named by `url` (`sqlite://path`, `redis://host[:port][/db]`,
/// `rediss://`, `redis+socket:///path`, `unix:///path`,
/// `amqp://user:password@host[:port]/vhost`, `amqps://`).
pub async fn connect_with(
    url: &str,
    options: &ConnectOptions,
) -> Result<std::sync::Arc<dyn Broker>, BrokerError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let sqlite_options = sqlite::SqliteBrokerOptions {
                poll_interval: options.poll_interval.max(Duration::from_millis(1)),
                ..sqlite::SqliteBrokerOptions::default()
            };
            let path = sqlite::parse_url(url)?;
            Ok(std::sync::Arc::new(
                sqlite::SqliteBroker::open(path, sqlite_options).await?,
            ))
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+socket" | "unix" | "redis+unix" => {
            let redis_options = redis::RedisBrokerOptions {
                visibility_timeout: options.visibility_timeout,
                ..redis::RedisBrokerOptions::default()
            };
            Ok(std::sync::Arc::new(
                redis::RedisBroker::open_url(url, redis_options).await?,
            ))
        }
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" | "redis+socket" | "unix" | "redis+unix" => {
            Err(BrokerError::InvalidUrl {
                url: redact(url),
                reason: "this build of celeriac has no Redis broker (feature `redis`)".into(),
            })
        }
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => Ok(std::sync::Arc::new(
            amqp::AmqpBroker::open_url(url, amqp::AmqpBrokerOptions::default()).await?,
        )),
        #[cfg(not(feature = "amqp"))]
        "amqp" | "amqps" => Err(BrokerError::InvalidUrl {
            url: redact(url),
            reason: "this build of celeriac has no RabbitMQ broker (feature `amqp`)".into(),
        }),
        _ => Err(BrokerError::InvalidUrl {
            url: redact(url),
            reason: "expected sqlite://PATH or redis://HOST[:PORT][/DB]".into(),
        }),
    }
}

/// Hides the password of a URL for logs and errors: the one in the user info
/// (`redis://user:***@host`) and any `password=` query parameter
/// (`postgres://host/db?password=***`).
pub fn redact(url: &str) -> String {
    let url = redact_user_info(url);
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

fn redact_user_info(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let auth = &url[start + 3..at];
            match auth.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..start + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("redis://u:secret@h:1/0"),
            "redis://u:***@h:1/0"
        );
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(
            super::redact("redis://:p@ss:w0rd@h/0?ssl_cert_reqs=none"),
            "redis://:***@h/0?ssl_cert_reqs=none"
        );
        assert_eq!(
            super::redact("amqp://h//?password=secret&heartbeat=10"),
            "amqp://h//?password=***&heartbeat=10"
        );
    }
}
