//! The RabbitMQ broker: AMQP 0-9-1 as kombu's py-amqp transport speaks it
//! (PROTOCOL.md §5), so Python Celery clients and workers share queues, events and
//! remote control with celeriac.
//!
//! # Conventions (Celery's)
//!
//! - **Queues** are durable, bound to their exchange (`celery`, direct, durable) with
//!   their routing key; topic routes (`short.#`) bind to a topic exchange. A queue
//!   that exists already with other arguments (declared by Python with other
//!   settings) is used as it is, with a warning, instead of failing.
//! - **Publishing** goes through the default exchange with the queue name as routing
//!   key (as kombu does for direct queues), persistent (`delivery_mode` 2), with
//!   publisher confirms: [`Broker::publish`] returns once RabbitMQ has every message.
//!   When the connection breaks, publishing reconnects and retries with backoff for
//!   [`AmqpBrokerOptions::publish_retry`]; a message whose confirm was lost may then be
//!   stored twice (at least once, never lost).
//! - **Consuming.** [`Broker::fetch`] starts one `basic.consume` per queue on a
//!   channel of its own, feeding a local buffer. Its `basic.qos` prefetch is the
//!   per-queue window: the largest of [`AmqpBrokerOptions::prefetch_count`], the
//!   declared queue's `concurrency × prefetch_multiplier`, and what the consumer
//!   asks for (its held messages plus `max`), so a worker never holds more
//!   unacknowledged messages than its prefetch window, as with Celery. A consumer is
//!   replaced by a wider one (`basic.qos` applies to consumers started after it;
//!   the old one is cancelled and what it received is buffered ahead of the new
//!   one's deliveries, so the swap keeps the queue's order) only
//!   when the demand exceeds its prefetch by more than half ([`wider_prefetch`]):
//!   held messages whose tasks ended and whose acks are on their way count in the
//!   demand for a moment, and replacing the consumer for each such moment made a
//!   drain start ~20 consumers and creep to a prefetch of 300 for a window of 128.
//!   Messages held for long (ETA tasks, which leave the worker's window) still widen
//!   it, so they cannot stall the queue.
//! - **Acks** are `basic.ack` (one with `multiple` when a batch settles all of a
//!   consumer's deliveries up to its last tag). [`RejectAction::Release`] puts the
//!   message back at the front of the handle's buffer, still unacknowledged, so the
//!   next fetch hands it out first with its delivery count unchanged (RabbitMQ takes
//!   it back when the handle closes, as at a worker's shutdown); [`RejectAction::Requeue`]
//!   republishes a copy at the back of the queue (confirmed) and acks the original,
//!   carrying the delivery count in the `x-celeriac-prior-deliveries` header.
//! - **Leases.** There are none: RabbitMQ itself redelivers every unacknowledged
//!   message when the channel or connection that holds it closes, so
//!   [`Broker::renew_leases`] and [`Broker::restore_expired`] do nothing. Recent
//!   RabbitMQ closes a channel whose delivery stays unacknowledged longer than its
//!   `consumer_timeout` (30 minutes by default): a late-ack task running longer than
//!   that is delivered again. Raise `consumer_timeout` in `rabbitmq.conf` (or per
//!   queue with the `x-consumer-timeout` argument, RabbitMQ ≥ 3.12) above the
//!   longest late-ack task, ETA wait included.
//! - **Priorities** need `x-max-priority` on the queue
//!   ([`AmqpBrokerOptions::max_priority`], URL `?max_priority=10`); higher is served
//!   first. Without it priorities are ignored, and [`Capabilities`] says so.
//! - **Quorum queues**: [`QueueType::Quorum`] (`?queue_type=quorum`) declares queues
//!   with `x-queue-type: quorum`; their `x-delivery-count` header then counts
//!   redeliveries exactly.
//! - **Dead letters** go through the direct exchange `celeriac.dead-letter` to the
//!   durable queue `celeriac.dead-letter.<queue>` (declared with its queue by
//!   [`Broker::declare_queue`], else at the first dead letter), with the reason, origin queue and
//!   time in `x-celeriac-dead-letter-*` headers. Queues may also name
//!   `celeriac.dead-letter` as their `x-dead-letter-exchange`: RabbitMQ's own dead
//!   letters (with `x-death`) then land in the same place and are listed too.
//!   [`Broker::dead_letters`] reads them with `basic.get` on a channel of its own and
//!   closes it, which puts them back in order.
//! - **Counts** come from `queue.declare` (passive): `ready` is RabbitMQ's ready count
//!   plus what this handle buffered but did not hand out; `held` counts this handle's
//!   deliveries only (RabbitMQ tells unacknowledged counts through its management
//!   API alone, which this broker does not use). Without a management API the queues
//!   of the vhost cannot be listed either: `queue_stats(&[])` lists the queues this
//!   handle declared, published to or consumed.
//! - **No delayed delivery**: an ETA message is delivered at once and the worker
//!   holds it until due, as Celery does on AMQP.
//! - **Broadcasts** ([`fanout`]): events on the `celeryev` topic exchange, remote
//!   control on the `celery.pidbox` fanout exchange, as Celery.
//! - **Workers** are not registered in the broker: RabbitMQ has no key-value store.
//!   As with Celery on AMQP, workers are seen through their `worker-heartbeat`
//!   events on `celeryev` (the dashboard's event history, `celery events`);
//!   [`Broker::workers`] returns [`BrokerError::Unsupported`].
//! - **Reconnects.** A broken connection is reopened on the next call (publish
//!   retries with backoff by itself); consumers start again on the new connection;
//!   deliveries of the old one become stale tags (acks on them do nothing) and
//!   RabbitMQ redelivers them.

pub mod fanout;
mod target;
pub use target::{CertReqs, TlsOptions};
#[cfg(feature = "testing")]
pub mod testing;
mod wire;
pub mod workers;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::routing::{ExchangeKind as CeleriacExchangeKind, Queue};
use celeriac_core::Value;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::{
    Broadcast, Broker, BrokerError, Capabilities, DeadLetter, DeadLetterQuery, Delivery,
    DeliveryTag, FetchParams, PriorityOrder, Publish, QueueStats, RejectAction, SubscribeParams,
    Subscription,
};
use wire::Arrived;

/// The exchange dead letters go through.
pub const DEAD_LETTER_EXCHANGE: &str = "celeriac.dead-letter";
/// The most dead letters [`Broker::dead_letters`] reads from one queue.
const DEAD_LETTER_SCAN_LIMIT: u64 = 10_000;
/// How long replacing a consumer waits for the cancelled one's reader to buffer
/// what it received (it normally takes no longer than the cancel-ok).
const READER_DRAIN: Duration = Duration::from_secs(2);

/// A consumer nobody fetched from for this long, holding nothing, is cancelled
/// (remote-control reply queues are consumed once).
const IDLE_CONSUMER: Duration = Duration::from_secs(60);
/// First reconnect delay of a retried publish; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Classic or quorum queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// RabbitMQ's classic queues (Celery's default).
    #[default]
    Classic,
    /// Replicated quorum queues (`x-queue-type: quorum`, Celery's
    /// `task_default_queue_type = 'quorum'`). They take no `x-max-priority`.
    Quorum,
}

/// Settings of an [`AmqpBroker`]; URL query options override them (see
/// [`AmqpBroker::open_url`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AmqpBrokerOptions {
    /// The least `basic.qos` prefetch of a queue consumer (`?prefetch_count=`);
    /// `None`: the consumer's demand decides.
    pub prefetch_count: Option<u16>,
    /// `x-max-priority` of declared queues (`?max_priority=`); `None`: priorities
    /// are ignored, as on a Celery queue without `task_queue_max_priority`.
    pub max_priority: Option<u8>,
    /// Classic or quorum queues (`?queue_type=`).
    pub queue_type: QueueType,
    /// `x-expires` of declared queues (`?queue_expires=` in ms): RabbitMQ deletes a
    /// queue unused this long. `None` (the default) keeps queues.
    pub queue_expires: Option<Duration>,
    /// How long a publish keeps reconnecting and retrying after the connection broke.
    pub publish_retry: Duration,
    /// The connection name RabbitMQ shows (`rabbitmqctl list_connections
    /// client_properties`).
    pub connection_name: String,
    /// TLS settings of `amqps://` connections; the URL's `ssl_*` options override
    /// them (see [`target`]). Must stay at the default for `amqp://`.
    pub tls: TlsOptions,
}

impl Default for AmqpBrokerOptions {
    fn default() -> Self {
        AmqpBrokerOptions {
            prefetch_count: None,
            max_priority: None,
            queue_type: QueueType::Classic,
            queue_expires: None,
            publish_retry: Duration::from_secs(30),
            connection_name: format!("celeriac pid {}", std::process::id()),
            tls: TlsOptions::default(),
        }
    }
}

fn lapin_error(error: lapin::Error) -> BrokerError {
    BrokerError::Connection(Box::new(error))
}

/// Whether a lapin error is RabbitMQ saying "no such queue or exchange" (404).
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404)
}

/// A connection with its publishing channel (confirm mode).
struct Session {
    /// Counts connections of this handle; deliveries of older ones are stale.
    generation: u64,
    connection: Connection,
    publisher: Mutex<Channel>,
    admin: tokio::sync::Mutex<Option<Channel>>,
}

impl Session {
    fn is_open(&self) -> bool {
        self.connection.status().connected()
    }

    /// The channel for declarations (reopened when an error closed it).
    async fn admin(&self) -> Result<Channel, BrokerError> {
        let mut admin = self.admin.lock().await;
        if let Some(channel) = admin.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(lapin_error)?;
        *admin = Some(channel.clone());
        Ok(channel)
    }

    /// The publishing channel (reopened in confirm mode when an error closed it).
    async fn publisher(&self) -> Result<Channel, BrokerError> {
        let current = self.publisher.lock().clone();
        if current.status().connected() {
            return Ok(current);
        }
        let channel = confirm_channel(&self.connection).await?;
        *self.publisher.lock() = channel.clone();
        Ok(channel)
    }
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await.map_err(lapin_error)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(lapin_error)?;
    Ok(channel)
}

/// A message a consumer received and this handle has not handed out yet.
struct Received {
    generation: u64,
    /// The consumer it came to (each consumer has a channel of its own, whose
    /// delivery tags order its deliveries).
    consumer: u64,
    /// Keeps the channel open while its deliveries wait (a channel closes when its
    /// last handle goes, and RabbitMQ then takes its deliveries back). Shared by
    /// the consumer's deliveries: cloning a `Channel` costs more than a dozen
    /// atomic increments, an `Arc` one.
    channel: Arc<Channel>,
    delivery: lapin::message::Delivery,
}

/// A message handed out by [`Broker::fetch`] and not yet acked or rejected.
struct Held {
    queue: Arc<str>,
    /// The connection it came on.
    generation: u64,
    /// The consumer it came to.
    consumer: u64,
    /// Keeps the channel open until this delivery is settled.
    channel: Arc<Channel>,
    delivery: lapin::message::Delivery,
    delivery_count: u32,
}

/// The consumer of one queue.
struct QueueConsumer {
    generation: u64,
    /// Numbers consumers of this handle.
    seq: u64,
    channel: Channel,
    tag: String,
    prefetch: u16,
    alive: Arc<AtomicBool>,
    last_fetch: Instant,
}

#[derive(Default)]
struct State {
    consumers: HashMap<String, QueueConsumer>,
    buffers: HashMap<String, VecDeque<Received>>,
    held: HashMap<u64, Held>,
    /// How many of `held` each queue has (counting them was a scan of `held` per
    /// fetch).
    held_by_queue: HashMap<Arc<str>, usize>,
    declared_queues: HashSet<String>,
    declared_dead_letter_queues: HashSet<String>,
    /// Queues this handle declared, published to or consumed (for `queue_stats(&[])`).
    known_queues: BTreeSet<String>,
    /// Least prefetch per queue, from declared `concurrency × prefetch_multiplier`.
    queue_prefetch: HashMap<String, u16>,
    /// Exchanges known to exist (broadcasts to others are dropped: nobody listens).
    live_exchanges: HashSet<String>,
    /// Delivery tags each consumer received and nobody settled yet: an ack of
    /// every tag up to some tag is one `basic.ack` with `multiple`.
    unsettled: HashMap<u64, Unsettled>,
    rotation: usize,
}

impl State {
    /// Forgets a settled delivery.
    fn settle(&mut self, consumer: u64, tag: u64) {
        if let Some(tags) = self.unsettled.get_mut(&consumer) {
            tags.remove(tag);
        }
    }

    /// How many messages of `queue` are handed out and not settled.
    fn held_in(&self, queue: &str) -> usize {
        self.held_by_queue.get(queue).copied().unwrap_or(0)
    }

    /// Records a handed-out message under its id.
    fn hold(&mut self, id: u64, held: Held) {
        match self.held_by_queue.get_mut(&*held.queue) {
            Some(count) => *count += 1,
            None => {
                self.held_by_queue.insert(Arc::clone(&held.queue), 1);
            }
        }
        if let Some(replaced) = self.held.insert(id, held) {
            self.count_out(&replaced.queue);
        }
    }

    /// Takes a handed-out message back by its id.
    fn unhold(&mut self, id: u64) -> Option<Held> {
        let held = self.held.remove(&id)?;
        self.count_out(&held.queue);
        Some(held)
    }

    fn count_out(&mut self, queue: &str) {
        if let Some(count) = self.held_by_queue.get_mut(queue) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.held_by_queue.remove(queue);
            }
        }
    }
}

/// The delivery tags of one consumer that nobody settled yet, in ascending order.
/// A consumer's tags arrive in ascending order and are mostly settled oldest
/// first, so a sorted deque takes them at its ends (a `BTreeSet` allocated and
/// rebalanced nodes per message).
#[derive(Debug, Default)]
struct Unsettled {
    tags: VecDeque<u64>,
}

impl Unsettled {
    /// Adds a tag (again).
    fn insert(&mut self, tag: u64) {
        match self.tags.back() {
            None => self.tags.push_back(tag),
            Some(&last) if last < tag => self.tags.push_back(tag),
            Some(_) => {
                if let Err(at) = self.tags.binary_search(&tag) {
                    self.tags.insert(at, tag);
                }
            }
        }
    }

    /// Removes a tag; whether it was there.
    fn remove(&mut self, tag: u64) -> bool {
        if self.tags.front() == Some(&tag) {
            self.tags.pop_front();
            return true;
        }
        match self.tags.binary_search(&tag) {
            Ok(at) => {
                self.tags.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Settles a batch of tags whose greatest is `last`; whether they were all
    /// unsettled and no other unsettled tag is below `last` (then one ack with
    /// `multiple` settles the batch and nothing else).
    fn settle_batch(&mut self, batch: impl IntoIterator<Item = u64>, last: u64) -> bool {
        let mut all_there = true;
        for tag in batch {
            all_there &= self.remove(tag);
        }
        all_there && self.tags.front().is_none_or(|&first| first > last)
    }

    fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }
}

pub(crate) struct Inner {
    target: target::AmqpTarget,
    options: AmqpBrokerOptions,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    generation: AtomicU64,
    state: Mutex<State>,
    /// Woken when a consumer buffers a message or stops.
    arrived: Notify,
    /// Held while consumers are checked and started or replaced, so that two
    /// fetches never replace the same consumer twice.
    consumers_changing: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    /// Dropped with the handle: consumer tasks end.
    shutdown: watch::Sender<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(session) = self.session.get_mut().take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = session.connection.close(200, "OK".into()).await;
                });
            }
        }
    }
}

/// A RabbitMQ broker handle: one AMQP connection (reopened when it breaks). See the
/// module docs for the conventions.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
    /// Workers heard on `celeryev` ([`Broker::workers`]).
    workers: Arc<workers::WorkerRegistry>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("target", &self.inner.target.description)
            .finish()
    }
}

impl AmqpBroker {
    /// Connects to the broker of `url` (`amqp://user:password@host:port/vhost`,
    /// `amqps://…`; query options in the [`target`] docs override `options`).
    pub async fn open_url(
        url: &str,
        mut options: AmqpBrokerOptions,
    ) -> Result<AmqpBroker, BrokerError> {
        let target = target::parse(url, &mut options)?;
        if options.queue_type == QueueType::Quorum && options.max_priority.is_some() {
            return Err(BrokerError::InvalidUrl {
                url: crate::redact(url),
                reason: "quorum queues take no x-max-priority".into(),
            });
        }
        let (shutdown, _) = watch::channel(());
        let broker = AmqpBroker {
            inner: Arc::new(Inner {
                target,
                options,
                session: tokio::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                state: Mutex::new(State::default()),
                arrived: Notify::new(),
                consumers_changing: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
                shutdown,
            }),
            workers: Arc::default(),
        };
        broker.inner.session().await?;
        Ok(broker)
    }

    /// Publishes raw bytes to `queue` as a JSON message without headers (a payload
    /// that is not a kombu message, for tests of the dead-letter path).
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) -> Result<(), BrokerError> {
        let session = self.inner.session().await?;
        self.inner.ensure_queue(&session, queue).await?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let channel = session.publisher().await?;
        confirm(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .map_err(lapin_error)?,
        )
        .await
    }

    /// Closes the connection now (its unacknowledged deliveries go back to their
    /// queues); the next call opens a new one.
    pub async fn close_connection(&self) {
        let session = self.inner.session.lock().await.take();
        if let Some(session) = session {
            let _ = session.connection.close(200, "OK".into()).await;
        }
    }
}

/// Waits for a publisher confirm; a nack is an error.
async fn confirm(pending: lapin::PublisherConfirm) -> Result<(), BrokerError> {
    match pending.await.map_err(lapin_error)? {
        lapin::Confirmation::Nack(_) => Err(BrokerError::Storage(
            "RabbitMQ refused the message (basic.nack)".into(),
        )),
        _ => Ok(()),
    }
}

/// Whether `name` is a remote-control reply queue (`<oid>.reply.<namespace>.pidbox`):
/// it belongs to the caller, who declares it; replies are never published into a
/// queue of their own making.
fn is_reply_queue(name: &str) -> bool {
    name.contains(".reply.") && name.ends_with(".pidbox")
}

/// How an exchange is declared, as Celery and kombu declare it.
fn exchange_settings(name: &str, kind: CeleriacExchangeKind) -> (ExchangeKind, bool) {
    if name.starts_with("reply.") && name.ends_with(".pidbox") {
        (ExchangeKind::Direct, false)
    } else if name.ends_with(".pidbox") {
        (ExchangeKind::Fanout, false)
    } else if name == "celeryev" {
        (ExchangeKind::Topic, true)
    } else {
        let kind = match kind {
            CeleriacExchangeKind::Direct => ExchangeKind::Direct,
            CeleriacExchangeKind::Topic => ExchangeKind::Topic,
            CeleriacExchangeKind::Fanout => ExchangeKind::Fanout,
        };
        (kind, true)
    }
}

impl Inner {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delayed_delivery: false,
            leases: false,
            priority: if self.options.max_priority.is_some() {
                PriorityOrder::HigherFirst
            } else {
                PriorityOrder::None
            },
            dead_letters: true,
            idempotent_publish: false,
        }
    }

    /// The current connection, opened (again) when there is none or it broke.
    async fn session(&self) -> Result<Arc<Session>, BrokerError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref().filter(|s| s.is_open()) {
            return Ok(Arc::clone(session));
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(self.options.connection_name.clone().into());
        let connection = self.target.connect(properties).await?;
        let publisher = confirm_channel(&connection).await?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if generation > 1 {
            tracing::info!(broker = %self.target.description, "reconnected to RabbitMQ");
        }
        let session = Arc::new(Session {
            generation,
            connection,
            publisher: Mutex::new(publisher),
            admin: tokio::sync::Mutex::new(None),
        });
        {
            // Whatever the old connection held went back to RabbitMQ.
            let mut state = self.state.lock();
            state.consumers.retain(|_, c| c.generation == generation);
            for buffer in state.buffers.values_mut() {
                buffer.clear();
            }
            state.declared_queues.clear();
            state.declared_dead_letter_queues.clear();
            state.live_exchanges.clear();
            state.unsettled.clear();
        }
        *current = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Forgets a broken connection so the next call opens a new one.
    async fn forget_session(&self, generation: u64) {
        let mut current = self.session.lock().await;
        if current.as_ref().is_some_and(|s| s.generation == generation) {
            if let Some(session) = current.take() {
                let _ = session.connection.close(320, "reconnecting".into()).await;
            }
        }
    }

    fn queue_arguments(&self, name: &str) -> (QueueDeclareOptions, FieldTable) {
        let mut arguments = FieldTable::default();
        if is_reply_queue(name) {
            // kombu's reply queues: transient, gone 10 s after their last use.
            arguments.insert("x-expires".into(), AMQPValue::LongInt(10_000));
            arguments.insert("x-message-ttl".into(), AMQPValue::LongInt(300_000));
            let options = QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            };
            return (options, arguments);
        }
        if let Some(priority) = self.options.max_priority {
            arguments.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(priority));
        }
        if self.options.queue_type == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        if let Some(expires) = self.options.queue_expires {
            let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        (QueueDeclareOptions::durable(), arguments)
    }

    /// Declares a queue with `options`; when it exists with other settings
    /// (RabbitMQ answers 406 and closes the channel) it is used as it is.
    async fn declare_queue_tolerant(
        &self,
        session: &Session,
        name: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<u32, BrokerError> {
        let channel = session.admin().await?;
        match channel.queue_declare(name.into(), options, arguments).await {
            Ok(queue) => Ok(queue.message_count()),
            Err(error) if session.is_open() && !is_not_found(&error) => {
                tracing::warn!(
                    queue = name, %error,
                    "the queue exists with other settings; using it as it is"
                );
                let channel = session.admin().await?;
                let queue = channel
                    .queue_declare(
                        name.into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(lapin_error)?;
                Ok(queue.message_count())
            }
            Err(error) => Err(lapin_error(error)),
        }
    }

    /// Declares `queue` unless this connection did already (reply queues are never
    /// declared here: they belong to their caller).
    async fn ensure_queue(&self, session: &Session, queue: &str) -> Result<(), BrokerError> {
        {
            let mut state = self.state.lock();
            if is_reply_queue(queue) || state.declared_queues.contains(queue) {
                return Ok(());
            }
            state.known_queues.insert(queue.to_string());
        }
        let (options, arguments) = self.queue_arguments(queue);
        self.declare_queue_tolerant(session, queue, options, arguments)
            .await?;
        self.state.lock().declared_queues.insert(queue.to_string());
        Ok(())
    }

    /// Declares an exchange as Celery does; one that exists with other settings is
    /// used as it is.
    async fn ensure_exchange(
        &self,
        session: &Session,
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
    ) -> Result<(), BrokerError> {
        if name.is_empty() || self.state.lock().live_exchanges.contains(name) {
            return Ok(());
        }
        let channel = session.admin().await?;
        let options = ExchangeDeclareOptions {
            durable,
            auto_delete,
            ..ExchangeDeclareOptions::default()
        };
        if let Err(error) = channel
            .exchange_declare(name.into(), kind, options, FieldTable::default())
            .await
        {
            if !session.is_open() {
                return Err(lapin_error(error));
            }
            tracing::warn!(exchange = name, %error, "the exchange exists with other settings; using it as it is");
            session
                .admin()
                .await?
                .exchange_declare(
                    name.into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(lapin_error)?;
        }
        self.state.lock().live_exchanges.insert(name.to_string());
        Ok(())
    }

    /// The dead-letter queue of `queue`, declared and bound once per connection.
    async fn ensure_dead_letter_queue(
        &self,
        session: &Session,
        queue: &str,
    ) -> Result<String, BrokerError> {
        let name = dead_letter_queue(queue);
        if self
            .state
            .lock()
            .declared_dead_letter_queues
            .contains(&name)
        {
            return Ok(name);
        }
        self.ensure_exchange(
            session,
            DEAD_LETTER_EXCHANGE,
            ExchangeKind::Direct,
            true,
            false,
        )
        .await?;
        let (options, mut arguments) = self.queue_arguments(&name);
        let mut plain = FieldTable::default();
        // Dead letters keep their priority field but need no priority queue.
        for (key, value) in arguments.inner() {
            if key.as_str() != "x-max-priority" {
                plain.insert(key.clone(), value.clone());
            }
        }
        arguments = plain;
        self.declare_queue_tolerant(session, &name, options, arguments)
            .await?;
        session
            .admin()
            .await?
            .queue_bind(
                name.as_str().into(),
                DEAD_LETTER_EXCHANGE.into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(lapin_error)?;
        self.state
            .lock()
            .declared_dead_letter_queues
            .insert(name.clone());
        Ok(name)
    }

    /// Publishes to the dead-letter queue of `queue` (confirmed).
    async fn dead_letter(
        &self,
        queue: &str,
        properties: &BasicProperties,
        body: &[u8],
        reason: &str,
        raw: bool,
    ) -> Result<(), BrokerError> {
        let session = self.session().await?;
        self.ensure_dead_letter_queue(&session, queue).await?;
        let mut headers = properties.headers().clone().unwrap_or_default();
        let mut put = |key: &str, value: &str| {
            headers.insert(key.into(), AMQPValue::LongString(value.into()));
        };
        put(wire::DEAD_LETTER_REASON_HEADER, reason);
        put(wire::DEAD_LETTER_QUEUE_HEADER, queue);
        put(wire::DEAD_LETTER_AT_HEADER, &Utc::now().to_rfc3339());
        put(
            wire::DEAD_LETTER_KIND_HEADER,
            if raw { "raw" } else { "message" },
        );
        let properties = properties
            .clone()
            .with_headers(headers)
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_delivery_mode(2);
        let channel = session.publisher().await?;
        confirm(
            channel
                .basic_publish(
                    DEAD_LETTER_EXCHANGE.into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .map_err(lapin_error)?,
        )
        .await
    }

    /// Makes sure each queue has a live consumer whose prefetch lets this handle
    /// hold `max` more messages; cancels consumers idle for long.
    async fn ensure_consumers(
        self: &Arc<Self>,
        session: &Session,
        queues: &[String],
        max: usize,
    ) -> Result<(), BrokerError> {
        let _changing = self.consumers_changing.lock().await;
        self.cancel_idle_consumers(queues).await;
        for queue in queues {
            let (needed, floor, existing) = {
                let mut state = self.state.lock();
                let floor = state
                    .queue_prefetch
                    .get(queue)
                    .copied()
                    .or(self.options.prefetch_count)
                    .unwrap_or(1);
                let demand = state.held_in(queue) + max.max(1);
                let needed = u16::try_from(demand).unwrap_or(u16::MAX).max(floor);
                let existing = state.consumers.get_mut(queue).and_then(|c| {
                    c.last_fetch = Instant::now();
                    let usable = c.generation == session.generation
                        && c.alive.load(Ordering::SeqCst)
                        && c.channel.status().connected();
                    usable.then(|| {
                        (
                            c.channel.clone(),
                            c.tag.clone(),
                            c.prefetch,
                            Arc::clone(&c.alive),
                        )
                    })
                });
                (needed, floor, existing)
            };
            match existing {
                Some((_, _, prefetch, _)) if wider_prefetch(prefetch, needed, floor).is_none() => {}
                Some((old_channel, old_tag, _, old_alive)) => {
                    // basic.qos applies to consumers started after it: start a
                    // wider consumer on a channel of its own, then cancel the old one
                    // and let its reader buffer what RabbitMQ sent it before the
                    // cancel-ok. The old consumer's deliveries sort ahead of the new
                    // one's in the buffer (`buffer_in_order`), so once its reader has
                    // stopped nothing of the new consumer can be handed out before a
                    // message the old one received earlier: the queue's order holds
                    // across the swap. (Cancelling first, before the new consumer
                    // exists, put a quorum queue's next message behind the requeued
                    // one every time in `reject_requeue_goes_to_the_back`.) The old
                    // channel stays open while its deliveries are unsettled.
                    let channel = session
                        .connection
                        .create_channel()
                        .await
                        .map_err(lapin_error)?;
                    self.start_consumer(session, queue, channel, needed).await?;
                    match old_channel
                        .basic_cancel(old_tag.as_str().into(), BasicCancelOptions::default())
                        .await
                    {
                        Ok(()) => self.reader_ended(&old_alive, READER_DRAIN).await,
                        Err(error) => {
                            tracing::debug!(%error, queue, "cancelling a narrower consumer failed");
                        }
                    }
                }
                None => {
                    self.ensure_queue(session, queue).await?;
                    let channel = session
                        .connection
                        .create_channel()
                        .await
                        .map_err(lapin_error)?;
                    self.start_consumer(session, queue, channel, needed).await?;
                }
            }
        }
        Ok(())
    }

    /// Waits until the reader of a cancelled consumer has buffered what it received
    /// and stopped (`alive` false), at most `within`.
    async fn reader_ended(&self, alive: &AtomicBool, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !alive.load(Ordering::SeqCst) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::debug!("a cancelled consumer's reader did not stop in time");
                return;
            }
        }
    }

    /// Starts a consumer of `queue` on `channel` with `prefetch`, feeding the buffer.
    async fn start_consumer(
        self: &Arc<Self>,
        session: &Session,
        queue: &str,
        channel: Channel,
        prefetch: u16,
    ) -> Result<(), BrokerError> {
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(lapin_error)?;
        let tag = format!("celeriac-{}", uuid::Uuid::new_v4().simple());
        let consumer = match channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(consumer) => consumer,
            Err(error) => {
                // The queue may have been deleted since it was declared here.
                self.state.lock().declared_queues.remove(queue);
                return Err(lapin_error(error));
            }
        };
        tracing::debug!(queue, prefetch, "consuming");
        let alive = Arc::new(AtomicBool::new(true));
        let reader_channel = Arc::new(channel.clone());
        let seq = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock();
        state.unsettled.insert(seq, Unsettled::default());
        state.consumers.insert(
            queue.to_string(),
            QueueConsumer {
                generation: session.generation,
                seq,
                channel,
                tag,
                prefetch,
                alive: Arc::clone(&alive),
                last_fetch: Instant::now(),
            },
        );
        drop(state);
        let feed = Feed {
            generation: session.generation,
            seq,
            queue: queue.to_string(),
            channel: reader_channel,
            alive,
        };
        tokio::spawn(read_consumer(
            Arc::downgrade(self),
            self.shutdown.subscribe(),
            consumer,
            feed,
        ));
        Ok(())
    }

    /// Cancels consumers of queues other than `active` that nobody fetched from for
    /// [`IDLE_CONSUMER`] and that hold and buffer nothing.
    async fn cancel_idle_consumers(&self, active: &[String]) {
        let idle: Vec<(String, Channel)> = {
            let mut state = self.state.lock();
            let names: Vec<String> = state
                .consumers
                .iter()
                .filter(|(queue, c)| {
                    !active.contains(queue) && c.last_fetch.elapsed() > IDLE_CONSUMER
                })
                .map(|(queue, _)| queue.clone())
                .collect();
            let mut idle = Vec::new();
            for queue in names {
                let empty = state.buffers.get(&queue).is_none_or(VecDeque::is_empty);
                if empty && state.held_in(&queue) == 0 {
                    if let Some(consumer) = state.consumers.remove(&queue) {
                        idle.push((queue, consumer.channel));
                    }
                }
            }
            idle
        };
        for (queue, channel) in idle {
            tracing::debug!(queue, "closing an idle consumer");
            let _ = channel.close(200, "idle".into()).await;
        }
    }

    /// Takes up to `max` buffered messages of `queues` (rotating the first queue),
    /// handing them out; dead-letters undecodable ones.
    async fn take_buffered(&self, queues: &[String], max: usize, generation: u64) -> Vec<Delivery> {
        let mut out = Vec::new();
        // Each handed-out message's queue name, shared by its `Held`.
        let mut names: Vec<Option<Arc<str>>> = vec![None; queues.len()];
        let tag_prefix = format!("amqp-{generation}-");
        loop {
            // (index in `queues`, message)
            let taken: Vec<(usize, Received)> = {
                let mut state = self.state.lock();
                let start = state.rotation % queues.len().max(1);
                state.rotation = state.rotation.wrapping_add(1);
                let mut taken = Vec::new();
                for i in 0..queues.len() {
                    let index = (start + i) % queues.len();
                    let Some(buffer) = state.buffers.get_mut(&queues[index]) else {
                        continue;
                    };
                    while taken.len() < max - out.len() {
                        let Some(received) = buffer.pop_front() else {
                            break;
                        };
                        if received.generation == generation && received.delivery.acker.usable() {
                            taken.push((index, received));
                        }
                    }
                }
                taken
            };
            if taken.is_empty() {
                return out;
            }
            // Decoded without the lock, which the consumer tasks take per arrival.
            let mut decoded = Vec::with_capacity(taken.len());
            let mut malformed = Vec::new();
            for (index, received) in taken {
                let arrived = Arrived::of(&received.delivery);
                match wire::envelope_of(&arrived) {
                    Ok(envelope) => {
                        let delivery_count = wire::delivery_count(&arrived);
                        decoded.push((index, received, envelope, delivery_count));
                    }
                    Err(reason) => malformed.push((index, received, reason)),
                }
            }
            {
                let mut state = self.state.lock();
                for (index, received, envelope, delivery_count) in decoded {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let queue = &queues[index];
                    let name = names[index].get_or_insert_with(|| Arc::from(queue.as_str()));
                    out.push(Delivery {
                        tag: DeliveryTag(tag_of(&tag_prefix, id)),
                        queue: queue.clone(),
                        envelope,
                        delivery_count,
                    });
                    state.hold(
                        id,
                        Held {
                            queue: Arc::clone(name),
                            generation: received.generation,
                            consumer: received.consumer,
                            channel: received.channel,
                            delivery: received.delivery,
                            delivery_count,
                        },
                    );
                }
                for (_, received, _) in &malformed {
                    state.settle(received.consumer, received.delivery.delivery_tag);
                }
            }
            for (index, received, reason) in malformed {
                let queue = &queues[index];
                let delivery = &received.delivery;
                tracing::warn!(queue, %reason, "dead-lettering a message that is not a kombu message");
                match self
                    .dead_letter(queue, &delivery.properties, &delivery.data, &reason, true)
                    .await
                {
                    Ok(()) => {
                        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, queue, "dead-lettering failed; the message goes back");
                        let _ = delivery
                            .acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..BasicNackOptions::default()
                            })
                            .await;
                    }
                }
            }
            if out.len() >= max {
                return out;
            }
        }
    }

    /// Cancels the consumer of `queue` and waits (up to 2 s) until everything it
    /// was sent is in the buffer.
    async fn stop_consumer(&self, queue: &str) {
        let Some(consumer) = self.state.lock().consumers.remove(queue) else {
            return;
        };
        if let Err(error) = consumer
            .channel
            .basic_cancel(consumer.tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            tracing::debug!(%error, queue, "cancelling a consumer failed");
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while consumer.alive.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The channel closes once its held and buffered deliveries are settled
        // (they keep it open).
    }

    fn take_held(&self, tag: &DeliveryTag) -> Option<Held> {
        let id = tag
            .0
            .strip_prefix("amqp-")?
            .split_once('-')?
            .1
            .parse::<u64>()
            .ok()?;
        self.state.lock().unhold(id)
    }

    /// Ready and dead-letter counts of `queue` from RabbitMQ (0 when it does not
    /// exist), each on a channel of its own since a 404 closes the channel.
    async fn server_count(&self, session: &Session, queue: &str) -> Result<u64, BrokerError> {
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(lapin_error)?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let count = match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(declared) => u64::from(declared.message_count()),
            Err(error) if is_not_found(&error) => 0,
            Err(error) => return Err(lapin_error(error)),
        };
        if channel.status().connected() {
            let _ = channel.close(200, "OK".into()).await;
        }
        Ok(count)
    }
}

/// The delivery tag `{prefix}{id}` (`amqp-{generation}-{id}`); the prefix is
/// formatted once per fetch.
fn tag_of(prefix: &str, id: u64) -> String {
    use std::fmt::Write as _;
    let mut tag = String::with_capacity(prefix.len() + 20);
    tag.push_str(prefix);
    // Writing to a String cannot fail.
    let _ = write!(tag, "{id}");
    tag
}

/// Whether a consumer of `prefetch` must give way to a wider one for a fetch whose
/// demand (held messages plus `max`, at least `floor`) is `needed`: `None` keeps it,
/// `Some(needed)` replaces it. A consumer below the queue's `floor` is always
/// replaced; one at or above it is kept while the demand is at most half again its
/// prefetch (see the module docs).
fn wider_prefetch(prefetch: u16, needed: u16, floor: u16) -> Option<u16> {
    let tolerated = u32::from(prefetch) + u32::from(prefetch) / 2;
    if prefetch >= floor && u32::from(needed) <= tolerated {
        None
    } else {
        Some(needed.max(floor))
    }
}

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{DEAD_LETTER_EXCHANGE}.{queue}")
}

/// Adds a delivery to a queue's buffer in delivery order. A narrower consumer
/// being replaced by a wider one is read by another task, so arrivals can
/// interleave: the older consumer's deliveries go first, and a consumer's
/// delivery tags say the order of its own.
fn buffer_in_order(buffer: &mut VecDeque<Received>, received: Received) {
    let key = |r: &Received| (r.generation, r.consumer, r.delivery.delivery_tag);
    let mut at = buffer.len();
    while at > 0 {
        if key(&buffer[at - 1]) > key(&received) {
            at -= 1;
        } else {
            break;
        }
    }
    buffer.insert(at, received);
}

/// Where a consumer's deliveries go.
struct Feed {
    /// The connection they came on.
    generation: u64,
    /// The consumer's number.
    seq: u64,
    /// Its queue.
    queue: String,
    /// Its channel, shared by its deliveries.
    channel: Arc<Channel>,
    /// Cleared when the consumer ends.
    alive: Arc<AtomicBool>,
}

/// The most deliveries a consumer task moves into the buffer at once.
const ARRIVAL_BATCH: usize = 64;

/// Moves a consumer's deliveries into the buffer until the consumer, its channel or
/// the handle ends.
async fn read_consumer(
    inner: Weak<Inner>,
    mut shutdown: watch::Receiver<()>,
    mut consumer: lapin::Consumer,
    feed: Feed,
) {
    let Feed {
        generation,
        seq,
        queue,
        channel,
        alive,
    } = feed;
    let mut arrivals = Vec::with_capacity(ARRIVAL_BATCH);
    let mut ended = false;
    while !ended {
        let next = tokio::select! {
            _ = shutdown.changed() => break,
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => arrivals.push(delivery),
            Some(Err(error)) => {
                tracing::debug!(%error, queue, "a consumer stopped");
                break;
            }
            None => break,
        }
        // What arrived with it goes into the buffer together: one lock and one
        // wake-up per burst (RabbitMQ sends deliveries in bursts) instead of per
        // message.
        while arrivals.len() < ARRIVAL_BATCH {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => arrivals.push(delivery),
                Some(Some(Err(error))) => {
                    tracing::debug!(%error, queue, "a consumer stopped");
                    ended = true;
                    break;
                }
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        let Some(inner) = inner.upgrade() else { break };
        {
            let mut state = inner.state.lock();
            let State {
                unsettled, buffers, ..
            } = &mut *state;
            let mut tags = unsettled.get_mut(&seq);
            let buffer = buffers.entry(queue.clone()).or_default();
            for delivery in arrivals.drain(..) {
                if let Some(tags) = tags.as_mut() {
                    tags.insert(delivery.delivery_tag);
                }
                let received = Received {
                    generation,
                    consumer: seq,
                    channel: Arc::clone(&channel),
                    delivery,
                };
                buffer_in_order(buffer, received);
            }
        }
        inner.arrived.notify_waiters();
    }
    alive.store(false, Ordering::SeqCst);
    if let Some(inner) = inner.upgrade() {
        inner.arrived.notify_waiters();
    }
}

/// Reads a dead letter taken with `basic.get`.
fn read_dead_letter(delivery: &lapin::message::Delivery, queue: &str) -> DeadLetter {
    let headers = wire::all_headers(&delivery.properties);
    let text = |key: &str| headers.get(key).and_then(Value::as_str).map(str::to_string);
    // RabbitMQ's own dead letters carry `x-death`: [{reason, queue, time, …}].
    let death = headers
        .get("x-death")
        .and_then(Value::as_array)
        .and_then(|deaths| deaths.first())
        .cloned()
        .unwrap_or(Value::Null);
    let reason = text(wire::DEAD_LETTER_REASON_HEADER)
        .or_else(|| {
            death["reason"]
                .as_str()
                .map(|r| format!("RabbitMQ dead-lettered it: {r}"))
        })
        .unwrap_or_else(|| "unknown".into());
    let origin = text(wire::DEAD_LETTER_QUEUE_HEADER)
        .or_else(|| death["queue"].as_str().map(str::to_string))
        .unwrap_or_else(|| queue.to_string());
    let at = text(wire::DEAD_LETTER_AT_HEADER)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            death["time"]
                .as_i64()
                .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        })
        .unwrap_or_else(Utc::now);
    let raw = text(wire::DEAD_LETTER_KIND_HEADER).as_deref() == Some("raw");
    let arrived = Arrived {
        exchange: "",
        routing_key: &origin,
        redelivered: false,
        properties: &delivery.properties,
        body: &delivery.data,
    };
    let payload = if raw {
        delivery.data.clone()
    } else {
        match wire::envelope_of(&arrived) {
            Ok(mut envelope) => {
                envelope.properties.delivery_info = None;
                envelope.to_kombu_json()
            }
            Err(_) => delivery.data.clone(),
        }
    };
    DeadLetter {
        id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default(),
        queue: origin,
        reason,
        at,
        payload,
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn describe(&self) -> String {
        self.inner.target.description.clone()
    }

    async fn declare_queue(&self, queue: &Queue) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let session = inner.session().await?;
        if let (Some(concurrency), Some(multiplier)) =
            (queue.concurrency, queue.prefetch_multiplier)
        {
            let window = u16::try_from(concurrency.max(1) * multiplier.max(1)).unwrap_or(u16::MAX);
            inner
                .state
                .lock()
                .queue_prefetch
                .insert(queue.name.clone(), window);
        }
        inner.state.lock().known_queues.insert(queue.name.clone());
        let (options, arguments) = inner.queue_arguments(&queue.name);
        inner
            .declare_queue_tolerant(&session, &queue.name, options, arguments)
            .await?;
        inner
            .state
            .lock()
            .declared_queues
            .insert(queue.name.clone());
        if !is_reply_queue(&queue.name) {
            // Made now, so counting its dead letters never asks RabbitMQ about a
            // queue that does not exist (a 404 closes the channel, and lapin logs it
            // as an error).
            inner
                .ensure_dead_letter_queue(&session, &queue.name)
                .await?;
        }
        let exchange = &queue.exchange.name;
        if !exchange.is_empty() {
            let (kind, durable) = exchange_settings(exchange, queue.exchange.kind);
            inner
                .ensure_exchange(&session, exchange, kind, durable, false)
                .await?;
            session
                .admin()
                .await?
                .queue_bind(
                    queue.name.as_str().into(),
                    exchange.as_str().into(),
                    queue.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(lapin_error)?;
        }
        Ok(())
    }

    async fn publish(&self, messages: Vec<Publish>) -> Result<(), BrokerError> {
        if messages.is_empty() {
            return Ok(());
        }
        let prepared: Vec<(String, BasicProperties, &[u8])> = messages
            .iter()
            .map(|m| {
                (
                    m.queue.clone(),
                    wire::properties_of(&m.envelope, &[]),
                    m.envelope.body.as_slice(),
                )
            })
            .collect();
        let deadline = Instant::now() + self.inner.options.publish_retry;
        let mut backoff = MIN_BACKOFF;
        loop {
            let session = match self.inner.session().await {
                Ok(session) => session,
                Err(error) if Instant::now() < deadline => {
                    tracing::warn!(%error, ?backoff, "publishing: RabbitMQ does not answer; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(error) => return Err(error),
            };
            match publish_on(&self.inner, &session, &prepared).await {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() < deadline => {
                    tracing::warn!(%error, ?backoff, "publishing failed; reconnecting and retrying");
                    if !session.is_open() {
                        self.inner.forget_session(session.generation).await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn fetch(&self, params: &FetchParams) -> Result<Vec<Delivery>, BrokerError> {
        if params.queues.is_empty() || params.max == 0 {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let deadline = Instant::now() + params.wait;
        loop {
            let session = inner.session().await?;
            let notified = inner.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Err(error) = inner
                .ensure_consumers(&session, &params.queues, params.max)
                .await
            {
                if !session.is_open() {
                    inner.forget_session(session.generation).await;
                }
                return Err(error);
            }
            let got = inner
                .take_buffered(&params.queues, params.max, session.generation)
                .await;
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Wake on arrival, on a consumer's end, or now and then to notice a
            // broken connection.
            let nap = (deadline - now).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        let mut by_consumer: HashMap<u64, Vec<Held>> = HashMap::new();
        for held in tags.iter().filter_map(|t| self.inner.take_held(t)) {
            // Deliveries of a closed channel went back to RabbitMQ already.
            if held.delivery.acker.usable() {
                by_consumer.entry(held.consumer).or_default().push(held);
            }
        }
        let mut acks = Vec::new();
        {
            let mut state = self.inner.state.lock();
            for (consumer, mut group) in by_consumer {
                group.sort_by_key(|h| h.delivery.delivery_tag);
                let Some(last) = group.last().map(|h| h.delivery.delivery_tag) else {
                    continue;
                };
                // When these are all the consumer's unsettled tags up to the last
                // one, one basic.ack with `multiple` settles them (a consumer's
                // deliveries are buffered in tag order, so none below is on its
                // way).
                let all_below = state.unsettled.get_mut(&consumer).is_some_and(|tags| {
                    tags.settle_batch(group.iter().map(|h| h.delivery.delivery_tag), last)
                });
                let current = state.consumers.values().any(|c| c.seq == consumer);
                if !current
                    && state
                        .unsettled
                        .get(&consumer)
                        .is_some_and(Unsettled::is_empty)
                {
                    state.unsettled.remove(&consumer);
                }
                if all_below && group.len() > 1 {
                    if let Some(last) = group.pop() {
                        acks.push((last, true));
                    }
                } else {
                    acks.extend(group.into_iter().map(|h| (h, false)));
                }
            }
        }
        let sends = acks.iter().map(|(held, multiple)| {
            held.delivery.acker.ack(BasicAckOptions {
                multiple: *multiple,
            })
        });
        for result in futures::future::join_all(sends).await {
            if let Err(error) = result {
                tracing::debug!(%error, "an ack did not reach RabbitMQ; it will redeliver the message");
            }
        }
        Ok(())
    }

    async fn reject(&self, tag: &DeliveryTag, action: RejectAction) -> Result<(), BrokerError> {
        let Some(held) = self.inner.take_held(tag) else {
            return Ok(());
        };
        self.inner
            .state
            .lock()
            .settle(held.consumer, held.delivery.delivery_tag);
        if !held.delivery.acker.usable() {
            // Its channel closed: RabbitMQ put the message back already.
            return Ok(());
        }
        if action == RejectAction::Release {
            // Back to the front of this handle's buffer, still unacknowledged, as if
            // never handed out: the next fetch hands it out first, with its delivery
            // count unchanged. (A basic.nack would put it back at its old place on a
            // classic queue but at the back of a quorum queue, and count a
            // delivery.) When this handle closes, RabbitMQ takes it back.
            let mut state = self.inner.state.lock();
            state
                .unsettled
                .entry(held.consumer)
                .or_default()
                .insert(held.delivery.delivery_tag);
            state
                .buffers
                .entry(held.queue.to_string())
                .or_default()
                .push_front(Received {
                    generation: held.generation,
                    consumer: held.consumer,
                    channel: held.channel,
                    delivery: held.delivery,
                });
            drop(state);
            self.inner.arrived.notify_waiters();
            return Ok(());
        }
        let delivery = &held.delivery;
        match action {
            RejectAction::Release => {}
            RejectAction::Requeue => {
                let mut headers = delivery.properties.headers().clone().unwrap_or_default();
                headers.insert(
                    wire::PRIOR_DELIVERIES_HEADER.into(),
                    AMQPValue::LongInt(i32::try_from(held.delivery_count).unwrap_or(i32::MAX)),
                );
                let properties = delivery.properties.clone().with_headers(headers);
                let session = self.inner.session().await?;
                let channel = session.publisher().await?;
                confirm(
                    channel
                        .basic_publish(
                            "".into(),
                            ShortString::from(&*held.queue),
                            BasicPublishOptions::default(),
                            &delivery.data,
                            properties,
                        )
                        .await
                        .map_err(lapin_error)?,
                )
                .await?;
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
            RejectAction::DeadLetter { reason } => {
                self.inner
                    .dead_letter(
                        &held.queue,
                        &delivery.properties,
                        &delivery.data,
                        &reason,
                        false,
                    )
                    .await?;
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        }
        Ok(())
    }

    async fn renew_leases(&self, tags: &[DeliveryTag], lease: Duration) -> Result<(), BrokerError> {
        // RabbitMQ holds unacknowledged messages until their channel closes.
        let _ = (tags, lease);
        Ok(())
    }

    async fn restore_expired(&self) -> Result<u64, BrokerError> {
        // RabbitMQ redelivers by itself when a consumer's channel closes.
        Ok(0)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let session = self.inner.session().await?;
        // Stop consuming first, so nothing is on its way into the buffer while the
        // buffer and the queue are emptied (the next fetch consumes again).
        self.inner.stop_consumer(queue).await;
        let buffered: Vec<Received> = self
            .inner
            .state
            .lock()
            .buffers
            .get_mut(queue)
            .map(|b| b.drain(..).collect())
            .unwrap_or_default();
        let mut purged = 0;
        {
            let mut state = self.inner.state.lock();
            for received in &buffered {
                state.settle(received.consumer, received.delivery.delivery_tag);
            }
        }
        for received in buffered {
            if received.generation == session.generation
                && received
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap_or(false)
            {
                purged += 1;
            }
        }
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(lapin_error)?;
        let on_server = match channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
        {
            Ok(count) => u64::from(count),
            Err(error) if is_not_found(&error) => 0,
            Err(error) => return Err(lapin_error(error)),
        };
        if channel.status().connected() {
            let _ = channel.close(200, "OK".into()).await;
        }
        Ok(purged + on_server)
    }

    async fn queue_stats(&self, queues: &[String]) -> Result<Vec<QueueStats>, BrokerError> {
        let inner = &self.inner;
        let session = inner.session().await?;
        let names: Vec<String> = if queues.is_empty() {
            inner.state.lock().known_queues.iter().cloned().collect()
        } else {
            queues.to_vec()
        };
        let mut stats = Vec::with_capacity(names.len());
        for name in names {
            let ready = inner.server_count(&session, &name).await?;
            let dead_letters = inner
                .server_count(&session, &dead_letter_queue(&name))
                .await?;
            let (buffered, held) = {
                let state = inner.state.lock();
                let buffered = state.buffers.get(&name).map_or(0, |b| {
                    b.iter()
                        .filter(|r| r.generation == session.generation && r.delivery.acker.usable())
                        .count()
                });
                (buffered, state.held_in(&name))
            };
            stats.push(QueueStats {
                name,
                ready: ready + buffered as u64,
                scheduled: 0,
                held: held as u64,
                dead_letters,
            });
        }
        Ok(stats)
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, BrokerError> {
        let inner = &self.inner;
        let session = inner.session().await?;
        let limit = if query.limit == 0 { 100 } else { query.limit };
        let queues: Vec<String> = match &query.queue {
            Some(queue) => vec![queue.clone()],
            None => inner.state.lock().known_queues.iter().cloned().collect(),
        };
        let mut found = Vec::new();
        for queue in queues {
            let name = dead_letter_queue(&queue);
            let count = inner.server_count(&session, &name).await?;
            if count == 0 {
                continue;
            }
            // basic.get without ack on a channel of our own; closing it puts every
            // message back where it was.
            let channel = session
                .connection
                .create_channel()
                .await
                .map_err(lapin_error)?;
            for _ in 0..count.min(DEAD_LETTER_SCAN_LIMIT) {
                match channel
                    .basic_get(name.as_str().into(), BasicGetOptions { no_ack: false })
                    .await
                {
                    Ok(Some(message)) => {
                        found.push(read_dead_letter(&message.delivery, &queue));
                    }
                    Ok(None) => break,
                    Err(error) if is_not_found(&error) => break,
                    Err(error) => return Err(lapin_error(error)),
                }
            }
            let _ = channel.close(200, "OK".into()).await;
        }
        found.sort_by_key(|letter| std::cmp::Reverse(letter.at));
        found.truncate(limit);
        Ok(found)
    }

    async fn broadcast(&self, message: Broadcast) -> Result<(), BrokerError> {
        fanout::broadcast(&self.inner, message).await
    }

    async fn subscribe(&self, params: &SubscribeParams) -> Result<Subscription, BrokerError> {
        fanout::subscribe(Arc::clone(&self.inner), params).await
    }

    /// Workers as their `worker-*` events on `celeryev` describe them (RabbitMQ has
    /// no registry; see [`workers`]): the first call listens for one heartbeat
    /// interval. Queues are not in Celery's events, so they are empty.
    async fn workers(&self) -> Result<Vec<crate::WorkerInfo>, BrokerError> {
        self.workers.workers(self).await
    }
}

/// Publishes prepared messages on the session's confirm channel and waits for
/// every confirm.
async fn publish_on(
    inner: &Inner,
    session: &Session,
    prepared: &[(String, BasicProperties, &[u8])],
) -> Result<(), BrokerError> {
    let queues: BTreeSet<&str> = prepared.iter().map(|(q, _, _)| q.as_str()).collect();
    for queue in queues {
        inner.ensure_queue(session, queue).await?;
    }
    let channel = session.publisher().await?;
    // Each publish hands its frames to lapin's I/O loop on its first poll and then
    // waits until they are written. Polling every publish once, in order, before
    // waiting for any lets the loop write the batch in a few wake-ups instead of one
    // per message (a thread hand-off each), and keeps the messages in order.
    let mut written = Vec::with_capacity(prepared.len());
    for (queue, properties, body) in prepared {
        let mut publish = Box::pin(channel.basic_publish(
            "".into(),
            ShortString::from(queue.as_str()),
            BasicPublishOptions::default(),
            body,
            properties.clone(),
        ));
        let first = futures::poll!(publish.as_mut());
        written.push((publish, first));
    }
    let mut confirms = Vec::with_capacity(written.len());
    for (publish, first) in written {
        let publisher_confirm = match first {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => publish.await,
        };
        confirms.push(publisher_confirm.map_err(lapin_error)?);
    }
    for result in futures::future::join_all(confirms.into_iter().map(confirm)).await {
        result?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_is_widened_only_past_half_again_its_prefetch() {
        // A drain: acks on their way push the demand a little past the window.
        assert_eq!(wider_prefetch(128, 128, 128), None);
        assert_eq!(wider_prefetch(128, 190, 128), None);
        assert_eq!(wider_prefetch(128, 192, 128), None);
        // Messages held for long (ETA tasks) push it further: widen to the demand.
        assert_eq!(wider_prefetch(128, 193, 128), Some(193));
        assert_eq!(wider_prefetch(8, 20, 8), Some(20));
        assert_eq!(wider_prefetch(1, 2, 1), Some(2));
        // A window declared wider than the consumer always replaces it.
        assert_eq!(wider_prefetch(8, 8, 16), Some(16));
        assert_eq!(wider_prefetch(8, 10, 16), Some(16));
        // No overflow at the top of the range.
        assert_eq!(wider_prefetch(u16::MAX, u16::MAX, 1), None);
    }

    #[test]
    fn unsettled_tags_stay_sorted_whatever_the_order() {
        let mut tags = Unsettled::default();
        for tag in [1, 2, 3, 5, 4, 9, 7, 7] {
            tags.insert(tag);
        }
        assert_eq!(Vec::from(tags.tags.clone()), [1, 2, 3, 4, 5, 7, 9]);
        assert!(tags.remove(1));
        assert!(tags.remove(5));
        assert!(!tags.remove(5));
        assert!(!tags.remove(8));
        assert_eq!(Vec::from(tags.tags.clone()), [2, 3, 4, 7, 9]);
        for tag in [9, 2, 7, 3, 4] {
            assert!(tags.remove(tag));
        }
        assert!(tags.is_empty());
    }

    #[test]
    fn a_batch_is_acked_with_multiple_only_when_nothing_below_it_is_unsettled() {
        let unsettled = |tags: &[u64]| {
            let mut set = Unsettled::default();
            for &tag in tags {
                set.insert(tag);
            }
            set
        };
        // All of 1..=4: one multiple ack.
        let mut tags = unsettled(&[1, 2, 3, 4, 5, 6]);
        assert!(tags.settle_batch([1, 2, 3, 4], 4));
        assert_eq!(Vec::from(tags.tags.clone()), [5, 6]);
        // 7 is still held by someone: acking 8 and 9 with multiple would ack it.
        let mut tags = unsettled(&[7, 8, 9, 10]);
        assert!(!tags.settle_batch([8, 9], 9));
        assert_eq!(Vec::from(tags.tags.clone()), [7, 10]);
        // A tag of the batch not (or no longer) unsettled: no multiple ack.
        let mut tags = unsettled(&[2, 3]);
        assert!(!tags.settle_batch([1, 2, 3], 3));
        assert!(tags.is_empty());
        // A released tag inserted again below the batch counts.
        let mut tags = unsettled(&[5, 6]);
        tags.insert(4);
        assert!(!tags.settle_batch([5, 6], 6));
        assert!(tags.settle_batch([4], 4));
    }

    #[test]
    fn delivery_tags_read_back_as_their_id() {
        for id in [0, 7, 10, 99, 12_345, u64::MAX] {
            let tag = tag_of("amqp-3-", id);
            assert_eq!(tag, format!("amqp-3-{id}"));
            let parsed = tag
                .strip_prefix("amqp-")
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(_, id)| id.parse::<u64>().ok());
            assert_eq!(parsed, Some(id));
        }
    }
}
